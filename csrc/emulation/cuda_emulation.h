// The CUDA execution model on the CPU, for testing: with this header the
// unchanged sources of csrc/cuda/ compile as host C++ (the build's emulated
// extension, cnnkit._C_emu) and their kernels run on CPU tensors.
//
// What a launch does here:
//   - the blocks of the grid run side by side on the intra-op threads (one
//     after another under the sanitizers), each on one OS thread;
//   - the threads of a block run as fibers (user-level contexts with stacks of
//     their own) on that OS thread, switched at barriers (runtime.cpp); under
//     ThreadSanitizer each fiber is a thread of its own whose only
//     synchronisation is CUDA's, so a race between threads of a block on
//     shared or global memory is reported as a data race;
//   - __shared__ variables are per-block storage: static storage of the
//     kernel, one copy per OS thread;
//   - __syncthreads, __syncwarp, warp shuffles and WMMA's collective calls are
//     barriers of the block or warp; a barrier that some threads never reach
//     (they exited, or wait at another barrier) is reported as an error;
//   - launch limits are checked as the hardware does (block and grid sizes,
//     dynamic shared memory above 48 KiB only with the opt-in), and fresh
//     dynamic shared memory reads as NaN;
//   - WMMA 16x16x16 fragments are held 8 elements per lane in a fixed layout
//     (lane l holds elements 8l .. 8l+7 of the row-major tile); that is
//     faithful for code that never reads fragment elements itself, which
//     cnnkit's kernels do not. Products accumulate in float32, k in order.
//
// What emulation cannot check: the GPU memory model and fences, concurrency
// between blocks, the numerics and fragment layout of real tensor cores,
// register use and occupancy, speed.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "emulation/runtime.h"

#ifndef CNNKIT_EMULATED_CUDA
#define CNNKIT_EMULATED_CUDA 1
#endif

// ------------------------------------------------------------------ language

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// A block runs on one OS thread, its threads as fibers there.
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}

// 16-bit floating-point types with the bit layout of CUDA's.
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

// ------------------------------------------------------------------ runtime API

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMultiProcessorCount = 16,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cnnkit::emulation {

// The device the emulation stands for: an H100 (SXM).
constexpr int kMultiprocessors = 132;
constexpr std::size_t kDefaultDynamicShared = 48 * 1024;
constexpr std::size_t kMaxSharedOptin = 227 * 1024;

void set_max_dynamic_shared(const void* kernel, int bytes);

}  // namespace cnnkit::emulation

inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid argument";
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount:
      *value = cnnkit::emulation::kMultiprocessors;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(cnnkit::emulation::kMaxSharedOptin);
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
inline cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t bytes, cudaStream_t) {
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || static_cast<std::size_t>(value) > cnnkit::emulation::kMaxSharedOptin) {
    return cudaErrorInvalidValue;
  }
  cnnkit::emulation::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

#ifndef C10_CUDA_CHECK
#define C10_CUDA_CHECK(EXPR)                                                         \
  do {                                                                               \
    const cudaError_t cnnkit_emulated_error = (EXPR);                                \
    TORCH_CHECK(cnnkit_emulated_error == cudaSuccess,                                \
                "emulated CUDA error: ", cudaGetErrorString(cnnkit_emulated_error)); \
  } while (false)
#endif

// ------------------------------------------------------------------ threads

namespace cnnkit::emulation {

// What a CUDA thread sees of itself. Set by the emulator for the fiber that runs.
struct ThreadContext {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  int linear;  // thread index within the block, x fastest
};

ThreadContext& this_thread();

// Barriers and warp collectives (runtime.cpp). `mask` names the lanes of the
// caller's warp that take part.
void sync_block();
void sync_warp(unsigned int mask);
std::uint64_t warp_exchange(unsigned int mask, std::uint64_t value, int source_lane);
// Per-warp scratch of 512 floats for WMMA's collective product.
float* warp_scratch();
unsigned char* dynamic_shared_memory();
// An error of the kernel (a failed hardware requirement): ends the launch
// with this message.
[[noreturn]] void device_error(const char* what);

inline int lane_id() { return this_thread().linear % 32; }

}  // namespace cnnkit::emulation

#define threadIdx (::cnnkit::emulation::this_thread().thread_idx)
#define blockIdx (::cnnkit::emulation::this_thread().block_idx)
#define blockDim (::cnnkit::emulation::this_thread().block_dim)
#define gridDim (::cnnkit::emulation::this_thread().grid_dim)

inline void __syncthreads() { ::cnnkit::emulation::sync_block(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { ::cnnkit::emulation::sync_warp(mask); }

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  const int lane = ::cnnkit::emulation::lane_id();
  const int in_segment = lane % width;
  const int source =
      in_segment + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ::cnnkit::emulation::warp_exchange(mask, bits, source);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// CUDA's global min and max of two arithmetic values, in their common type.
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  return static_cast<T>(b) < static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  return static_cast<T>(a) < static_cast<T>(b) ? static_cast<T>(b) : static_cast<T>(a);
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<std::uint64_t>(a) * b) >> 32);
}

inline unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  unsigned long long old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < value && !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
  }
  return old;
}

// ------------------------------------------------------------------ launches

