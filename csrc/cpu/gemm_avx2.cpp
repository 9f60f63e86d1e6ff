// The matrix product's AVX2 kernels (gemm_kernels.h), compiled for AVX2 and FMA
// whatever the flags of the rest of the extension; run only where the
// processor has them (gemm.cpp asks isa.h first).
#include "cpu/gemm_isa.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace cnnkit::cpu::gemm_detail {
namespace {

struct F32x8 {
  using T = float;
  using V = __m256;
  static constexpr int width = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V broadcast(const T* p) { return _mm256_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
};

struct F64x4 {
  using T = double;
  using V = __m256d;
  static constexpr int width = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V broadcast(const T* p) { return _mm256_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
};

#include "cpu/gemm_kernels.h"

}  // namespace

// 6 x 2 vectors: 12 accumulators of the 16 registers.
CNNKIT_GEMM_KERNEL(gemm_avx2_f32, F32x8, 6, 2, 256, 120, 4096)
CNNKIT_GEMM_KERNEL(gemm_avx2_f64, F64x4, 6, 2, 256, 120, 4096)

}  // namespace cnnkit::cpu::gemm_detail

#pragma GCC pop_options
#endif
