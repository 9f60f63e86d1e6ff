// Convolution on CUDA: the engine of conv2d.cuh (forward, input gradient,
// weight gradient, bias gradient; dense convolution and every tile phase of a
// tiled one) and the five dense convolution ops.
//
// The passes live in files of their own: conv2d_gemm.cuh (the implicit-GEMM
// core and what the passes share, with the design of the CUDA-core kernels),
// conv2d_forward.cu, conv2d_input_backward.cu, conv2d_weight_backward.cu,
// conv2d_depthwise.cu and conv2d_tensor_core.cu (float16 / bfloat16).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "conv_ops.h"
#include "cuda/conv2d.cuh"
#include "cuda/conv2d_gemm.cuh"
#include "problem.h"

namespace cnnkit::cuda {

// The engine is the one caller of the passes.
using namespace conv;

namespace {

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
    depthwise_forward(geo, input, weight, bias, pb.untied_bias, output);
  } else if (is_half_precision(input)) {
    for (int64_t t = 0; t < pb.phase_count(); ++t) {
      const ConvPhase ph = conv_phase(pb, t);
      if (ph.P_a == 0 || ph.Q_b == 0) continue;
      // The phase's bias per channel, or the whole untied one.
      tensor_core::forward_phase(pb, t, input, weight.select(0, t),
                                 bias.defined() && !pb.untied_bias ? bias.select(0, t) : bias,
                                 output);
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
