// The CUDA-core convolution kernels' shared parts: the problem's geometry in
// 32-bit coordinates, the implicit-GEMM core (tile shapes, the double-buffered
// main loop, gathers, the epilogue), slice reductions and launch plans, and the
// passes built on them, each in a file of its own (conv2d_forward.cu,
// conv2d_input_backward.cu, conv2d_weight_backward.cu, conv2d_depthwise.cu).
// conv2d.cu's engine chooses between them and the tensor-core kernels of
// conv2d_tensor_core.cu.
//
// float32 / float64 run implicit-GEMM kernels on CUDA cores: the unfolded
// matrix is never written to global memory; each block gathers its slice of
// it straight into shared memory. One block computes a BM x BN tile of the
// GEMM with 256 threads in a 16 x 16 grid, each thread a TM x TN register
// micro-tile (8 x 8 for the largest tile); the K dimension is walked BK
// columns at a time through two shared-memory buffers: the global loads of
// step k+1 are issued into registers before the products of step k, and stored
// to the other buffer after them, so one __syncthreads() per step suffices.
//
//   forward          rows m = output pixels (n, i, j) of one phase, columns =
//                    output channels of one group, K = (c, r, s)
//   input gradient   rows m = input pixels of one residue class (below),
//                    columns = input channels of one group, K = (k, r, s) over
//                    the taps that reach the class
//   weight gradient  rows = (c, r, s), columns = output channels, K = output
//                    pixels (n, i, j) of one phase, split in slices
//
// Thread-to-row mapping: the thread with tx = threadIdx.x % 16 owns rows
// tx*TM/2 + [0, TM/2) and BM/2 + tx*TM/2 + [0, TM/2) of the tile, and
// ty = threadIdx.x / 16 owns the columns likewise, so that the sixteen lanes
// of a half warp cover 8*TM consecutive rows. In every pass the rows are the
// dimension that is contiguous in the output: where the layout allows (dense,
// row count a multiple of TM/2) each thread stores its TM/2 rows as one
// vector and a half warp writes 16*TM/2 contiguous elements; otherwise the
// TM/2 scalar stores of a half warp together fill the same sectors.
//
// Input gradient without wasted products: with stride s (times the tile for a
// tiled problem, S' = s*t), input row h receives output row p through tap r
// only where h + pad - r*d is a multiple of s. Which taps those are depends
// only on h mod s, and which weight tile p % t uses depends only on h mod S'.
// So the input pixels are split into S'h x S'w residue classes; each class is
// a GEMM over exactly its taps, reading each tap's weight tile, and sums the
// contributions of every tile phase in one fixed-order reduction. The classes
// partition the input: every pixel is written exactly once, no accumulation.
//
// Depthwise convolution (groups == C, no tiles) has little arithmetic per byte
// and runs on its own direct kernels, for all four dtypes. float16 / bfloat16
// otherwise go to the tensor-core kernels of conv2d_tensor_core.cu.
//
// Determinism: no atomics anywhere. Every output element is reduced by one
// thread in a fixed order, or in fixed slices whose partial sums are added in
// slice order by a second kernel. The slices depend on the problem alone; the
// tile shape, chosen per GPU, changes no summation order.
//
// Index types: the GEMM kernels keep coordinates (rows, columns, channels) in
// 32-bit integers, which make_geometry guarantees cannot overflow, and form
// every offset into a tensor in 64 bits. Those offsets are computed once per
// K-step per thread (amortised over BK*TM*TN multiply-adds) or once per tile,
// so 64-bit arithmetic costs little there and one kernel serves every size.
// The memory-bound depthwise, bias and reduction kernels do index arithmetic
// per element and are instantiated for int32 and int64 (CNNKIT_DISPATCH_INDEX).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <type_traits>

#include "cuda/helpers.cuh"
#include "problem.h"

