// The pooling ops, SPEC 1.5, written once for every backend.
//
// An op checks its arguments (problem.cpp), allocates its results in the
// memory format of the input, returns early when there is nothing to compute,
// makes its tensors contiguous in that format and calls its backend's kernels.
// The backend (csrc/cpu/pool2d.cpp, csrc/cuda/pool2d.cu) supplies, as static
// members of a struct:
//   max_pool(pb, adaptive, channels_last, input, out, indices)
//   max_pool_backward(pb, fn, channels_last, grad_output, indices, grad_input)
//       (fn names the op in the messages of index errors found while computing)
//   avg_pool(pb, adaptive, channels_last, input, out)
//   avg_pool_backward(pb, adaptive, channels_last, grad_output, grad_input)
//   channel_max_pool(pb, channels_last, input, out, indices)
//   channel_max_pool_backward(pb, channels_last, grad_output, indices, grad_input)
//       the kernels, over non-empty results and tensors contiguous in the
//       format of the input (channels_last: NHWC, else NCHW), writing every
//       element of their results;
//   empty_large(sizes, options)
//       allocation of outputs, indices and input gradients;
//   DeviceScope(tensor)
//       what must hold while kernels run (the CUDA device guard; nothing on the CPU).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "problem.h"

namespace cnnkit {

template <typename Backend>
struct PoolOps {
  static bool is_channels_last(at::MemoryFormat format) {
    return format == at::MemoryFormat::ChannelsLast;
  }

  // Outputs, indices and input gradients in the memory format of the input.
  static at::Tensor empty_pooled(const at::Tensor& input, at::IntArrayRef sizes,
                                 at::ScalarType dtype, at::MemoryFormat format) {
    return Backend::empty_large(sizes, input.options().dtype(dtype).memory_format(format));
  }

  // grad_input; zeroed when grad_output is empty (adaptive output_size 0),
  // which leaves the gradient zero and runs no kernel.
  static at::Tensor empty_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                                     at::MemoryFormat format) {
    auto grad_input = empty_pooled(input, input.sizes(), input.scalar_type(), format);
    return grad_output.numel() == 0 ? grad_input.zero_() : grad_input;
  }

  // ------------------------------------------------------------ max pooling

  // Max and adaptive max pooling, forward.
  static std::tuple<at::Tensor, at::Tensor> max_pool_forward(const at::Tensor& input,
                                                             const Pool2dProblem& pb,
                                                             bool adaptive) {
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    auto out = empty_pooled(input, {pb.N, pb.C, pb.P, pb.Q}, input.scalar_type(), format);
    auto index = empty_pooled(input, {pb.N, pb.C, pb.P, pb.Q}, at::kLong, format);
    if (out.numel() == 0) return {out, index};
    Backend::max_pool(pb, adaptive, is_channels_last(format), input.contiguous(format), out,
                      index);
    return {out, index};
  }

