// Every op schema of cnnkit, in one place: the library torch.ops.cnnkit
// (csrc/cnnkit.cpp) and the emulated CUDA backend torch.ops.cnnkit_emu
// (csrc/emulation/module.cpp) define the same ops from here.
//
// Padding arguments named `padding` in the convolution ops take 2 entries
// (top = bottom, left = right) or 4 (top, bottom, left, right): 'same' with an
// even kernel pads one more at the bottom/right.
#pragma once

#include <torch/library.h>

namespace cnnkit {

inline void define_ops(torch::Library& m) {
  // Convolution (SPEC 1.1, 1.2): bias (C_out,), or untied (C_out, OH, OW), one
  // per output location.
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_bias_backward(Tensor grad_output) -> Tensor");
  m.def("conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor");

  // Unshared (locally connected) convolution (SPEC 1.3): weight
  // (C_out, OH, OW, C_in/g, kH, kW), bias (C_out, OH, OW).
  m.def("local_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_bias_backward(Tensor grad_output) -> Tensor");

  // Tiled convolution (SPEC 1.4): weight (C_out, C_in/g, kH, kW, tH, tW), bias
  // (C_out, tH, tW) or untied (C_out, OH, OW); the tiles are read from the
  // weight's shape.
  m.def("tiled_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] tiles, int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_bias_backward(Tensor grad_output, int[2] tiles) -> Tensor");

  // Pooling (SPEC 1.5). Max pools return (values, indices); indices are flat
  // positions h * W + w within each input plane, as in PyTorch. The max pool
  // backward serves max_pool2d and adaptive_max_pool2d alike.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
  // Channel max pool returns (values, indices); indices are the input channel
  // holding each maximum.
  m.def("channel_max_pool(Tensor input, int pool_size) -> (Tensor, Tensor)");
  m.def("channel_max_pool_backward(Tensor grad_output, Tensor input, Tensor indices, "
        "int pool_size) -> Tensor");
}

}  // namespace cnnkit
