// cnnkit's own matrix product for the CPU engines: packed, register-blocked
// micro-kernels (gemm_kernels.h) compiled for each instruction set and chosen
// at run time (isa.h). float32 and float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cnnkit::cpu {

// C (M x N) = A (M x K) @ B (K x N), or C += A @ B when `accumulate`, every
// matrix given by its data and (row, column) strides in elements. Split over
// the intra-op threads when called outside a parallel region and large
// enough; each element of C is the same sum in the same order however it is
// split, so results do not depend on the thread count.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
          int64_t b_rs, int64_t b_cs, T* c, int64_t c_rs, int64_t c_cs, bool accumulate);

// dst (+)= a @ b for 2-D float32 or float64 tensors of any strides.
void matmul(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b,
            bool accumulate = false);

// dst[g] (+)= a[g] @ b[g] for every g of (G, rows, cols) tensors.
void grouped_matmul(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b,
                    bool accumulate = false);

}  // namespace cnnkit::cpu
