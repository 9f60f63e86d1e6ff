// The local (unshared) convolution ops, SPEC 1.3, written once for every backend.
//
// An op checks its arguments (problem.cpp), makes its tensors contiguous,
// allocates the result, calls its backend's kernel when there is work and
// gives the result the memory format PyTorch would. The backend
// (csrc/cpu/local_conv2d.cpp, csrc/cuda/local_conv2d.cu) supplies, as static
// members of a struct:
//   local_forward(pb, input, weight, bias, out)              bias may be undefined
//   local_input_backward(pb, grad_output, weight, grad_input)
//   local_weight_backward(pb, grad_output, input, grad_weight)  only for N > 0
//   local_bias_backward(grad_output, grad_bias)                 only for K*P*Q > 0
//       the kernels over contiguous NCHW tensors, writing every element of
//       their (non-empty) result;
//   empty_large(sizes, options)
//       allocation for the results (the weight gradient is the largest
//       tensor of a layer);
//   DeviceScope(tensor)
//       what must hold while kernels run (the CUDA device guard; nothing on the CPU).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "problem.h"

namespace cnnkit {

template <typename Backend>
struct LocalOps {
  static at::Tensor local_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
    // The checks come first: they name a tensor on the wrong device, which the
    // device guard would reject with a less helpful message.
    const auto pb = local_conv2d_problem("cnnkit.local_conv2d", input, weight, bias, stride,
                                         padding, dilation, groups);
    typename Backend::DeviceScope scope(input);
    const auto x = input.contiguous(), w = weight.contiguous();
    const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
    auto out = Backend::empty_large({pb.N, pb.K, pb.P, pb.Q}, x.options());
    if (out.numel() > 0) Backend::local_forward(pb, x, w, b, out);
    return out.contiguous(conv_output_format(input, weight));
  }

  static at::Tensor local_conv2d_input_backward(const at::Tensor& grad_output,
                                                const at::Tensor& weight,
                                                at::IntArrayRef input_size, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                                int64_t groups) {
    const auto pb = local_conv2d_input_backward_problem("cnnkit.local_conv2d_input_backward",
                                                        grad_output, weight, input_size, stride,
                                                        padding, dilation, groups);
    typename Backend::DeviceScope scope(grad_output);
    const auto g = grad_output.contiguous(), w = weight.contiguous();
    auto grad_input = Backend::empty_large({pb.N, pb.C, pb.H, pb.W}, g.options());
    if (grad_input.numel() > 0) Backend::local_input_backward(pb, g, w, grad_input);
    return grad_input.contiguous(conv_output_format(grad_output, weight));
  }

  static at::Tensor local_conv2d_weight_backward(const at::Tensor& grad_output,
                                                 const at::Tensor& input,
                                                 at::IntArrayRef kernel_size,
                                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                                 at::IntArrayRef dilation, int64_t groups) {
    const auto pb = local_conv2d_weight_backward_problem("cnnkit.local_conv2d_weight_backward",
                                                         grad_output, input, kernel_size, stride,
                                                         padding, dilation, groups);
    typename Backend::DeviceScope scope(input);
    const auto g = grad_output.contiguous(), x = input.contiguous();
    auto grad_weight = Backend::empty_large(
        {pb.K, pb.P, pb.Q, pb.group_in_channels(), pb.R, pb.S}, x.options());
    if (pb.N == 0) {
      grad_weight.zero_();
    } else if (grad_weight.numel() > 0) {
      Backend::local_weight_backward(pb, g, x, grad_weight);
    }
    return grad_weight;
  }

  // db[k, p, q] = sum_n G[n, k, p, q].
  static at::Tensor local_conv2d_bias_backward(const at::Tensor& grad_output) {
    check_conv2d_bias_backward("cnnkit.local_conv2d_bias_backward", grad_output);
    typename Backend::DeviceScope scope(grad_output);
    const auto g = grad_output.contiguous();
    auto grad_bias = at::empty({g.size(1), g.size(2), g.size(3)}, g.options());
    if (grad_bias.numel() > 0) Backend::local_bias_backward(g, grad_bias);
    return grad_bias;
  }
};

// Register the ops of LocalOps<Backend> with `m` (a TORCH_LIBRARY_IMPL block).
#define CNNKIT_REGISTER_LOCAL_CONV2D_OPS(m, Backend)                                  \
  do {                                                                                \
    using Ops = ::cnnkit::LocalOps<Backend>;                                          \
    (m).impl("local_conv2d", &Ops::local_conv2d);                                     \
    (m).impl("local_conv2d_input_backward", &Ops::local_conv2d_input_backward);       \
    (m).impl("local_conv2d_weight_backward", &Ops::local_conv2d_weight_backward);     \
    (m).impl("local_conv2d_bias_backward", &Ops::local_conv2d_bias_backward);         \
  } while (0)

}  // namespace cnnkit