namespace cnnkit::cuda::conv {

// ------------------------------------------------------------------ geometry

// The convolution in 32-bit coordinates, with the two plane sizes in 64 bits.
struct Geometry {
  int N, C, H, W, K, P, Q, R, S;
  int pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  int tile_h, tile_w, groups, Cg, Kg;
  int64_t HW, PQ;
  const char* op;  // for messages: the op's name
};

// Every coordinate sum the kernels form (p*stride - pad + r*dilation, a row
// plus a negative sentinel, a class row times the class stride) stays below
// 2^31 in magnitude when each term is below 2^29. GEMM reduction lengths
// (C/G*R*S, K/G*R*S) stay below 2^30 so that tile counters cannot overflow.
constexpr int64_t kCoordinateLimit = int64_t{1} << 29;
constexpr int64_t kPatchLimit = int64_t{1} << 30;

inline bool below_limit(std::initializer_list<int64_t> values) {
  return std::all_of(values.begin(), values.end(),
                     [](int64_t v) { return v >= 0 && v < kCoordinateLimit; });
}

inline Geometry make_geometry(const Conv2dProblem& pb) {
  const int64_t Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  bool fits = below_limit({pb.N, pb.C, pb.H, pb.W, pb.K, pb.P, pb.Q, pb.R, pb.S, pb.pad_h,
                           pb.pad_w, pb.stride_h, pb.stride_w, pb.dilation_h, pb.dilation_w,
                           pb.tile_h, pb.tile_w, pb.groups});
  fits = fits && below_limit({pb.stride_h * pb.tile_h, pb.stride_w * pb.tile_w,
                              pb.dilation_h * (pb.R - 1) + 1, pb.dilation_w * (pb.S - 1) + 1});
  fits = fits && pb.R * pb.S <= kPatchLimit && Cg <= kPatchLimit / (pb.R * pb.S) &&
         Kg <= kPatchLimit / (pb.R * pb.S);
  TORCH_CHECK(fits,
              pb.op, ": the CUDA convolution kernels need every size, padding, stride (times the "
              "tile), dilation and dilated kernel extent below 2^29 and C/groups*kH*kW, "
              "C_out/groups*kH*kW below 2^30, but got N=", pb.N, ", C=", pb.C, ", H=", pb.H,
              ", W=", pb.W, ", C_out=", pb.K, ", kernel ", pb.R, "x", pb.S, ", output ", pb.P, "x",
              pb.Q, ", padding (", pb.pad_h, ", ", pb.pad_w, "), stride (", pb.stride_h, ", ",
              pb.stride_w, "), dilation (", pb.dilation_h, ", ", pb.dilation_w, "), tiles (",
              pb.tile_h, ", ", pb.tile_w, "), groups=", pb.groups);
  Geometry g;
  g.N = static_cast<int>(pb.N); g.C = static_cast<int>(pb.C);
  g.H = static_cast<int>(pb.H); g.W = static_cast<int>(pb.W);
  g.K = static_cast<int>(pb.K); g.P = static_cast<int>(pb.P); g.Q = static_cast<int>(pb.Q);
  g.R = static_cast<int>(pb.R); g.S = static_cast<int>(pb.S);
  g.pad_h = static_cast<int>(pb.pad_h); g.pad_w = static_cast<int>(pb.pad_w);
  g.stride_h = static_cast<int>(pb.stride_h); g.stride_w = static_cast<int>(pb.stride_w);
  g.dilation_h = static_cast<int>(pb.dilation_h); g.dilation_w = static_cast<int>(pb.dilation_w);
  g.tile_h = static_cast<int>(pb.tile_h); g.tile_w = static_cast<int>(pb.tile_w);
  g.groups = static_cast<int>(pb.groups);
  g.op = pb.op;
  g.Cg = static_cast<int>(Cg); g.Kg = static_cast<int>(Kg);
  g.HW = pb.H * pb.W;
  g.PQ = pb.P * pb.Q;
  return g;
}

inline bool is_depthwise(const Conv2dProblem& pb) {
  return pb.groups == pb.C && pb.phase_count() == 1;
}

inline bool is_half_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

CNNKIT_HOST_DEVICE int floor_mod(int x, int m) {
  const int r = x % m;
  return r < 0 ? r + m : r;
}

// A walk over the cells (n, i, j) of an (n, rows, cols) grid in flattened
// order l = (n*rows + i)*cols + j, advanced by a fixed step without division:
// the step is split once as step = dn*rows*cols + di*cols + dj with di < rows
// and dj < cols, so each carry is a single conditional subtraction. Walks
// output pixels (n, i, j) and the GEMM K indices (c, r, s) / (k, ri, si).
struct GridStep {
  int dn, di, dj;
};

CNNKIT_HOST_DEVICE GridStep grid_step(int64_t step, int rows, int cols) {
  const int64_t plane = int64_t{rows} * cols;
  return {static_cast<int>(step / plane), static_cast<int>((step / cols) % rows),
          static_cast<int>(step % cols)};
}

struct GridCursor {
  int n, i, j;

