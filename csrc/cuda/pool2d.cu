// CUDA pooling kernels (SPEC 1.5): max, average and adaptive pooling of each
// (n, c) plane, and the channel max pool (Maxout), forward and backward. The
// behavioural reference is csrc/cpu/pool2d.cpp: same outputs, index values,
// memory formats and divisors.
//
// Layouts. Outputs and input gradients keep the input's memory format
// (suggest_memory_format), as the CPU and PyTorch do; other strides are made
// contiguous on the host.
//   NCHW: one thread per output element (forward) or per input element
//     (backward), consecutive threads on consecutive w (the contiguous axis),
//     so each warp reads and writes contiguous runs.
//   NHWC: one thread per (pixel, channel slot): `slots` threads share a pixel
//     (a multiple of 32, or C; more when the pixels are few), thread `slot`
//     taking channels slot, slot + slots, ...; the lanes of a warp read
//     consecutive channels (coalesced), and the pixel's geometry (its window,
//     or the windows covering it) is worked out once per thread rather than
//     once per channel.
//   Global pooling (adaptive to 1x1) is a reduction per plane: a lane group
//     per NCHW plane, a block per (image, 32 channels) in NHWC.
// Integer division by runtime sizes (P, Q, W, C, ...) goes through Divider: a
// multiply-high and a shift in the 32-bit index path, which keeps the index
// arithmetic well below the memory time of these bandwidth-bound kernels.
//
// Max pooling follows PyTorch's tie and NaN rule: a window is scanned in
// row-major order and a value replaces the running maximum when it is larger
// or NaN (so a NaN wins, the last one if several), otherwise the first maximal
// element stays. Indices are flat positions h * W + w within the input plane.
//
// Backward passes are gathers: every grad_input element is computed by one
// thread, which visits the output windows that can involve it and sums their
// contributions in output order (p, then q), so results are bit-identical from
// run to run; nothing is scattered and there are no atomics on data.
//   average / adaptive average: the windows covering (h, w) follow from the
//     geometry (an interval of p and one of q).
//   max (max_pool2d and adaptive_max_pool2d alike): the backward op gets the
//     indices but not the window geometry, so the windows that can point at an
//     input element are bounded from the indices themselves. A first kernel
//     reduces, over every valid index, how far its row lies from the reference
//     row r(p) = floor(p * H / P) of its output row (and likewise for columns):
//     reach [lo, hi]. An output row p can then only point into rows
//     [r(p) + lo, r(p) + hi], so input row h needs only the p with
//     r(p) in [h - hi, h - lo]: an interval, since r is non-decreasing. For
//     the ResNet and VGG pools these intervals are exactly the covering
//     windows; where window starts drift from r(p) (uneven sizes, dilation,
//     adaptive pooling to more outputs than inputs) they are wider, which
//     costs index compares, not correctness. The reduction is integer
//     min / max, whose result does not depend on the order of the atomics.
//     Indices outside [0, H * W) match no element and are skipped.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cuda/helpers.cuh"
#include "pool_ops.h"

