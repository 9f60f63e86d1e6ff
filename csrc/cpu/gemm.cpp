// The matrix product's dispatch: which instruction set's kernel runs
// (isa.h), its packing buffers, the shape normalisation (C with unit column
// stride) and the split over threads.
#include "cpu/gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cpu/gemm_isa.h"
#include "cpu/isa.h"

namespace cnnkit::cpu {
namespace {

using gemm_detail::GemmArgs;
using gemm_detail::GemmKernel;

template <typename T>
GemmKernel<T> make_kernel(Isa isa);

template <>
GemmKernel<float> make_kernel<float>(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::avx512) return gemm_detail::gemm_avx512_f32();
  if (isa == Isa::avx2) return gemm_detail::gemm_avx2_f32();
#endif
  return gemm_detail::gemm_generic_f32();
}

template <>
GemmKernel<double> make_kernel<double>(Isa isa) {
#if defined(__x86_64__)
  if (isa == Isa::avx512) return gemm_detail::gemm_avx512_f64();
  if (isa == Isa::avx2) return gemm_detail::gemm_avx2_f64();
#endif
  return gemm_detail::gemm_generic_f64();
}

// The kernel of the active instruction set. make_kernel runs code compiled
// for that instruction set, so it is called only once isa.h has said the
// processor supports it.
template <typename T>
GemmKernel<T> active_kernel() {
  const Isa isa = active_isa();
  static const GemmKernel<T> kernels[] = {
      make_kernel<T>(Isa::generic),
      isa_supported(Isa::avx2) ? make_kernel<T>(Isa::avx2) : make_kernel<T>(Isa::generic),
      isa_supported(Isa::avx512) ? make_kernel<T>(Isa::avx512) : make_kernel<T>(Isa::generic),
  };
  return kernels[static_cast<int>(isa)];
}

// Each thread's packing buffers, grown as needed and kept between calls.
struct PackBuffer {
  std::unique_ptr<void, void (*)(void*)> data{nullptr, std::free};
  size_t bytes = 0;
  void* at_least(size_t n) {
    if (n > bytes) {
      n = (n + 63) / 64 * 64;
      data.reset(std::aligned_alloc(64, n));
      TORCH_CHECK(data, "cnnkit: out of memory for ", n, " bytes of packed matrices");
      bytes = n;
    }
    return data.get();
  }
};

template <typename T>
void run_single_thread(const GemmKernel<T>& kernel, const GemmArgs<T>& args) {
  thread_local PackBuffer buffer;
  const auto& blk = kernel.blocking;
  // packed A, then packed B at a 64-byte boundary
  const size_t a_elems = (blk.mc * blk.kc + 15) / 16 * 16;
  T* packed_a = static_cast<T*>(buffer.at_least((a_elems + blk.kc * blk.nc) * sizeof(T)));
  kernel.run(args, packed_a, packed_a + a_elems);
}

// Products of fewer multiply-adds run on one thread: a parallel region costs
// about as much as this many on one core.
constexpr int64_t kParallelWork = int64_t(1) << 20;

template <typename T>
void run(const GemmArgs<T>& args) {
  const auto kernel = active_kernel<T>();
  const int64_t threads = at::get_num_threads();
  if (threads == 1 || at::in_parallel_region() || args.M * args.N * args.K < kParallelWork) {
    run_single_thread(kernel, args);
    return;
  }
  // Split along N (every thread packs all of A) or along M (every thread
  // packs all of B), whichever repeats less packing, in whole register
  // tiles so that the split changes no tile's sums.
  const int64_t mr = kernel.blocking.mr, nr = kernel.blocking.nr;
  const int64_t tiles_m = (args.M + mr - 1) / mr, tiles_n = (args.N + nr - 1) / nr;
  const bool split_n = tiles_n >= threads && (args.M <= args.N || tiles_m < threads);
  const int64_t tiles = split_n ? tiles_n : tiles_m;
  const int64_t chunks = std::min(threads, tiles);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t0 = c * tiles / chunks, t1 = (c + 1) * tiles / chunks;
      GemmArgs<T> part = args;
      if (split_n) {
        const int64_t j0 = t0 * nr, j1 = std::min(args.N, t1 * nr);
        part.N = j1 - j0;
        part.b = args.b + j0 * args.b_cs;
        part.c = args.c + j0;
      } else {
        const int64_t i0 = t0 * mr, i1 = std::min(args.M, t1 * mr);
        part.M = i1 - i0;
        part.a = args.a + i0 * args.a_rs;
        part.c = args.c + i0 * args.c_rs;
      }
      if (part.M > 0 && part.N > 0) run_single_thread(kernel, part);
    }
  });
}

}  // namespace

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
          int64_t b_rs, int64_t b_cs, T* c, int64_t c_rs, int64_t c_cs, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) c[i * c_rs + j * c_cs] = T(0);
      }
    }
    return;
  }
  if (c_cs == 1 || N == 1) {
    run<T>({M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, accumulate});
  } else if (c_rs == 1 || M == 1) {  // C^T = B^T @ A^T has unit column stride
    run<T>({N, M, K, b, b_cs, b_rs, a, a_cs, a_rs, c, c_cs, accumulate});
  } else {  // neither: through a row-major copy
    std::vector<T> rows(M * N);
    for (int64_t i = 0; accumulate && i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) rows[i * N + j] = c[i * c_rs + j * c_cs];
    }
    run<T>({M, N, K, a, a_rs, a_cs, b, b_rs, b_cs, rows.data(), N, accumulate});
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) c[i * c_rs + j * c_cs] = rows[i * N + j];
    }
  }
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                          const float*, int64_t, int64_t, float*, int64_t, int64_t, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t,
                           const double*, int64_t, int64_t, double*, int64_t, int64_t, bool);