  // rows * cols must be positive.
  __device__ __forceinline__ void seek(int64_t l, int rows, int cols) {
    const int64_t plane = int64_t{rows} * cols;
    const int64_t nn = l / plane;
    const int64_t rem = l - nn * plane;
    n = static_cast<int>(nn);
    i = static_cast<int>(rem / cols);
    j = static_cast<int>(rem - int64_t{i} * cols);
  }

  __device__ __forceinline__ void advance(const GridStep& step, int rows, int cols) {
    j += step.dj;
    if (j >= cols) {
      j -= cols;
      ++i;
    }
    i += step.di;
    if (i >= rows) {
      i -= rows;
      ++n;
    }
    n += step.dn;
  }
};

// Sum over the kThreads threads of a block, in a fixed order; the result is
// valid in thread 0. Every thread of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  constexpr int kWarps = kThreads / 32;
  __shared__ T warp_sums[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : T(0);
    for (int offset = kWarps / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset);
    }
  }
  return v;
}

// Split reductions (weight and bias gradients) aim at this many blocks: a few
// waves on any current GPU. A constant rather than the device's SM count, so
// that the split, and with it the rounding, is the same on every GPU.
constexpr int64_t kSplitTargetBlocks = 512;

// How many slices to cut a reduction of `length` terms per output into, for
// `outputs` independent outputs: about kSplitTargetBlocks blocks, each slice
// at least `min_per_slice` terms, at most 65535 slices.
inline int64_t slice_count(int64_t outputs, int64_t length, int64_t min_per_slice) {
  const int64_t wanted = ceil_div<int64_t>(kSplitTargetBlocks, std::max<int64_t>(1, outputs));
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(65535, length / min_per_slice));
  return std::clamp<int64_t>(wanted, 1, most);
}

// out[e] = sum over s in [0, slices) of partial[s*count + e], added in slice order.
template <typename scalar_t, typename index_t>
__global__ void sum_slices_kernel(const acc_t<scalar_t>* __restrict__ partial,
                                  scalar_t* __restrict__ out, int slices, int64_t count) {
  CNNKIT_KERNEL_LOOP(i, count) {
    const index_t e = i;
    const index_t n = count;
    acc_t<scalar_t> sum = partial[e];
    for (int s = 1; s < slices; ++s) sum += partial[s * n + e];
    out[e] = static_cast<scalar_t>(sum);
  }
}

// `partial` (slices, count) in the accumulation type -> `out` (count).
inline void sum_slices(const at::Tensor& partial, at::Tensor& out, int64_t slices, int64_t count) {
  CNNKIT_DISPATCH_CUDA_FLOATING(out.scalar_type(), "cnnkit_sum_slices", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({slices * count}), [&] {
      CNNKIT_LAUNCH(grid_for(count), kThreads, 0, current_stream(),
                    sum_slices_kernel<scalar_t, index_t>)(partial.const_data_ptr<acc_t<scalar_t>>(),
                                                          out.mutable_data_ptr<scalar_t>(),
                                                          static_cast<int>(slices), count);
      CNNKIT_CHECK_LAUNCH();
    });
  });
}

// ------------------------------------------------------------ implicit GEMM core

constexpr int kGemmThreads = 256;  // 16 x 16 threads
constexpr int kSmemPad = 4;        // keeps rows 16-byte aligned, spreads transposed stores
// K-step depth of each pass: one warp per K row in forward / input gradient;
// in the weight gradient, whose loads run along output pixels, 8 pixel lanes
// by 32 row (or column) lanes.
constexpr int kForwardBK = 8;
constexpr int kInputBackwardBK = 8;
constexpr int kWeightBackwardBK = 8;

