// Convolution on the CPU: forward, input gradient (= transposed convolution),
// weight gradient and bias gradient; the engine of conv2d.h, which serves tiled
// convolution too (one dense convolution per tile phase).
//
// Each view is a matrix product per sample and group over the patch matrix of
// im2col.h (rows (c, r, s), columns (p, q)):
//
//     forward          Z[n]_g  = K_g (K/G x C/G*R*S) @ col(V[n])_g
//     input gradient   dV[n]   = col2im( K_g^T @ G[n]_g )
//     weight gradient  dK_g   += G[n]_g @ col(V[n])_g^T     (summed over n)
//
// The products run on cnnkit's own matrix product (gemm.h), as does the data
// movement (unfolding, folding back, bias). A 1x1 kernel at stride 1 without
// padding needs no unfolding:
// the input plane set itself is the patch matrix.
//
// Batching: small images put the patch matrices of several samples side by
// side, so each product has about 1024 columns and reads the weights once per
// block of samples. Parallelism: with at least as many blocks as threads,
// the blocks are split into one contiguous range per thread, each with its
// own scratch and single-threaded products; a forward or weight gradient
// whose batch is one block with many tile phases gets one contiguous range
// of phases per thread instead; otherwise blocks run one after another and
// the loops and products inside each run in parallel.
//
// Determinism: every output element is the same sum in the same order on
// any number of threads. The blocks do not depend on the thread count, the
// products split only their rows and columns over threads (gemm.h), the
// input gradient sums each location's phases in order on one thread, and
// the weight gradient's partial sums cover fixed ranges of blocks.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/conv2d.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "conv_ops.h"
#include "cpu/memory.h"
#include "cpu/narrow_mm.h"
#include "cpu/winograd.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

bool is_pointwise(const Conv2dProblem& pb) {
  return pb.R == 1 && pb.S == 1 && pb.stride_h == 1 && pb.stride_w == 1 && pb.pad_h == 0 &&
         pb.pad_w == 0 && pb.P == pb.H && pb.Q == pb.W;
}

// The dense convolution computing the output locations of tile phase `phase`
// = (a, b): rows p = a + i*tH read input rows (a + i*tH)*s - pad + r*d
// = i*(s*tH) - (pad - a*s) + r*d. The shifted padding may be negative.
Conv2dProblem phase_problem(const Conv2dProblem& pb, int64_t phase) {
  const ConvPhase ph = conv_phase(pb, phase);
  Conv2dProblem sub = pb;
  sub.P = ph.P_a;
  sub.Q = ph.Q_b;
  sub.stride_h = pb.stride_h * pb.tile_h;
  sub.stride_w = pb.stride_w * pb.tile_w;
  sub.pad_h = pb.pad_h - ph.a * pb.stride_h;
  sub.pad_w = pb.pad_w - ph.b * pb.stride_w;
  sub.tile_h = sub.tile_w = 1;
  return sub;
}

// Output rows [p0, p1) of `sub`: the convolution with P = p1 - p0 whose
// top padding is shifted by p0*stride_h (negative past the padded rows).
Conv2dProblem row_band(const Conv2dProblem& sub, int64_t p0, int64_t p1) {
  Conv2dProblem band = sub;
  band.P = p1 - p0;
  band.pad_h = sub.pad_h - p0 * sub.stride_h;
  return band;
}

// How the work is cut: blocks of `block` samples whose patch matrices sit side
// by side in one matrix (so that a small image still gives each product about
// kTargetColumns columns and the weights are read once per block, not once
// per sample), and `chunks` parallel tasks. Normally a chunk is a contiguous
// range of blocks and does every phase of them. When the whole batch is one
// block and there are at least as many tile phases as threads, a chunk is
// instead a contiguous range of phases, [phase_bounds[c], phase_bounds[c+1]),
// of that block: each thread then runs its phases from unfolding to product to
// store without meeting the other, with single-threaded products like the
// blocks of a dense convolution. Splitting every phase's steps over the threads cost
// two or three parallel regions per phase (about 150 per fwd+bwd for 4x4
// tiles' 16 phases), and with 2x2 tiles on 7x7 to 28x28 images it ran
// 2 to 18% slower per pass (measured in alternating single calls, median of
// 15 pairs: 4x128x28x28 input gradient 0.88-0.90 of the time, 4x512x14x14
// input gradient 0.89, 4x512x7x7 weight gradient 0.82).
struct BatchPlan {
  int64_t block, blocks, chunks;
  bool by_phases;
  std::vector<int64_t> phase_bounds;  // chunks + 1 entries when by_phases
};

constexpr int64_t kTargetColumns = 1024;
constexpr int64_t kPointwiseSampleColumns = 256;

// A phase's share of the work, for splitting phases over threads: its columns
// plus a term for reading its weight, which costs about as much as
// kWeightReadColumns columns of products (a few columns per phase make
// the product a stream over the weight).
constexpr int64_t kWeightReadColumns = 16;

