// Convolution on CUDA: the engine of conv2d.cuh (forward, input gradient,
// weight gradient, bias gradient; dense convolution and every tile phase of a
// tiled one) and the five dense convolution ops.
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
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <type_traits>

#include "conv_ops.h"
#include "cuda/conv2d.cuh"
#include "cuda/helpers.cuh"
#include "problem.h"

namespace cnnkit::cuda {
namespace {

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

bool below_limit(std::initializer_list<int64_t> values) {
  return std::all_of(values.begin(), values.end(),
                     [](int64_t v) { return v >= 0 && v < kCoordinateLimit; });
}

Geometry make_geometry(const Conv2dProblem& pb) {
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

bool is_depthwise(const Conv2dProblem& pb) {
  return pb.groups == pb.C && pb.phase_count() == 1;
}

bool is_half_precision(const at::Tensor& t) {
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
int64_t slice_count(int64_t outputs, int64_t length, int64_t min_per_slice) {
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
void sum_slices(const at::Tensor& partial, at::Tensor& out, int64_t slices, int64_t count) {
  CNNKIT_DISPATCH_CUDA_FLOATING(out.scalar_type(), "cnnkit_sum_slices", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({slices * count}), [&] {
      CNNKIT_LAUNCH(grid_for(count), kThreads, 0, current_stream(), sum_slices_kernel<scalar_t, index_t>)(
          partial.const_data_ptr<acc_t<scalar_t>>(), out.mutable_data_ptr<scalar_t>(),
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

// ------------------------------------------------------------------- forward
//
// GEMM per (phase t, group g): rows m = (n, i, j) output pixels of the phase
// (p = a + i*tH, q = b + j*tW), columns k = output channels of the group,
// K = (c, r, s). A[m, (c,r,s)] = X[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]
// (zero outside the input), B[(c,r,s), k] = W[t, g, k, (c,r,s)].

template <typename T>
struct ForwardArgs {
  const T* input;
  const T* weight;  // (T, G, Kg, Cg*R*S)
  const T* bias;    // (T, K) or null
  T* output;
  Conv2dProblem problem;
  Geometry geo;
  int patch;  // Cg*R*S
  GridStep patch_step;  // BK as a step over (c, r, s)
  int n_tiles, z_offset;
  bool vector_store;  // one phase and P*Q a multiple of TM/2: rows store as vectors
};

// Row table of the forward pass: row m = pixel (n, i, j) of the phase reads
// X[n, g*Cg + c, ih0 + r*dh, iw0 + s*dw] with ih0 = p*sh - ph, iw0 = q*sw - pw;
// offset = (n*C + g*Cg)*H*W + ih0*W + iw0, y = ih0, x = iw0.
__device__ __forceinline__ GatherRow forward_row(const Geometry& geo, const ConvPhase& ph, int g,
                                                 int64_t m, int64_t M) {
  if (m >= M) return {0, kInvalidCoordinate, kInvalidCoordinate};
  const int64_t plane = ph.P_a * ph.Q_b;
  const int Qb = static_cast<int>(ph.Q_b);
  const int64_t n = m / plane;
  const int64_t rem = m - n * plane;  // P_a*Q_b may pass 2^31
  const int row = static_cast<int>(rem / Qb), col = static_cast<int>(rem - int64_t{row} * Qb);
  const int ih0 = (static_cast<int>(ph.a) + row * geo.tile_h) * geo.stride_h - geo.pad_h;
  const int iw0 = (static_cast<int>(ph.b) + col * geo.tile_w) * geo.stride_w - geo.pad_w;
  return {(n * geo.C + int64_t{g} * geo.Cg) * geo.HW + int64_t{ih0} * geo.W + iw0, ih0, iw0};
}

template <typename T, typename Shape>
struct ForwardLoader {
  static constexpr int BK = kForwardBK;
  static constexpr int A_ROWS = Shape::BM / 32;             // lanes over rows
  static constexpr int B_SPLIT = kGemmThreads / Shape::BN;  // threads per column
  static constexpr int B_ELEMS = BK / B_SPLIT;              // consecutive K per thread
  static_assert(kGemmThreads / 32 == BK, "one warp per K row of the A tile");

  const ForwardArgs<T>& args;
  const GatherRow* rows;  // the block's row table
  // A: this thread loads tile row kk = warp for block rows lane + 32*i; its
  // K index k0 + warp is kept as (c, r, s) in a_tap.
  int k0;
  GridCursor a_tap;
  // B: this thread loads column b_col, K indices k0 + b_j + [0, B_ELEMS).
  const T* b_weight_row;  // null for a column outside the group
  int b_col, b_j;
  T a_reg[A_ROWS], b_reg[B_ELEMS];

  __device__ __forceinline__ ForwardLoader(const ForwardArgs<T>& args_, const GatherRow* rows_,
                                           int t, int g, int n0)
      : args(args_), rows(rows_) {
    const Geometry& geo = args.geo;
    const int warp = threadIdx.x / 32;
    const int RS = geo.R * geo.S;
    k0 = 0;
    a_tap = {warp / RS, (warp % RS) / geo.S, warp % geo.S};
    b_col = threadIdx.x / B_SPLIT;
    b_j = (threadIdx.x % B_SPLIT) * B_ELEMS;
    const int k = n0 + b_col;
    b_weight_row = k < geo.Kg ? args.weight + ((int64_t{t} * geo.groups + g) * geo.Kg + k) *
                                                  args.patch
                              : nullptr;
  }

  __device__ __forceinline__ void load() {
    const Geometry& geo = args.geo;
    const int lane = threadIdx.x % 32;
    const bool j_ok = k0 + static_cast<int>(threadIdx.x / 32) < args.patch;
    const int rd = a_tap.i * geo.dilation_h, sd = a_tap.j * geo.dilation_w;
    const int64_t delta = int64_t{a_tap.n} * geo.HW + int64_t{rd} * geo.W + sd;
    gather_rows<32>(rows, lane, rd, sd, geo.H, geo.W, j_ok, args.input + delta, a_reg);
#pragma unroll
    for (int e = 0; e < B_ELEMS; ++e) {
      const int j = k0 + b_j + e;
      b_reg[e] = (b_weight_row != nullptr && j < args.patch) ? __ldg(b_weight_row + j) : T(0);
    }
    // Next K-step: k0 += BK, carried through (c, r, s).
    k0 += BK;
    a_tap.advance(args.patch_step, geo.R, geo.S);
  }

  __device__ __forceinline__ void store(T (*As)[Shape::BM + kSmemPad],
                                        T (*Bs)[Shape::BN + kSmemPad]) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    store_strided<32>(As[warp], lane, a_reg);
    const int j0 = (threadIdx.x % B_SPLIT) * B_ELEMS;
#pragma unroll
    for (int e = 0; e < B_ELEMS; ++e) Bs[j0 + e][b_col] = b_reg[e];
  }
};

template <typename T, typename Shape>
__global__ void __launch_bounds__(kGemmThreads, 2)
    conv_forward_kernel(const __grid_constant__ ForwardArgs<T> args) {
  using Loader = ForwardLoader<T, Shape>;
  constexpr int BK = Loader::BK, BM = Shape::BM, TM = Shape::TM, TN = Shape::TN;
  __shared__ __align__(16) SmemA<T, Shape, BK> As;
  __shared__ __align__(16) SmemB<T, Shape, BK> Bs;

  const Geometry& geo = args.geo;
  const BlockTile bt = block_tile<Shape>(args.n_tiles, args.z_offset);
  const int t = bt.z / geo.groups, g = bt.z % geo.groups;
  const ConvPhase ph = conv_phase(args.problem, t);
  const int64_t M = int64_t{geo.N} * ph.P_a * ph.Q_b;
  if (bt.m0 >= M) return;  // the block's rows lie past this (smaller) phase: whole block exits

  __shared__ GatherRow rows[BM];
  if (threadIdx.x < BM) rows[threadIdx.x] = forward_row(geo, ph, g, bt.m0 + threadIdx.x, M);
  __syncthreads();
  Loader loader(args, rows, t, g, bt.n0);
  T acc[TM][TN];
  gemm_mainloop<T, Shape, BK>(loader, ceil_div(args.patch, BK), As, Bs, acc);

  // Epilogue: Z[n, g*Kg + k, p, q] = acc + bias[t, g*Kg + k].
  const auto cols = tile_columns<Shape>(bt.n0, geo.Kg,
                                        [&](int k) { return int64_t{g * geo.Kg + k} * geo.PQ; });
  T col_bias[TN];
#pragma unroll
  for (int e = 0; e < TN; ++e) {
    const int k = bt.n0 + micro_row<Shape::BN, TN>(e, threadIdx.x / 16);
    col_bias[e] = (args.bias != nullptr && cols.ok[e])
                      ? args.bias[int64_t{t} * geo.K + g * geo.Kg + k]
                      : T(0);
  }
  const int64_t out_plane = int64_t{geo.K} * geo.PQ;
  const int64_t plane = ph.P_a * ph.Q_b;
  const int Qb = static_cast<int>(ph.Q_b);
  store_micro_tile<T, Shape>(
      args.output, bt.m0, M, args.vector_store, cols,
      [&](int r, int e) { return acc[r][e] + col_bias[e]; },
      // One phase: row m is pixel m % PQ of sample m / PQ.
      [&](int64_t m) {
        const int64_t n = m / geo.PQ;
        return n * out_plane + (m - n * geo.PQ);
      },
      [&](int64_t m) {
        const int64_t n = m / plane;
        const int64_t rem = m - n * plane;
        const int row = static_cast<int>(rem / Qb), col = static_cast<int>(rem - int64_t{row} * Qb);
        const int p = static_cast<int>(ph.a) + row * geo.tile_h;
        const int q = static_cast<int>(ph.b) + col * geo.tile_w;
        return n * out_plane + int64_t{p} * geo.Q + q;
      });
}

// ------------------------------------------------------------ input gradient
//
// GEMM per (residue class (rho_h, rho_w), group g): rows m = (n, u, v), the
// input pixels h = rho_h + S'h*u, w = rho_w + S'w*v; columns c = input
// channels of the group; K = (k, ri, si) over output channels and the taps
// r = r0 + ri*tap_step_h (likewise s) that reach the class. Output row
// p = (h + pad - r*d)/s = p_off(ri) + tH*u with p_off = p0 - ri*row_step_h,
// used through weight tile (p_off mod tH, q_off mod tW).
// A[m, (k,ri,si)] = G[n, g*Kg + k, p, q] (zero unless 0 <= p < P, 0 <= q < Q),
// B[(k,ri,si), c] = Wt[t, g, k, r, s, c] (the weight with C/G innermost).

template <typename T>
struct InputBackwardArgs {
  const T* grad_output;
  const T* weight_t;  // (T, G, Kg, R, S, Cg)
  T* grad_input;
  Geometry geo;
  int class_stride_h, class_stride_w;  // S' = stride * tile
  int classes_w;                       // residue classes per row: min(S'w, W)
  int tap_step_h, tap_step_w;          // stride / gcd(stride, dilation)
  int row_step_h, row_step_w;          // dilation / gcd(stride, dilation)
  int n_tiles, z_offset;
  bool vector_store;  // a single class and H*W a multiple of TM/2
};

// The taps of one axis that reach input rows congruent to rho modulo the
// stride: r = first + i*step for i < count, with output row offset
// (rho + pad - r*dilation) / stride = offset0 - i*row_step.
struct TapSet {
  int first, count, offset0;
};

__device__ __forceinline__ TapSet class_taps(int rho, int pad, int stride, int dilation, int R,
                                             int tap_step) {
  // r*dilation = rho + pad (mod stride) has one solution modulo tap_step, or none.
  for (int r = 0; r < R && r < tap_step; ++r) {
    const int num = rho + pad - r * dilation;
    if (num % stride == 0) return {r, (R - 1 - r) / tap_step + 1, num / stride};
  }
  return {0, 0, 0};
}

// Row table of the input-gradient pass: row m = pixel (n, u, v) of the class
// reads G[n, g*Kg + k, tH*u + p_off, tW*v + q_off]; offset = (n*K + g*Kg)*P*Q
// + tH*u*Q + tW*v, y = tH*u, x = tW*v.
__device__ __forceinline__ GatherRow input_backward_row(const Geometry& geo, int g, int Hc, int Wc,
                                                        int64_t m, int64_t M) {
  if (m >= M) return {0, kInvalidCoordinate, kInvalidCoordinate};
  const int64_t plane = int64_t{Hc} * Wc;
  const int64_t n = m / plane;
  const int64_t rem = m - n * plane;  // Hc*Wc may pass 2^31
  const int u = static_cast<int>(rem / Wc), v = static_cast<int>(rem - int64_t{u} * Wc);
  const int pu = geo.tile_h * u, qv = geo.tile_w * v;
  return {(n * geo.K + int64_t{g} * geo.Kg) * geo.PQ + int64_t{pu} * geo.Q + qv, pu, qv};
}

template <typename T, typename Shape>
struct InputBackwardLoader {
  static constexpr int BK = kInputBackwardBK;
  static constexpr int A_ROWS = Shape::BM / 32;
  static constexpr int B_COLS = Shape::BN / 32;
  static_assert(kGemmThreads / 32 == BK, "one warp per K row of each tile");

  const InputBackwardArgs<T>& args;
  const GatherRow* rows;  // the block's row table
  const TapSet taps_h, taps_w;
  const int g;
  int kdim;  // K length: Kg * taps
  // K index j of this thread's tile row (kk = warp) and its (k, ri, si) in
  // `tap`; `step` is BK as a step over (k, ri, si).
  int j;
  GridCursor tap;
  GridStep step;
  int b_c;  // first input channel this thread loads: n0 + lane
  T a_reg[A_ROWS], b_reg[B_COLS];

  __device__ __forceinline__ InputBackwardLoader(const InputBackwardArgs<T>& args_,
                                                 const GatherRow* rows_, const TapSet& th,
                                                 const TapSet& tw, int g_, int n0)
      : args(args_), rows(rows_), taps_h(th), taps_w(tw), g(g_) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int taps = th.count * tw.count;
    kdim = args.geo.Kg * taps;
    j = warp;
    tap = {0, 0, 0};
    step = {0, 0, 0};
    if (taps > 0) {
      tap = {warp / taps, (warp % taps) / tw.count, warp % tw.count};
      step = {BK / taps, (BK % taps) / tw.count, BK % tw.count};
    }
    b_c = n0 + lane;
  }

  __device__ __forceinline__ void load() {
    const Geometry& geo = args.geo;
    const bool j_ok = j < kdim;
    const int k = tap.n, ri = tap.i, si = tap.j;
    const int p_off = taps_h.offset0 - ri * args.row_step_h;
    const int q_off = taps_w.offset0 - si * args.row_step_w;
    const int64_t delta = int64_t{k} * geo.PQ + int64_t{p_off} * geo.Q + q_off;
    const int lane = threadIdx.x % 32;
    gather_rows<32>(rows, lane, p_off, q_off, geo.P, geo.Q, j_ok, args.grad_output + delta,
                    a_reg);
    // The weight tile of output location (p, q): p mod tH = p_off mod tH.
    const int tile_a = geo.tile_h > 1 ? floor_mod(p_off, geo.tile_h) : 0;
    const int tile_b = geo.tile_w > 1 ? floor_mod(q_off, geo.tile_w) : 0;
    const int r = taps_h.first + ri * args.tap_step_h;
    const int s = taps_w.first + si * args.tap_step_w;
    const int64_t t = int64_t{tile_a} * geo.tile_w + tile_b;
    const int64_t w_row = (((t * geo.groups + g) * geo.Kg + k) * geo.R + r) * geo.S + s;
    const T* w = args.weight_t + w_row * geo.Cg;
#pragma unroll
    for (int e = 0; e < B_COLS; ++e) {
      const int c = b_c + 32 * e;
      b_reg[e] = (j_ok && c < geo.Cg) ? __ldg(w + c) : T(0);
    }
    // Next K-step: j += BK, carried through (k, ri, si).
    j += BK;
    tap.advance(step, taps_h.count, taps_w.count);
  }

  __device__ __forceinline__ void store(T (*As)[Shape::BM + kSmemPad],
                                        T (*Bs)[Shape::BN + kSmemPad]) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    store_strided<32>(As[warp], lane, a_reg);
    store_strided<32>(Bs[warp], lane, b_reg);
  }
};

template <typename T, typename Shape>
__global__ void __launch_bounds__(kGemmThreads, 2)
    conv_input_backward_kernel(const __grid_constant__ InputBackwardArgs<T> args) {
  using Loader = InputBackwardLoader<T, Shape>;
  constexpr int BK = Loader::BK, BM = Shape::BM, TM = Shape::TM, TN = Shape::TN;
  __shared__ __align__(16) SmemA<T, Shape, BK> As;
  __shared__ __align__(16) SmemB<T, Shape, BK> Bs;

  const Geometry& geo = args.geo;
  const BlockTile bt = block_tile<Shape>(args.n_tiles, args.z_offset);
  const int g = bt.z % geo.groups, cls = bt.z / geo.groups;
  const int rho_h = cls / args.classes_w, rho_w = cls % args.classes_w;
  // rho < min(S', size): the class is never empty.
  const int Hc = (geo.H - rho_h + args.class_stride_h - 1) / args.class_stride_h;
  const int Wc = (geo.W - rho_w + args.class_stride_w - 1) / args.class_stride_w;
  const int64_t M = int64_t{geo.N} * Hc * Wc;
  if (bt.m0 >= M) return;  // rows past this (smaller) class: whole block exits

  const TapSet taps_h =
      class_taps(rho_h, geo.pad_h, geo.stride_h, geo.dilation_h, geo.R, args.tap_step_h);
  const TapSet taps_w =
      class_taps(rho_w, geo.pad_w, geo.stride_w, geo.dilation_w, geo.S, args.tap_step_w);
  __shared__ GatherRow rows[BM];
  if (threadIdx.x < BM) {
    rows[threadIdx.x] = input_backward_row(geo, g, Hc, Wc, bt.m0 + threadIdx.x, M);
  }
  __syncthreads();
  Loader loader(args, rows, taps_h, taps_w, g, bt.n0);
  T acc[TM][TN];
  gemm_mainloop<T, Shape, BK>(loader, ceil_div(loader.kdim, BK), As, Bs, acc);

  // Epilogue: dX[n, g*Cg + c, h, w] = acc.
  const auto cols = tile_columns<Shape>(bt.n0, geo.Cg,
                                        [&](int c) { return int64_t{g * geo.Cg + c} * geo.HW; });
  const int64_t in_plane = int64_t{geo.C} * geo.HW;
  const int64_t plane = int64_t{Hc} * Wc;
  store_micro_tile<T, Shape>(
      args.grad_input, bt.m0, M, args.vector_store, cols,
      [&](int r, int e) { return acc[r][e]; },
      // A single class: row m is pixel m % HW of sample m / HW.
      [&](int64_t m) {
        const int64_t n = m / geo.HW;
        return n * in_plane + (m - n * geo.HW);
      },
      [&](int64_t m) {
        const int64_t n = m / plane;
        const int64_t rem = m - n * plane;
        const int u = static_cast<int>(rem / Wc), v = static_cast<int>(rem - int64_t{u} * Wc);
        const int h = rho_h + u * args.class_stride_h, w = rho_w + v * args.class_stride_w;
        return n * in_plane + int64_t{h} * geo.W + w;
      });
}

// ----------------------------------------------------------- weight gradient
//
// GEMM per (slice, phase t, group g): rows = (c, r, s) of the patch, columns
// k = output channels of the group, K = output pixels l = (n, i, j) of the
// phase, of which the slice takes a contiguous range of BK-steps.
// A[(c,r,s), l] = X[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw],
// B[l, k] = G[n, g*Kg + k, p, q], with p = a + i*tH, q = b + j*tW.

template <typename T>
struct WeightBackwardArgs {
  const T* input;
  const T* grad_output;
  T* out;  // (slices, T, G, Kg, Cg*R*S)
  Conv2dProblem problem;
  Geometry geo;
  int patch;  // Cg*R*S
  int slices, n_tiles, z_offset;
  bool vector_store;  // patch a multiple of TM/2
};

// Row table of the weight-gradient pass: row (c, r, s) of the patch reads,
// for output pixel (n, p, q), X[n*C*H*W + ih0*W + iw0 + offset] with
// ih0 = p*sh - ph, iw0 = q*sw - pw: offset = (g*Cg + c)*H*W + r*dh*W + s*dw,
// y = r*dh, x = s*dw.
__device__ __forceinline__ GatherRow weight_backward_row(const Geometry& geo, int g, int patch,
                                                         int64_t j) {
  if (j >= patch) return {0, kInvalidCoordinate, kInvalidCoordinate};
  const int jj = static_cast<int>(j);
  const int RS = geo.R * geo.S;
  const int c = jj / RS, r = (jj % RS) / geo.S, s = jj % geo.S;
  const int rd = r * geo.dilation_h, sd = s * geo.dilation_w;
  return {int64_t{g * geo.Cg + c} * geo.HW + int64_t{rd} * geo.W + sd, rd, sd};
}

template <typename T, typename Shape>
struct WeightBackwardLoader {
  static constexpr int BK = kWeightBackwardBK;
  static constexpr int K_LANES = BK;                          // threadIdx.x % BK: pixel
  static constexpr int E_LANES = kGemmThreads / BK;           // threadIdx.x / BK: row / column
  static constexpr int A_ROWS = Shape::BM / E_LANES;
  static constexpr int B_COLS = Shape::BN / E_LANES;
  static_assert(Shape::BM % E_LANES == 0 && Shape::BN % E_LANES == 0, "lanes cover the tile");

  const WeightBackwardArgs<T>& args;
  const GatherRow* rows;                // the block's row table
  const int phase_a, phase_b, Pa, Qb;  // the phase's first row/column and extent
  // This thread: pixel lane threadIdx.x % BK, rows/columns threadIdx.x / BK + E_LANES*i.
  GridCursor pixel;  // (n, i, j) of the thread's pixel in the current K-step
  GridStep step;
  int64_t b_offset;  // offset of G[0, g*Kg + b_k, 0, 0]
  int b_k;           // first output channel this thread loads: n0 + threadIdx.x / BK
  T a_reg[A_ROWS], b_reg[B_COLS];

  __device__ __forceinline__ WeightBackwardLoader(const WeightBackwardArgs<T>& args_,
                                                  const GatherRow* rows_, const ConvPhase& ph,
                                                  int g, int n0, int64_t first_tile,
                                                  bool has_tiles)
      : args(args_),
        rows(rows_),
        phase_a(static_cast<int>(ph.a)),
        phase_b(static_cast<int>(ph.b)),
        Pa(static_cast<int>(ph.P_a)),
        Qb(static_cast<int>(ph.Q_b)) {
    const Geometry& geo = args.geo;
    pixel = {0, 0, 0};
    step = {0, 0, 0};
    if (has_tiles) {  // then the phase has pixels: Pa*Qb > 0
      pixel.seek(first_tile * BK + threadIdx.x % K_LANES, Pa, Qb);
      step = grid_step(BK, Pa, Qb);
    }
    b_k = n0 + threadIdx.x / K_LANES;
    b_offset = int64_t{g * geo.Kg + b_k} * geo.PQ;
  }

  __device__ __forceinline__ void load() {
    const Geometry& geo = args.geo;
    const int e_lane = threadIdx.x / K_LANES;
    const bool l_ok = pixel.n < geo.N;  // the last step of the last slice runs past N*Pa*Qb
    const int p = phase_a + pixel.i * geo.tile_h;
    const int q = phase_b + pixel.j * geo.tile_w;
    const int ih0 = p * geo.stride_h - geo.pad_h, iw0 = q * geo.stride_w - geo.pad_w;
    const int64_t x_offset = int64_t{pixel.n} * geo.C * geo.HW + int64_t{ih0} * geo.W + iw0;
    const int64_t g_offset =
        int64_t{pixel.n} * geo.K * geo.PQ + int64_t{p} * geo.Q + q + b_offset;
    gather_rows<E_LANES>(rows, e_lane, ih0, iw0, geo.H, geo.W, l_ok, args.input + x_offset,
                         a_reg);
#pragma unroll
    for (int e = 0; e < B_COLS; ++e) {
      const bool ok = l_ok && b_k + E_LANES * e < geo.Kg;
      b_reg[e] =
          ok ? __ldg(args.grad_output + g_offset + int64_t{E_LANES * e} * geo.PQ) : T(0);
    }
    pixel.advance(step, Pa, Qb);
  }

  // Stores along rows: lanes differ in pixel (stride BM + 4 words, i.e. 4
  // banks) and in row, so a warp's 8 x 4 stores hit 32 distinct banks.
  __device__ __forceinline__ void store(T (*As)[Shape::BM + kSmemPad],
                                        T (*Bs)[Shape::BN + kSmemPad]) const {
    const int l_lane = threadIdx.x % K_LANES, e_lane = threadIdx.x / K_LANES;
    store_strided<E_LANES>(As[l_lane], e_lane, a_reg);
    store_strided<E_LANES>(Bs[l_lane], e_lane, b_reg);
  }
};

template <typename T, typename Shape>
__global__ void __launch_bounds__(kGemmThreads, 2)
    conv_weight_backward_kernel(const __grid_constant__ WeightBackwardArgs<T> args) {
  using Loader = WeightBackwardLoader<T, Shape>;
  constexpr int BK = Loader::BK, BM = Shape::BM, TM = Shape::TM, TN = Shape::TN;
  __shared__ __align__(16) SmemA<T, Shape, BK> As;
  __shared__ __align__(16) SmemB<T, Shape, BK> Bs;
  __shared__ GatherRow rows[BM];

  const Geometry& geo = args.geo;
  const BlockTile bt = block_tile<Shape>(args.n_tiles, args.z_offset);
  const int T_phases = geo.tile_h * geo.tile_w;
  const int g = bt.z % geo.groups;
  const int t = (bt.z / geo.groups) % T_phases;
  const int slice = bt.z / (geo.groups * T_phases);
  const ConvPhase ph = conv_phase(args.problem, t);
  const int64_t k_tiles = ceil_div<int64_t>(int64_t{geo.N} * ph.P_a * ph.Q_b, BK);
  const int64_t first_tile = k_tiles * slice / args.slices;
  const int64_t end_tile = k_tiles * (slice + 1) / args.slices;

  if (threadIdx.x < BM) {
    rows[threadIdx.x] = weight_backward_row(geo, g, args.patch, bt.m0 + threadIdx.x);
  }
  __syncthreads();
  Loader loader(args, rows, ph, g, bt.n0, first_tile, end_tile > first_tile);
  T acc[TM][TN];
  gemm_mainloop<T, Shape, BK>(loader, end_tile - first_tile, As, Bs, acc);

  // Epilogue: out[slice, t, g, k, (c,r,s)] = acc.
  T* out = args.out +
           ((int64_t{slice} * T_phases + t) * geo.groups + g) * geo.Kg * int64_t{args.patch};
  const auto cols =
      tile_columns<Shape>(bt.n0, geo.Kg, [&](int k) { return int64_t{k} * args.patch; });
  const auto patch_row = [](int64_t j) { return j; };  // rows (c, r, s) are contiguous
  store_micro_tile<T, Shape>(
      out, bt.m0, args.patch, args.vector_store, cols, [&](int r, int e) { return acc[r][e]; },
      patch_row, patch_row);
}

// ---------------------------------------------------------- GEMM launch plans

enum class TileChoice { k128x128, k128x64, k64x64 };

// The largest tile that still gives a full wave (two blocks per SM); small
// problems take smaller tiles rather than leave SMs idle.
TileChoice choose_tile(int64_t rows, int64_t cols, int64_t gemms) {
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

template <typename T>
void gemm_forward(const Conv2dProblem& pb, const Geometry& geo, const at::Tensor& input,
                  const at::Tensor& weight_phases, const at::Tensor& bias_phases,
                  at::Tensor& output) {
  ForwardArgs<T> args{};
  args.input = input.const_data_ptr<T>();
  args.weight = weight_phases.const_data_ptr<T>();
  args.bias = bias_phases.defined() ? bias_phases.const_data_ptr<T>() : nullptr;
  args.output = output.mutable_data_ptr<T>();
  args.problem = pb;
  args.geo = geo;
  args.patch = geo.Cg * geo.R * geo.S;
  args.patch_step = grid_step(kForwardBK, geo.R, geo.S);
  const ConvPhase largest = conv_phase(pb, 0);
  const int64_t rows = pb.N * largest.P_a * largest.Q_b, gemms = pb.phase_count() * pb.groups;
  with_tile_shape<T>(choose_tile(rows, geo.Kg, gemms), [&](auto shape) {
    using Shape = decltype(shape);
    args.vector_store = pb.phase_count() == 1 && geo.PQ % (Shape::TM / 2) == 0;
    launch_gemm(conv_forward_kernel<T, Shape>, args, ceil_div<int64_t>(rows, Shape::BM),
                ceil_div<int64_t>(geo.Kg, Shape::BN), gemms);
  });
}

template <typename T>
void gemm_input_backward(const Conv2dProblem& pb, const Geometry& geo,
                         const at::Tensor& grad_output, const at::Tensor& weight_phases,
                         at::Tensor& grad_input) {
  // (T, G, Kg, Cg, R*S) -> (T, G, Kg, R*S, Cg): B rows contiguous over input channels.
  const auto weight_t = weight_phases
                            .view({pb.phase_count(), pb.groups, pb.group_out_channels(),
                                   pb.group_in_channels(), pb.R * pb.S})
                            .transpose(3, 4)
                            .contiguous();
  InputBackwardArgs<T> args{};
  args.grad_output = grad_output.const_data_ptr<T>();
  args.weight_t = weight_t.const_data_ptr<T>();
  args.grad_input = grad_input.mutable_data_ptr<T>();
  args.geo = geo;
  args.class_stride_h = geo.stride_h * geo.tile_h;
  args.class_stride_w = geo.stride_w * geo.tile_w;
  const int classes_h = std::min(args.class_stride_h, geo.H);
  args.classes_w = std::min(args.class_stride_w, geo.W);
  const int gcd_h = std::gcd(geo.stride_h, geo.dilation_h);
  const int gcd_w = std::gcd(geo.stride_w, geo.dilation_w);
  args.tap_step_h = geo.stride_h / gcd_h;
  args.tap_step_w = geo.stride_w / gcd_w;
  args.row_step_h = geo.dilation_h / gcd_h;
  args.row_step_w = geo.dilation_w / gcd_w;
  // Class (0, 0) is the largest.
  const int64_t rows = pb.N * ceil_div<int64_t>(geo.H, args.class_stride_h) *
                       ceil_div<int64_t>(geo.W, args.class_stride_w);
  const int64_t gemms = int64_t{classes_h} * args.classes_w * pb.groups;
  with_tile_shape<T>(choose_tile(rows, geo.Cg, gemms), [&](auto shape) {
    using Shape = decltype(shape);
    args.vector_store = args.class_stride_h == 1 && args.class_stride_w == 1 &&
                        geo.HW % (Shape::TM / 2) == 0;
    launch_gemm(conv_input_backward_kernel<T, Shape>, args, ceil_div<int64_t>(rows, Shape::BM),
                ceil_div<int64_t>(geo.Cg, Shape::BN), gemms);
  });
}

// Scratch for the weight-gradient slices is capped at this many bytes.
constexpr int64_t kSliceScratchBytes = int64_t{256} << 20;

template <typename T>
void gemm_weight_backward(const Conv2dProblem& pb, const Geometry& geo,
                          const at::Tensor& grad_output, const at::Tensor& input,
                          at::Tensor& grad_weight) {
  WeightBackwardArgs<T> args{};
  args.input = input.const_data_ptr<T>();
  args.grad_output = grad_output.const_data_ptr<T>();
  args.problem = pb;
  args.geo = geo;
  args.patch = geo.Cg * geo.R * geo.S;
  const int64_t gemms = pb.phase_count() * pb.groups;
  const TileChoice choice = args.patch <= 64 ? TileChoice::k64x64
                            : geo.Kg <= 64   ? TileChoice::k128x64
                                             : TileChoice::k128x128;
  with_tile_shape<T>(choice, [&](auto shape) {
    using Shape = decltype(shape);
    constexpr int BK = kWeightBackwardBK;
    const int64_t m_tiles = ceil_div<int64_t>(args.patch, Shape::BM);
    const int64_t n_tiles = ceil_div<int64_t>(geo.Kg, Shape::BN);
    // Slices: about kSplitTargetBlocks blocks, each slice at least 16 K-steps
    // (128 pixels) of the largest phase, the scratch within its cap.
    const ConvPhase largest = conv_phase(pb, 0);
    const int64_t k_tiles = ceil_div<int64_t>(pb.N * largest.P_a * largest.Q_b, BK);
    const int64_t elements = grad_weight.numel();
    int64_t slices = ceil_div<int64_t>(kSplitTargetBlocks, m_tiles * n_tiles * gemms);
    slices = std::min(slices, std::max<int64_t>(1, k_tiles / 16));
    slices = std::min(slices,
                      std::max<int64_t>(1, kSliceScratchBytes / (elements * int64_t{sizeof(T)})));
    slices = std::max<int64_t>(slices, 1);
    at::Tensor scratch =
        slices == 1 ? grad_weight : at::empty({slices, elements}, grad_weight.options());
    args.out = scratch.mutable_data_ptr<T>();
    args.slices = static_cast<int>(slices);
    args.vector_store = args.patch % (Shape::TM / 2) == 0;
    launch_gemm(conv_weight_backward_kernel<T, Shape>, args, m_tiles, n_tiles, slices * gemms);
    if (slices > 1) sum_slices(scratch, grad_weight, slices, elements);
  });
}

// ------------------------------------------------------------------ depthwise
//
// groups == C: output channel k reads input channel k / multiplier alone. One
// thread per output element, reading its R*S taps (neighbouring threads share
// input rows through L1).

template <typename scalar_t, typename index_t>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ weight,
                                         const scalar_t* __restrict__ bias,
                                         scalar_t* __restrict__ output, const Geometry geo,
                                         int64_t total) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  CNNKIT_KERNEL_LOOP(i, total) {
    index_t idx = i;
    const int q = static_cast<int>(idx % geo.Q);
    idx /= geo.Q;
    const int p = static_cast<int>(idx % geo.P);
    idx /= geo.P;
    const int k = static_cast<int>(idx % geo.K);
    const index_t n = idx / geo.K;
    const scalar_t* plane = input + (n * geo.C + k / multiplier) * static_cast<index_t>(geo.HW);
    const scalar_t* taps = weight + static_cast<index_t>(k) * geo.R * geo.S;
    const int ih0 = p * geo.stride_h - geo.pad_h, iw0 = q * geo.stride_w - geo.pad_w;
    acc sum = acc(0);
    for (int r = 0; r < geo.R; ++r) {
      const int ih = ih0 + r * geo.dilation_h;
      if (static_cast<unsigned>(ih) >= unsigned(geo.H)) continue;
      const scalar_t* in_row = plane + static_cast<index_t>(ih) * geo.W;
      for (int s = 0; s < geo.S; ++s) {
        const int iw = iw0 + s * geo.dilation_w;
        if (static_cast<unsigned>(iw) >= unsigned(geo.W)) continue;
        sum += static_cast<acc>(in_row[iw]) * static_cast<acc>(taps[r * geo.S + s]);
      }
    }
    if (bias != nullptr) sum += static_cast<acc>(bias[k]);
    output[i] = static_cast<scalar_t>(sum);
  }
}

// dX[n, c, h, w] = sum over the multiplier's channels k and the taps (r, s)
// whose output location p = (h + pad - r*d)/stride is an integer in [0, P).
template <typename scalar_t, typename index_t>
__global__ void depthwise_input_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ weight,
                                                scalar_t* __restrict__ grad_input,
                                                const Geometry geo, int64_t total) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  CNNKIT_KERNEL_LOOP(i, total) {
    index_t idx = i;
    const int w = static_cast<int>(idx % geo.W);
    idx /= geo.W;
    const int h = static_cast<int>(idx % geo.H);
    idx /= geo.H;
    const int c = static_cast<int>(idx % geo.C);
    const index_t n = idx / geo.C;
    acc sum = acc(0);
    for (int mu = 0; mu < multiplier; ++mu) {
      const int k = c * multiplier + mu;
      const scalar_t* plane = grad_output + (n * geo.K + k) * static_cast<index_t>(geo.PQ);
      const scalar_t* taps = weight + static_cast<index_t>(k) * geo.R * geo.S;
      for (int r = 0; r < geo.R; ++r) {
        const int ph = h + geo.pad_h - r * geo.dilation_h;
        if (ph < 0) break;  // decreases with r
        // (The stride tests are uniform branches: stride 1 skips the divisions.)
        if (geo.stride_h > 1 && ph % geo.stride_h != 0) continue;
        const int p = geo.stride_h > 1 ? ph / geo.stride_h : ph;
        if (p >= geo.P) continue;
        const scalar_t* out_row = plane + static_cast<index_t>(p) * geo.Q;
        for (int s = 0; s < geo.S; ++s) {
          const int pw = w + geo.pad_w - s * geo.dilation_w;
          if (pw < 0) break;
          if (geo.stride_w > 1 && pw % geo.stride_w != 0) continue;
          const int q = geo.stride_w > 1 ? pw / geo.stride_w : pw;
          if (q >= geo.Q) continue;
          sum += static_cast<acc>(out_row[q]) * static_cast<acc>(taps[r * geo.S + s]);
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

// dW[k, r, s] over a slice of the N*P*Q output locations: one block per
// (k, r, s) (blockIdx.x) and slice (blockIdx.y); each thread sums locations
// tid, tid + 256, ... of the slice in order, then the block sums the threads.
template <typename scalar_t, typename index_t>
__global__ void depthwise_weight_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                 const scalar_t* __restrict__ input,
                                                 acc_t<scalar_t>* __restrict__ partial,
                                                 const Geometry geo) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  const int RS = geo.R * geo.S;
  const int e = blockIdx.x;
  const int k = e / RS, r = (e % RS) / geo.S, s = e % geo.S;
  const int64_t length = int64_t{geo.N} * geo.PQ;
  const index_t begin = static_cast<index_t>(length * blockIdx.y / gridDim.y);
  const index_t end = static_cast<index_t>(length * (blockIdx.y + 1) / gridDim.y);
  const scalar_t* g_channel = grad_output + static_cast<index_t>(k) * geo.PQ;
  const scalar_t* x_channel = input + static_cast<index_t>(k / multiplier) * geo.HW;
  const index_t g_sample = static_cast<index_t>(geo.K) * geo.PQ;
  const index_t x_sample = static_cast<index_t>(geo.C) * geo.HW;
  const int rd = r * geo.dilation_h - geo.pad_h, sd = s * geo.dilation_w - geo.pad_w;
  acc sum = acc(0);
  index_t l = begin + threadIdx.x;
  if (l < end) {
    GridCursor pixel;
    pixel.seek(l, geo.P, geo.Q);
    const GridStep step = grid_step(kThreads, geo.P, geo.Q);
    for (; l < end; l += kThreads) {
      const int ih = pixel.i * geo.stride_h + rd, iw = pixel.j * geo.stride_w + sd;
      if (static_cast<unsigned>(ih) < unsigned(geo.H) &&
          static_cast<unsigned>(iw) < unsigned(geo.W)) {
        const scalar_t gv =
            g_channel[pixel.n * g_sample + static_cast<index_t>(pixel.i) * geo.Q + pixel.j];
        const scalar_t xv = x_channel[pixel.n * x_sample + static_cast<index_t>(ih) * geo.W + iw];
        sum += static_cast<acc>(gv) * static_cast<acc>(xv);
      }
      pixel.advance(step, geo.P, geo.Q);
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[int64_t{blockIdx.y} * gridDim.x + e] = sum;
}

void depthwise_forward(const Geometry& geo, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, at::Tensor& output) {
  const int64_t total = output.numel();
  CNNKIT_DISPATCH_CUDA_FLOATING(input.scalar_type(), "cnnkit_depthwise_forward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({input.numel(), output.numel(), weight.numel()}), [&] {
      CNNKIT_LAUNCH(grid_for(total), kThreads, 0, current_stream(), depthwise_forward_kernel<scalar_t, index_t>)(
          input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
          output.mutable_data_ptr<scalar_t>(), geo, total);
      CNNKIT_CHECK_LAUNCH();
    });
  });
}

void depthwise_input_backward(const Geometry& geo, const at::Tensor& grad_output,
                              const at::Tensor& weight, at::Tensor& grad_input) {
  const int64_t total = grad_input.numel();
  CNNKIT_DISPATCH_CUDA_FLOATING(grad_output.scalar_type(), "cnnkit_depthwise_input_backward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({grad_output.numel(), grad_input.numel(), weight.numel()}),
                          [&] {
      CNNKIT_LAUNCH(grid_for(total), kThreads, 0, current_stream(), depthwise_input_backward_kernel<scalar_t, index_t>)(
          grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<scalar_t>(), geo, total);
      CNNKIT_CHECK_LAUNCH();
    });
  });
}

void depthwise_weight_backward(const Geometry& geo, const at::Tensor& grad_output,
                               const at::Tensor& input, at::Tensor& grad_weight) {
  const int64_t outputs = grad_weight.numel();  // K*R*S
  TORCH_CHECK(outputs <= std::numeric_limits<int32_t>::max(),
              geo.op, ": depthwise weight gradient too large for one CUDA grid (", outputs,
              " weights)");
  const int64_t slices = slice_count(outputs, int64_t{geo.N} * geo.PQ, 4096);
  const auto acc_dtype = at::toOpMathType(grad_weight.scalar_type());
  auto partial = at::empty({slices, outputs}, grad_weight.options().dtype(acc_dtype));
  CNNKIT_DISPATCH_CUDA_FLOATING(input.scalar_type(), "cnnkit_depthwise_weight_backward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({grad_output.numel(), input.numel()}), [&] {
      const dim3 grid(static_cast<unsigned>(outputs), static_cast<unsigned>(slices));
      CNNKIT_LAUNCH(grid, kThreads, 0, current_stream(), depthwise_weight_backward_kernel<scalar_t, index_t>)(
          grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
          partial.mutable_data_ptr<acc_t<scalar_t>>(), geo);
      CNNKIT_CHECK_LAUNCH();
    });
  });
  sum_slices(partial, grad_weight, slices, outputs);
}

