// The dense and tiled convolution ops, written once for every backend.
//
// An op checks its arguments (problem.cpp), arranges weights and biases per
// tile phase, calls its backend's engine and gives the result the memory
// format PyTorch would. The backend (csrc/cpu/conv2d.h, csrc/cuda/conv2d.cuh)
// supplies, as static members of a struct:
//   conv_forward, conv_input_backward, conv_weight_backward, conv_bias_backward
//       the engine over tile phases (contract in csrc/cpu/conv2d.h);
//   tiles_outermost(weight)
//       a (K, C/G, R, S, tH, tW) weight copied to phase-major memory, used only
//       when the weight is not stored phase-major already;
//   DeviceScope(tensor)
//       what must hold while kernels run (the CUDA device guard; nothing on the CPU).
// Each backend registers ConvOps<itself>'s members for its dispatch key.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <optional>

#include "problem.h"

namespace cnnkit {

template <typename Backend>
struct ConvOps {
  // A dense weight (K, C/G, R, S) is the one-phase weight (1, G, K/G, C/G*R*S).
  static at::Tensor dense_phases(const Conv2dProblem& pb, const at::Tensor& weight) {
    return weight.contiguous().view({1, pb.groups, pb.group_out_channels(), pb.patch_size()});
  }

  // (K, C/G, R, S, tH, tW) -> one (G, K/G, C/G*R*S) matrix per phase (a, b),
  // phase-major. A weight stored phase-major (TiledConv2d's parameter, or a
  // weight gradient) is that matrix already: a view, no copy.
  static at::Tensor tiled_phases(const Conv2dProblem& pb, const at::Tensor& weight) {
    const auto phase_major = weight.permute({4, 5, 0, 1, 2, 3});
    const auto phases =
        phase_major.is_contiguous() ? phase_major : Backend::tiles_outermost(weight);
    return phases.view({pb.phase_count(), pb.groups, pb.group_out_channels(), pb.patch_size()});
  }

  // The bias as the engine takes it: undefined; one per tile phase and output
  // channel, (T, K), from a dense (K,) or tiled (K, tH, tW) bias; or an untied
  // one, per output location, (K, P, Q) as it is (pb.untied_bias).
  static at::Tensor engine_bias(const Conv2dProblem& pb, const std::optional<at::Tensor>& bias) {
    if (!bias.has_value()) return at::Tensor();
    if (pb.untied_bias) return bias->contiguous();
    // (K, tH, tW) -> (tH*tW, K); a dense (K,) is (K, 1, 1).
    const auto tiles = bias->dim() == 1 ? bias->view({pb.K, 1, 1}) : *bias;
    return tiles.permute({1, 2, 0}).contiguous().view({pb.phase_count(), pb.K});
  }

  // ------------------------------------------------------------ conv2d (SPEC 1.1)

  static at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    const auto pb = conv2d_problem("cnnkit.conv2d", input, weight, bias, stride, padding,
                                   dilation, groups);
    typename Backend::DeviceScope scope(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = Backend::conv_forward(pb, input.contiguous(), dense_phases(pb, weight),
                                     engine_bias(pb, bias));
    return out.contiguous(conv_output_format(input, weight));
  }

  static at::Tensor conv2d_input_backward(const at::Tensor& grad_output, const at::Tensor& weight,
                                          at::IntArrayRef input_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          int64_t groups) {
    const auto pb = conv2d_input_backward_problem("cnnkit.conv2d_input_backward", grad_output,
                                                  weight, input_size, stride, padding, dilation,
                                                  groups);
    typename Backend::DeviceScope scope(grad_output);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto dx = Backend::conv_input_backward(pb, grad_output.contiguous(), dense_phases(pb, weight));
    return dx.contiguous(conv_output_format(grad_output, weight));
  }