// Phase ranges are used with fewer than 4 phases per thread only when no
// range has more than (1 + 1/kPhaseRangeExcess) of an equal share of the
// work (2x2 tiles on 7x7: 144 against 130), since a thread with more phases
// than the other would leave it idle; 1x3 tiles on two threads (2 phases
// against 1) keep the phases' steps split over the threads.
constexpr int64_t kPhaseRangeExcess = 8;

// `sample_columns`: the product columns of one sample in one phase (by
// default those of the patch matrix of phase 0); `phase_chunks`: whether
// chunks of phases may be used; `min_blocks`: cut the batch into at least
// this many blocks (as far as it has samples).
BatchPlan plan_batch(const Conv2dProblem& pb, int64_t sample_columns = 0,
                     int64_t target_columns = kTargetColumns, bool phase_chunks = true,
                     int64_t min_blocks = 1) {
  const auto sub = phase_problem(pb, 0);
  const int64_t N = std::max<int64_t>(1, pb.N), threads = at::get_num_threads();
  const int64_t T = pb.phase_count();
  const int64_t columns = std::max<int64_t>(1, sample_columns > 0 ? sample_columns : sub.P * sub.Q);
  // The blocks do not depend on the thread count: the weight gradient sums
  // its products block by block (see kWeightPartialSums).
  int64_t blocks = std::max(ceil_div(N * columns, target_columns), min_blocks);
  // A pointwise convolution's patch matrix is the input itself, one sample
  // at a time: with enough columns per sample, blocks of one sample save
  // copying samples side by side.
  if (is_pointwise(sub) && columns >= kPointwiseSampleColumns) blocks = N;
  const int64_t block = ceil_div(N, std::min(blocks, N));
  blocks = ceil_div(N, block);
  if (phase_chunks && threads > 1 && blocks == 1 && T >= threads) {
    // Contiguous phase ranges of about equal work.
    std::vector<int64_t> work(T + 1, 0);  // work[t]: phases [0, t)
    for (int64_t t = 0; t < T; ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      work[t + 1] = work[t] + N * ph.P_a * ph.Q_b + kWeightReadColumns;
    }
    std::vector<int64_t> bounds(threads + 1, T);
    bounds[0] = 0;
    int64_t largest = 0;  // the most work in one range
    for (int64_t c = 1; c <= threads; ++c) {
      if (c < threads) {
        const int64_t target = work[T] * c / threads;
        int64_t t = bounds[c - 1];
        while (t < T && work[t] < target) ++t;
        bounds[c] = t;
      }
      largest = std::max(largest, work[bounds[c]] - work[bounds[c - 1]]);
    }
    // Many phases always split well enough (the largest range exceeds an
    // equal share by at most one phase, a quarter of the share or less).
    const bool even = kPhaseRangeExcess * threads * largest <= (kPhaseRangeExcess + 1) * work[T];
    if (T >= 4 * threads || even) {
      return {block, blocks, threads, true, std::move(bounds)};
    }
  }
  return {block, blocks, (threads > 1 && blocks >= threads) ? threads : 1, false, {}};
}

// The input gradient's plan: chunks of samples, at least one block per
// thread, never chunks of phases. Phase chunks would each sum into a
// gradient of their own, added together at the end, so where a phase range
// ends would change the order of each input location's sum with the thread
// count; split by samples, every location's sum runs over the phases in
// order on one thread.
BatchPlan plan_input_backward_batch(const Conv2dProblem& pb) {
  return plan_batch(pb, 0, kTargetColumns, /*phase_chunks=*/false,
                    /*min_blocks=*/at::get_num_threads());
}

// The weight gradient sums the products of its blocks of samples: in chunks
// of consecutive blocks, each chunk into a partial sum of its own, block
// after block, and then the partial sums in chunk order. The chunks are
// min(blocks, kWeightPartialSums), whatever the thread count, so each weight
// element is the same sum in the same order on any number of threads; the
// threads take whole chunks.
constexpr int64_t kWeightPartialSums = 8;

BatchPlan plan_weight_backward_batch(BatchPlan plan) {
  if (!plan.by_phases) plan.chunks = std::min(plan.blocks, kWeightPartialSums);
  return plan;
}

// fn(chunk, n0, n1, ph0, ph1) for every block [n0, n1) of samples and its
// phases [ph0, ph1), the work of one chunk on one thread (see BatchPlan).
// Worker threads take the caller's thread-local state (autograd below the
// dispatcher, as the host function set it), since the blocks call ATen ops.
template <typename F>
void for_each_block(const Conv2dProblem& pb, const BatchPlan& plan, const F& fn) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, plan.chunks, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t c = begin; c < end; ++c) {
      if (plan.by_phases) {
        fn(c, int64_t(0), pb.N, plan.phase_bounds[c], plan.phase_bounds[c + 1]);
        continue;
      }
      for (int64_t b = c * plan.blocks / plan.chunks; b < (c + 1) * plan.blocks / plan.chunks;
           ++b) {
        fn(c, b * plan.block, std::min(pb.N, (b + 1) * plan.block), int64_t(0),
           pb.phase_count());
      }
    }
  });
}