// ----------------------------------------------------------------- bias gradient

struct BiasBackwardArgs {
  int N, K, P, Q, tile_h, tile_w;
};

// db[k, a, b] over a slice of the locations of phase (a, b): one block per
// (k, phase) (blockIdx.x = k*T + phase) and slice (blockIdx.y).
template <typename scalar_t, typename index_t>
__global__ void bias_backward_kernel(const scalar_t* __restrict__ grad_output,
                                     acc_t<scalar_t>* __restrict__ partial,
                                     const BiasBackwardArgs args) {
  using acc = acc_t<scalar_t>;
  const int T = args.tile_h * args.tile_w;
  const int k = blockIdx.x / T, t = blockIdx.x % T;
  const int a = t / args.tile_w, b = t % args.tile_w;
  const int Pa = args.P > a ? (args.P - a + args.tile_h - 1) / args.tile_h : 0;
  const int Qb = args.Q > b ? (args.Q - b + args.tile_w - 1) / args.tile_w : 0;
  const int64_t length = int64_t{args.N} * Pa * Qb;
  const index_t begin = static_cast<index_t>(length * blockIdx.y / gridDim.y);
  const index_t end = static_cast<index_t>(length * (blockIdx.y + 1) / gridDim.y);
  const index_t PQ = static_cast<index_t>(args.P) * args.Q;
  const index_t sample = PQ * args.K;
  const scalar_t* channel = grad_output + static_cast<index_t>(k) * PQ;
  acc sum = acc(0);
  index_t l = begin + threadIdx.x;
  if (l < end) {
    GridCursor pixel;
    pixel.seek(l, Pa, Qb);
    const GridStep step = grid_step(kThreads, Pa, Qb);
    for (; l < end; l += kThreads) {
      const int p = a + pixel.i * args.tile_h, q = b + pixel.j * args.tile_w;
      sum += static_cast<acc>(channel[pixel.n * sample + static_cast<index_t>(p) * args.Q + q]);
      pixel.advance(step, Pa, Qb);
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[int64_t{blockIdx.y} * gridDim.x + blockIdx.x] = sum;
}

}  // namespace

// ------------------------------------------------------------------ the engine

at::Tensor conv_forward(const Conv2dProblem& pb, const at::Tensor& input,
                        const at::Tensor& weight_phases, const at::Tensor& bias_phases) {
  auto output = at::empty({pb.N, pb.K, pb.P, pb.Q}, input.options());
  if (output.numel() == 0) return output;
  const Geometry geo = make_geometry(pb);
  const auto weight = weight_phases.contiguous();
  const auto bias = bias_phases.defined() ? bias_phases.contiguous() : at::Tensor();
  if (is_depthwise(pb)) {
    depthwise_forward(geo, input, weight, bias, output);
  } else if (is_half_precision(input)) {
    for (int64_t t = 0; t < pb.phase_count(); ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) continue;
      tensor_core::forward_phase(pb, t, input, weight.select(0, t),
                                 bias.defined() ? bias.select(0, t) : at::Tensor(), output);
    }
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_conv_forward", [&] {
      gemm_forward<scalar_t>(pb, geo, input, weight, bias, output);
    });
  }
  return output;
}