namespace cnnkit::cuda {
namespace {

// A pooling problem in the index type of one launch, with the divisors its
// kernels need. The NHWC kernels give `slots` threads to each pixel.
template <typename index_t>
struct Geometry {
  index_t C, H, W, P, Q;
  index_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  bool count_include_pad;
  int64_t divisor_override;  // 0 = none
  index_t slots;
  Divider<index_t> by_C, by_H, by_W, by_P, by_Q, by_slots, by_stride_h, by_stride_w;
};

// Threads per pixel of the NHWC kernels: a multiple of 32 channel slots (or
// all C channels), the fewest that still give the device a few threads per
// core, so that the per-pixel geometry is shared by as many channels as
// possible without starving the device when the pixels are few.
int64_t channel_slots(int64_t C, int64_t pixels) {
  const int64_t wanted_threads = multiprocessor_count() * 2048 * 2;
  const int64_t per_pixel = ceil_div<int64_t>(wanted_threads, std::max<int64_t>(1, pixels));
  return std::min(C, ceil_div<int64_t>(std::max<int64_t>(32, per_pixel), 32) * 32);
}

// Built after the early return on empty tensors, so every divisor is positive
// (adaptive problems have no stride: theirs is unused). `slots`: see
// channel_slots (unused by the NCHW kernels).
template <typename index_t>
Geometry<index_t> make_geometry(const Pool2dProblem& pb, int64_t slots) {
  Geometry<index_t> g;
  g.C = pb.C; g.H = pb.H; g.W = pb.W; g.P = pb.P; g.Q = pb.Q;
  g.kernel_h = pb.kernel_h; g.kernel_w = pb.kernel_w;
  g.stride_h = pb.stride_h; g.stride_w = pb.stride_w;
  g.pad_h = pb.pad_h; g.pad_w = pb.pad_w;
  g.dilation_h = pb.dilation_h; g.dilation_w = pb.dilation_w;
  g.count_include_pad = pb.count_include_pad;
  g.divisor_override = pb.divisor_override;
  g.slots = static_cast<index_t>(slots);
  g.by_C = Divider<index_t>(pb.C);
  g.by_H = Divider<index_t>(pb.H);
  g.by_W = Divider<index_t>(pb.W);
  g.by_P = Divider<index_t>(pb.P);
  g.by_Q = Divider<index_t>(pb.Q);
  g.by_slots = Divider<index_t>(slots);
  g.by_stride_h = Divider<index_t>(std::max<int64_t>(1, pb.stride_h));
  g.by_stride_w = Divider<index_t>(std::max<int64_t>(1, pb.stride_w));
  return g;
}

// Whether 32-bit index arithmetic is exact for a problem: both tensors below
// 2^31 elements, and so the products the kernels form: adaptive window bounds
// ((o + 1) * size + out) and the reach intervals of the max backward
// (o * size, (i + 1) * out), both below (out + 1) * (size + 1), and window
// positions, below size + 2 * pad + kernel * dilation + stride.
bool pool_fits_int32(const Pool2dProblem& pb) {
  return fits_int32({pb.N * pb.C * pb.H * pb.W, pb.N * pb.C * pb.P * pb.Q,
                     (pb.P + 1) * (pb.H + 1), (pb.Q + 1) * (pb.W + 1),
                     pb.H + 2 * pb.pad_h + pb.kernel_h * pb.dilation_h + pb.stride_h,
                     pb.W + 2 * pb.pad_w + pb.kernel_w * pb.dilation_w + pb.stride_w});
}

// --------------------------------------------------------------------------- window geometry

template <typename T>
__device__ __forceinline__ T minus_infinity() {
  return -std::numeric_limits<T>::infinity();
}

// The running maximum (see the top of the file). best_at < 0 marks an empty
// window so far: the first tap inside the input is taken whatever its value,
// which is the CPU's start from -inf at the first tap's position.
template <typename acc, typename index_t>
__device__ __forceinline__ void update_max(acc& best, index_t& best_at, acc v, index_t at) {
  if (best_at < 0 || v > best || is_nan(v)) {
    best = v;
    best_at = at;
  }
}

// The taps of an average-type window along one axis that lie inside the input,
// [begin, end), and the factor `count` of its divisor.
template <typename index_t>
struct AxisWindow {
  index_t begin, end, count;
};

// Adaptive: window o of `out` covers [floor(o * size / out), ceil((o + 1) * size / out)).
// Average pooling: window o covers [o * stride - pad, o * stride - pad + kernel)
// of the padded input; count is the part inside the padded input
// (count_include_pad; a ceil_mode window may end beyond it) or inside the input.
template <bool kAdaptive, typename index_t>
__device__ __forceinline__ AxisWindow<index_t> axis_window(index_t o, index_t size,
                                                           const Divider<index_t>& by_out,
                                                           index_t kernel, index_t stride,
                                                           index_t pad, bool count_include_pad) {
  if constexpr (kAdaptive) {
    const index_t begin = by_out.div(o * size);
    const index_t end = by_out.div((o + 1) * size + by_out.value - 1);
    return {begin, end, end - begin};
  } else {
    const index_t start = o * stride - pad;
    const index_t begin = start > 0 ? start : index_t(0);
    const index_t end = start + kernel < size ? start + kernel : size;
    const index_t padded_end = start + kernel < size + pad ? start + kernel : size + pad;
    return {begin, end, count_include_pad ? padded_end - start : end - begin};
  }
}

// The windows along one axis that contain input i, [first, last] (empty when
// first > last): adaptive, o in [floor(i * out / size), floor(((i + 1) * out - 1) / size)];
// average pooling, o * stride - pad <= i <= o * stride - pad + kernel - 1.
template <bool kAdaptive, typename index_t>
__device__ __forceinline__ void covering_windows(index_t i, index_t size, index_t out,
                                                 const Divider<index_t>& by_size,
                                                 const Divider<index_t>& by_stride,
                                                 index_t kernel, index_t pad, index_t& first,
                                                 index_t& last) {
  if constexpr (kAdaptive) {
    first = by_size.div(i * out);
    last = by_size.div((i + 1) * out - 1);
  } else {
    const index_t lowest = i + pad - kernel + 1;  // o * stride >= lowest
    first = lowest <= 0 ? index_t(0) : by_stride.div(lowest + by_stride.value - 1);
    const index_t highest = by_stride.div(i + pad);
    last = highest < out - 1 ? highest : out - 1;
  }
}

// A window's sum divided as the CPU divides it: adaptive by its height, then
// its width; average pooling by divisor_override, or by the product of the
// counts (as a product of the two converted counts, as the CPU forms it).
template <bool kAdaptive, typename acc, typename index_t>
__device__ __forceinline__ acc average(acc sum, index_t rows, index_t cols,
                                       int64_t divisor_override) {
  if constexpr (kAdaptive) {
    return sum / static_cast<acc>(rows) / static_cast<acc>(cols);
  } else {
    if (divisor_override != 0) return sum / static_cast<acc>(divisor_override);
    return sum / (static_cast<acc>(rows) * static_cast<acc>(cols));
  }
}

// --------------------------------------------------------------------------- thread mapping

// The work of one thread of a pooling kernel over a grid of positions (y, x),
// Y x X per plane: the output grid (P, Q) for the forward kernels, the input
// grid (H, W) for the gathers.
//   NCHW: item = element (plane * Y + y) * X + x: one channel of one plane;
//   NHWC: item = pixel * slots + slot with pixel = (n * Y + y) * X + x: the
//     channels slot, slot + slots, ... < C of the pixel.
// Either way, element (position pos of the plane, channel c) of a tensor whose
// planes have plane_size positions is base(tensor, plane_size)[offset(pos, c)],
// and the item's own element of channel c in a tensor on its grid is at own(c).
// The NCHW strides and channel range are constants, so its loops over
// channels fold to the one channel.
template <bool kChannelsLast, typename index_t>
struct Item {
  index_t y, x;
  index_t image;  // NCHW: the plane n * C + c; NHWC: the image n
  index_t pixel;  // NCHW: the element; NHWC: the pixel
  index_t slot, C, slots;

