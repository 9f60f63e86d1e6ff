// Shared pieces of the CUDA kernels: launch geometry, index types, dtype
// dispatch, accumulation types. Every host function that launches a kernel
// follows the same order: problem (all checks, device and dtype included) ->
// device guard (after the checks: a guard on a CPU tensor would fail with an
// internal error before the clear one) -> early return on an empty result ->
// dtype dispatch -> launch on the current stream -> CNNKIT_CHECK_LAUNCH().
//
// The same sources also build as host C++ for the emulated backend
// (csrc/emulation/, CNNKIT_EMULATED_CUDA): what differs between the two
// builds -- kernel launches, dynamic shared memory, the device guard and
// stream, the library the kernels register in -- is spelled through the
// macros and functions below, never with CUDA's own syntax in a kernel file.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CNNKIT_EMULATED_CUDA)
#include "emulation/cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "problem.h"

namespace cnnkit::cuda {

// Accumulation type: float for float16 / bfloat16 / float32, double for float64.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename T>
CNNKIT_HOST_DEVICE T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Floor division and modulo for a possibly negative numerator and a positive
// denominator (C++ division truncates toward zero).
CNNKIT_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Quotients n / d for n >= 0 and a divisor d >= 1 fixed at launch, built on
// the host. 32-bit: the round-up method, n / d = (umulhi(n, magic) + n) >> shift
// with shift = ceil(log2 d) and magic = floor(2^32 * (2^shift - d) / d) + 1,
// exact for every n < 2^31 (the sum stays below 2^32). 64-bit: plain division.
template <typename index_t>
struct Divider;

template <>
struct Divider<int32_t> {
  int32_t value;
  uint32_t magic, shift;

  Divider() = default;
  explicit Divider(int64_t d) {
    TORCH_CHECK(d >= 1 && d <= std::numeric_limits<int32_t>::max(),
                "cnnkit: a divisor of the CUDA index arithmetic out of range: ", d);
    value = static_cast<int32_t>(d);
    shift = 0;
    while ((uint64_t{1} << shift) < static_cast<uint64_t>(d)) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, magic) + n) >> shift;
  }
  __device__ __forceinline__ int32_t div(int32_t n) const {
    return static_cast<int32_t>(div(static_cast<uint32_t>(n)));
  }
  __device__ __forceinline__ void divmod(int32_t n, int32_t& quotient, int32_t& remainder) const {
    quotient = div(n);
    remainder = n - quotient * value;
  }
};

template <>
struct Divider<int64_t> {
  int64_t value;

  Divider() = default;
  explicit Divider(int64_t d) : value(d) {
    TORCH_CHECK(d >= 1, "cnnkit: a divisor of the CUDA index arithmetic out of range: ", d);
  }
  __device__ __forceinline__ int64_t div(int64_t n) const { return n / value; }
  __device__ __forceinline__ void divmod(int64_t n, int64_t& quotient, int64_t& remainder) const {
    quotient = n / value;
    remainder = n - quotient * value;
  }
};

// The float16 / bfloat16 / float32 / float64 dispatch of every CUDA kernel (SPEC 3).
#define CNNKIT_DISPATCH_CUDA_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, \
                                  __VA_ARGS__)

#if defined(CNNKIT_EMULATED_CUDA)

// The emulated kernels register as torch.ops.cnnkit_emu.* for CPU tensors;
// a bad launch throws from the launch itself.
#define CNNKIT_CUDA_LIBRARY cnnkit_emu
#define CNNKIT_CUDA_DISPATCH_KEY CPU
#define CNNKIT_CHECK_LAUNCH() ((void)0)

struct DeviceScope {
  explicit DeviceScope(const at::Tensor&) {}
};

inline cudaStream_t current_stream() { return nullptr; }

#else

#define CNNKIT_CUDA_LIBRARY cnnkit
#define CNNKIT_CUDA_DISPATCH_KEY CUDA

// kernel<<<grid, block, shared_bytes, stream>>>(args...), spelled
// CNNKIT_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...).
#define CNNKIT_LAUNCH(GRID, BLOCK, SHARED, STREAM, ...) __VA_ARGS__<<<GRID, BLOCK, SHARED, STREAM>>>

// The block's dynamic shared memory (the launch's third argument) as
// `unsigned char NAME[]`, 16-byte aligned.
#define CNNKIT_DYNAMIC_SHARED(NAME) extern __shared__ __align__(16) unsigned char NAME[]

// After every launch: turns a launch error into a Python exception at once.
#define CNNKIT_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

// What the op layers (csrc/conv_ops.h, local_ops.h, pool_ops.h) hold while a
// CUDA backend's kernels run: the device guard of the op's tensor.
struct DeviceScope {
  c10::cuda::CUDAGuard guard;
  explicit DeviceScope(const at::Tensor& t) : guard(t.device()) {}
};

// ATen's CUDA context header is avoided on purpose: it pulls in the cuBLAS and
// cuSPARSE headers, which a minimal toolkit lacks and no cnnkit kernel uses.
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

#endif

// Allocation of large results (the CPU backends ask for huge pages; the CUDA
// caching allocator needs nothing more).
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

// Streaming multiprocessors of the current device.
inline int64_t multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `n` items: enough to fill the device
// several times over, never more than the items need.
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t wanted = ceil_div<int64_t>(n, threads);
  const int64_t cap = multiprocessor_count() * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

// A grid-stride launch of a kernel of kThreads threads over `n` items on the
// current stream: CNNKIT_LAUNCH_OVER(n, kernel)(args...).
#define CNNKIT_LAUNCH_OVER(N, ...)                                        \
  CNNKIT_LAUNCH(::cnnkit::cuda::grid_for(N), ::cnnkit::cuda::kThreads, 0, \
                ::cnnkit::cuda::current_stream(), __VA_ARGS__)

// Index arithmetic: 32-bit where every tensor involved has fewer than 2^31
// elements (faster address math), 64-bit otherwise (SPEC 3). Kernels are
// templated on the index type and the host picks one with this.
inline bool fits_int32(std::initializer_list<int64_t> numels) {
#if defined(CNNKIT_EMULATED_CUDA)
  // Tests of the emulated backend run the 64-bit kernels on small tensors too.
  if (::cnnkit::emulation::wide_indices()) return false;
#endif
  for (int64_t n : numels) {
    if (n >= std::numeric_limits<int32_t>::max()) return false;
  }
  return true;
}

// Runs `body` with `index_t` = int32_t when fits_int32(numels), else int64_t.
#define CNNKIT_DISPATCH_INDEX(FITS_INT32, ...) \
  [&] {                                        \
    if (FITS_INT32) {                          \
      using index_t = int32_t;                 \
      return __VA_ARGS__();                    \
    } else {                                   \
      using index_t = int64_t;                 \
      return __VA_ARGS__();                    \
    }                                          \
  }()

// Grid-stride loop over [0, n). The counter is 64-bit so that `i += step`
// cannot wrap near the end of the range; kernels templated on index_t convert
// it once (`const index_t idx = i;`) and do their index math in index_t.
#define CNNKIT_KERNEL_LOOP(i, n)                                                           \
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < static_cast<int64_t>(n); \
       i += int64_t{blockDim.x} * gridDim.x)

// NaN test that works for every dispatched type (NaN is the only value unequal to itself).
template <typename T>
__device__ __forceinline__ bool is_nan(T x) {
  return x != x;
}

}  // namespace cnnkit::cuda