// dst[g] = a[g] @ b[g] (+ dst[g] if accumulate) for every group g (tensors of
// shape (G, rows, cols)), on cnnkit's matrix product (gemm.h). A product
// narrow in one dimension only (the tile phases of a tiled convolution on a
// small image: a large weight against a few columns), when written rather
// than accumulated, streams its large matrix through the kernels of
// narrow_mm.h instead.
void grouped_mm(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b,
                bool accumulate = false) {
  if (!accumulate && narrow_mm(dst, a, b)) return;
  grouped_matmul(dst, a, b, accumulate);
}

// Input-gradient patch matrices with at most this many columns are computed
// transposed (conv_input_backward).
constexpr int64_t kTransposedGradientColumns = 256;

// Whether samples [n0, n0 + count) of phase `sub` can use the input itself as
// their patch matrix: one sample of a pointwise convolution.
bool patches_are_input(const Conv2dProblem& sub, int64_t count) {
  return count == 1 && is_pointwise(sub);
}

// Scratch for the patch matrices of one block in the largest phase (phase 0).
at::Tensor patch_scratch(const Conv2dProblem& pb, const BatchPlan& plan, const at::Tensor& like) {
  const auto sub = phase_problem(pb, 0);
  return empty_large({pb.groups * pb.patch_size() * plan.block * sub.P * sub.Q}, like.options());
}

// A (G, C/G*R*S, columns) matrix at the start of the scratch.
at::Tensor scratch_matrix(const Conv2dProblem& sub, int64_t columns, at::Tensor& scratch) {
  const int64_t rows = sub.patch_size();
  return scratch.narrow(0, 0, sub.groups * rows * columns).view({sub.groups, rows, columns});
}

// The patch matrix of samples [n0, n0 + count) for phase `sub`,
// (G, C/G*R*S, count*P*Q), sample i in columns [i*P*Q, (i+1)*P*Q).
at::Tensor patches(const Conv2dProblem& sub, const at::Tensor& input, int64_t n0, int64_t count,
                   at::Tensor& scratch) {
  if (patches_are_input(sub, count)) {
    return input.select(0, n0).view({sub.groups, sub.group_in_channels(), sub.H * sub.W});
  }
  const int64_t PQ = sub.P * sub.Q;
  auto col = scratch_matrix(sub, count * PQ, scratch);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_im2col", [&] {
    im2col(input.select(0, n0).const_data_ptr<scalar_t>(), col.mutable_data_ptr<scalar_t>(), sub,
           count * PQ, count);
  });
  return col;
}

// Where a phase's locations sit in a (K, count*sample_pitch) matrix: sample
// i's location (y, x) of the phase in column i*sample_pitch + y*row_pitch + x.
// Patch column order is sample_pitch = P'*Q', row_pitch = Q'.
struct ColumnLayout {
  int64_t sample_pitch, row_pitch;
};

ColumnLayout patch_column_layout(const Conv2dProblem& pb, int64_t phase) {
  const ConvPhase ph = conv_phase(pb, phase);
  return {ph.P_a * ph.Q_b, ph.Q_b};
}

// Copies between the locations of `phase` in samples [n0, n0 + count) of an
// (N, K, P, Q) tensor and a (K, count*sample_pitch) matrix of the given
// layout: a gather into the matrix, or a scatter from it. Each row of
// locations is a run with the tile's column stride, which gather_strided and
// scatter_strided (im2col.h) copy with vectorised loops (ATen's generic copy
// of the same strided view is scalar). Matrix columns that are no location
// are left as they are.
template <bool kToMatrix, typename T>
void copy_phase_locations(const Conv2dProblem& pb, int64_t phase, int64_t n0, int64_t count,
                          ColumnLayout layout, std::conditional_t<kToMatrix, const T*, T*> tensor,
                          std::conditional_t<kToMatrix, T*, const T*> matrix) {
  const ConvPhase ph = conv_phase(pb, phase);
  const int64_t PQ = pb.P * pb.Q;
  at::parallel_for(0, pb.K * count, grain_for(ph.P_a * ph.Q_b), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = k*count + i
      const int64_t k = row / count, i = row % count;
      const auto plane = tensor + ((n0 + i) * pb.K + k) * PQ + ph.a * pb.Q + ph.b;
      const auto columns = matrix + row * layout.sample_pitch;
      for (int64_t y = 0; y < ph.P_a; ++y) {
        const auto locations = plane + y * pb.tile_h * pb.Q;
        if constexpr (kToMatrix) {
          gather_strided(columns + y * layout.row_pitch, locations, ph.Q_b, pb.tile_w);
        } else {
          scatter_strided(locations, columns + y * layout.row_pitch, ph.Q_b, pb.tile_w);
        }
      }
    }
  });
}