template <int BM_, int BN_, int TM_, int TN_>
struct TileShape {
  static constexpr int BM = BM_, BN = BN_, TM = TM_, TN = TN_;
  static_assert(BM == 16 * TM && BN == 16 * TN, "16 x 16 threads cover the block tile");
  static_assert(TM % 2 == 0 && TN % 2 == 0, "each thread owns two halves of its rows/columns");
};
using Tile128x128 = TileShape<128, 128, 8, 8>;
using Tile128x64 = TileShape<128, 64, 8, 4>;
using Tile64x64 = TileShape<64, 64, 4, 4>;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Row of micro-tile register r in the block tile (columns likewise).
template <int TILE, int T_PER_THREAD>
__device__ __forceinline__ int micro_row(int r, int t) {
  return (r / (T_PER_THREAD / 2)) * (TILE / 2) + t * (T_PER_THREAD / 2) + r % (T_PER_THREAD / 2);
}

template <typename T, typename Shape, int BK>
using SmemA = T[2][BK][Shape::BM + kSmemPad];
template <typename T, typename Shape, int BK>
using SmemB = T[2][BK][Shape::BN + kSmemPad];

// acc (+)= the product of one BK-deep shared-memory tile pair.
template <typename T, typename Shape, int BK>
__device__ __forceinline__ void multiply_tiles(const T (*As)[Shape::BM + kSmemPad],
                                               const T (*Bs)[Shape::BN + kSmemPad],
                                               T (&acc)[Shape::TM][Shape::TN]) {
  constexpr int BM = Shape::BM, BN = Shape::BN, TM = Shape::TM, TN = Shape::TN;
  using VecA = Vec<T, TM / 2>;
  using VecB = Vec<T, TN / 2>;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    const VecA a0 = *reinterpret_cast<const VecA*>(&As[kk][tx * (TM / 2)]);
    const VecA a1 = *reinterpret_cast<const VecA*>(&As[kk][BM / 2 + tx * (TM / 2)]);
    const VecB b0 = *reinterpret_cast<const VecB*>(&Bs[kk][ty * (TN / 2)]);
    const VecB b1 = *reinterpret_cast<const VecB*>(&Bs[kk][BN / 2 + ty * (TN / 2)]);
    T a[TM], b[TN];
#pragma unroll
    for (int i = 0; i < TM / 2; ++i) {
      a[i] = a0.v[i];
      a[TM / 2 + i] = a1.v[i];
    }
#pragma unroll
    for (int j = 0; j < TN / 2; ++j) {
      b[j] = b0.v[j];
      b[TN / 2 + j] = b1.v[j];
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
  }
}

// The main loop shared by the three passes. `loader.load()` reads the next
// K-step's A and B elements of this thread into registers (zero where the
// element is padding or outside the matrices) and advances; `loader.store()`
// writes them to a shared-memory buffer. Every thread of the block runs the
// same number of steps, so the barriers are uniform.
template <typename T, typename Shape, int BK, typename Loader>
__device__ __forceinline__ void gemm_mainloop(Loader& loader, int64_t k_tiles,
                                              SmemA<T, Shape, BK>& As, SmemB<T, Shape, BK>& Bs,
                                              T (&acc)[Shape::TM][Shape::TN]) {
#pragma unroll
  for (int i = 0; i < Shape::TM; ++i) {
#pragma unroll
    for (int j = 0; j < Shape::TN; ++j) acc[i][j] = T(0);
  }
  if (k_tiles <= 0) return;
  loader.load();
  loader.store(As[0], Bs[0]);
  __syncthreads();
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int cur = static_cast<int>(kt & 1);
    const bool more = kt + 1 < k_tiles;
    if (more) loader.load();
    multiply_tiles<T, Shape, BK>(As[cur], Bs[cur], acc);
    // The barrier ending the previous step guarantees nobody still reads
    // buffer cur ^ 1; the one below publishes it before the next step.
    if (more) loader.store(As[cur ^ 1], Bs[cur ^ 1]);
    __syncthreads();
  }
}

// Blocks: blockIdx.x enumerates (row tile, column tile) with the column tile
// fastest, so the blocks resident together share their gathered A rows (the
// large operand) in L2; blockIdx.z + z_offset enumerates the independent
// GEMMs (phase or class, group, slice).
struct BlockTile {
  int64_t m0;
  int n0;
  int z;
};

