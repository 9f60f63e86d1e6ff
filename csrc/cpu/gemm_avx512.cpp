// The matrix product's AVX-512 kernels (gemm_kernels.h), compiled for AVX-512
// whatever the flags of the rest of the extension; run only where the
// processor has it (gemm.cpp asks isa.h first).
#include "cpu/gemm_isa.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")

namespace cnnkit::cpu::gemm_detail {
namespace {

struct F32x16 {
  using T = float;
  using V = __m512;
  static constexpr int width = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V broadcast(const T* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
};

struct F64x8 {
  using T = double;
  using V = __m512d;
  static constexpr int width = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V broadcast(const T* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
};

#include "cpu/gemm_kernels.h"

}  // namespace

// float32: 8 x 2 vectors (16 accumulators, two per FMA port and cycle of
// latency) with kc = 256; chosen over 6 x 4, 12 x 2 and 14 x 2 tiles and
// kc = 128 by measuring products of the shapes convolutions make.
CNNKIT_GEMM_KERNEL(gemm_avx512_f32, F32x16, 8, 2, 256, 384, 4096)
// float64: 12 x 2 vectors, 24 accumulators.
CNNKIT_GEMM_KERNEL(gemm_avx512_f64, F64x8, 12, 2, 128, 192, 4096)

}  // namespace cnnkit::cpu::gemm_detail

#pragma GCC pop_options
#endif