// Output-shaped values (N, K, P, Q) of samples [n0, n0 + count) at the
// locations of `phase`, as a (G, K/G, count*P'*Q') matrix in patch column
// order: a view when that is the memory layout already, else a copy.
at::Tensor phase_columns(const Conv2dProblem& pb, const at::Tensor& t, int64_t phase, int64_t n0,
                         int64_t count) {
  const int64_t G = pb.groups, Kg = pb.group_out_channels();
  if (pb.phase_count() == 1 && count == 1) return t.select(0, n0).view({G, Kg, pb.P * pb.Q});
  const ConvPhase ph = conv_phase(pb, phase);
  auto columns = empty_large({G, Kg, count * ph.P_a * ph.Q_b}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "cnnkit_phase_columns", [&] {
    copy_phase_locations</*kToMatrix=*/true, scalar_t>(
        pb, phase, n0, count, patch_column_layout(pb, phase), t.const_data_ptr<scalar_t>(),
        columns.mutable_data_ptr<scalar_t>());
  });
  return columns;
}

// Adds the bias of `phase` to its values for samples [n0, n0 + count) in a
// contiguous (K, count*sample_pitch) matrix of the given layout, while the
// block is in cache: bias (T, K) adds one value per row; an untied bias
// (K, P, Q) adds its values at the phase's locations, rows p = a + i*tH and
// columns q = b + j*tW, to every sample (columns that are no location of the
// phase are left as they are).
void add_phase_bias(const Conv2dProblem& pb, const at::Tensor& bias, int64_t phase, int64_t count,
                    ColumnLayout layout, at::Tensor& matrix) {
  if (!bias.defined()) return;
  if (!pb.untied_bias) {
    matrix.view({pb.K, -1}).add_(bias.select(0, phase).view({pb.K, 1}));
    return;
  }
  const ConvPhase ph = conv_phase(pb, phase);
  matrix.view({pb.K, count, layout.sample_pitch / layout.row_pitch, layout.row_pitch})
      .narrow(2, 0, ph.P_a)
      .narrow(3, 0, ph.Q_b)
      .add_(bias.slice(1, ph.a, pb.P, pb.tile_h).slice(2, ph.b, pb.Q, pb.tile_w).unsqueeze(1));
}

// The inverse of phase_columns: writes a (G, K/G, count*P'*Q') matrix back.
void store_phase_columns(const Conv2dProblem& pb, at::Tensor& t, int64_t phase, int64_t n0,
                         int64_t count, const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "cnnkit_store_phase_columns", [&] {
    copy_phase_locations</*kToMatrix=*/false, scalar_t>(
        pb, phase, n0, count, patch_column_layout(pb, phase), t.mutable_data_ptr<scalar_t>(),
        columns.const_data_ptr<scalar_t>());
  });
}

// The sum over chunks of per-chunk partial sums (chunks, T, ...) whose entry
// (c, t) holds something only where written[c*T + t]: unwritten slices are
// zeroed, then the chunks are added to chunk 0 in order, so the result does
// not depend on thread timing. Returns chunk 0's slice (a view).
at::Tensor sum_chunk_partials(at::Tensor& partial, const std::vector<char>& written) {
  const int64_t chunks = partial.size(0), T = partial.size(1);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t t = 0; t < T; ++t) {
      if (!written[c * T + t]) partial[c][t].zero_();
    }
  }
  auto sum = partial.select(0, 0);
  for (int64_t c = 1; c < chunks; ++c) sum.add_(partial.select(0, c));
  return sum;
}

// ------------------------------------------------------------- tap products
//
// Tile phases of a large image (2x2 tiles on 56x56 and larger) skip the patch
// matrix in the forward and weight gradient (and in the input gradient with
// at least as many input as output channels). Phase (a, b) at stride (Sh, Sw) = (s*tH, s*tW) reads,
// for kernel tap (r, s), padded input row i*Sh + u with u = a*s_h + r*d_h,
// and column j*Sw + v with v = b*s_w + s*d_w. Writing u = dh*Sh + alpha and
// v = dw*Sw + beta, that is element (i + dh, j + dw) of the polyphase
// component (alpha, beta) of the padded input: rows alpha::Sh, columns
// beta::Sw. Each component is stored as a (C, columns) matrix whose columns
// run over (sample, y, x) with Wc columns per row and Hc rows per sample, so
// the tap's input for every location of the phase is that matrix shifted by
// dh*Wc + dw columns, a plain strided view. The phase is then a sum of R*S
// products, one per tap:
//
//     Z_ab        = sum over (r, s) of K_ab[:, :, r, s] (K x C) @ shifted component
//     dK_ab[r, s] = G_ab @ shifted component^T
//     d component (shifted) += K_ab[:, :, r, s]^T @ G_ab
//
// with G_ab, the output gradient of the phase, laid out in the same columns.
// Columns whose x or y is past the phase's extent are computed and dropped
// in the forward, and are zero in G_ab, so they add nothing to either
// gradient. The components hold about one copy of the input, where the patch
// matrices hold R*S/(tH*tW) of it per phase (9/4 for 3x3 kernels, 2x2 tiles),
// and nothing is unfolded or folded back; the price is R*S products with
// C-deep sums instead of one with C*R*S, and a few wasted columns.
struct TapGeometry {
  int64_t Sh, Sw;  // the phases' stride
  int64_t Hc, Wc;  // rows and columns of one sample's component
  int64_t slack;   // zero columns after the last sample: the largest shift
  int64_t columns(int64_t count) const { return count * Hc * Wc; }
  int64_t ld(int64_t count) const { return columns(count) + slack; }
  // Where a phase's locations sit in the components' columns.
  ColumnLayout layout() const { return {Hc * Wc, Wc}; }
};

