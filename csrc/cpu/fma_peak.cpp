// The processor's floating-point peak, measured: independent chains of fused
// multiply-adds held in registers, as many chains as it takes to cover the FMA
// latency on every FMA port, on every intra-op thread at once. This is the
// ceiling a convolution's multiply-adds are compared with (a library GEMM is
// no ceiling: on some processors the vendor BLAS runs far below the machine).
//
// Each instruction set is compiled into its own function with a target
// attribute and chosen at run time from the CPU's features, so the measurement
// does not depend on the flags the extension was built with.
#include "fma_peak.h"
#include "isa.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <vector>

namespace cnnkit::cpu {
namespace {

// acc <- acc * a + b converges to b / (1 - a): no overflow, no denormals.
constexpr float kA = 0.999f, kB = 0.001f;

// 16 chains of 512-bit registers (of 32): latency 4 x 2 FMA ports, twice over.
constexpr int kChains512 = 16;
// 12 chains of 256-bit registers (of 16, two more hold a and b).
constexpr int kChains256 = 12;

#define CNNKIT_FMA_CHAINS(NAME, TARGET, VEC, CHAINS, SET1, FMA, ADD, STORE, T, LANES)  \
  __attribute__((target(TARGET))) double NAME(int64_t iterations) {                   \
    VEC acc[CHAINS];                                                                  \
    for (int c = 0; c < CHAINS; ++c) acc[c] = SET1(T(1) + T(c));                       \
    const VEC a = SET1(T(kA)), b = SET1(T(kB));                                        \
    for (int64_t i = 0; i < iterations; ++i) {                                        \
      for (int c = 0; c < CHAINS; ++c) acc[c] = FMA(acc[c], a, b);                     \
    }                                                                                 \
    for (int c = 1; c < CHAINS; ++c) acc[0] = ADD(acc[0], acc[c]);                     \
    T lanes[LANES];                                                                   \
    STORE(lanes, acc[0]);                                                             \
    double sum = 0;                                                                   \
    for (T v : lanes) sum += v;                                                       \
    return sum;                                                                       \
  }

CNNKIT_FMA_CHAINS(chains_avx512_f32, "avx512f", __m512, kChains512, _mm512_set1_ps,
                  _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, float, 16)
CNNKIT_FMA_CHAINS(chains_avx512_f64, "avx512f", __m512d, kChains512, _mm512_set1_pd,
                  _mm512_fmadd_pd, _mm512_add_pd, _mm512_storeu_pd, double, 8)
CNNKIT_FMA_CHAINS(chains_avx2_f32, "avx2,fma", __m256, kChains256, _mm256_set1_ps,
                  _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, float, 8)
CNNKIT_FMA_CHAINS(chains_avx2_f64, "avx2,fma", __m256d, kChains256, _mm256_set1_pd,
                  _mm256_fmadd_pd, _mm256_add_pd, _mm256_storeu_pd, double, 4)
#undef CNNKIT_FMA_CHAINS

// Without vector FMA: four scalar chains (what the compiler makes of std::fma).
template <typename T>
double chains_scalar(int64_t iterations) {
  T acc[4] = {1, 2, 3, 4};
  for (int64_t i = 0; i < iterations; ++i) {
    for (T& v : acc) v = std::fma(v, T(kA), T(kB));
  }
  return acc[0] + acc[1] + acc[2] + acc[3];
}

struct Variant {
  const char* isa;
  double (*run)(int64_t iterations);
  int64_t flops_per_iteration;
};

// The widest variant the processor runs, as isa.h decides for the kernels.
Variant best_variant(bool float64) {
  if (isa_supported(Isa::avx512)) {
    return float64 ? Variant{"avx512", chains_avx512_f64, kChains512 * 8 * 2}
                   : Variant{"avx512", chains_avx512_f32, kChains512 * 16 * 2};
  }
  if (isa_supported(Isa::avx2)) {
    return float64 ? Variant{"avx2", chains_avx2_f64, kChains256 * 4 * 2}
                   : Variant{"avx2", chains_avx2_f32, kChains256 * 8 * 2};
  }
  return float64 ? Variant{"scalar", chains_scalar<double>, 4 * 2}
                 : Variant{"scalar", chains_scalar<float>, 4 * 2};
}

// Seconds for `iterations` on every intra-op thread at once.
double time_all_threads(const Variant& variant, int64_t iterations, int threads,
                        std::vector<double>& sink) {
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sink[t] = variant.run(iterations);
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

FmaPeak measure_fma_peak(bool float64, double seconds) {
  TORCH_CHECK(seconds > 0, "cnnkit: expected a positive measuring time, but got ", seconds);
  const Variant variant = best_variant(float64);
  const int threads = at::get_num_threads();
  std::vector<double> sink(threads);
  // Calibrate on a short run, then measure for about `seconds`: the best of three.
  int64_t iterations = 1 << 14;
  double elapsed = time_all_threads(variant, iterations, threads, sink);
  while (elapsed < 0.01) {
    iterations *= 4;
    elapsed = time_all_threads(variant, iterations, threads, sink);
  }
  iterations = std::max<int64_t>(1, static_cast<int64_t>(iterations * (seconds / 3) / elapsed));
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    const double t = time_all_threads(variant, iterations, threads, sink);
    best = std::max(best, static_cast<double>(iterations) * variant.flops_per_iteration * threads /
                              t / 1e9);
  }
  double checksum = 0;
  for (double v : sink) checksum += v;
  TORCH_CHECK(std::isfinite(checksum), "cnnkit: the FMA peak loop diverged");
  return {best, variant.isa, threads};
}

}  // namespace cnnkit::cpu