  __device__ __forceinline__ index_t first_channel() const {
    if constexpr (kChannelsLast) return slot; else return 0;
  }
  __device__ __forceinline__ index_t channel_end() const {
    if constexpr (kChannelsLast) return C; else return 1;
  }
  __device__ __forceinline__ index_t channel_step() const {
    if constexpr (kChannelsLast) return slots; else return 1;
  }
  // Distance between two positions of one channel.
  __device__ __forceinline__ index_t position_stride() const {
    if constexpr (kChannelsLast) return C; else return 1;
  }
  template <typename T>
  __device__ __forceinline__ T* base(T* tensor, index_t plane_size) const {
    return tensor + image * plane_size * position_stride();
  }
  __device__ __forceinline__ index_t offset(index_t pos, index_t c) const {
    return pos * position_stride() + c;
  }
  __device__ __forceinline__ index_t own(index_t c) const { return pixel * position_stride() + c; }
};

// The item of grid-stride index `linear` on a grid of by_Y.value x by_X.value positions.
template <bool kChannelsLast, typename index_t>
__device__ __forceinline__ Item<kChannelsLast, index_t> item_at(int64_t linear,
                                                                const Geometry<index_t>& g,
                                                                const Divider<index_t>& by_Y,
                                                                const Divider<index_t>& by_X) {
  Item<kChannelsLast, index_t> it;
  it.C = g.C;
  it.slots = g.slots;
  if constexpr (kChannelsLast) {
    g.by_slots.divmod(static_cast<index_t>(linear), it.pixel, it.slot);
  } else {
    it.pixel = static_cast<index_t>(linear);
    it.slot = 0;
  }
  index_t rest;
  by_X.divmod(it.pixel, rest, it.x);
  by_Y.divmod(rest, it.image, it.y);
  return it;
}

// --------------------------------------------------------------------------- max pooling

// Square kernels of this size are unrolled at compile time (the ResNet and VGG
// pools), so the loads of a window are issued together; 0 = runtime size.
template <int kFixedKernel, typename index_t>
__device__ __forceinline__ index_t kernel_extent(index_t runtime) {
  return kFixedKernel > 0 ? static_cast<index_t>(kFixedKernel) : runtime;
}

// Max pooling: a thread per item of the output grid (see Item).
template <typename scalar_t, typename index_t, bool kChannelsLast, int kFixedKernel>
__global__ void __launch_bounds__(kThreads)
    max_pool_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                    int64_t* __restrict__ indices, const Geometry<index_t> g,
                    const index_t total) {
  using acc = acc_t<scalar_t>;
  const index_t kh = kernel_extent<kFixedKernel>(g.kernel_h);
  const index_t kw = kernel_extent<kFixedKernel>(g.kernel_w);
  CNNKIT_KERNEL_LOOP(linear, total) {
    const auto it = item_at<kChannelsLast>(linear, g, g.by_P, g.by_Q);
    const index_t h0 = it.y * g.stride_h - g.pad_h, w0 = it.x * g.stride_w - g.pad_w;
    const scalar_t* x = it.base(input, g.H * g.W);
    for (index_t c = it.first_channel(); c < it.channel_end(); c += it.channel_step()) {
      acc best = minus_infinity<acc>();
      index_t best_at = -1;
#pragma unroll
      for (index_t i = 0; i < kh; ++i) {
        const index_t h = h0 + i * g.dilation_h;
        if (h < 0 || h >= g.H) continue;
#pragma unroll
        for (index_t j = 0; j < kw; ++j) {
          const index_t w = w0 + j * g.dilation_w;
          if (w < 0 || w >= g.W) continue;
          const index_t at = h * g.W + w;
          update_max(best, best_at, static_cast<acc>(x[it.offset(at, c)]), at);
        }
      }
      output[it.own(c)] = static_cast<scalar_t>(best);
      indices[it.own(c)] = best_at;
    }
  }
}

// Adaptive max pooling: a thread per item of the output grid.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    adaptive_max_pool_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                             int64_t* __restrict__ indices, const Geometry<index_t> g,
                             const index_t total) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const auto it = item_at<kChannelsLast>(linear, g, g.by_P, g.by_Q);
    const auto rows =
        axis_window<true>(it.y, g.H, g.by_P, index_t(0), index_t(0), index_t(0), false);
    const auto cols =
        axis_window<true>(it.x, g.W, g.by_Q, index_t(0), index_t(0), index_t(0), false);
    const scalar_t* x = it.base(input, g.H * g.W);
    for (index_t c = it.first_channel(); c < it.channel_end(); c += it.channel_step()) {
      acc best = minus_infinity<acc>();
      index_t best_at = -1;
      for (index_t h = rows.begin; h < rows.end; ++h) {
        for (index_t w = cols.begin; w < cols.end; ++w) {
          const index_t at = h * g.W + w;
          update_max(best, best_at, static_cast<acc>(x[it.offset(at, c)]), at);
        }
      }
      output[it.own(c)] = static_cast<scalar_t>(best);
      indices[it.own(c)] = best_at;
    }
  }
}

// --------------------------------------------------------------------------- max pooling, backward

// reach[0..3], each the maximum over the valid indices (0 when there is none):
//   [0] dh + H, [1] H - dh, [2] dw + W, [3] W - dw,
// with dh = h - floor(p * H / P) for an index at input row h stored at output
// row p (dw likewise for columns). Encoded so that every value is positive and
// the zeroed buffer is the identity of an unsigned atomicMax.
constexpr int kReachValues = 4;

// Reach reduction: grid-stride over the index tensor in memory order (NCHW:
// e = (plane * P + p) * Q + q; NHWC: e = ((n * P + p) * Q + q) * C + c), a
// block-wide maximum, then one atomicMax per value and block.
template <typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    max_index_reach_kernel(const int64_t* __restrict__ indices, const Geometry<index_t> g,
                           const index_t total, unsigned long long* __restrict__ reach) {
  unsigned long long local[kReachValues] = {0, 0, 0, 0};
  const int64_t plane_size = static_cast<int64_t>(g.H) * g.W;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const index_t e = static_cast<index_t>(linear);
    const int64_t at = indices[e];
    if (at < 0 || at >= plane_size) continue;  // matches no input element
    const index_t position = kChannelsLast ? g.by_C.div(e) : e;  // (plane or n, p, q)
    index_t row, q, h, w;
    g.by_Q.divmod(position, row, q);
    const index_t p = row - g.by_P.div(row) * g.P;
    g.by_W.divmod(static_cast<index_t>(at), h, w);
    const int64_t dh = static_cast<int64_t>(h) - g.by_P.div(p * g.H);
    const int64_t dw = static_cast<int64_t>(w) - g.by_Q.div(q * g.W);
    const unsigned long long values[kReachValues] = {
        static_cast<unsigned long long>(dh + g.H), static_cast<unsigned long long>(g.H - dh),
        static_cast<unsigned long long>(dw + g.W), static_cast<unsigned long long>(g.W - dw)};
#pragma unroll
    for (int k = 0; k < kReachValues; ++k) local[k] = values[k] > local[k] ? values[k] : local[k];
  }
  // Every thread of the block gets here: the shuffles and the barrier are not
  // in divergent code.
  constexpr int kWarps = kThreads / 32;
  __shared__ unsigned long long warp_max[kWarps][kReachValues];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kReachValues; ++k) {
    for (int offset = 16; offset > 0; offset /= 2) {
      const unsigned long long other = __shfl_down_sync(0xffffffffu, local[k], offset);
      local[k] = other > local[k] ? other : local[k];
    }
    if (lane == 0) warp_max[warp][k] = local[k];
  }
  __syncthreads();
  if (threadIdx.x < kReachValues) {
    unsigned long long block_max = 0;
    for (int w = 0; w < kWarps; ++w) {
      const unsigned long long v = warp_max[w][threadIdx.x];
      block_max = v > block_max ? v : block_max;
    }
    if (block_max > 0) atomicMax(reach + threadIdx.x, block_max);
  }
}