TapGeometry tap_geometry(const Conv2dProblem& pb) {
  const int64_t Sh = pb.stride_h * pb.tile_h, Sw = pb.stride_w * pb.tile_w;
  // The largest tap offsets u and v, over every phase and tap.
  const int64_t reach_h = (pb.tile_h - 1) * pb.stride_h + (pb.R - 1) * pb.dilation_h;
  const int64_t reach_w = (pb.tile_w - 1) * pb.stride_w + (pb.S - 1) * pb.dilation_w;
  const ConvPhase first = conv_phase(pb, 0);  // the phase with the most rows and columns
  const int64_t Hc = first.P_a + reach_h / Sh, Wc = first.Q_b + reach_w / Sw;
  return {Sh, Sw, Hc, Wc, (reach_h / Sh) * Wc + reach_w / Sw};
}

struct Tap {
  int64_t component, shift;
};

Tap tap_of(const Conv2dProblem& pb, const TapGeometry& geo, const ConvPhase& ph, int64_t r,
           int64_t s) {
  const int64_t u = ph.a * pb.stride_h + r * pb.dilation_h;
  const int64_t v = ph.b * pb.stride_w + s * pb.dilation_w;
  return {(u % geo.Sh) * geo.Sw + v % geo.Sw, (u / geo.Sh) * geo.Wc + v / geo.Sw};
}

// Where the tap products pay, measured side by side against the patch-matrix
// engine with 2x2 tiles of 3x3 kernels on 4 samples of 56x56: forward 5 to
// 19% faster (64, 128 and 256 channels), weight gradient 0 to 11%; in a
// Python prototype, slower at 128 channels on 28x28, where the C-deep
// products lose more than unfolding costs. So: at least 64 input channels,
// phase rows and columns long enough that the wasted columns stay within
// 10%, one group.
bool use_tap_products(const Conv2dProblem& pb) {
  if (pb.phase_count() == 1 || pb.groups != 1 || pb.C < 64) return false;
  const auto geo = tap_geometry(pb);
  const ConvPhase first = conv_phase(pb, 0);
  return 10 * geo.Hc * geo.Wc <= 11 * first.P_a * first.Q_b;
}

// Product columns per block: more than the patch engine's, since each phase
// makes R*S calls.
constexpr int64_t kTapTargetColumns = 2048;

BatchPlan plan_tap_batch(const Conv2dProblem& pb, const TapGeometry& geo) {
  return plan_batch(pb, geo.Hc * geo.Wc, kTapTargetColumns, /*phase_chunks=*/false);
}

// The kernel taps of every phase as (T, R, S, K, C): tap (r, s) of phase t is
// the (K, C) matrix [t][r][s].
at::Tensor tap_weights(const Conv2dProblem& pb, const at::Tensor& weight_phases) {
  return weight_phases.view({pb.phase_count(), pb.K, pb.C, pb.R, pb.S})
      .permute({0, 3, 4, 1, 2})
      .contiguous();
}

// Splitting the padded input into its components is im2col (im2col.h) of the
// convolution with kernel (Sh, Sw) at stride (Sh, Sw), undilated, over Hc x Wc
// outputs: its patch row (c, alpha, beta), column (i*Hc + y)*Wc + x, is padded
// input [i, c, y*Sh + alpha, x*Sw + beta]. The windows do not overlap, so
// col2im of the same problem puts each component entry back in its place
// (the input locations no component holds get zero).
Conv2dProblem component_problem(const Conv2dProblem& pb, const TapGeometry& geo) {
  Conv2dProblem window = pb;
  window.R = window.stride_h = geo.Sh;
  window.S = window.stride_w = geo.Sw;
  window.dilation_h = window.dilation_w = 1;
  window.P = geo.Hc;
  window.Q = geo.Wc;
  window.tile_h = window.tile_w = 1;
  return window;
}

// The components of samples [n0, n0 + count) of the zero-padded input, as a
// (C, Sh*Sw, ld) tensor: row c of component alpha*Sw + beta is
// [c][alpha*Sw + beta], and the columns past geo.columns(count) are the zero
// slack.
at::Tensor components(const Conv2dProblem& pb, const TapGeometry& geo, const at::Tensor& input,
                      int64_t n0, int64_t count) {
  auto comps = at::empty({pb.C, geo.Sh * geo.Sw, geo.ld(count)}, input.options());
  comps.narrow(2, geo.columns(count), geo.slack).zero_();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_components", [&] {
    im2col(input.select(0, n0).const_data_ptr<scalar_t>(), comps.mutable_data_ptr<scalar_t>(),
           component_problem(pb, geo), geo.ld(count), count);
  });
  return comps;
}