namespace {

void check_operands(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, int64_t dim) {
  TORCH_CHECK(dst.dim() == dim && a.dim() == dim && b.dim() == dim,
              "cnnkit matmul: expected ", dim, "-D operands, but got ", a.sizes(), " @ ",
              b.sizes(), " -> ", dst.sizes());
  const int64_t r = dim - 2;
  TORCH_CHECK(a.size(r + 1) == b.size(r) && dst.size(r) == a.size(r) &&
                  dst.size(r + 1) == b.size(r + 1) && (dim == 2 || (a.size(0) == dst.size(0) &&
                                                                    b.size(0) == dst.size(0))),
              "cnnkit matmul: shapes do not match: ", a.sizes(), " @ ", b.sizes(), " -> ",
              dst.sizes());
  TORCH_CHECK(dst.is_cpu() && a.is_cpu() && b.is_cpu(), "cnnkit matmul: expected CPU tensors");
  TORCH_CHECK(a.scalar_type() == dst.scalar_type() && b.scalar_type() == dst.scalar_type() &&
                  (dst.scalar_type() == at::kFloat || dst.scalar_type() == at::kDouble),
              "cnnkit matmul: expected float32 or float64 operands of one dtype, but got ",
              a.scalar_type(), ", ", b.scalar_type(), " -> ", dst.scalar_type());
}

// Operand g of a (G, rows, cols) tensor: data and strides, read on the
// calling thread so that worker threads run no ATen code.
template <typename T>
struct Batch {
  T* data;
  int64_t batch_stride, rows, cols, rs, cs;
  explicit Batch(const at::Tensor& t)
      : data(const_cast<T*>(t.const_data_ptr<T>())),
        batch_stride(t.stride(0)), rows(t.size(1)), cols(t.size(2)), rs(t.stride(1)),
        cs(t.stride(2)) {}
  T* at(int64_t g) const { return data + g * batch_stride; }
};

template <typename T>
void matmul_batch(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b,
                  bool accumulate, int64_t g0, int64_t g1) {
  const Batch<T> C(dst), A(a), B(b);
  for (int64_t g = g0; g < g1; ++g) {
    gemm<T>(A.rows, B.cols, A.cols, A.at(g), A.rs, A.cs, B.at(g), B.rs, B.cs, C.at(g), C.rs,
            C.cs, accumulate);
  }
}

}  // namespace

void matmul(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  check_operands(dst, a, b, 2);
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cnnkit_matmul", [&] {
    matmul_batch<scalar_t>(dst.unsqueeze(0), a.unsqueeze(0), b.unsqueeze(0), accumulate, 0, 1);
  });
}

void grouped_matmul(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b,
                    bool accumulate) {
  check_operands(dst, a, b, 3);
  const int64_t G = dst.size(0), threads = at::get_num_threads();
  const int64_t work = G * a.size(1) * a.size(2) * b.size(2);
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cnnkit_grouped_matmul", [&] {
    // Whole groups per thread when they split evenly; otherwise one group
    // after another, each split over the threads.
    if (threads > 1 && G > 1 && !at::in_parallel_region() && work >= kParallelWork &&
        (G % threads == 0 || G >= 4 * threads)) {
      at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
        matmul_batch<scalar_t>(dst, a, b, accumulate, g0, g1);
      });
      return;
    }
    matmul_batch<scalar_t>(dst, a, b, accumulate, 0, G);
  });
}

}  // namespace cnnkit::cpu