  static std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
    const auto pb = max_pool2d_problem("cnnkit.max_pool2d", input, kernel_size, stride, padding,
                                       dilation, ceil_mode);
    return max_pool_forward(input, pb, /*adaptive=*/false);
  }

  static std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& input,
                                                                at::IntArrayRef output_size) {
    const auto pb = adaptive_pool2d_problem("cnnkit.adaptive_max_pool2d", input, output_size);
    return max_pool_forward(input, pb, /*adaptive=*/true);
  }

  // Serves max_pool2d and adaptive_max_pool2d.
  static at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& indices) {
    const char* fn = "cnnkit.max_pool2d_backward";
    const auto pb = max_pool2d_backward_problem(fn, grad_output, input, indices);
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    auto grad_input = empty_grad_input(grad_output, input, format);
    if (grad_output.numel() == 0) return grad_input;
    Backend::max_pool_backward(pb, fn, is_channels_last(format), grad_output.contiguous(format),
                               indices.contiguous(format), grad_input);
    return grad_input;
  }

  // ------------------------------------------------------------ average pooling

  // Average and adaptive average pooling, forward.
  static at::Tensor avg_pool_forward(const at::Tensor& input, const Pool2dProblem& pb,
                                     bool adaptive) {
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    auto out = empty_pooled(input, {pb.N, pb.C, pb.P, pb.Q}, input.scalar_type(), format);
    if (out.numel() == 0) return out;
    Backend::avg_pool(pb, adaptive, is_channels_last(format), input.contiguous(format), out);
    return out;
  }

  // Average and adaptive average pooling, backward: each output's gradient,
  // divided as in the forward, spread over its window.
  static at::Tensor avg_pool_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const Pool2dProblem& pb, bool adaptive) {
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    auto grad_input = empty_grad_input(grad_output, input, format);
    if (grad_output.numel() == 0) return grad_input;
    Backend::avg_pool_backward(pb, adaptive, is_channels_last(format),
                               grad_output.contiguous(format), grad_input);
    return grad_input;
  }

  static at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                               bool count_include_pad, std::optional<int64_t> divisor_override) {
    const auto pb = avg_pool2d_problem("cnnkit.avg_pool2d", input, kernel_size, stride, padding,
                                       ceil_mode, count_include_pad, divisor_override);
    return avg_pool_forward(input, pb, /*adaptive=*/false);
  }

  static at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, bool ceil_mode,
                                        bool count_include_pad,
                                        std::optional<int64_t> divisor_override) {
    const auto pb = avg_pool2d_backward_problem("cnnkit.avg_pool2d_backward", grad_output, input,
                                                kernel_size, stride, padding, ceil_mode,
                                                count_include_pad, divisor_override);
    return avg_pool_backward(grad_output, input, pb, /*adaptive=*/false);
  }

  static at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
    const auto pb = adaptive_pool2d_problem("cnnkit.adaptive_avg_pool2d", input, output_size);
    return avg_pool_forward(input, pb, /*adaptive=*/true);
  }

  static at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output,
                                                 const at::Tensor& input) {
    const auto pb = adaptive_avg_pool2d_backward_problem("cnnkit.adaptive_avg_pool2d_backward",
                                                         grad_output, input);
    return avg_pool_backward(grad_output, input, pb, /*adaptive=*/true);
  }

  // ------------------------------------------------------------ channel max pooling

  static std::tuple<at::Tensor, at::Tensor> channel_max_pool(const at::Tensor& input,
                                                             int64_t pool_size) {
    const auto pb = channel_max_pool_problem("cnnkit.channel_max_pool", input, pool_size);
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    const std::vector<int64_t> sizes{pb.N, pb.out_channels(), pb.H, pb.W};
    auto out = empty_pooled(input, sizes, input.scalar_type(), format);
    auto index = empty_pooled(input, sizes, at::kLong, format);
    if (out.numel() == 0) return {out, index};
    Backend::channel_max_pool(pb, is_channels_last(format), input.contiguous(format), out, index);
    return {out, index};
  }

  static at::Tensor channel_max_pool_backward(const at::Tensor& grad_output,
                                              const at::Tensor& input, const at::Tensor& indices,
                                              int64_t pool_size) {
    const auto pb = channel_max_pool_backward_problem("cnnkit.channel_max_pool_backward",
                                                      grad_output, input, indices, pool_size);
    typename Backend::DeviceScope scope(input);
    const auto format = input.suggest_memory_format();
    auto grad_input = empty_pooled(input, input.sizes(), input.scalar_type(), format);
    if (grad_input.numel() == 0) return grad_input;
    Backend::channel_max_pool_backward(pb, is_channels_last(format),
                                       grad_output.contiguous(format), indices.contiguous(format),
                                       grad_input);
    return grad_input;
  }
};

// Register the ops of PoolOps<Backend> with `m` (a TORCH_LIBRARY_IMPL block).
#define CNNKIT_REGISTER_POOL2D_OPS(m, Backend)                                          \
  do {                                                                                  \
    using Ops = ::cnnkit::PoolOps<Backend>;                                             \
    (m).impl("max_pool2d", &Ops::max_pool2d);                                           \
    (m).impl("max_pool2d_backward", &Ops::max_pool2d_backward);                         \
    (m).impl("avg_pool2d", &Ops::avg_pool2d);                                           \
    (m).impl("avg_pool2d_backward", &Ops::avg_pool2d_backward);                         \
    (m).impl("adaptive_max_pool2d", &Ops::adaptive_max_pool2d);                         \
    (m).impl("adaptive_avg_pool2d", &Ops::adaptive_avg_pool2d);                         \
    (m).impl("adaptive_avg_pool2d_backward", &Ops::adaptive_avg_pool2d_backward);       \
    (m).impl("channel_max_pool", &Ops::channel_max_pool);                               \
    (m).impl("channel_max_pool_backward", &Ops::channel_max_pool_backward);             \
  } while (0)

}  // namespace cnnkit