// The output gradient of `phase` in the components' columns, (K, columns),
// zero at the columns that are no location of the phase.
at::Tensor tap_phase_columns(const Conv2dProblem& pb, const TapGeometry& geo,
                             const at::Tensor& grad_output, int64_t phase, int64_t n0,
                             int64_t count) {
  auto g = at::zeros({pb.K, geo.columns(count)}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_tap_phase_columns", [&] {
    copy_phase_locations</*kToMatrix=*/true, scalar_t>(
        pb, phase, n0, count, geo.layout(), grad_output.const_data_ptr<scalar_t>(),
        g.mutable_data_ptr<scalar_t>());
  });
  return g;
}

// The (C, columns) view of a component that tap `tap` reads.
at::Tensor shifted(const at::Tensor& comps, const Tap& tap, int64_t columns) {
  return comps.select(1, tap.component).narrow(1, tap.shift, columns);
}

at::Tensor tap_forward(const Conv2dProblem& pb, const at::Tensor& input,
                       const at::Tensor& weight_phases, const at::Tensor& bias_phases,
                       at::Tensor& output) {
  const auto geo = tap_geometry(pb);
  const auto plan = plan_tap_batch(pb, geo);
  const auto taps = tap_weights(pb, weight_phases);
  for_each_block(pb, plan, [&](int64_t, int64_t n0, int64_t n1, int64_t ph0, int64_t ph1) {
    const int64_t count = n1 - n0, columns = geo.columns(count);
    const auto comps = components(pb, geo, input, n0, count);
    auto z = at::empty({pb.K, columns}, input.options());
    for (int64_t t = ph0; t < ph1; ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) continue;
      for (int64_t r = 0; r < pb.R; ++r) {
        for (int64_t s = 0; s < pb.S; ++s) {
          const auto w = taps[t][r][s];
          const auto x = shifted(comps, tap_of(pb, geo, ph, r, s), columns);
          matmul(z, w, x, /*accumulate=*/r > 0 || s > 0);
        }
      }
      add_phase_bias(pb, bias_phases, t, count, geo.layout(), z);
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_tap_store", [&] {
        copy_phase_locations</*kToMatrix=*/false, scalar_t>(
            pb, t, n0, count, geo.layout(), output.mutable_data_ptr<scalar_t>(),
            z.const_data_ptr<scalar_t>());
      });
    }
  });
  return output;
}

at::Tensor tap_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                              const at::Tensor& weight_phases, at::Tensor& grad_input) {
  const auto geo = tap_geometry(pb);
  const auto plan = plan_tap_batch(pb, geo);
  const auto taps = tap_weights(pb, weight_phases);
  for_each_block(pb, plan, [&](int64_t, int64_t n0, int64_t n1, int64_t ph0, int64_t ph1) {
    const int64_t count = n1 - n0, columns = geo.columns(count);
    auto comps = at::zeros({pb.C, geo.Sh * geo.Sw, geo.ld(count)}, grad_output.options());
    for (int64_t t = ph0; t < ph1; ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) continue;
      const auto g = tap_phase_columns(pb, geo, grad_output, t, n0, count);
      for (int64_t r = 0; r < pb.R; ++r) {
        for (int64_t s = 0; s < pb.S; ++s) {
          auto dx = shifted(comps, tap_of(pb, geo, ph, r, s), columns);
          matmul(dx, taps[t][r][s].t(), g, /*accumulate=*/true);
        }
      }
    }
    AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_merge_components", [&] {
      col2im(comps.const_data_ptr<scalar_t>(),
             grad_input.select(0, n0).mutable_data_ptr<scalar_t>(), component_problem(pb, geo),
             geo.ld(count), /*accumulate=*/false, /*column_stride=*/1, count);
    });
  });
  return grad_input;
}

// dK as (T, 1, K, C*R*S), as conv_weight_backward returns it.
at::Tensor tap_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& input) {
  const auto geo = tap_geometry(pb);
  const auto plan = plan_weight_backward_batch(plan_tap_batch(pb, geo));
  const int64_t T = pb.phase_count();
  // Partial sums per chunk of blocks, (chunks, T, R, S, K, C), added in chunk
  // order; a chunk's first block of a phase writes its products.
  auto partial = at::empty({plan.chunks, T, pb.R, pb.S, pb.K, pb.C}, input.options());
  std::vector<char> written(plan.chunks * T, 0);  // entry (chunk, phase): one thread's
  if (pb.N > 0) {
    for_each_block(pb, plan, [&](int64_t chunk, int64_t n0, int64_t n1, int64_t ph0,
                                 int64_t ph1) {
      const int64_t count = n1 - n0, columns = geo.columns(count);
      const auto comps = components(pb, geo, input, n0, count);
      for (int64_t t = ph0; t < ph1; ++t) {
        const ConvPhase ph = conv_phase(pb, t);
        if (ph.P_a == 0 || ph.Q_b == 0) continue;
        const auto g = tap_phase_columns(pb, geo, grad_output, t, n0, count);
        char& first = written[chunk * T + t];
        for (int64_t r = 0; r < pb.R; ++r) {
          for (int64_t s = 0; s < pb.S; ++s) {
            auto dk = partial[chunk][t][r][s];
            const auto x_t = shifted(comps, tap_of(pb, geo, ph, r, s), columns).t();
            matmul(dk, g, x_t, /*accumulate=*/first);
          }
        }
        first = 1;
      }
    });
  }
  return sum_chunk_partials(partial, written)
      .permute({0, 3, 4, 1, 2})
      .contiguous()
      .view({T, 1, pb.K, pb.patch_size()});
}

}  // namespace

