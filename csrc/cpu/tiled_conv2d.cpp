// Tiled convolution on the CPU, SPEC 1.4: the dense engine of conv2d.h, run once
// per tile phase with that phase's kernel. Patches are unfolded once per phase
// (together once per output location), as for a dense convolution.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/conv2d.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

// (K, C/G, R, S, tH, tW) -> one (G, K/G, C/G*R*S) matrix per phase (a, b), phase-major.
at::Tensor tiled_phases(const Conv2dProblem& pb, const at::Tensor& weight) {
  return weight.permute({4, 5, 0, 1, 2, 3})
      .contiguous()
      .view({pb.tile_h * pb.tile_w, pb.groups, pb.group_out_channels(), pb.patch_size()});
}

at::Tensor tiled_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto pb = tiled_conv2d_problem("cnnkit.tiled_conv2d", input, weight, bias, stride, padding,
                                       dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  // (K, tH, tW) -> (tH*tW, K)
  const auto b = bias.has_value()
                     ? bias->permute({1, 2, 0}).contiguous().view({pb.tile_h * pb.tile_w, pb.K})
                     : at::Tensor();
  auto out = conv_forward(pb, input.contiguous(), tiled_phases(pb, weight), b);
  return out.contiguous(input.suggest_memory_format());
}

at::Tensor tiled_conv2d_input_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups) {
  const auto pb = tiled_conv2d_input_backward_problem("cnnkit.tiled_conv2d_input_backward",
                                                      grad_output, weight, input_size, stride,
                                                      padding, dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto dx = conv_input_backward(pb, grad_output.contiguous(), tiled_phases(pb, weight));
  return dx.contiguous(grad_output.suggest_memory_format());
}

at::Tensor tiled_conv2d_weight_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef kernel_size, at::IntArrayRef tiles,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  const auto pb = tiled_conv2d_weight_backward_problem("cnnkit.tiled_conv2d_weight_backward",
                                                       grad_output, input, kernel_size, tiles,
                                                       stride, padding, dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  // (tH*tW, G, K/G, C/G*R*S) -> (K, C/G, R, S, tH, tW)
  return conv_weight_backward(pb, grad_output.contiguous(), input.contiguous())
      .view({pb.tile_h, pb.tile_w, pb.K, pb.group_in_channels(), pb.R, pb.S})
      .permute({2, 3, 4, 5, 0, 1})
      .contiguous();
}

at::Tensor tiled_conv2d_bias_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef tiles) {
  check_tiled_conv2d_bias_backward("cnnkit.tiled_conv2d_bias_backward", grad_output, tiles);
  return conv_bias_backward(grad_output, tiles[0], tiles[1]);
}

}  // namespace
}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  m.impl("tiled_conv2d", &cnnkit::cpu::tiled_conv2d_cpu);
  m.impl("tiled_conv2d_input_backward", &cnnkit::cpu::tiled_conv2d_input_backward_cpu);
  m.impl("tiled_conv2d_weight_backward", &cnnkit::cpu::tiled_conv2d_weight_backward_cpu);
  m.impl("tiled_conv2d_bias_backward", &cnnkit::cpu::tiled_conv2d_bias_backward_cpu);
}