template <typename Shape>
__device__ __forceinline__ BlockTile block_tile(int n_tiles, int z_offset) {
  const int64_t bid = blockIdx.x;
  return {bid / n_tiles * Shape::BM, static_cast<int>(bid % n_tiles) * Shape::BN,
          static_cast<int>(blockIdx.z) + z_offset};
}

// The gathered operand of each pass (A: input patches in forward and weight
// gradient, output-gradient windows in input gradient) is described per block
// row by a table in shared memory, filled once per block: element (row, K
// index) is src[row.offset + delta] when row.y + dy and row.x + dx lie inside
// the source plane, where (delta, dy, dx) depend on the K index only. Rows
// outside the matrix get y = x = kInvalidCoordinate: every displacement the
// kernels add lies in (-2^29, 2^30) (make_geometry's limits), which keeps it
// negative and without overflow, so the bounds test alone rejects them.
struct alignas(16) GatherRow {
  int64_t offset;
  int y, x;
};
constexpr int kInvalidCoordinate = -(1 << 30) - (1 << 28);

// The gather of the A operand through the row table: reg[i] = src[row.offset]
// for row = rows[first + kStride*i] when `active` and (row.y + dy, row.x + dx)
// lies inside the height x width source plane, else zero (src already points
// at the K index's displacement delta).
template <int kStride, typename T, int kRows>
__device__ __forceinline__ void gather_rows(const GatherRow* rows, int first, int dy, int dx,
                                            int height, int width, bool active, const T* src,
                                            T (&reg)[kRows]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const GatherRow row = rows[first + kStride * i];
    const int y = row.y + dy, x = row.x + dx;
    T v = T(0);
    if (active && static_cast<unsigned>(y) < unsigned(height) &&
        static_cast<unsigned>(x) < unsigned(width)) {
      v = __ldg(src + row.offset);
    }
    reg[i] = v;
  }
}

// tile_row[first + kStride*i] = reg[i]: a thread's loaded elements into one
// K row of a shared-memory tile.
template <int kStride, typename T, int kCount>
__device__ __forceinline__ void store_strided(T* tile_row, int first, const T (&reg)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) tile_row[first + kStride * i] = reg[i];
}

// ------------------------------------------------------------------ epilogue
//
// Column e of a thread's micro-tile is GEMM column n0 + micro_row<BN, TN>(e, ty);
// it exists when below the column count and starts at `offset` in the destination.
template <typename Shape>
struct TileColumns {
  bool ok[Shape::TN];
  int64_t offset[Shape::TN];
};

template <typename Shape, typename Offset>
__device__ __forceinline__ TileColumns<Shape> tile_columns(int n0, int count,
                                                           const Offset& offset) {
  TileColumns<Shape> cols;
  const int ty = threadIdx.x / 16;
#pragma unroll
  for (int e = 0; e < Shape::TN; ++e) {
    const int column = n0 + micro_row<Shape::BN, Shape::TN>(e, ty);
    cols.ok[e] = column < count;
    cols.offset[e] = offset(column);
  }
  return cols;
}

// Writes a thread's micro-tile: value(r, e) of block-tile row m < M and column
// e goes to dst[row offset + cols.offset[e]]. vector_store (the host's
// check): TM/2 consecutive rows from a multiple of TM/2 are contiguous in dst
// from dense_row(first of them), and go as one vector store; otherwise each
// row goes to row(m).
template <typename T, typename Shape, typename Value, typename DenseRow, typename Row>
__device__ __forceinline__ void store_micro_tile(T* dst, int64_t m0, int64_t M, bool vector_store,
                                                 const TileColumns<Shape>& cols,
                                                 const Value& value, const DenseRow& dense_row,
                                                 const Row& row) {
  constexpr int BM = Shape::BM, TM = Shape::TM, TN = Shape::TN;
  const int tx = threadIdx.x % 16;
  if (vector_store) {
    using V = Vec<T, TM / 2>;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + h * (BM / 2) + tx * (TM / 2);
      if (m >= M) continue;
      const int64_t row_offset = dense_row(m);
#pragma unroll
      for (int e = 0; e < TN; ++e) {
        if (!cols.ok[e]) continue;
        V v;
#pragma unroll
        for (int i = 0; i < TM / 2; ++i) v.v[i] = value(h * (TM / 2) + i, e);
        *reinterpret_cast<V*>(dst + row_offset + cols.offset[e]) = v;
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t m = m0 + micro_row<BM, TM>(r, tx);
      if (m >= M) continue;
      const int64_t row_offset = row(m);
#pragma unroll
      for (int e = 0; e < TN; ++e) {
        if (cols.ok[e]) dst[row_offset + cols.offset[e]] = value(r, e);
      }
    }
  }
}