at::Tensor conv_forward(const Conv2dProblem& pb, const at::Tensor& input,
                        const at::Tensor& weight_phases, const at::Tensor& bias_phases) {
  auto output = empty_large({pb.N, pb.K, pb.P, pb.Q}, input.options());
  if (output.numel() == 0) return output;
  if (use_winograd(pb, input.scalar_type())) {
    return winograd_forward(pb, input, weight_phases, bias_phases);
  }
  if (use_tap_products(pb)) return tap_forward(pb, input, weight_phases, bias_phases, output);
  const int64_t G = pb.groups, Kg = pb.group_out_channels();
  const auto plan = plan_batch(pb);
  for_each_block(pb, plan, [&](int64_t, int64_t n0, int64_t n1, int64_t ph0, int64_t ph1) {
    auto scratch = patch_scratch(pb, plan, input);
    for (int64_t ph = ph0; ph < ph1; ++ph) {
      const auto sub = phase_problem(pb, ph);
      if (sub.P == 0 || sub.Q == 0) continue;
      // One sample of a dense convolution writes its product straight into
      // the output; otherwise the product is in patch column order and is
      // spread over the samples and locations afterwards.
      const bool direct = pb.phase_count() == 1 && n1 - n0 == 1;
      auto out = direct ? output.select(0, n0).view({G, Kg, pb.P * pb.Q})
                        : empty_large({G, Kg, (n1 - n0) * sub.P * sub.Q}, input.options());
      if (direct && !patches_are_input(sub, 1) && sub.P * sub.Q > 2 * kTargetColumns) {
        // A wide sample (a large image) is unfolded and multiplied one band of
        // about kTargetColumns output columns at a time, so that the band's
        // patch matrix is still in cache when the product packs it.
        const int64_t band_rows = std::max<int64_t>(1, kTargetColumns / sub.Q);
        for (int64_t p0 = 0; p0 < sub.P; p0 += band_rows) {
          const auto band = row_band(sub, p0, std::min(sub.P, p0 + band_rows));
          grouped_mm(out.narrow(2, p0 * sub.Q, band.P * sub.Q), weight_phases.select(0, ph),
                     patches(band, input, n0, 1, scratch));
        }
      } else {
        grouped_mm(out, weight_phases.select(0, ph), patches(sub, input, n0, n1 - n0, scratch));
      }
      add_phase_bias(pb, bias_phases, ph, n1 - n0, patch_column_layout(pb, ph), out);
      if (!direct) store_phase_columns(pb, output, ph, n0, n1 - n0, out);
    }
  });
  return output;
}

at::Tensor conv_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& weight_phases) {
  auto grad_input = empty_large({pb.N, pb.C, pb.H, pb.W}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  if (use_winograd(pb, grad_output.scalar_type())) {
    return winograd_input_backward(pb, grad_output, weight_phases);
  }
  // The input gradient's tap products are (C x K) @ (K x columns), each
  // adding into a shifted component: with fewer input than output channels
  // (128 -> 256 on 56x56) they ran 1.2x slower than the patch engine.
  if (use_tap_products(pb) && pb.C >= pb.K) {
    return tap_input_backward(pb, grad_output, weight_phases, grad_input);
  }
  const int64_t G = pb.groups;
  const auto w_t = weight_phases.transpose(2, 3);  // (T, G, C/G*R*S, K/G)
  const auto plan = plan_input_backward_batch(pb);
  for_each_block(pb, plan, [&](int64_t, int64_t n0, int64_t n1, int64_t ph0, int64_t ph1) {
    auto scratch = patch_scratch(pb, plan, grad_output);
    const int64_t count = n1 - n0;
    bool block_written = false;  // the block's first phase writes, later ones add
    for (int64_t ph = ph0; ph < ph1; ++ph) {
      const auto sub = phase_problem(pb, ph);
      if (sub.P == 0 || sub.Q == 0) continue;
      const auto g = phase_columns(pb, grad_output, ph, n0, count);
      if (patches_are_input(sub, count)) {  // the product is the gradient itself
        auto dx = grad_input.select(0, n0).view({G, pb.group_in_channels(), pb.H * pb.W});
        grouped_mm(dx, w_t.select(0, ph), g);
        block_written = true;
        continue;
      }
      const int64_t PQ = sub.P * sub.Q, columns = count * PQ;
      // A narrow patch matrix (a tile phase of a small image) is computed
      // transposed, col^T = G^T @ K: the weight is then read row by row as
      // stored, where K^T @ G made BLAS copy it transposed first (measured,
      // 16 phases of a 512x4608 weight on 4x512x7x7, 12 columns: 47 -> 32 ms;
      // 4x128x28x28 t4, 196 columns: 27 -> 18 ms).
      const bool transposed = G == 1 && columns <= kTransposedGradientColumns;
      auto col = transposed ? scratch_matrix(sub, columns, scratch).view({1, columns, -1})
                            : scratch_matrix(sub, columns, scratch);
      if (transposed) {
        grouped_mm(col, g.transpose(1, 2), weight_phases.select(0, ph));
      } else {
        grouped_mm(col, w_t.select(0, ph), g);
      }
      // Entry (row, column) of the patch matrix: col[row*ld + column*column_stride].
      const int64_t ld = transposed ? 1 : columns, column_stride = transposed ? col.size(2) : 1;
      AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_col2im", [&] {
        col2im(col.const_data_ptr<scalar_t>(), grad_input.select(0, n0).mutable_data_ptr<scalar_t>(),
               sub, ld, /*accumulate=*/block_written, column_stride, count);
      });
      block_written = true;
    }
  });
  return grad_input;
}

