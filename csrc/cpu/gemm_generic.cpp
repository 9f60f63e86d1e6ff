// The matrix product's portable kernels (gemm_kernels.h): 16-byte vectors of
// the compiler's vector extension, which every target has (SSE2 on x86-64).
// Multiply and add stay separate instructions, so results can differ from
// the fused kernels' in the last bit.
#include "cpu/gemm_isa.h"

namespace cnnkit::cpu::gemm_detail {
namespace {

template <typename Scalar>
struct Vec16 {
  using T = Scalar;
  typedef Scalar V __attribute__((vector_size(16)));
  static constexpr int width = 16 / sizeof(Scalar);
  static V zero() { return V{}; }
  static V load(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
  static V broadcast(const T* p) { return V{} + *p; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
};

using F32x4 = Vec16<float>;
using F64x2 = Vec16<double>;

#include "cpu/gemm_kernels.h"

}  // namespace

CNNKIT_GEMM_KERNEL(gemm_generic_f32, F32x4, 4, 2, 256, 128, 4096)
CNNKIT_GEMM_KERNEL(gemm_generic_f64, F64x2, 4, 2, 256, 128, 4096)

}  // namespace cnnkit::cpu::gemm_detail