// The reach as offsets: every valid index at output row p lies in input rows
// [floor(p * H / P) + row_lo, ... + row_hi] (columns likewise). With no valid
// index, lo = size > hi = -size: no window reaches anything.
struct Reach {
  int64_t row_lo, row_hi, col_lo, col_hi;
};

__device__ __forceinline__ Reach load_reach(const unsigned long long* reach, int64_t H,
                                            int64_t W) {
  return {H - static_cast<int64_t>(reach[1]), static_cast<int64_t>(reach[0]) - H,
          W - static_cast<int64_t>(reach[3]), static_cast<int64_t>(reach[2]) - W};
}

// The output windows o along one axis whose reference start r(o) =
// floor(o * size / out) lies in [i - hi, i - lo]: the only ones whose indices
// can point at input i. first = smallest o with r(o) >= a, i.e. o * size >= a * out;
// last = largest o with r(o) <= b, i.e. o * size < (b + 1) * out. Empty when
// first > last.
template <typename index_t>
__device__ __forceinline__ void reaching_windows(index_t i, int64_t lo, int64_t hi, index_t size,
                                                 index_t out, const Divider<index_t>& by_size,
                                                 index_t& first, index_t& last) {
  const int64_t a = static_cast<int64_t>(i) - hi, b = static_cast<int64_t>(i) - lo;
  if (a > b || a >= size || b < 0) {  // r(o) <= size - 1 < a, or r(o) >= 0 > b
    first = 1;
    last = 0;
    return;
  }
  first = a <= 0 ? index_t(0) : by_size.div(static_cast<index_t>(a) * out + size - 1);
  last = b >= size - 1 ? out - 1 : by_size.div(static_cast<index_t>(b + 1) * out - 1);
}

// Gather: a thread per item of the input grid; sums grad_output over the
// reaching windows whose index is h * W + w, in output order.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    max_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                             const int64_t* __restrict__ indices,
                             const unsigned long long* __restrict__ reach,
                             scalar_t* __restrict__ grad_input, const Geometry<index_t> g,
                             const index_t total) {
  using acc = acc_t<scalar_t>;
  const Reach r = load_reach(reach, g.H, g.W);
  CNNKIT_KERNEL_LOOP(linear, total) {
    const auto it = item_at<kChannelsLast>(linear, g, g.by_H, g.by_W);
    const index_t h = it.y, w = it.x;
    index_t p_first, p_last, q_first, q_last;
    reaching_windows(h, r.row_lo, r.row_hi, g.H, g.P, g.by_H, p_first, p_last);
    reaching_windows(w, r.col_lo, r.col_hi, g.W, g.Q, g.by_W, q_first, q_last);
    const int64_t target = static_cast<int64_t>(h * g.W + w);
    const scalar_t* go = it.base(grad_output, g.P * g.Q);
    const int64_t* ix = it.base(indices, g.P * g.Q);
    for (index_t c = it.first_channel(); c < it.channel_end(); c += it.channel_step()) {
      acc sum = 0;
      for (index_t p = p_first; p <= p_last; ++p) {
        for (index_t q = q_first; q <= q_last; ++q) {
          const index_t k = it.offset(p * g.Q + q, c);
          if (ix[k] == target) sum += static_cast<acc>(go[k]);
        }
      }
      grad_input[it.own(c)] = static_cast<scalar_t>(sum);
    }
  }
}

// --------------------------------------------------------------------------- average pooling

// Average and adaptive average pooling: a thread per item of the output grid;
// the window is summed row by row in acc_t.
template <bool kAdaptive, typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    avg_pool_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                    const Geometry<index_t> g, const index_t total) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const auto it = item_at<kChannelsLast>(linear, g, g.by_P, g.by_Q);
    const auto rows = axis_window<kAdaptive>(it.y, g.H, g.by_P, g.kernel_h, g.stride_h, g.pad_h,
                                             g.count_include_pad);
    const auto cols = axis_window<kAdaptive>(it.x, g.W, g.by_Q, g.kernel_w, g.stride_w, g.pad_w,
                                             g.count_include_pad);
    const scalar_t* x = it.base(input, g.H * g.W);
    for (index_t c = it.first_channel(); c < it.channel_end(); c += it.channel_step()) {
      acc sum = 0;
      for (index_t h = rows.begin; h < rows.end; ++h) {
        for (index_t w = cols.begin; w < cols.end; ++w) {
          sum += static_cast<acc>(x[it.offset(h * g.W + w, c)]);
        }
      }
      output[it.own(c)] = static_cast<scalar_t>(
          average<kAdaptive>(sum, rows.count, cols.count, g.divisor_override));
    }
  }
}

// --------------------------------------------------------------------------- global pooling

// Global pooling (adaptive to 1x1: a classifier head, typically N * C planes of
// 7 x 7) as a reduction per plane. A reduction is a policy: a State, the step
// `add` of one thread's scan over its elements (in increasing position), the
// `merge` of the states of two disjoint sets of elements, and `store`.
//
// Sum: merged in a fixed tree, so the result is the same on every run.
template <typename scalar_t, typename index_t>
struct GlobalSum {
  using acc = acc_t<scalar_t>;
  struct State {
    acc sum;
  };
  static __device__ __forceinline__ State identity() { return {acc(0)}; }
  static __device__ __forceinline__ void add(State& s, acc v, index_t) { s.sum += v; }
  static __device__ __forceinline__ State merge(State a, State b) { return {a.sum + b.sum}; }
  static __device__ __forceinline__ State shuffle_down(State s, int offset, int width) {
    return {__shfl_down_sync(0xffffffffu, s.sum, offset, width)};
  }
  // As adaptive pooling divides: by the height, then the width.
  static __device__ __forceinline__ void store(State s, scalar_t* output, int64_t*, int64_t o,
                                               index_t H, index_t W) {
    output[o] = static_cast<scalar_t>(s.sum / static_cast<acc>(H) / static_cast<acc>(W));
  }
};