at::Tensor conv_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& weight_phases) {
  auto grad_input = at::empty({pb.N, pb.C, pb.H, pb.W}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const Geometry geo = make_geometry(pb);
  const auto weight = weight_phases.contiguous();
  if (is_depthwise(pb)) {
    depthwise_input_backward(geo, grad_output, weight, grad_input);
  } else if (is_half_precision(grad_output)) {
    // The phases add into one float32 accumulator, rounded once at the end.
    auto acc = at::zeros({pb.N, pb.C, pb.H, pb.W}, grad_output.options().dtype(at::kFloat));
    for (int64_t t = 0; t < pb.phase_count(); ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) continue;
      tensor_core::input_backward_phase(pb, t, grad_output, weight.select(0, t), acc);
    }
    grad_input.copy_(acc);
  } else {
    AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_conv_input_backward", [&] {
      gemm_input_backward<scalar_t>(pb, geo, grad_output, weight, grad_input);
    });
  }
  return grad_input;
}

at::Tensor conv_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                const at::Tensor& input) {
  auto grad_weight = at::empty(
      {pb.phase_count(), pb.groups, pb.group_out_channels(), pb.patch_size()}, input.options());
  if (grad_weight.numel() == 0) return grad_weight;
  if (pb.N == 0) return grad_weight.zero_();
  const Geometry geo = make_geometry(pb);
  if (is_depthwise(pb)) {
    depthwise_weight_backward(geo, grad_output, input, grad_weight);
  } else if (is_half_precision(input)) {
    for (int64_t t = 0; t < pb.phase_count(); ++t) {
      auto phase_gradient = grad_weight.select(0, t);
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) {
        phase_gradient.zero_();
      } else {
        tensor_core::weight_backward_phase(pb, t, grad_output, input, phase_gradient);
      }
    }
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_conv_weight_backward", [&] {
      gemm_weight_backward<scalar_t>(pb, geo, grad_output, input, grad_weight);
    });
  }
  return grad_weight;
}