at::Tensor conv_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                const at::Tensor& input) {
  if (use_winograd(pb, input.scalar_type())) {
    return winograd_weight_backward(pb, grad_output, input);
  }
  if (use_tap_products(pb)) return tap_weight_backward(pb, grad_output, input);
  const int64_t G = pb.groups, Kg = pb.group_out_channels(), T = pb.phase_count();
  const auto plan = plan_weight_backward_batch(plan_batch(pb));
  // One partial sum per chunk of blocks, added in chunk order below (chunks
  // of phases write disjoint phases of one). A chunk's first block of a phase
  // writes its product (beta = 0) instead of adding to zeros: no pass to zero
  // the buffer, no read of those zeros; slices no block wrote are zeroed at
  // the end.
  const int64_t partials = plan.by_phases ? 1 : plan.chunks;
  auto partial = empty_large({partials, T, G, Kg, pb.patch_size()}, input.options());
  std::vector<char> written(partials * T, 0);  // entry (partial, phase): one thread's
  if (pb.N > 0) {
    for_each_block(pb, plan, [&](int64_t chunk, int64_t n0, int64_t n1, int64_t ph0,
                                 int64_t ph1) {
      auto scratch = patch_scratch(pb, plan, input);
      const int64_t sum = plan.by_phases ? 0 : chunk;
      for (int64_t ph = ph0; ph < ph1; ++ph) {
        const auto sub = phase_problem(pb, ph);
        if (sub.P == 0 || sub.Q == 0) continue;
        const auto g = phase_columns(pb, grad_output, ph, n0, n1 - n0);
        const auto col_t = patches(sub, input, n0, n1 - n0, scratch).transpose(1, 2);
        auto acc = partial.select(0, sum).select(0, ph);
        char& first = written[sum * T + ph];
        grouped_mm(acc, g, col_t, /*accumulate=*/first);
        first = 1;
      }
    });
  }
  auto grad_weight = sum_chunk_partials(partial, written);
  return partials == 1 ? grad_weight : grad_weight.clone();
}

// Per channel k: row sums first, sums[a][q] += G[n, k, p, q] over n and the
// rows p = a (mod tH), a contiguous (vectorised) add of each row into an
// accumulator row kept in L1; then each accumulator row is folded by q mod tW.
// (An element-by-element loop indexing its sum by q mod tW ran at 1 GB/s.)
at::Tensor conv_bias_backward(const at::Tensor& grad_output, int64_t tile_h, int64_t tile_w) {
  const auto g = grad_output.contiguous();
  const int64_t N = g.size(0), K = g.size(1), P = g.size(2), Q = g.size(3);
  auto grad_bias = at::empty({K, tile_h, tile_w}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_conv_bias_backward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, grain_for(N * P * Q), [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> row_sums(tile_h * Q);
      for (int64_t k = k0; k < k1; ++k) {
        std::fill(row_sums.begin(), row_sums.end(), acc_t(0));
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = src + (n * K + k) * P * Q;
          for (int64_t p = 0; p < P; ++p) {
            acc_t* __restrict sums = row_sums.data() + (p % tile_h) * Q;
            const scalar_t* __restrict row = plane + p * Q;
            for (int64_t q = 0; q < Q; ++q) sums[q] += static_cast<acc_t>(row[q]);
          }
        }
        for (int64_t a = 0; a < tile_h; ++a) {
          for (int64_t b = 0; b < tile_w; ++b) {
            acc_t sum = 0;
            for (int64_t q = b; q < Q; q += tile_w) sum += row_sums[a * Q + q];
            dst[(k * tile_h + a) * tile_w + b] = static_cast<scalar_t>(sum);
          }
        }
      }
    });
  });
  return grad_bias;
}

}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  CNNKIT_REGISTER_CONV2D_OPS(m, cnnkit::cpu::Backend);
}