// Max with its position. A scan gives its elements' last NaN if any, else their
// first maximal element (update_max); `merge` keeps exactly that over the
// union whatever the order of merging (a NaN beats a number and the later of
// two NaNs wins; else the larger value, ties to the earlier position), so the
// plane's result is the one of a row-major scan of the whole plane.
template <typename scalar_t, typename index_t>
struct GlobalMax {
  using acc = acc_t<scalar_t>;
  struct State {
    acc value;
    index_t at;  // -1: no element yet
  };
  static __device__ __forceinline__ State identity() { return {minus_infinity<acc>(), -1}; }
  static __device__ __forceinline__ void add(State& s, acc v, index_t at) {
    update_max(s.value, s.at, v, at);
  }
  static __device__ __forceinline__ State merge(State a, State b) {
    if (a.at < 0) return b;
    if (b.at < 0) return a;
    const bool a_nan = is_nan(a.value), b_nan = is_nan(b.value);
    if (a_nan && b_nan) return a.at > b.at ? a : b;
    if (a_nan || b_nan) return a_nan ? a : b;
    if (a.value != b.value) return a.value > b.value ? a : b;
    return a.at < b.at ? a : b;
  }
  static __device__ __forceinline__ State shuffle_down(State s, int offset, int width) {
    return {__shfl_down_sync(0xffffffffu, s.value, offset, width),
            __shfl_down_sync(0xffffffffu, s.at, offset, width)};
  }
  static __device__ __forceinline__ void store(State s, scalar_t* output, int64_t* indices,
                                               int64_t o, index_t, index_t) {
    output[o] = static_cast<scalar_t>(s.value);
    indices[o] = s.at;
  }
};

// NCHW planes: `group_lanes` (a power of two, the smallest >= H * W, at most
// 32) consecutive lanes of a warp share a plane; each scans the elements
// member, member + group_lanes, ... (together one coalesced pass over the
// contiguous plane), then a shuffle tree of fixed shape merges the group's
// states into its first lane. Warps stride over the plane groups uniformly,
// so every lane reaches the shuffles.
template <typename Reduction, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    global_pool_nchw_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                            int64_t* __restrict__ indices, const index_t planes, const index_t H,
                            const index_t W, const int group_lanes) {
  using acc = acc_t<scalar_t>;
  const index_t plane_size = H * W;
  const int lane = threadIdx.x % 32;
  const int group = lane / group_lanes, member = lane % group_lanes;
  const int groups_per_warp = 32 / group_lanes;
  const int64_t warps = ceil_div<int64_t>(planes, groups_per_warp);
  const int64_t warp_step = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32; warp < warps;
       warp += warp_step) {
    const int64_t plane = warp * groups_per_warp + group;
    auto state = Reduction::identity();
    if (plane < planes) {
      const scalar_t* x = input + static_cast<index_t>(plane) * plane_size;
      for (index_t i = member; i < plane_size; i += group_lanes) {
        Reduction::add(state, static_cast<acc>(x[i]), i);
      }
    }
    for (int offset = group_lanes / 2; offset > 0; offset /= 2) {
      state = Reduction::merge(state, Reduction::shuffle_down(state, offset, group_lanes));
    }
    if (member == 0 && plane < planes) Reduction::store(state, output, indices, plane, H, W);
  }
}

// NHWC images: a block takes (image n, 32 channels); its 8 warps each scan
// every 8th pixel with consecutive lanes on consecutive channels (coalesced),
// then warp 0's lanes merge the 8 states in slice order. Blocks stride over
// the tiles uniformly, so every thread reaches the barriers.
template <typename Reduction, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    global_pool_nhwc_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                            int64_t* __restrict__ indices, const index_t N, const index_t C,
                            const index_t H, const index_t W) {
  using acc = acc_t<scalar_t>;
  constexpr int kSlices = kThreads / 32;
  __shared__ typename Reduction::State partial[kSlices][32];
  const index_t plane_size = H * W;
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32;
  const int64_t channel_tiles = ceil_div<int64_t>(C, 32);
  const int64_t tiles = N * channel_tiles;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const index_t n = static_cast<index_t>(tile / channel_tiles);
    const index_t c = static_cast<index_t>(tile % channel_tiles) * 32 + lane;
    auto state = Reduction::identity();
    if (c < C) {
      const scalar_t* x = input + n * plane_size * C + c;
      for (index_t i = slice; i < plane_size; i += kSlices) {
        Reduction::add(state, static_cast<acc>(x[i * C]), i);
      }
    }
    partial[slice][lane] = state;
    __syncthreads();
    if (slice == 0 && c < C) {
      auto total = partial[0][lane];
      for (int s = 1; s < kSlices; ++s) total = Reduction::merge(total, partial[s][lane]);
      Reduction::store(total, output, indices, n * C + c, H, W);
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
}

// --------------------------------------------------------------------------- avg pooling, backward

// Average and adaptive average pooling, gather: a thread per item of the input
// grid; each covering window (p, q) contributes its gradient divided as in the
// forward, in output order (p, then q). NCHW sums along q per window row, then
// over the rows; NHWC adds every term to one running total (the row sum starts
// from it).
template <bool kAdaptive, typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    avg_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                             scalar_t* __restrict__ grad_input, const Geometry<index_t> g,
                             const index_t total) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const auto it = item_at<kChannelsLast>(linear, g, g.by_H, g.by_W);
    index_t p_first, p_last, q_first, q_last;
    covering_windows<kAdaptive>(it.y, g.H, g.P, g.by_H, g.by_stride_h, g.kernel_h, g.pad_h,
                                p_first, p_last);
    covering_windows<kAdaptive>(it.x, g.W, g.Q, g.by_W, g.by_stride_w, g.kernel_w, g.pad_w,
                                q_first, q_last);
    const scalar_t* go = it.base(grad_output, g.P * g.Q);
    for (index_t c = it.first_channel(); c < it.channel_end(); c += it.channel_step()) {
      acc sum = 0;
      for (index_t p = p_first; p <= p_last; ++p) {
        const index_t rows = axis_window<kAdaptive>(p, g.H, g.by_P, g.kernel_h, g.stride_h,
                                                    g.pad_h, g.count_include_pad).count;
        acc row_sum = kChannelsLast ? sum : acc(0);
        for (index_t q = q_first; q <= q_last; ++q) {
          const index_t cols = axis_window<kAdaptive>(q, g.W, g.by_Q, g.kernel_w, g.stride_w,
                                                      g.pad_w, g.count_include_pad).count;
          row_sum += average<kAdaptive>(static_cast<acc>(go[it.offset(p * g.Q + q, c)]), rows,
                                        cols, g.divisor_override);
        }
        sum = kChannelsLast ? row_sum : sum + row_sum;
      }
      grad_input[it.own(c)] = static_cast<scalar_t>(sum);
    }
  }
}

