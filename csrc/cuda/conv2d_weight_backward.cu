// Convolution weight gradient on CUDA cores (float32, float64): rows = (c, r, s),
// columns = output channels, the reduction over output pixels cut into fixed
// slices whose partial sums are added in slice order.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <numeric>

#include "cuda/conv2d_gemm.cuh"

namespace cnnkit::cuda::conv {
namespace {

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

}  // namespace

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

template void gemm_weight_backward<float>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                          const at::Tensor&, at::Tensor&);
template void gemm_weight_backward<double>(const Conv2dProblem&, const Geometry&, const at::Tensor&,
                                          const at::Tensor&, at::Tensor&);

}  // namespace cnnkit::cuda::conv
