// Convolution forward on CUDA cores (float32, float64): the implicit GEMM of
// conv2d_gemm.cuh with rows = output pixels of one tile phase, columns = output
// channels of one group, reduction over (c, r, s).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <numeric>

#include "cuda/conv2d_gemm.cuh"

namespace cnnkit::cuda::conv {
namespace {

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
  const T* bias;    // (T, K), or (K, P, Q) when problem.untied_bias; or null
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

  // Epilogue: Z[n, g*Kg + k, p, q] = acc + bias[t, g*Kg + k], or with an
  // untied bias acc + bias[g*Kg + k, p, q]. Column k's offset (g*Kg + k)*PQ
  // is its plane's in the output and in an untied bias alike.
  const auto cols = tile_columns<Shape>(bt.n0, geo.Kg,
                                        [&](int k) { return int64_t{g * geo.Kg + k} * geo.PQ; });
  const int64_t out_plane = int64_t{geo.K} * geo.PQ;
  const int64_t plane = ph.P_a * ph.Q_b;
  const int Qb = static_cast<int>(ph.Q_b);
  // Row m of the phase: output pixel p*Q + q of sample n.
  const auto pixel = [&](int64_t m, int64_t& n) {
    n = m / plane;
    const int64_t rem = m - n * plane;
    const int row = static_cast<int>(rem / Qb), col = static_cast<int>(rem - int64_t{row} * Qb);
    const int p = static_cast<int>(ph.a) + row * geo.tile_h;
    const int q = static_cast<int>(ph.b) + col * geo.tile_w;
    return int64_t{p} * geo.Q + q;
  };
  // One phase: row m is pixel m % PQ of sample m / PQ.
  const auto dense_row = [&](int64_t m) {
    const int64_t n = m / geo.PQ;
    return n * out_plane + (m - n * geo.PQ);
  };
  const auto row = [&](int64_t m) {
    int64_t n;
    const int64_t pq = pixel(m, n);
    return n * out_plane + pq;
  };
  if (args.bias != nullptr && args.problem.untied_bias) {
    int64_t bias_row[TM];  // the pixel of each of the thread's rows
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t m = bt.m0 + micro_row<BM, TM>(r, threadIdx.x % 16);
      int64_t n;
      bias_row[r] = m < M ? pixel(m, n) : 0;
    }
    store_micro_tile<T, Shape>(
        args.output, bt.m0, M, args.vector_store, cols,
        [&](int r, int e) { return acc[r][e] + args.bias[cols.offset[e] + bias_row[r]]; },
        dense_row, row);
    return;
  }
  T col_bias[TN];
#pragma unroll
  for (int e = 0; e < TN; ++e) {
    const int k = bt.n0 + micro_row<Shape::BN, TN>(e, threadIdx.x / 16);
    col_bias[e] = (args.bias != nullptr && cols.ok[e])
                      ? args.bias[int64_t{t} * geo.K + g * geo.Kg + k]
                      : T(0);
  }
  store_micro_tile<T, Shape>(
      args.output, bt.m0, M, args.vector_store, cols,
      [&](int r, int e) { return acc[r][e] + col_bias[e]; }, dense_row, row);
}

}  // namespace

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

template void gemm_forward<float>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&, at::Tensor&);
template void gemm_forward<double>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, at::Tensor&);

}  // namespace cnnkit::cuda::conv
