// Unshared (locally connected) convolution on CUDA, SPEC 1.3.
//
// Weight W (K, P, Q, C/g, R, S): output location l = (p, q) has its own matrix
// W_l (K x C/g*R*S), stored contiguously per (k, l). In a real layer (DeepFace:
// 16 -> 16 channels, 9x9 kernels, 55x55 outputs) the weights are hundreds of MB
// and the data tensors a few MB, so every kernel streams each weight element
// from global memory once per call and uses it for a whole block of samples.
//
// Forward and input gradient share one scheme. A block owns a tile of
// "points" on one row (4 output locations for the forward; 8 input pixels of
// one stride phase for the input gradient), 16 "channels" (output channels /
// input channels of one group) and NB = 4*TN samples. For each point the
// result is a small matrix product over a long reduction axis:
//
//   forward         Z[n, k @ l]    = b[k, l] + sum_{c,r,s} X[n, c, ih(p,r), iw(q,s)] W[k, l, c, r, s]
//   input gradient  dX[n, c @ h,w] = sum_{k,r,s valid} G[n, k, p(h,r), q(w,s)] W[k, p, q, c, r, s]
//
// The reduction runs in stages of whole kernel rows (forward: rows (c, r);
// input gradient: rows (k, r) with r one of the kernel rows that reach the
// tile's pixel row). Each stage stages in shared memory (as acc_t):
//   * the data window of the tile: for every row of the stage, the input row
//     (forward) or grad_output row (input gradient) it reads, over the
//     columns the tile's points read, for the NB samples: [row][column][sample];
//   * the weight "slabs" of the points: [point][tap][16 channels].
// Then every warp takes a share of the stage's taps for 4 points; a lane
// (point x 4 sample groups x 2 channel groups) accumulates a TN x 8 tile of
// one point, reading TN window values and 8 slab values per tap (vector
// loads whose values a warp shares among 2 to 8 lanes) for 8*TN multiply-adds.
// The warps that shared a point's taps add their partial tiles in a fixed
// order at the end. Each weight element belongs to exactly one (location, tap)
// of the forward and to exactly one input pixel of the input gradient, so
// either way it is loaded by exactly one block, once, and used there for all
// NB samples. Batches beyond 32 (and small layers, whose grid would leave SMs
// idle) split into sample blocks that are adjacent in the launch order, so
// they read the same weights at about the same time and all but the first
// find them in L2.
//
// The weight gradient dW[k, l, c, r, s] = sum_n G[n, k, l] X[n, c, ih, iw] is a
// reduction over the batch only: a block owns 4 consecutive locations (one per
// warp), 16 output channels and 128 consecutive (c, r, s) taps; a thread keeps
// 4 taps x 16 channels of one location in registers and sums over the samples
// in order, reading X from a shared input window and G from a shared tile.
// Every dW element is written once, by one thread, and a warp writes 32
// consecutive taps of one (k, l) at a time.
//
// Shapes whose stage does not fit the 48 KiB of dynamic shared memory (kernel
// widths of several dozen taps or huge strides) take simple direct kernels,
// one thread per output element. Everything is deterministic: no atomics, every
// sum in a fixed order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <type_traits>

#include "cuda/helpers.cuh"
#include "local_ops.h"
#include "problem.h"