// Global average pooling, backward: every input element gets its plane's
// gradient / H / W. Thread per input element; the plane is e / (H * W) in NCHW,
// (n, c) = (e / (H * W * C), e % C) in NHWC.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    global_avg_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                    scalar_t* __restrict__ grad_input, const Divider<index_t> by_C,
                                    const Divider<index_t> by_image, const index_t H,
                                    const index_t W, const index_t total) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const index_t e = static_cast<index_t>(linear);
    index_t plane;
    if constexpr (kChannelsLast) {
      const index_t c = e - by_C.div(e) * by_C.value;
      plane = by_image.div(e) * by_C.value + c;  // by_image divides by H * W * C
    } else {
      plane = by_image.div(e);  // by_image divides by H * W
    }
    grad_input[e] = static_cast<scalar_t>(static_cast<acc>(grad_output[plane]) /
                                          static_cast<acc>(H) / static_cast<acc>(W));
  }
}

// --------------------------------------------------------------------------- channel max pool

// out[n, k, h, w] = max over c in [k * pool, (k + 1) * pool) of in[n, c, h, w];
// index = that c (same tie and NaN rule).
template <typename index_t>
struct ChannelGeometry {
  index_t HW, C, K, pool;
  Divider<index_t> by_HW, by_C, by_K, by_pool;
};

template <typename index_t>
ChannelGeometry<index_t> make_channel_geometry(const ChannelPoolProblem& pb) {
  ChannelGeometry<index_t> g;
  g.HW = pb.H * pb.W;
  g.C = pb.C;
  g.K = pb.out_channels();
  g.pool = pb.pool_size;
  g.by_HW = Divider<index_t>(pb.H * pb.W);
  g.by_C = Divider<index_t>(pb.C);
  g.by_K = Divider<index_t>(pb.out_channels());
  g.by_pool = Divider<index_t>(pb.pool_size);
  return g;
}

// A thread per output element. NCHW: o = (n * K + k) * HW + x, the group's
// planes HW apart (consecutive threads on consecutive x); NHWC: o = pixel * K + k,
// the group pool consecutive channels of the pixel.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    channel_max_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                       int64_t* __restrict__ indices, const ChannelGeometry<index_t> g,
                       const index_t total) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(linear, total) {
    const index_t o = static_cast<index_t>(linear);
    index_t c0, first, step;  // the group's first channel, its element, the channel stride
    if constexpr (kChannelsLast) {
      index_t pixel, k;
      g.by_K.divmod(o, pixel, k);
      c0 = k * g.pool;
      first = pixel * g.C + c0;
      step = 1;
    } else {
      index_t nk, x, n, k;
      g.by_HW.divmod(o, nk, x);
      g.by_K.divmod(nk, n, k);
      c0 = k * g.pool;
      first = (n * g.C + c0) * g.HW + x;
      step = g.HW;
    }
    const scalar_t* group = input + first;
    acc best = minus_infinity<acc>();
    index_t best_at = -1;
    for (index_t j = 0; j < g.pool; ++j) {
      update_max(best, best_at, static_cast<acc>(group[j * step]), c0 + j);
    }
    output[o] = static_cast<scalar_t>(best);
    indices[o] = best_at;
  }
}

// grad_input[n, c, h, w] = grad_output[n, k, h, w] where indices[n, k, h, w] == c,
// else 0 (k = c / pool): a thread per input element, e = (n * C + c) * HW + x
// (NCHW) or pixel * C + c (NHWC).
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    channel_max_backward_kernel(const scalar_t* __restrict__ grad_output,
                                const int64_t* __restrict__ indices,
                                scalar_t* __restrict__ grad_input,
                                const ChannelGeometry<index_t> g, const index_t total) {
  CNNKIT_KERNEL_LOOP(linear, total) {
    const index_t e = static_cast<index_t>(linear);
    index_t c, from;
    if constexpr (kChannelsLast) {
      index_t pixel;
      g.by_C.divmod(e, pixel, c);
      from = pixel * g.K + g.by_pool.div(c);
    } else {
      index_t nc, x, n;
      g.by_HW.divmod(e, nc, x);
      g.by_C.divmod(nc, n, c);
      from = (n * g.K + g.by_pool.div(c)) * g.HW + x;
    }
    grad_input[e] = indices[from] == c ? grad_output[from] : static_cast<scalar_t>(0);
  }
}

// --------------------------------------------------------------------------- host functions


// The square kernel size max_pool's kernels are unrolled for, or 0.
int fixed_kernel(const Pool2dProblem& pb) {
  if (pb.kernel_h != pb.kernel_w) return 0;
  return pb.kernel_h == 2 || pb.kernel_h == 3 ? static_cast<int>(pb.kernel_h) : 0;
}

// Calls body(layout) with layout = std::bool_constant<nhwc>: the kernels'
// kChannelsLast as a compile-time value.
template <typename Body>
void with_layout(bool nhwc, Body&& body) {
  if (nhwc) {
    body(std::true_type{});
  } else {
    body(std::false_type{});
  }
}