namespace cnnkit::emulation {

struct LaunchConfig {
  dim3 grid, block;
  std::size_t dynamic_shared;
  const void* kernel;
  const char* name;                 // as the launch spells it
  const std::type_info* signature;  // of the kernel function
};

// Checks the configuration as the hardware does, then runs body() once per
// thread of every block. Throws on a bad configuration or a device error.
void launch(const LaunchConfig& config, void (*body)(const void*), const void* closure);

template <typename... Params>
struct Launcher {
  void (*kernel)(Params...);
  LaunchConfig config;

  template <typename... Args>
  void operator()(Args&&... args) const {
    // Kernel parameters are copied at launch, as CUDA does.
    using Closure = std::pair<void (*)(Params...), std::tuple<std::decay_t<Params>...>>;
    const Closure closure{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    launch(
        config,
        [](const void* p) {
          const auto& c = *static_cast<const Closure*>(p);
          std::apply(c.first, c.second);
        },
        &closure);
  }
};

template <typename... Params>
Launcher<Params...> make_launcher(void (*kernel)(Params...), dim3 grid, dim3 block,
                                  std::size_t dynamic_shared, cudaStream_t, const char* name) {
  return {kernel,
          {grid, block, dynamic_shared, reinterpret_cast<const void*>(kernel), name,
           &typeid(void (*)(Params...))}};
}

}  // namespace cnnkit::emulation

// kernel<<<grid, block, shared, stream>>>(args...) in the common spelling of
// csrc/cuda/helpers.cuh: CNNKIT_LAUNCH(grid, block, shared, stream, kernel)(args...).
#define CNNKIT_LAUNCH(GRID, BLOCK, SHARED, STREAM, ...) \
  ::cnnkit::emulation::make_launcher(__VA_ARGS__, GRID, BLOCK, SHARED, STREAM, #__VA_ARGS__)

// The block's dynamic shared memory as `unsigned char* NAME`, 16-byte aligned.
#define CNNKIT_DYNAMIC_SHARED(NAME) \
  unsigned char* const NAME = ::cnnkit::emulation::dynamic_shared_memory()

// ------------------------------------------------------------------ WMMA

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// A 16x16 tile spread over the 32 lanes of a warp: element e of a lane is
// element 8 * lane + e of the tile in row-major order (matrix_a: (m, k);
// matrix_b: (k, n); accumulator: (m, n)).
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has the m16n16k16 shape only");
  static constexpr int num_elements = 8;
  T x[num_elements];
};

namespace detail {

inline int first_element() { return 8 * ::cnnkit::emulation::lane_id(); }

// Hardware requirements of every WMMA load and store: a 256-bit aligned
// pointer and a leading dimension that is a multiple of 16 bytes.
template <typename T>
inline void check_operand(const T* ptr, unsigned int ldm) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0) {
    ::cnnkit::emulation::device_error(
        "WMMA load or store from a pointer that is not 256-bit aligned");
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    ::cnnkit::emulation::device_error("WMMA leading dimension is not a multiple of 16 bytes");
  }
}

// Offset of tile element (row, col) in memory of leading dimension ldm.
template <typename Layout>
inline std::size_t offset(int row, int col, unsigned int ldm) {
  if constexpr (std::is_same_v<Layout, row_major>) {
    return static_cast<std::size_t>(row) * ldm + col;
  } else {
    return static_cast<std::size_t>(col) * ldm + row;
  }
}

}  // namespace detail

template <typename Use, typename T, typename Layout, typename Source>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const Source* ptr,
                      unsigned int ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads take a layout");
  detail::check_operand(ptr, ldm);
  const int first = detail::first_element();
  for (int e = 0; e < 8; ++e) {
    const int i = first + e;
    f.x[e] = ptr[detail::offset<Layout>(i / 16, i % 16, ldm)];
  }
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, T value) {
  for (auto& v : f.x) v = value;
}

template <typename T>
void store_matrix_sync(T* ptr, const fragment<accumulator, 16, 16, 16, T>& f, unsigned int ldm,
                       layout_t layout) {
  detail::check_operand(ptr, ldm);
  const int first = detail::first_element();
  for (int e = 0; e < 8; ++e) {
    const int i = first + e;
    ptr[layout == mem_row_major ? detail::offset<row_major>(i / 16, i % 16, ldm)
                                : detail::offset<col_major>(i / 16, i % 16, ldm)] = f.x[e];
  }
}

// d = a b + c over the warp: every lane posts its parts of a and b, then
// computes its own elements of d from the whole tiles.
template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float* const tile_a = ::cnnkit::emulation::warp_scratch();
  float* const tile_b = tile_a + 256;
  const int first = detail::first_element();
  for (int e = 0; e < 8; ++e) {
    tile_a[first + e] = static_cast<float>(a.x[e]);
    tile_b[first + e] = static_cast<float>(b.x[e]);
  }
  ::cnnkit::emulation::sync_warp(0xffffffffu);
  for (int e = 0; e < 8; ++e) {
    const int m = (first + e) / 16, n = (first + e) % 16;
    float sum = c.x[e];
    for (int k = 0; k < 16; ++k) sum = std::fma(tile_a[m * 16 + k], tile_b[k * 16 + n], sum);
    d.x[e] = sum;
  }
  ::cnnkit::emulation::sync_warp(0xffffffffu);
}

}  // namespace nvcuda::wmma