// ---------------------------------------------------------- GEMM launch plans

enum class TileChoice { k128x128, k128x64, k64x64 };

// The largest tile that still gives a full wave (two blocks per SM); small
// problems take smaller tiles rather than leave SMs idle.
inline TileChoice choose_tile(int64_t rows, int64_t cols, int64_t gemms) {
  const int64_t wave = 2 * multiprocessor_count();
  const auto blocks = [&](int64_t bm, int64_t bn) {
    return ceil_div(rows, bm) * ceil_div(cols, bn) * gemms;
  };
  if (cols > 64 && blocks(128, 128) >= wave) return TileChoice::k128x128;
  if (blocks(128, 64) >= wave) return TileChoice::k128x64;
  return TileChoice::k64x64;
}

// Runs `fn` with the tile shape type: float chooses, double always takes the
// 64 x 64 tile (its 4 x 4 micro-tile of doubles fits the register budget).
template <typename T, typename F>
void with_tile_shape(TileChoice choice, const F& fn) {
  if constexpr (std::is_same_v<T, double>) {
    fn(Tile64x64{});
  } else {
    switch (choice) {
      case TileChoice::k128x128: fn(Tile128x128{}); break;
      case TileChoice::k128x64: fn(Tile128x64{}); break;
      case TileChoice::k64x64: fn(Tile64x64{}); break;
    }
  }
}

// Launches `kernel` over m_tiles x n_tiles blocks in x and `gemms` GEMMs in z,
// at most 65535 per launch (args.z_offset numbers the chunk).
template <typename Args, typename Kernel>
void launch_gemm(Kernel kernel, Args args, int64_t m_tiles, int64_t n_tiles, int64_t gemms) {
  const int64_t blocks = m_tiles * n_tiles;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              args.geo.op, ": convolution too large for one CUDA grid (", blocks, " blocks)");
  args.n_tiles = static_cast<int>(n_tiles);
  for (int64_t z0 = 0; z0 < gemms; z0 += 65535) {
    args.z_offset = static_cast<int>(z0);
    const dim3 grid(static_cast<unsigned>(blocks), 1,
                    static_cast<unsigned>(std::min<int64_t>(65535, gemms - z0)));
    CNNKIT_LAUNCH(grid, kGemmThreads, 0, current_stream(), kernel)(args);
    CNNKIT_CHECK_LAUNCH();
  }
}

// ------------------------------------------------------------------ the passes
// Each in a file of its own; conv2d.cu's engine calls them. The GEMM passes
// are instantiated for float and double.

template <typename T>
void gemm_forward(const Conv2dProblem& pb, const Geometry& geo, const at::Tensor& input,
                  const at::Tensor& weight_phases, const at::Tensor& bias_phases,
                  at::Tensor& output);
template <typename T>
void gemm_input_backward(const Conv2dProblem& pb, const Geometry& geo,
                         const at::Tensor& grad_output, const at::Tensor& weight_phases,
                         at::Tensor& grad_input);
template <typename T>
void gemm_weight_backward(const Conv2dProblem& pb, const Geometry& geo,
                          const at::Tensor& grad_output, const at::Tensor& input,
                          at::Tensor& grad_weight);
// bias: (K,), or (K, P, Q) when untied_bias; or undefined.
void depthwise_forward(const Geometry& geo, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, bool untied_bias, at::Tensor& output);
void depthwise_input_backward(const Geometry& geo, const at::Tensor& grad_output,
                              const at::Tensor& weight, at::Tensor& grad_input);
void depthwise_weight_backward(const Geometry& geo, const at::Tensor& grad_output,
                               const at::Tensor& input, at::Tensor& grad_weight);

}  // namespace cnnkit::cuda::conv