// Global pooling (adaptive to 1x1) of `input` with the reduction policy
// Reduction; `indices` may be null for reductions that store none.
template <template <typename, typename> class Reduction, typename scalar_t, typename index_t>
void launch_global_pool(bool nhwc, const scalar_t* in, scalar_t* out, int64_t* indices,
                        const Pool2dProblem& pb) {
  using R = Reduction<scalar_t, index_t>;
  const auto H = static_cast<index_t>(pb.H), W = static_cast<index_t>(pb.W);
  if (nhwc) {
    const int64_t tiles = pb.N * ceil_div<int64_t>(pb.C, 32);  // a block per tile
    CNNKIT_LAUNCH_OVER(tiles * kThreads, global_pool_nhwc_kernel<R, scalar_t, index_t>)(
        in, out, indices, static_cast<index_t>(pb.N), static_cast<index_t>(pb.C), H, W);
    CNNKIT_CHECK_LAUNCH();
  } else {
    int group_lanes = 1;
    while (group_lanes < 32 && group_lanes < pb.H * pb.W) group_lanes *= 2;
    const int64_t planes = pb.N * pb.C;
    const int64_t warps = ceil_div<int64_t>(planes, 32 / group_lanes);
    CNNKIT_LAUNCH_OVER(warps * 32, global_pool_nchw_kernel<R, scalar_t, index_t>)(
        in, out, indices, static_cast<index_t>(planes), H, W, group_lanes);
    CNNKIT_CHECK_LAUNCH();
  }
}

// Average and adaptive average pooling, forward.
template <bool kAdaptive>
void launch_avg_pool(const Pool2dProblem& pb, bool nhwc, const at::Tensor& x, at::Tensor& out) {
  const bool global = kAdaptive && pb.P == 1 && pb.Q == 1;
  CNNKIT_DISPATCH_CUDA_FLOATING(x.scalar_type(), "cnnkit.avg_pool2d", [&] {
    CNNKIT_DISPATCH_INDEX(pool_fits_int32(pb), [&] {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      if (global) {
        int64_t* no_indices = nullptr;
        launch_global_pool<GlobalSum, scalar_t, index_t>(nhwc, in, o, no_indices, pb);
      } else {
        const int64_t pixels = pb.N * pb.P * pb.Q;
        const int64_t slots = nhwc ? channel_slots(pb.C, pixels) : 1;
        const auto g = make_geometry<index_t>(pb, slots);
        const int64_t items = nhwc ? pixels * slots : out.numel();
        with_layout(nhwc, [&](auto layout) {
          CNNKIT_LAUNCH_OVER(
              items, avg_pool_kernel<kAdaptive, scalar_t, index_t, decltype(layout)::value>)(
              in, o, g, static_cast<index_t>(items));
          CNNKIT_CHECK_LAUNCH();
        });
      }
    });
  });
}

// Average and adaptive average pooling, backward (gathers).
template <bool kAdaptive>
void launch_avg_pool_backward(const Pool2dProblem& pb, bool nhwc, const at::Tensor& go,
                              at::Tensor& grad_input) {
  const bool global = kAdaptive && pb.P == 1 && pb.Q == 1;
  const int64_t total = grad_input.numel();
  CNNKIT_DISPATCH_CUDA_FLOATING(grad_input.scalar_type(), "cnnkit.avg_pool2d_backward", [&] {
    CNNKIT_DISPATCH_INDEX(pool_fits_int32(pb), [&] {
      const scalar_t* g_out = go.const_data_ptr<scalar_t>();
      scalar_t* g_in = grad_input.mutable_data_ptr<scalar_t>();
      const auto H = static_cast<index_t>(pb.H), W = static_cast<index_t>(pb.W);
      if (global && nhwc) {
        CNNKIT_LAUNCH_OVER(total, global_avg_pool_backward_kernel<scalar_t, index_t, true>)(
            g_out, g_in, Divider<index_t>(pb.C), Divider<index_t>(pb.H * pb.W * pb.C), H, W,
            static_cast<index_t>(total));
        CNNKIT_CHECK_LAUNCH();
      } else if (global) {
        CNNKIT_LAUNCH_OVER(total, global_avg_pool_backward_kernel<scalar_t, index_t, false>)(
            g_out, g_in, Divider<index_t>(pb.C), Divider<index_t>(pb.H * pb.W), H, W,
            static_cast<index_t>(total));
        CNNKIT_CHECK_LAUNCH();
      } else {
        const int64_t pixels = pb.N * pb.H * pb.W;
        const int64_t slots = nhwc ? channel_slots(pb.C, pixels) : 1;
        const auto g = make_geometry<index_t>(pb, slots);
        const int64_t items = nhwc ? pixels * slots : total;
        with_layout(nhwc, [&](auto layout) {
          CNNKIT_LAUNCH_OVER(
              items,
              avg_pool_backward_kernel<kAdaptive, scalar_t, index_t, decltype(layout)::value>)(
              g_out, g_in, g, static_cast<index_t>(items));
          CNNKIT_CHECK_LAUNCH();
        });
      }
    });
  });
}

// The CUDA backend of the ops in csrc/pool_ops.h: kernels run on the device
// of the input.
struct PoolBackend {
  using DeviceScope = cuda::DeviceScope;
  static constexpr auto empty_large = &cuda::empty_large;

  // Max and adaptive max pooling, forward.
  static void max_pool(const Pool2dProblem& pb, bool adaptive, bool nhwc, const at::Tensor& x,
                       at::Tensor& out, at::Tensor& index) {
    const bool global = adaptive && pb.P == 1 && pb.Q == 1;
    // NHWC: a thread per (output pixel, channel slot).
    const int64_t pixels = pb.N * pb.P * pb.Q;
    const int64_t slots = nhwc ? channel_slots(pb.C, pixels) : 1;
    const int64_t items = nhwc ? pixels * slots : out.numel();
    CNNKIT_DISPATCH_CUDA_FLOATING(x.scalar_type(), "cnnkit.max_pool2d", [&] {
      CNNKIT_DISPATCH_INDEX(pool_fits_int32(pb), [&] {
        const auto g = make_geometry<index_t>(pb, slots);
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        int64_t* ix = index.mutable_data_ptr<int64_t>();
        const index_t n = static_cast<index_t>(items);
        if (global) {
          launch_global_pool<GlobalMax, scalar_t, index_t>(nhwc, in, o, ix, pb);
          return;
        }
        with_layout(nhwc, [&](auto layout) {
          constexpr bool kNhwc = decltype(layout)::value;
          if (adaptive) {
            CNNKIT_LAUNCH_OVER(items, adaptive_max_pool_kernel<scalar_t, index_t, kNhwc>)(in, o, ix,
                                                                                          g, n);
            CNNKIT_CHECK_LAUNCH();
          } else if (fixed_kernel(pb) == 3) {
            CNNKIT_LAUNCH_OVER(items, max_pool_kernel<scalar_t, index_t, kNhwc, 3>)(in, o, ix, g,
                                                                                    n);
            CNNKIT_CHECK_LAUNCH();
          } else if (fixed_kernel(pb) == 2) {
            CNNKIT_LAUNCH_OVER(items, max_pool_kernel<scalar_t, index_t, kNhwc, 2>)(in, o, ix, g,
                                                                                    n);
            CNNKIT_CHECK_LAUNCH();
          } else {
            CNNKIT_LAUNCH_OVER(items, max_pool_kernel<scalar_t, index_t, kNhwc, 0>)(in, o, ix, g,
                                                                                    n);
            CNNKIT_CHECK_LAUNCH();
          }
        });
      });
    });
  }

