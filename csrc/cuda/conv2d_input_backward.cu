// Convolution input gradient on CUDA cores (float32, float64): one implicit
// GEMM per residue class of input pixels over exactly the taps that reach it
// (conv2d_gemm.cuh explains the classes).
#include <ATen/ops/empty.h>

#include <algorithm>
#include <numeric>

#include "cuda/conv2d_gemm.cuh"

namespace cnnkit::cuda::conv {
namespace {

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

}  // namespace

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

template void gemm_input_backward<float>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                          const at::Tensor&, at::Tensor&);
template void gemm_input_backward<double>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                          const at::Tensor&, at::Tensor&);

}  // namespace cnnkit::cuda::conv