namespace cnnkit::cuda {
namespace {

// ------------------------------------------------------------------ tiling

constexpr int kTileThreads = 128;  // 4 warps
constexpr int kChannelBlock = 16;  // channels per block; 8 per thread
constexpr int kWarpPoints = 4;     // points (locations / pixels) per warp
constexpr int64_t kSharedBudget = 48 * 1024;  // dynamic shared memory per block (no opt-in)
constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();

// Samples per thread for a batch of N: the smallest of 1, 2, 4, 8 whose block
// of 4*TN samples holds the batch, 8 beyond 16 samples.
inline int samples_per_thread(int64_t N) { return N > 8 ? (N > 16 ? 8 : 4) : (N > 4 ? 2 : 1); }

// Samples per thread for a launch of tiles(TN) blocks: as for the batch, but
// halved (more, smaller sample blocks, which read the same weights through L2)
// while the grid would leave the device short of two blocks per SM.
template <typename Tiles>
int samples_per_thread(int64_t N, Tiles&& tiles) {
  const int64_t enough = 2 * multiprocessor_count();
  int tn = samples_per_thread(N);
  while (tn > 1 && tiles(tn) < enough) tn /= 2;
  return tn;
}

// Resident blocks per SM the tiled kernels are compiled for: 4 (128 registers
// a thread) for float accumulation; 2 for double, whose 64 accumulators alone
// take 128 registers.
template <typename scalar_t>
constexpr int tile_blocks_per_sm = sizeof(acc_t<scalar_t>) == 8 ? 2 : 4;

// Shared-memory stride between window columns (NB samples each): chosen
// 4 * odd (mod 32), so that the loaders (4 samples x 8 columns per warp
// instruction) hit 32 distinct banks and the compute loop's vector reads of
// 4 consecutive columns spread over the banks.
template <int TN>
constexpr int sample_stride() {
  return (4 * TN) % 8 == 0 ? 4 * TN + 4 : 4 * TN;
}

// Shared-memory stride between the weight slabs of two points: at least
// taps * 16, and 8 (mod 32) so that the 4 points of a warp read different banks.
inline int64_t point_stride(int64_t taps) {
  return ceil_div<int64_t>(taps * kChannelBlock, 32) * 32 + 8;
}

// Elements of the shared scratch through which the warps that split one
// tile's taps sum their partial tiles (reduce_warp_splits).
constexpr int64_t kReduceScratch = 4 * 8 * 32;

// Offset of channel `ch` (< 16) of tap `t` in a point's weight slab. Channels
// are fastest, in four chunks of 4 whose order is XOR-permuted by bits 1-2 of
// the tap: a loader instruction (8 taps x 4 channels of one chunk) then hits
// 32 distinct banks, and each chunk is still one aligned vector for the
// compute loop.
__device__ __forceinline__ int slab_offset(int t, int ch) {
  return t * kChannelBlock + ((((ch >> 2) ^ (t >> 1)) & 3) << 2) + (ch & 3);
}

// Channel held in register j (< 8) by a thread of channel group cg (0 or 1):
// chunks cg and cg + 2 of the slab row.
__device__ __forceinline__ int channel_of(int cg, int j) {
  return ((cg + 2 * (j >> 2)) << 2) | (j & 3);
}

// dst[0, Count) = src[0, Count) from shared memory with the widest aligned
// vector loads; every caller passes an offset that is a multiple of Count
// (of 4 when Count > 4) elements from a 16-byte-aligned base.
template <int Count, typename T>
__device__ __forceinline__ void load_shared(const T* src, T* dst) {
  if constexpr (std::is_same_v<T, float> && Count % 4 == 0) {
#pragma unroll
    for (int i = 0; i < Count; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + i);
      dst[i] = v.x;
      dst[i + 1] = v.y;
      dst[i + 2] = v.z;
      dst[i + 3] = v.w;
    }
  } else if constexpr (std::is_same_v<T, float> && Count == 2) {
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
  } else if constexpr (std::is_same_v<T, double> && Count % 2 == 0) {
#pragma unroll
    for (int i = 0; i < Count; i += 2) {
      const double2 v = *reinterpret_cast<const double2*>(src + i);
      dst[i] = v.x;
      dst[i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Count; ++i) dst[i] = src[i];
  }
}

// The 8 channels of a thread of channel group cg for tap t of a weight slab.
template <typename T>
__device__ __forceinline__ void load_channels(const T* slab, int t, int cg, T (&b)[8]) {
  const T* row = slab + t * kChannelBlock;
  const int perm = (t >> 1) & 3;
  load_shared<4>(row + ((cg ^ perm) << 2), b);
  load_shared<4>(row + (((cg + 2) ^ perm) << 2), b + 4);
}

// One reduction step of a thread's TN x 8 tile: acc[i][j] += a[i] * b[j].
template <int TN, typename T>
__device__ __forceinline__ void outer_product_step(T (&acc)[TN][8], const T (&a)[TN],
                                                   const T (&b)[8]) {
#pragma unroll
  for (int i = 0; i < TN; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
  }
}

// Role of a lane in the compute loop: point (2 bits) x sample group (2 bits)
// x channel group (1 bit); and as a loader: 4 consecutive samples or channels
// (minor) x 8 consecutive columns or taps (major) per warp instruction.
struct LaneRole {
  int warp, lane, point, sample_group, channel_group, minor, major;
};

__device__ __forceinline__ LaneRole lane_role() {
  LaneRole me;
  me.warp = threadIdx.x >> 5;
  me.lane = threadIdx.x & 31;
  me.point = me.lane >> 3;
  me.sample_group = (me.lane >> 1) & 3;
  me.channel_group = me.lane & 1;
  me.minor = me.lane & 3;
  me.major = me.lane >> 2;
  return me;
}

// Mixed-radix digits of a linear tile index, least significant first: the
// tiled kernels number their tiles with the sample block fastest, so blocks
// adjacent in launch order share their weights.
struct TileDigits {
  int64_t rest;
  __device__ __forceinline__ int next(int radix) {
    const int digit = static_cast<int>(rest % radix);
    rest /= radix;
    return digit;
  }
  __device__ __forceinline__ int last() const { return static_cast<int>(rest); }
};

// Stages the data window of a stage for the NB = 4*TN samples n0 + [0, NB):
// window[i][u][sample] (column stride NBS, row stride width*NBS) = value at
// column col0 + u of row i of the sample, where row i starts at element
// row_offset(i) of each sample (sample_size elements) and is -1 for a row in
// the padding; 0 outside [0, cols), for padded rows and for samples past N.
// Warp w loads rows w, w + 4, ...; instruction = 4 samples x 8 consecutive
// columns.
template <int TN, typename scalar_t, typename acc, typename RowOffset>
__device__ __forceinline__ void load_window(const scalar_t* data, int64_t sample_size,
                                            int64_t n0, int64_t N, int rows, int width,
                                            int col0, int cols, const LaneRole& me,
                                            acc* window, RowOffset&& row_offset) {
  constexpr int NBS = sample_stride<TN>();
  for (int i = me.warp; i < rows; i += 4) {
    const int64_t offset = row_offset(i);
    acc* dst = window + i * width * NBS + me.minor;
#pragma unroll
    for (int quad = 0; quad < TN; ++quad) {
      const int64_t n = n0 + quad * 4 + me.minor;
      const bool row_ok = n < N && offset >= 0;
      const scalar_t* src = row_ok ? data + n * sample_size + offset : data;
      for (int u = me.major; u < width; u += 8) {
        const int col = col0 + u;
        dst[u * NBS + quad * 4] =
            (row_ok && col >= 0 && col < cols) ? static_cast<acc>(src[col]) : acc(0);
      }
    }
  }
}

// One tap of the compute loop: the thread's TN window values at x and its 8
// channels of tap t of its point's slab, multiplied into its TN x 8 tile.
template <int TN, typename T>
__device__ __forceinline__ void accumulate_tap(T (&sums)[TN][8], const T* x, const T* slab, int t,
                                               int channel_group) {
  T a[TN], b[8];
  load_shared<TN>(x, a);
  load_channels(slab, t, channel_group, b);
  outer_product_step(sums, a, b);
}

// The warps of a block are Splits x Groups: warp = split * Groups + group.
// The warps of one group hold partial TN x 8 tiles of the same outputs (each
// summed over its share of the taps); this adds them in split order through
// `scratch` (kReduceScratch elements) and calls emit(group, lane, i, j, total)
// for every output, spread over all threads. Starts and ends with the block
// in step (callers reach it after the barrier that ends their last stage).
template <int Groups, int Splits, int TN, typename T, typename Emit>
__device__ __forceinline__ void reduce_warp_splits(const T (&sums)[TN][8], T* scratch,
                                                   Emit&& emit) {
  static_assert(Groups * Splits * 32 == kTileThreads && Groups * Splits * 256 <= kReduceScratch);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < TN; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) scratch[(warp * 8 + j) * 32 + lane] = sums[i][j];
    __syncthreads();
    for (int e = threadIdx.x; e < Groups * 256; e += kTileThreads) {
      const int group = e >> 8, j = (e >> 5) & 7, l = e & 31;
      T total = scratch[(group * 8 + j) * 32 + l];
#pragma unroll
      for (int split = 1; split < Splits; ++split) {
        total += scratch[((split * Groups + group) * 8 + j) * 32 + l];
      }
      emit(group, l, i, j, total);
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------ forward

// Z[n, k, p, q] for a tile of 4 locations (output row p, columns q0 + [0, 4)),
// 16 output channels k0 + [0, 16) of group g and 4*TN samples. The reduction
// axis (c, r, s) runs in stages of whole kernel rows: stage = rows
// [cr0, cr0 + rows) of the flattened (c, r) axis, i.e. a contiguous run of
// rows*S taps of every W[k, l]. The stage's window holds, for each of its
// rows, input row (c, p*sh - ph + r*dh), columns q0*sw - pw + [0, ww); tap
// (i, s) of location j reads window row i, column j*sw + s*dw. The 4 warps
// split the stage's taps in quarters (each warp: all 4 locations) and their
// partial sums are added in warp order at the end.
struct ForwardPlan {
  int rows_per_stage;  // (c, r) rows per stage
  int window_w, point_stride;
  int q_tiles, k_blocks, n_blocks;
  int64_t tiles;
  int64_t shared_bytes;
};

template <typename scalar_t, int TN>
__global__ void __launch_bounds__(kTileThreads, tile_blocks_per_sm<scalar_t>)
    local_forward_tiled(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                        const scalar_t* __restrict__ bias, scalar_t* __restrict__ output,
                        const Conv2dProblem pb, const ForwardPlan plan) {
  using acc = acc_t<scalar_t>;
  constexpr int NB = 4 * TN, NBS = sample_stride<TN>();
  CNNKIT_DYNAMIC_SHARED(shared_bytes);
  acc* const slabs = reinterpret_cast<acc*>(shared_bytes);
  acc* const window = slabs + kWarpPoints * plan.point_stride;

  const LaneRole me = lane_role();
  const int C = pb.C, H = pb.H, W = pb.W, K = pb.K, R = pb.R, S = pb.S, P = pb.P, Q = pb.Q;
  const int Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int sh = pb.stride_h, sw = pb.stride_w, dh = pb.dilation_h, dw = pb.dilation_w;
  const int64_t N = pb.N, patch = pb.patch_size(), CHW = int64_t{C} * H * W;
  const int WW = plan.window_w, PS = plan.point_stride, rows_total = Cg * R;

  for (int64_t tile = blockIdx.x; tile < plan.tiles; tile += gridDim.x) {
    TileDigits digits{tile};
    const int nb = digits.next(plan.n_blocks), qt = digits.next(plan.q_tiles);
    const int p = digits.next(P), kb = digits.next(plan.k_blocks), g = digits.last();
    const int64_t n0 = int64_t{nb} * NB;
    const int q0 = qt * kWarpPoints, k0 = kb * kChannelBlock, iw0 = q0 * sw - pb.pad_w;

    acc sums[TN][8] = {};
    for (int cr0 = 0; cr0 < rows_total; cr0 += plan.rows_per_stage) {
      const int rows = min(plan.rows_per_stage, rows_total - cr0);
      const int taps = rows * S;

      // Input window: row i is input row (c, p*sh - ph + r*dh) for (c, r) =
      // row cr0 + i of the flattened axis.
      load_window<TN>(input, CHW, n0, N, rows, WW, iw0, W, me, window, [&](int i) -> int64_t {
        const int c = (cr0 + i) / R, r = cr0 + i - c * R;
        const int ih = p * sh - pb.pad_h + r * dh;
        return ih >= 0 && ih < H ? ((int64_t{g} * Cg + c) * H + ih) * W : -1;
      });

      // Weight slabs: warp w loads channels 4w + [0, 4) of the 4 locations;
      // instruction = 4 channels x 8 consecutive taps of one location.
      {
        const int ch = me.warp * 4 + me.minor, k = k0 + ch;
        const scalar_t* src[kWarpPoints];
        bool ok[kWarpPoints];
#pragma unroll
        for (int j = 0; j < kWarpPoints; ++j) {
          ok[j] = k < Kg && q0 + j < Q;
          src[j] = ok[j] ? weight + ((int64_t{g} * Kg + k) * P + p) * Q * patch +
                               (q0 + j) * patch + int64_t{cr0} * S
                         : weight;
        }
        // Small TN (a memory-bound batch): unrolled to keep more loads in flight.
#pragma unroll(TN <= 2 ? 4 : 1)
        for (int t = me.major; t < taps; t += 8) {
          acc v[kWarpPoints];
#pragma unroll
          for (int j = 0; j < kWarpPoints; ++j) v[j] = ok[j] ? static_cast<acc>(src[j][t]) : acc(0);
#pragma unroll
          for (int j = 0; j < kWarpPoints; ++j) slabs[j * PS + slab_offset(t, ch)] = v[j];
        }
      }
      __syncthreads();

      // Warp w: taps [w*span, (w+1)*span) in order (i, s); the window offset
      // of tap (i, s) is (i*WW + s*dw) * NBS from the thread's location.
      const int span = ceil_div(taps, 4), t_end = min(taps, (me.warp + 1) * span);
      int t = me.warp * span;
      if (t < t_end) {
        const acc* x_point = window + me.point * sw * NBS + me.sample_group * TN;
        const acc* slab = slabs + me.point * PS;
        int i = t / S, s = t - i * S;
        int x_offset = (i * WW + s * dw) * NBS;
        for (; t < t_end; ++t) {
          accumulate_tap(sums, x_point + x_offset, slab, t, me.channel_group);
          if (++s == S) {
            s = 0;
            ++i;
            x_offset = i * WW * NBS;
          } else {
            x_offset += dw * NBS;
          }
        }
      }
      __syncthreads();
    }

    reduce_warp_splits<1, 4>(sums, slabs, [&](int, int l, int i, int j, acc total) {
      const int q = q0 + (l >> 3), k = k0 + channel_of(l & 1, j);
      const int64_t n = n0 + ((l >> 1) & 3) * TN + i;
      if (q >= Q || k >= Kg || n >= N) return;
      const int64_t kabs = int64_t{g} * Kg + k;
      const int64_t unit = (kabs * P + p) * Q + q;
      if (bias != nullptr) total += static_cast<acc>(bias[unit]);
      output[((n * K + kabs) * P + p) * Q + q] = static_cast<scalar_t>(total);
    });
  }
}

// One thread per output element; for stages too large for shared memory.
template <typename scalar_t>
__global__ void local_forward_direct(const scalar_t* __restrict__ input,
                                     const scalar_t* __restrict__ weight,
                                     const scalar_t* __restrict__ bias,
                                     scalar_t* __restrict__ output, const Conv2dProblem pb) {
  using acc = acc_t<scalar_t>;
  const int64_t PQ = pb.P * pb.Q, Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int64_t patch = pb.patch_size();
  CNNKIT_KERNEL_LOOP(i, pb.N * pb.K * PQ) {
    const int64_t l = i % PQ, k = (i / PQ) % pb.K, n = i / (PQ * pb.K);
    const int64_t p = l / pb.Q, q = l % pb.Q, g = k / Kg;
    const scalar_t* w = weight + (k * PQ + l) * patch;
    acc sum = bias != nullptr ? static_cast<acc>(bias[k * PQ + l]) : acc(0);
    for (int64_t c = 0; c < Cg; ++c) {
      const scalar_t* x = input + (n * pb.C + g * Cg + c) * pb.H * pb.W;
      for (int64_t r = 0; r < pb.R; ++r) {
        const int64_t ih = pb.input_row(p, r);
        if (ih < 0 || ih >= pb.H) continue;
        for (int64_t s = 0; s < pb.S; ++s) {
          const int64_t iw = pb.input_col(q, s);
          if (iw < 0 || iw >= pb.W) continue;
          sum += static_cast<acc>(w[(c * pb.R + r) * pb.S + s]) *
                 static_cast<acc>(x[ih * pb.W + iw]);
        }
      }
    }
    output[i] = static_cast<scalar_t>(sum);
  }
}

// The most rows (at most rows_total) of a stage whose shared_bytes(rows) fit
// the shared-memory budget; 0 when not even one row does.
template <typename SharedBytes>
int64_t rows_that_fit(int64_t rows_total, SharedBytes&& shared_bytes) {
  for (int64_t rows = rows_total; rows >= 1; --rows) {
    if (shared_bytes(rows) <= kSharedBudget) return rows;
  }
  return 0;
}

int64_t forward_tiles(const Conv2dProblem& pb, int tn) {
  return ceil_div<int64_t>(pb.N, 4 * tn) * ceil_div<int64_t>(pb.Q, kWarpPoints) * pb.P *
         ceil_div<int64_t>(pb.group_out_channels(), kChannelBlock) * pb.groups;
}

// The largest stage (in whole (c, r) rows) that fits shared memory; nullopt
// when not even one kernel row does.
template <int TN>
std::optional<ForwardPlan> forward_plan(const Conv2dProblem& pb, int64_t acc_size) {
  const int64_t NBS = sample_stride<TN>();
  const int64_t window_w = (kWarpPoints - 1) * pb.stride_w + (pb.S - 1) * pb.dilation_w + 1;
  const auto shared_bytes = [&](int64_t rows) {
    const int64_t stage = kWarpPoints * point_stride(rows * pb.S) + rows * window_w * NBS;
    return std::max(stage, kReduceScratch) * acc_size;
  };
  const int64_t rows_total = std::max<int64_t>(1, pb.group_in_channels() * pb.R);
  const int64_t fit = rows_that_fit(rows_total, shared_bytes);
  if (fit == 0) return std::nullopt;
  ForwardPlan plan;
  plan.rows_per_stage = static_cast<int>(fit);
  plan.window_w = static_cast<int>(window_w);
  plan.point_stride = static_cast<int>(point_stride(fit * pb.S));
  plan.q_tiles = static_cast<int>(ceil_div<int64_t>(pb.Q, kWarpPoints));
  plan.k_blocks = static_cast<int>(ceil_div<int64_t>(pb.group_out_channels(), kChannelBlock));
  plan.n_blocks = static_cast<int>(ceil_div<int64_t>(pb.N, 4 * TN));
  plan.tiles = forward_tiles(pb, TN);
  plan.shared_bytes = shared_bytes(fit);
  return plan;
}

template <typename scalar_t, int TN>
void launch_forward(const Conv2dProblem& pb, const scalar_t* x, const scalar_t* w,
                    const scalar_t* b, scalar_t* out) {
  const auto plan = forward_plan<TN>(pb, sizeof(acc_t<scalar_t>));
  if (!plan) {
    CNNKIT_LAUNCH(grid_for(pb.N * pb.K * pb.P * pb.Q), kThreads, 0, current_stream(),
                  local_forward_direct<scalar_t>)(x, w, b, out, pb);
  } else {
    const auto blocks = static_cast<unsigned int>(std::min(plan->tiles, kMaxBlocks));
    CNNKIT_LAUNCH(blocks, kTileThreads, plan->shared_bytes, current_stream(),
                  local_forward_tiled<scalar_t, TN>)(x, w, b, out, pb, *plan);
  }
  CNNKIT_CHECK_LAUNCH();
}

// ------------------------------------------------------------------ input gradient

// The kernel taps of one axis that reach a tile's pixels x0 + i*stride
// (i < extent) with an output index in range: taps first + m*step for
// m < count, where tap m reaches pixel i from output index out_first - m*delta + i.
struct TapRange {
  int first, count, out_first;
};

// A tap t reaches pixel x from output index (x + pad - t*dil) / stride when
// that is an integer; the taps for which it is form a progression of step
// stride/gcd(stride, dil), along which the output index falls by dil/gcd.
// Kept: the taps whose output index reaches at least one of the tile's pixels
// inside [0, out_size).
__device__ __forceinline__ TapRange tap_range(int x0, int pad, int stride, int dil, int taps,
                                              int step, int delta, int out_size, int extent) {
  TapRange range{0, 0, 0};
  int first = -1;
  for (int t = 0; t < min(taps, step) && first < 0; ++t) {
    if ((x0 + pad - t * dil) % stride == 0) first = t;
  }
  if (first < 0) return range;
  const int all = (taps - first + step - 1) / step;
  const int out0 = (x0 + pad - first * dil) / stride;
  // out0 - m*delta <= out_size - 1 and out0 - m*delta + extent - 1 >= 0.
  const int m_lo = static_cast<int>(
      std::max<int64_t>(0, -floor_div(-(int64_t{out0} - (out_size - 1)), delta)));
  const int m_hi = static_cast<int>(
      std::min<int64_t>(all - 1, floor_div(int64_t{out0} + extent - 1, delta)));
  if (m_hi < m_lo) return range;
  range.first = first + m_lo * step;
  range.count = m_hi - m_lo + 1;
  range.out_first = out0 - m_lo * delta;
  return range;
}

// dX for a tile of 8 input pixels of one stride phase (row h, columns
// w0 + j*sw for j < 8), 16 input channels c0 + [0, 16) of group g and 4*TN
// samples. The tile's pixels reach kernel row r_m from output row p_m
// (m < nR) and kernel column s_m' from output column q_m' + j (m' < nS), so
// the reduction axis is (k, m, m'); it runs in stages of whole rows: stage =
// rows [kr0, kr0 + rows) of the flattened (k, m) axis. The stage's window
// holds, for each of its rows, grad_output row (k, p_m), columns
// q_min + [0, gw); tap (i, m') of pixel j reads window row i, column
// (nS-1-m')*dq + j, and W[k, p_m, q_m' + j, c, r_m, s_m'], which the slab of
// pixel j holds at tap i*nS + m'. Warp w computes pixels 4*(w%2) + [0, 4)
// over half w/2 of the stage's taps; the two halves are added at the end.
struct InputPlan {
  int rows_per_stage;  // (k, m) rows per stage
  int window_w_max, point_stride;
  int r_step, p_delta, s_step, q_delta;  // progressions of the valid taps
  int h_rows, w_tiles, c_blocks, n_blocks;
  int64_t tiles;
  int64_t shared_bytes;
};

constexpr int kInputPixels = 2 * kWarpPoints;  // pixels per block

template <typename scalar_t, int TN>
__global__ void __launch_bounds__(kTileThreads, tile_blocks_per_sm<scalar_t>)
    local_input_backward_tiled(const scalar_t* __restrict__ grad_output,
                               const scalar_t* __restrict__ weight,
                               scalar_t* __restrict__ grad_input, const Conv2dProblem pb,
                               const InputPlan plan) {
  using acc = acc_t<scalar_t>;
  constexpr int NB = 4 * TN, NBS = sample_stride<TN>();
  CNNKIT_DYNAMIC_SHARED(shared_bytes);
  acc* const slabs = reinterpret_cast<acc*>(shared_bytes);
  acc* const window = slabs + kInputPixels * plan.point_stride;
  // runs[v] = first << 16 | count: the taps m' = first + [0, count) read
  // window column v, for pixel j = v - (nS-1-m')*dq of the tile.
  int* const runs = reinterpret_cast<int*>(window + plan.rows_per_stage * plan.window_w_max * NBS);

  const LaneRole me = lane_role();
  const int C = pb.C, H = pb.H, W = pb.W, K = pb.K, R = pb.R, S = pb.S, P = pb.P, Q = pb.Q;
  const int Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int sh = pb.stride_h, sw = pb.stride_w;
  const int64_t N = pb.N, patch = pb.patch_size(), RS = int64_t{R} * S, KPQ = int64_t{K} * P * Q;
  const int dp = plan.p_delta, dq = plan.q_delta, PS = plan.point_stride;
  const int pixel = (me.warp & 1) * kWarpPoints + me.point, half = me.warp >> 1;

  for (int64_t tile = blockIdx.x; tile < plan.tiles; tile += gridDim.x) {
    TileDigits digits{tile};
    const int nb = digits.next(plan.n_blocks), wt = digits.next(plan.w_tiles);
    const int hi = digits.next(plan.h_rows), phase_w = digits.next(sw), phase_h = digits.next(sh);
    const int cb = digits.next(plan.c_blocks), g = digits.last();
    const int h = phase_h + sh * hi, w0 = phase_w + sw * kInputPixels * wt;
    if (h >= H || w0 >= W) continue;  // a phase with fewer pixels than the others
    const int64_t n0 = int64_t{nb} * NB;
    const int c0 = cb * kChannelBlock;

    const TapRange rr = tap_range(h, pb.pad_h, sh, pb.dilation_h, R, plan.r_step, dp, P, 1);
    const TapRange sr =
        tap_range(w0, pb.pad_w, sw, pb.dilation_w, S, plan.s_step, dq, Q, kInputPixels);
    const int nR = rr.count, nS = sr.count;
    const int gw = (nS - 1) * dq + kInputPixels;
    const int q_min = sr.out_first - (nS - 1) * dq;
    const int rows_total = nS > 0 ? Kg * nR : 0;

    // Window column v is read by pixel j = v - mm*dq through tap m' = nS-1-mm,
    // for mm in [ceil((v-7)/dq), floor(v/dq)] within [0, nS).
    for (int v = threadIdx.x; v < (nS > 0 ? gw : 0); v += kTileThreads) {
      const int mm_hi = min(nS - 1, v / dq);
      const int mm_lo = v > kInputPixels - 1 ? (v - (kInputPixels - 1) + dq - 1) / dq : 0;
      runs[v] = mm_hi >= mm_lo ? ((nS - 1 - mm_hi) << 16) | (mm_hi - mm_lo + 1) : 0;
    }
    __syncthreads();

    acc sums[TN][8] = {};
    for (int kr0 = 0; kr0 < rows_total; kr0 += plan.rows_per_stage) {
      const int rows = min(plan.rows_per_stage, rows_total - kr0);
      const int taps = rows * nS;

      // grad_output window: row i is grad_output row (k, p_m) for (k, m) =
      // row kr0 + i of the flattened axis (p_m is always in range).
      load_window<TN>(grad_output, KPQ, n0, N, rows, gw, q_min, Q, me, window,
                      [&](int i) -> int64_t {
                        const int k = (kr0 + i) / nR, m = kr0 + i - k * nR;
                        return ((int64_t{g} * Kg + k) * P + rr.out_first - m * dp) * Q;
                      });

      // Weight slabs, gathered per (row i, location column v): lanes = 4
      // channels x the run of up to 8 valid kernel columns of location
      // (p_m, q_min + v), i.e. runs of W[k, p, q, c, r, :].
      for (int i = 0; i < rows; ++i) {
        const int k = (kr0 + i) / nR, m = kr0 + i - k * nR;
        const int r = rr.first + m * plan.r_step, pp = rr.out_first - m * dp;
        const scalar_t* location_row =
            weight + ((int64_t{g} * Kg + k) * P + pp) * Q * patch + int64_t{r} * S;
#pragma unroll(TN <= 2 ? 2 : 1)
        for (int v = me.warp; v < gw; v += 4) {
          const int run = runs[v];
          if (me.major >= (run & 0xffff)) continue;
          const int ms = (run >> 16) + me.major;
          const int j = v - (nS - 1 - ms) * dq;
          const int q = q_min + v;
          const int t = i * nS + ms;
          const bool ok = q >= 0 && q < Q;
          const scalar_t* src = ok ? location_row + q * patch + sr.first + ms * plan.s_step : weight;
          acc* dst = slabs + j * PS;
#pragma unroll
          for (int chunk = 0; chunk < 4; ++chunk) {
            const int ch = chunk * 4 + me.minor;
            const int c = c0 + ch;
            dst[slab_offset(t, ch)] = (ok && c < Cg) ? static_cast<acc>(src[c * RS]) : acc(0);
          }
        }
      }
      __syncthreads();

      // Taps of this warp's half in order (i, m'); the window offset of tap
      // (i, m') is (i*gw + (nS-1-m')*dq) * NBS from the thread's pixel.
      const int span = ceil_div(taps, 2), t_end = min(taps, (half + 1) * span);
      int t = half * span;
      if (t < t_end) {
        const acc* x_pixel = window + pixel * NBS + me.sample_group * TN;
        const acc* slab = slabs + pixel * PS;
        int i = t / nS, ms = t - i * nS;
        int x_offset = (i * gw + (nS - 1 - ms) * dq) * NBS;
        for (; t < t_end; ++t) {
          accumulate_tap(sums, x_pixel + x_offset, slab, t, me.channel_group);
          if (++ms == nS) {
            ms = 0;
            ++i;
            x_offset = (i * gw + (nS - 1) * dq) * NBS;
          } else {
            x_offset -= dq * NBS;
          }
        }
      }
      __syncthreads();
    }

    reduce_warp_splits<2, 2>(sums, slabs, [&](int group, int l, int i, int j, acc total) {
      const int w = w0 + (group * kWarpPoints + (l >> 3)) * sw, c = c0 + channel_of(l & 1, j);
      const int64_t n = n0 + ((l >> 1) & 3) * TN + i;
      if (w >= W || c >= Cg || n >= N) return;
      grad_input[((n * C + int64_t{g} * Cg + c) * H + h) * W + w] = static_cast<scalar_t>(total);
    });
  }
}

// One thread per input-gradient element; for stages too large for shared memory.
template <typename scalar_t>
__global__ void local_input_backward_direct(const scalar_t* __restrict__ grad_output,
                                            const scalar_t* __restrict__ weight,
                                            scalar_t* __restrict__ grad_input,
                                            const Conv2dProblem pb) {
  using acc = acc_t<scalar_t>;
  const int64_t PQ = pb.P * pb.Q, HW = pb.H * pb.W;
  const int64_t Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int64_t patch = pb.patch_size();
  CNNKIT_KERNEL_LOOP(i, pb.N * pb.C * HW) {
    const int64_t w = i % pb.W, h = (i / pb.W) % pb.H, cabs = (i / HW) % pb.C, n = i / (HW * pb.C);
    const int64_t g = cabs / Cg, c = cabs % Cg;
    acc sum = 0;
    for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k) {
      for (int64_t r = 0; r < pb.R; ++r) {
        const int64_t ph = h + pb.pad_h - r * pb.dilation_h;
        if (ph < 0 || ph % pb.stride_h != 0 || ph / pb.stride_h >= pb.P) continue;
        const int64_t p = ph / pb.stride_h;
        for (int64_t s = 0; s < pb.S; ++s) {
          const int64_t qw = w + pb.pad_w - s * pb.dilation_w;
          if (qw < 0 || qw % pb.stride_w != 0 || qw / pb.stride_w >= pb.Q) continue;
          const int64_t l = p * pb.Q + qw / pb.stride_w;
          sum += static_cast<acc>(weight[(k * PQ + l) * patch + (c * pb.R + r) * pb.S + s]) *
                 static_cast<acc>(grad_output[(n * pb.K + k) * PQ + l]);
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

int64_t input_tiles(const Conv2dProblem& pb, int tn) {
  return ceil_div<int64_t>(pb.N, 4 * tn) *
         ceil_div<int64_t>(ceil_div(pb.W, pb.stride_w), kInputPixels) *
         ceil_div(pb.H, pb.stride_h) * pb.stride_w * pb.stride_h *
         ceil_div<int64_t>(pb.group_in_channels(), kChannelBlock) * pb.groups;
}

template <int TN>
std::optional<InputPlan> input_plan(const Conv2dProblem& pb, int64_t acc_size) {
  const int64_t NBS = sample_stride<TN>();
  const int64_t gcd_h = std::gcd(pb.stride_h, pb.dilation_h);
  const int64_t gcd_w = std::gcd(pb.stride_w, pb.dilation_w);
  const int64_t r_step = pb.stride_h / gcd_h, s_step = pb.stride_w / gcd_w;
  const int64_t p_delta = pb.dilation_h / gcd_h, q_delta = pb.dilation_w / gcd_w;
  const int64_t cols_max = ceil_div(pb.S, s_step);
  const int64_t window_w = (cols_max - 1) * q_delta + kInputPixels;
  const auto shared_bytes = [&](int64_t rows) {
    const int64_t stage = kInputPixels * point_stride(rows * cols_max) + rows * window_w * NBS;
    return std::max(stage, kReduceScratch) * acc_size +
           window_w * static_cast<int64_t>(sizeof(int));
  };
  const int64_t rows_total = std::max<int64_t>(1, pb.group_out_channels() * ceil_div(pb.R, r_step));
  const int64_t fit = rows_that_fit(rows_total, shared_bytes);
  if (fit == 0) return std::nullopt;
  InputPlan plan;
  plan.rows_per_stage = static_cast<int>(fit);
  plan.window_w_max = static_cast<int>(window_w);
  plan.point_stride = static_cast<int>(point_stride(fit * cols_max));
  plan.r_step = static_cast<int>(r_step);
  plan.p_delta = static_cast<int>(p_delta);
  plan.s_step = static_cast<int>(s_step);
  plan.q_delta = static_cast<int>(q_delta);
  plan.h_rows = static_cast<int>(ceil_div(pb.H, pb.stride_h));
  plan.w_tiles = static_cast<int>(ceil_div<int64_t>(ceil_div(pb.W, pb.stride_w), kInputPixels));
  plan.c_blocks = static_cast<int>(ceil_div<int64_t>(pb.group_in_channels(), kChannelBlock));
  plan.n_blocks = static_cast<int>(ceil_div<int64_t>(pb.N, 4 * TN));
  plan.tiles = input_tiles(pb, TN);
  plan.shared_bytes = shared_bytes(fit);
  return plan;
}

template <typename scalar_t, int TN>
void launch_input_backward(const Conv2dProblem& pb, const scalar_t* g, const scalar_t* w,
                           scalar_t* grad_input) {
  const auto plan = input_plan<TN>(pb, sizeof(acc_t<scalar_t>));
  if (!plan) {
    CNNKIT_LAUNCH(grid_for(pb.N * pb.C * pb.H * pb.W), kThreads, 0, current_stream(),
                  local_input_backward_direct<scalar_t>)(g, w, grad_input, pb);
  } else {
    const auto blocks = static_cast<unsigned int>(std::min(plan->tiles, kMaxBlocks));
    CNNKIT_LAUNCH(blocks, kTileThreads, plan->shared_bytes, current_stream(),
                  local_input_backward_tiled<scalar_t, TN>)(g, w, grad_input, pb, *plan);
  }
  CNNKIT_CHECK_LAUNCH();
}

// ------------------------------------------------------------------ weight gradient

constexpr int kGradTapsPerThread = 4;
constexpr int kGradTaps = 32 * kGradTapsPerThread;  // taps of one block (a warp's lanes x 4)
constexpr int kGradLocations = 4;                   // consecutive locations of one block (a warp each)

// Block = (output row p, locations q0 + [0, 4), output channels k0 + [0, 16),
// taps j0 + [0, 128) of the (c, r, s) axis). Lane l of warp w owns taps
// j0 + l + 32*i (i < 4) of location q0 + w for all 16 channels. Samples run in
// stages of up to 32: the stage's input window, [sample][row][column] with one
// row per (c, r) the block's taps touch and the columns of the 4 locations,
// and its grad_output tile, [location][sample][16 channels].
struct WeightPlan {
  int chunks, q_tiles, k_blocks;
  int samples_per_stage, rows_max, window_w;
  int64_t tiles;
  int64_t shared_bytes;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads, tile_blocks_per_sm<scalar_t>)
    local_weight_backward_tiled(const scalar_t* __restrict__ grad_output,
                                const scalar_t* __restrict__ input,
                                scalar_t* __restrict__ grad_weight, const Conv2dProblem pb,
                                const WeightPlan plan) {
  using acc = acc_t<scalar_t>;
  CNNKIT_DYNAMIC_SHARED(shared_bytes);
  // Offset of input row (c, r) of sample 0 in the input, -1 outside.
  int64_t* const row_offset = reinterpret_cast<int64_t*>(shared_bytes);
  acc* const grads = reinterpret_cast<acc*>(row_offset + plan.rows_max);
  acc* const window = grads + kGradLocations * plan.samples_per_stage * kChannelBlock;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int C = pb.C, H = pb.H, W = pb.W, K = pb.K, R = pb.R, S = pb.S, P = pb.P, Q = pb.Q;
  const int Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int64_t N = pb.N, patch = pb.patch_size(), CHW = int64_t{C} * H * W;
  const int WW = plan.window_w, sample_size = plan.rows_max * WW;
  const int samples = plan.samples_per_stage;

  for (int64_t tile = blockIdx.x; tile < plan.tiles; tile += gridDim.x) {
    TileDigits digits{tile};
    const int chunk = digits.next(plan.chunks), qt = digits.next(plan.q_tiles);
    const int p = digits.next(P), kb = digits.next(plan.k_blocks), g = digits.last();
    const int64_t j0 = int64_t{chunk} * kGradTaps;
    const int taps = static_cast<int>(std::min<int64_t>(kGradTaps, patch - j0));
    const int64_t cr0 = j0 / S;
    const int rows = static_cast<int>((j0 + taps - 1) / S - cr0 + 1);
    const int q0 = qt * kGradLocations, k0 = kb * kChannelBlock;
    const int iw0 = q0 * pb.stride_w - pb.pad_w;

    for (int row = threadIdx.x; row < rows; row += kTileThreads) {
      const int64_t cr = cr0 + row;
      const int64_t c = cr / R, r = cr % R;
      const int64_t ih = int64_t{p} * pb.stride_h - pb.pad_h + r * pb.dilation_h;
      row_offset[row] = ih >= 0 && ih < H ? ((int64_t{g} * Cg + c) * H + ih) * W : -1;
    }
    // Window offsets of the thread's taps (row, column of location q0 + warp).
    int tap_offset[kGradTapsPerThread];
#pragma unroll
    for (int i = 0; i < kGradTapsPerThread; ++i) {
      const int jl = lane + 32 * i;
      const int64_t j = j0 + jl;
      const int row = static_cast<int>(j / S - cr0), s = static_cast<int>(j % S);
      tap_offset[i] = jl < taps ? row * WW + warp * pb.stride_w + s * pb.dilation_w : 0;
    }
    __syncthreads();

    acc sums[kGradTapsPerThread][kChannelBlock] = {};
    for (int64_t n_begin = 0; n_begin < N; n_begin += samples) {
      const int count = static_cast<int>(std::min<int64_t>(samples, N - n_begin));
      // grad_output tile: consecutive threads take consecutive locations.
      for (int e = threadIdx.x; e < kGradLocations * kChannelBlock * count; e += kTileThreads) {
        const int loc = e & 3, k = (e >> 2) & 15, n = e >> 6;
        const int q = q0 + loc, kk = k0 + k;
        grads[(loc * samples + n) * kChannelBlock + k] =
            q < Q && kk < Kg
                ? static_cast<acc>(
                      grad_output[(((n_begin + n) * K + int64_t{g} * Kg + kk) * P + p) * Q + q])
                : acc(0);
      }
      // Input window: warp = samples, instruction = 4 rows x 8 consecutive columns.
      for (int n = warp; n < count; n += 4) {
        const scalar_t* x = input + (n_begin + n) * CHW;
        for (int row = lane >> 3; row < rows; row += 4) {
          const int64_t offset = row_offset[row];
          acc* dst = window + n * sample_size + row * WW;
          for (int u = lane & 7; u < WW; u += 8) {
            const int iw = iw0 + u;
            dst[u] = offset >= 0 && iw >= 0 && iw < W ? static_cast<acc>(x[offset + iw]) : acc(0);
          }
        }
      }
      __syncthreads();

      for (int n = 0; n < count; ++n) {
        acc gk[kChannelBlock], xv[kGradTapsPerThread];
        load_shared<kChannelBlock>(grads + (warp * samples + n) * kChannelBlock, gk);
        const acc* xn = window + n * sample_size;
#pragma unroll
        for (int i = 0; i < kGradTapsPerThread; ++i) xv[i] = xn[tap_offset[i]];
#pragma unroll
        for (int i = 0; i < kGradTapsPerThread; ++i) {
#pragma unroll
          for (int k = 0; k < kChannelBlock; ++k) sums[i][k] += xv[i] * gk[k];
        }
      }
      __syncthreads();
    }

    const int q = q0 + warp;
    if (q < Q) {
#pragma unroll
      for (int k = 0; k < kChannelBlock; ++k) {
        if (k0 + k >= Kg) continue;
        scalar_t* dst =
            grad_weight + ((int64_t{g} * Kg + k0 + k) * P + p) * Q * patch + q * patch + j0;
#pragma unroll
        for (int i = 0; i < kGradTapsPerThread; ++i) {
          const int jl = lane + 32 * i;
          if (jl < taps) dst[jl] = static_cast<scalar_t>(sums[i][k]);
        }
      }
    }
  }
}

// One thread per weight-gradient element; for windows too large for shared memory.
template <typename scalar_t>
__global__ void local_weight_backward_direct(const scalar_t* __restrict__ grad_output,
                                             const scalar_t* __restrict__ input,
                                             scalar_t* __restrict__ grad_weight,
                                             const Conv2dProblem pb) {
  using acc = acc_t<scalar_t>;
  const int64_t PQ = pb.P * pb.Q, patch = pb.patch_size();
  const int64_t Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  CNNKIT_KERNEL_LOOP(i, pb.K * PQ * patch) {
    const int64_t j = i % patch, l = (i / patch) % PQ, k = i / (patch * PQ);
    const int64_t s = j % pb.S, r = (j / pb.S) % pb.R, c = j / (pb.R * pb.S);
    const int64_t ih = pb.input_row(l / pb.Q, r), iw = pb.input_col(l % pb.Q, s);
    acc sum = 0;
    if (ih >= 0 && ih < pb.H && iw >= 0 && iw < pb.W) {
      const int64_t x_offset = ((k / Kg) * Cg + c) * pb.H * pb.W + ih * pb.W + iw;
      for (int64_t n = 0; n < pb.N; ++n) {
        sum += static_cast<acc>(grad_output[(n * pb.K + k) * PQ + l]) *
               static_cast<acc>(input[n * pb.C * pb.H * pb.W + x_offset]);
      }
    }
    grad_weight[i] = static_cast<scalar_t>(sum);
  }
}

std::optional<WeightPlan> weight_plan(const Conv2dProblem& pb, int64_t acc_size) {
  // Rows (c, r) touched by 128 consecutive taps, even so that the acc arrays
  // after the int64 row table stay 16-byte aligned.
  const int64_t rows = std::min(pb.group_in_channels() * pb.R, (kGradTaps - 1) / pb.S + 2);
  const int64_t rows_max = ceil_div<int64_t>(rows, 2) * 2;
  const int64_t window_w = (kGradLocations - 1) * pb.stride_w + (pb.S - 1) * pb.dilation_w + 1;
  const int64_t fixed = rows_max * static_cast<int64_t>(sizeof(int64_t));
  const int64_t per_sample = (rows_max * window_w + kGradLocations * kChannelBlock) * acc_size;
  const int64_t samples = std::min<int64_t>({32, pb.N, (kSharedBudget - fixed) / per_sample});
  if (samples < 1) return std::nullopt;
  WeightPlan plan;
  plan.chunks = static_cast<int>(ceil_div<int64_t>(pb.patch_size(), kGradTaps));
  plan.q_tiles = static_cast<int>(ceil_div<int64_t>(pb.Q, kGradLocations));
  plan.k_blocks = static_cast<int>(ceil_div<int64_t>(pb.group_out_channels(), kChannelBlock));
  plan.samples_per_stage = static_cast<int>(samples);
  plan.rows_max = static_cast<int>(rows_max);
  plan.window_w = static_cast<int>(window_w);
  plan.tiles = int64_t{plan.chunks} * plan.q_tiles * pb.P * plan.k_blocks * pb.groups;
  plan.shared_bytes = fixed + samples * per_sample;
  return plan;
}

template <typename scalar_t>
void launch_weight_backward(const Conv2dProblem& pb, const scalar_t* g, const scalar_t* x,
                            scalar_t* grad_weight) {
  const auto plan = weight_plan(pb, sizeof(acc_t<scalar_t>));
  if (!plan) {
    CNNKIT_LAUNCH(grid_for(pb.K * pb.P * pb.Q * pb.patch_size()), kThreads, 0, current_stream(),
                  local_weight_backward_direct<scalar_t>)(g, x, grad_weight, pb);
  } else {
    const auto blocks = static_cast<unsigned int>(std::min(plan->tiles, kMaxBlocks));
    CNNKIT_LAUNCH(blocks, kTileThreads, plan->shared_bytes, current_stream(),
                  local_weight_backward_tiled<scalar_t>)(g, x, grad_weight, pb, *plan);
  }
  CNNKIT_CHECK_LAUNCH();
}

// ------------------------------------------------------------------ bias gradient

// db[u] = sum_n G[n, u] for every output unit u = (k, p, q): one thread per
// unit, samples in order, reads coalesced across the threads.
template <typename scalar_t>
__global__ void local_bias_backward_kernel(const scalar_t* __restrict__ grad_output,
                                           scalar_t* __restrict__ grad_bias, int64_t N,
                                           int64_t units) {
  using acc = acc_t<scalar_t>;
  CNNKIT_KERNEL_LOOP(u, units) {
    acc sum = 0;
    for (int64_t n = 0; n < N; ++n) sum += static_cast<acc>(grad_output[n * units + u]);
    grad_bias[u] = static_cast<scalar_t>(sum);
  }
}

// ------------------------------------------------------------------ host functions

// Calls body.template operator()<TN>() for tn in {1, 2, 4, 8}.
template <typename Body>
void dispatch_samples_per_thread(int tn, Body&& body) {
  switch (tn) {
    case 1: body.template operator()<1>(); break;
    case 2: body.template operator()<2>(); break;
    case 4: body.template operator()<4>(); break;
    default: body.template operator()<8>(); break;
  }
}

// The CUDA backend of the ops in csrc/local_ops.h: kernels run on the device
// of the op's first tensor.
struct LocalBackend {
  using DeviceScope = cuda::DeviceScope;
  static constexpr auto empty_large = &cuda::empty_large;

  static void local_forward(const Conv2dProblem& pb, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, at::Tensor& out) {
    const int tn = samples_per_thread(pb.N, [&](int t) { return forward_tiles(pb, t); });
    CNNKIT_DISPATCH_CUDA_FLOATING(x.scalar_type(), "cnnkit_local_conv2d_cuda", [&] {
      dispatch_samples_per_thread(tn, [&]<int TN>() {
        launch_forward<scalar_t, TN>(pb, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                     b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                     out.mutable_data_ptr<scalar_t>());
      });
    });
  }

  static void local_input_backward(const Conv2dProblem& pb, const at::Tensor& g,
                                   const at::Tensor& w, at::Tensor& grad_input) {
    const int tn = samples_per_thread(pb.N, [&](int t) { return input_tiles(pb, t); });
    CNNKIT_DISPATCH_CUDA_FLOATING(g.scalar_type(), "cnnkit_local_conv2d_input_backward_cuda", [&] {
      dispatch_samples_per_thread(tn, [&]<int TN>() {
        launch_input_backward<scalar_t, TN>(pb, g.const_data_ptr<scalar_t>(),
                                            w.const_data_ptr<scalar_t>(),
                                            grad_input.mutable_data_ptr<scalar_t>());
      });
    });
  }

  static void local_weight_backward(const Conv2dProblem& pb, const at::Tensor& g,
                                    const at::Tensor& x, at::Tensor& grad_weight) {
    CNNKIT_DISPATCH_CUDA_FLOATING(x.scalar_type(), "cnnkit_local_conv2d_weight_backward_cuda", [&] {
      launch_weight_backward<scalar_t>(pb, g.const_data_ptr<scalar_t>(),
                                       x.const_data_ptr<scalar_t>(),
                                       grad_weight.mutable_data_ptr<scalar_t>());
    });
  }

  static void local_bias_backward(const at::Tensor& g, at::Tensor& grad_bias) {
    const int64_t N = g.size(0), units = grad_bias.numel();
    CNNKIT_DISPATCH_CUDA_FLOATING(g.scalar_type(), "cnnkit_local_conv2d_bias_backward_cuda", [&] {
      CNNKIT_LAUNCH(grid_for(units), kThreads, 0, current_stream(),
                    local_bias_backward_kernel<scalar_t>)(
          g.const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), N, units);
      CNNKIT_CHECK_LAUNCH();
    });
  }
};

}  // namespace
}  // namespace cnnkit::cuda

TORCH_LIBRARY_IMPL(CNNKIT_CUDA_LIBRARY, CNNKIT_CUDA_DISPATCH_KEY, m) {
  CNNKIT_REGISTER_LOCAL_CONV2D_OPS(m, cnnkit::cuda::LocalBackend);
}