  // Serves max_pool2d and adaptive_max_pool2d: the reach of the indices first
  // (see the top of the file), then the gather. The kernels raise no errors
  // (an index outside its plane matches no input pixel), so fn goes unused.
  static void max_pool_backward(const Pool2dProblem& pb, const char* /*fn*/, bool nhwc,
                                const at::Tensor& go, const at::Tensor& ix,
                                at::Tensor& grad_input) {
    const cudaStream_t stream = current_stream();
    auto reach = at::empty({kReachValues}, grad_input.options().dtype(at::kLong));
    auto* reach_values = reinterpret_cast<unsigned long long*>(reach.mutable_data_ptr<int64_t>());
    C10_CUDA_CHECK(cudaMemsetAsync(reach_values, 0, kReachValues * sizeof(int64_t), stream));
    const int64_t index_count = ix.numel();
    const int64_t pixels = pb.N * pb.H * pb.W;
    const int64_t slots = nhwc ? channel_slots(pb.C, pixels) : 1;
    const int64_t items = nhwc ? pixels * slots : grad_input.numel();
    CNNKIT_DISPATCH_INDEX(pool_fits_int32(pb), [&] {
      const auto g = make_geometry<index_t>(pb, slots);
      const int64_t* i = ix.const_data_ptr<int64_t>();
      // A streaming reduction: a few blocks per multiprocessor suffice, and each
      // block costs four atomics on the same words.
      const unsigned int reach_blocks = std::min<unsigned int>(
          grid_for(index_count), static_cast<unsigned int>(multiprocessor_count() * 4));
      with_layout(nhwc, [&](auto layout) {
        CNNKIT_LAUNCH(reach_blocks, kThreads, 0, stream,
                      max_index_reach_kernel<index_t, decltype(layout)::value>)(
            i, g, static_cast<index_t>(index_count), reach_values);
      });
      CNNKIT_CHECK_LAUNCH();
      CNNKIT_DISPATCH_CUDA_FLOATING(grad_input.scalar_type(), "cnnkit.max_pool2d_backward", [&] {
        const scalar_t* g_out = go.const_data_ptr<scalar_t>();
        scalar_t* g_in = grad_input.mutable_data_ptr<scalar_t>();
        with_layout(nhwc, [&](auto layout) {
          CNNKIT_LAUNCH_OVER(items,
                             max_pool_backward_kernel<scalar_t, index_t, decltype(layout)::value>)(
              g_out, i, static_cast<const unsigned long long*>(reach_values), g_in, g,
              static_cast<index_t>(items));
          CNNKIT_CHECK_LAUNCH();
        });
      });
    });
  }

  static void avg_pool(const Pool2dProblem& pb, bool adaptive, bool nhwc, const at::Tensor& x,
                       at::Tensor& out) {
    if (adaptive) {
      launch_avg_pool<true>(pb, nhwc, x, out);
    } else {
      launch_avg_pool<false>(pb, nhwc, x, out);
    }
  }

  static void avg_pool_backward(const Pool2dProblem& pb, bool adaptive, bool nhwc,
                                const at::Tensor& go, at::Tensor& grad_input) {
    if (adaptive) {
      launch_avg_pool_backward<true>(pb, nhwc, go, grad_input);
    } else {
      launch_avg_pool_backward<false>(pb, nhwc, go, grad_input);
    }
  }

  static void channel_max_pool(const ChannelPoolProblem& pb, bool nhwc, const at::Tensor& x,
                               at::Tensor& out, at::Tensor& index) {
    const int64_t total = out.numel();
    CNNKIT_DISPATCH_CUDA_FLOATING(x.scalar_type(), "cnnkit.channel_max_pool", [&] {
      CNNKIT_DISPATCH_INDEX(fits_int32({x.numel(), total}), [&] {
        const auto g = make_channel_geometry<index_t>(pb);
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        int64_t* ix = index.mutable_data_ptr<int64_t>();
        with_layout(nhwc, [&](auto layout) {
          CNNKIT_LAUNCH_OVER(total, channel_max_kernel<scalar_t, index_t, decltype(layout)::value>)(
              in, o, ix, g, static_cast<index_t>(total));
          CNNKIT_CHECK_LAUNCH();
        });
      });
    });
  }

  static void channel_max_pool_backward(const ChannelPoolProblem& pb, bool nhwc,
                                        const at::Tensor& go, const at::Tensor& ix,
                                        at::Tensor& grad_input) {
    const int64_t total = grad_input.numel();
    CNNKIT_DISPATCH_CUDA_FLOATING(grad_input.scalar_type(), "cnnkit.channel_max_pool_backward", [&] {
      CNNKIT_DISPATCH_INDEX(fits_int32({total, go.numel()}), [&] {
        const auto g = make_channel_geometry<index_t>(pb);
        const scalar_t* g_out = go.const_data_ptr<scalar_t>();
        const int64_t* i = ix.const_data_ptr<int64_t>();
        scalar_t* g_in = grad_input.mutable_data_ptr<scalar_t>();
        with_layout(nhwc, [&](auto layout) {
          CNNKIT_LAUNCH_OVER(
              total, channel_max_backward_kernel<scalar_t, index_t, decltype(layout)::value>)(
              g_out, i, g_in, g, static_cast<index_t>(total));
          CNNKIT_CHECK_LAUNCH();
        });
      });
    });
  }
};

}  // namespace
}  // namespace cnnkit::cuda

TORCH_LIBRARY_IMPL(CNNKIT_CUDA_LIBRARY, CNNKIT_CUDA_DISPATCH_KEY, m) {
  CNNKIT_REGISTER_POOL2D_OPS(m, cnnkit::cuda::PoolBackend);
}