  static at::Tensor conv2d_weight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups) {
    const auto pb = conv2d_weight_backward_problem("cnnkit.conv2d_weight_backward", grad_output,
                                                   input, kernel_size, stride, padding, dilation,
                                                   groups);
    typename Backend::DeviceScope scope(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    return Backend::conv_weight_backward(pb, grad_output.contiguous(), input.contiguous())
        .view({pb.K, pb.group_in_channels(), pb.R, pb.S});
  }

  // db[k] = sum over n, p, q of G[n, k, p, q].
  static at::Tensor conv2d_bias_backward(const at::Tensor& grad_output) {
    check_conv2d_bias_backward("cnnkit.conv2d_bias_backward", grad_output);
    typename Backend::DeviceScope scope(grad_output);
    return Backend::conv_bias_backward(grad_output, 1, 1).view({grad_output.size(1)});
  }

  // Transposed convolution = the input gradient of the convolution whose
  // output it takes, plus a bias per output channel (C_out,) or per output
  // location (C_out, OH, OW).
  static at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation) {
    const auto pb = conv_transpose2d_problem("cnnkit.conv_transpose2d", input, weight, bias,
                                             stride, padding, output_padding, groups, dilation);
    typename Backend::DeviceScope scope(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = Backend::conv_input_backward(pb, input.contiguous(), dense_phases(pb, weight));
    if (bias.has_value() && out.numel() > 0) {
      out.add_(bias->dim() == 1 ? bias->view({1, pb.C, 1, 1}) : bias->unsqueeze(0));
    }
    return out.contiguous(conv_output_format(input, weight));
  }

  // ------------------------------------------------------------ tiled_conv2d (SPEC 1.4)

  static at::Tensor tiled_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
    const auto pb = tiled_conv2d_problem("cnnkit.tiled_conv2d", input, weight, bias, stride,
                                         padding, dilation, groups);
    typename Backend::DeviceScope scope(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = Backend::conv_forward(pb, input.contiguous(), tiled_phases(pb, weight),
                                     engine_bias(pb, bias));
    return out.contiguous(conv_output_format(input, weight));
  }

  static at::Tensor tiled_conv2d_input_backward(const at::Tensor& grad_output,
                                                const at::Tensor& weight,
                                                at::IntArrayRef input_size, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                                int64_t groups) {
    const auto pb = tiled_conv2d_input_backward_problem("cnnkit.tiled_conv2d_input_backward",
                                                        grad_output, weight, input_size, stride,
                                                        padding, dilation, groups);
    typename Backend::DeviceScope scope(grad_output);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto dx = Backend::conv_input_backward(pb, grad_output.contiguous(), tiled_phases(pb, weight));
    return dx.contiguous(conv_output_format(grad_output, weight));
  }

  static at::Tensor tiled_conv2d_weight_backward(const at::Tensor& grad_output,
                                                 const at::Tensor& input,
                                                 at::IntArrayRef kernel_size,
                                                 at::IntArrayRef tiles, at::IntArrayRef stride,
                                                 at::IntArrayRef padding,
                                                 at::IntArrayRef dilation, int64_t groups) {
    const auto pb = tiled_conv2d_weight_backward_problem("cnnkit.tiled_conv2d_weight_backward",
                                                         grad_output, input, kernel_size, tiles,
                                                         stride, padding, dilation, groups);
    typename Backend::DeviceScope scope(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    // (tH*tW, G, K/G, C/G*R*S), returned as the (K, C/G, R, S, tH, tW) tensor
    // it is, stored phase-major: no transposing copy.
    return Backend::conv_weight_backward(pb, grad_output.contiguous(), input.contiguous())
        .view({pb.tile_h, pb.tile_w, pb.K, pb.group_in_channels(), pb.R, pb.S})
        .permute({2, 3, 4, 5, 0, 1});
  }

  // db[k, a, b] = sum of G[n, k, p, q] over n and the locations of phase (a, b).
  static at::Tensor tiled_conv2d_bias_backward(const at::Tensor& grad_output,
                                               at::IntArrayRef tiles) {
    check_tiled_conv2d_bias_backward("cnnkit.tiled_conv2d_bias_backward", grad_output, tiles);
    typename Backend::DeviceScope scope(grad_output);
    return Backend::conv_bias_backward(grad_output, tiles[0], tiles[1]);
  }
};

// Register the ops of ConvOps<Backend> with `m` (a TORCH_LIBRARY_IMPL block):
// the dense ones at the bottom of a backend's conv2d file, the tiled ones at
// the bottom of its tiled_conv2d file.
#define CNNKIT_REGISTER_CONV2D_OPS(m, Backend)                                   \
  do {                                                                           \
    using Ops = ::cnnkit::ConvOps<Backend>;                                      \
    (m).impl("conv2d", &Ops::conv2d);                                            \
    (m).impl("conv2d_input_backward", &Ops::conv2d_input_backward);              \
    (m).impl("conv2d_weight_backward", &Ops::conv2d_weight_backward);            \
    (m).impl("conv2d_bias_backward", &Ops::conv2d_bias_backward);                \
    (m).impl("conv_transpose2d", &Ops::conv_transpose2d);                        \
  } while (0)

#define CNNKIT_REGISTER_TILED_CONV2D_OPS(m, Backend)                             \
  do {                                                                           \
    using Ops = ::cnnkit::ConvOps<Backend>;                                      \
    (m).impl("tiled_conv2d", &Ops::tiled_conv2d);                                \
    (m).impl("tiled_conv2d_input_backward", &Ops::tiled_conv2d_input_backward);  \
    (m).impl("tiled_conv2d_weight_backward", &Ops::tiled_conv2d_weight_backward);\
    (m).impl("tiled_conv2d_bias_backward", &Ops::tiled_conv2d_bias_backward);    \
  } while (0)

}  // namespace cnnkit
