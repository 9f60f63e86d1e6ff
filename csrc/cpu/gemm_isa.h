// What the instruction-set translation units of the matrix product
// (gemm_avx512.cpp, gemm_avx2.cpp, gemm_generic.cpp) export to gemm.cpp. Only
// plain declarations: these units are compiled for their own instruction set
// and share no inline code with the rest of the extension.
#pragma once

#include <cstdint>

namespace cnnkit::cpu::gemm_detail {

// C (M x N) = A (M x K) @ B (K x N), or C += A @ B when `accumulate`. A and B
// have any strides; C has unit column stride and row stride c_rs.
template <typename T>
struct GemmArgs {
  int64_t M, N, K;
  const T* a;
  int64_t a_rs, a_cs;
  const T* b;
  int64_t b_rs, b_cs;
  T* c;
  int64_t c_rs;
  bool accumulate;
};

// The register tile (mr x nr) and the cache blocks: a kc-deep sliver of B
// (kc x nr) stays in L1, a block of A (mc x kc) in L2, a panel of B
// (kc x nc) in L3.
struct Blocking {
  int64_t mr, nr, kc, mc, nc;
};

// One instruction set's product for one element type: runs single-threaded,
// packing into the caller's buffers of mc*kc and kc*nc elements (64-byte
// aligned).
template <typename T>
struct GemmKernel {
  Blocking blocking;
  void (*run)(const GemmArgs<T>& args, T* packed_a, T* packed_b);
};

GemmKernel<float> gemm_generic_f32();
GemmKernel<double> gemm_generic_f64();
#if defined(__x86_64__)
GemmKernel<float> gemm_avx2_f32();
GemmKernel<double> gemm_avx2_f64();
GemmKernel<float> gemm_avx512_f32();
GemmKernel<double> gemm_avx512_f64();
#endif

}  // namespace cnnkit::cpu::gemm_detail