at::Tensor conv_bias_backward(const at::Tensor& grad_output, int64_t tile_h, int64_t tile_w) {
  const auto g = grad_output.contiguous();
  const int64_t N = g.size(0), K = g.size(1), P = g.size(2), Q = g.size(3);
  auto grad_bias = at::empty({K, tile_h, tile_w}, g.options());
  if (grad_bias.numel() == 0) return grad_bias;
  const int64_t outputs = grad_bias.numel();  // K * tH * tW
  TORCH_CHECK(below_limit({N, K, P, Q, tile_h, tile_w}) &&
                  outputs <= std::numeric_limits<int32_t>::max(),
              "cnnkit: the CUDA bias gradient needs sizes and tiles below 2^29 and fewer than "
              "2^31 biases, but got grad_output of shape ", g.sizes(), " and tiles (", tile_h,
              ", ", tile_w, ")");
  // The largest phase (0, 0) has ceil(P/tH) * ceil(Q/tW) locations per sample.
  const int64_t length = N * ceil_div(P, tile_h) * ceil_div(Q, tile_w);
  const int64_t slices = slice_count(outputs, length, 4096);
  auto partial = at::empty({slices, outputs}, g.options().dtype(at::toOpMathType(g.scalar_type())));
  const BiasBackwardArgs args{static_cast<int>(N), static_cast<int>(K), static_cast<int>(P),
                              static_cast<int>(Q), static_cast<int>(tile_h),
                              static_cast<int>(tile_w)};
  CNNKIT_DISPATCH_CUDA_FLOATING(g.scalar_type(), "cnnkit_conv_bias_backward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({g.numel()}), [&] {
      const dim3 grid(static_cast<unsigned>(outputs), static_cast<unsigned>(slices));
      CNNKIT_LAUNCH(grid, kThreads, 0, current_stream(), bias_backward_kernel<scalar_t, index_t>)(
          g.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t<scalar_t>>(), args);
      CNNKIT_CHECK_LAUNCH();
    });
  });
  sum_slices(partial, grad_bias, slices, outputs);
  return grad_bias;
}

}  // namespace cnnkit::cuda

TORCH_LIBRARY_IMPL(CNNKIT_CUDA_LIBRARY, CNNKIT_CUDA_DISPATCH_KEY, m) {
  CNNKIT_REGISTER_CONV2D_OPS(m, cnnkit::cuda::Backend);
}
