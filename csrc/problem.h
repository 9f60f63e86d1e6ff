// Problem descriptions: the one thing that crosses from the PyTorch side into
// kernel code. Each is a plain struct, passed by value, usable on host and
// device. Each is built and validated in exactly one function (problem.cpp);
// kernels only compute. The Python fake kernels (cnnkit/_fake.py) repeat the
// same rules with the same messages, so errors read the same under
// torch.compile.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CNNKIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNKIT_HOST_DEVICE inline
#endif

namespace cnnkit {

// Convolution: input NCHW, weight KCRS (local: K P Q C R S; tiled: K C R S TH TW),
// output NKPQ. C is the total input channel count, K the total output channel
// count; each group maps C/groups input channels to K/groups output channels.
// pad_h / pad_w are the top / left padding; the bottom / right padding (which
// may be one larger for 'same') is implied by P and Q.
struct Conv2dProblem {
  int64_t N, C, H, W, K, R, S, P, Q;
  int64_t pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w, groups;
  int64_t tile_h = 1, tile_w = 1;
  // The forward's bias is one per output location, (K, P, Q) ("untied"),
  // rather than one per output channel (and tile phase). Set by the forward
  // problems of conv2d and tiled_conv2d from the bias they are given (local
  // convolution's bias, per location by its kind, leaves it false).
  bool untied_bias = false;
  // The op the problem comes from, as messages name it ("cnnkit.conv2d"):
  // backends' own limits are reported in its name.
  const char* op = "cnnkit";

  // Tile phases (a, b) of a tiled convolution, t = a*tile_w + b; 1 when dense.
  CNNKIT_HOST_DEVICE int64_t phase_count() const { return tile_h * tile_w; }
  CNNKIT_HOST_DEVICE int64_t group_in_channels() const { return C / groups; }
  CNNKIT_HOST_DEVICE int64_t group_out_channels() const { return K / groups; }
  // Rows of the unfolded input of one group: (c, r, s) with c in the group.
  CNNKIT_HOST_DEVICE int64_t patch_size() const { return (C / groups) * R * S; }
  // Input row read by output row p through kernel row r (may be out of range = zero).
  CNNKIT_HOST_DEVICE int64_t input_row(int64_t p, int64_t r) const {
    return p * stride_h - pad_h + r * dilation_h;
  }
  CNNKIT_HOST_DEVICE int64_t input_col(int64_t q, int64_t s) const {
    return q * stride_w - pad_w + s * dilation_w;
  }
};

// One tile phase t = a*tile_w + b of a convolution problem: its output rows
// p = a + i*tile_h for i < P_a, and columns q = b + j*tile_w for j < Q_b.
struct ConvPhase {
  int64_t a, b, P_a, Q_b;
};

CNNKIT_HOST_DEVICE ConvPhase conv_phase(const Conv2dProblem& pb, int64_t t) {
  const int64_t a = t / pb.tile_w, b = t % pb.tile_w;
  return {a, b, pb.P > a ? (pb.P - a + pb.tile_h - 1) / pb.tile_h : 0,
          pb.Q > b ? (pb.Q - b + pb.tile_w - 1) / pb.tile_w : 0};
}

// 2-D pooling over each (n, c) plane on its own. Window (p, q) covers input rows
// p*stride_h - pad_h + i*dilation_h for i < kernel_h (likewise for columns).
// Adaptive pooling has kernel/stride/pad unused: window p covers rows
// [floor(p*H/P), ceil((p+1)*H/P)).
struct Pool2dProblem {
  int64_t N, C, H, W, P, Q;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  bool ceil_mode, count_include_pad;
  int64_t divisor_override;  // 0 = none
};

// Max over groups of pool_size consecutive channels: (N, C, H, W) -> (N, C / pool_size, H, W).
struct ChannelPoolProblem {
  int64_t N, C, H, W, pool_size;
  CNNKIT_HOST_DEVICE int64_t out_channels() const { return C / pool_size; }
};

}  // namespace cnnkit

#if !defined(__CUDACC_RTC__)
#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>
#include <optional>
#include <string>

namespace cnnkit {

// "torch.float32": dtypes are named in messages as Python prints them.
std::string dtype_name(c10::ScalarType dtype);

// Checks shared by every op: a floating dtype the device supports, and `other`
// on the same device with the same dtype as `input`.
void check_dtype(const char* fn, const char* arg, const at::Tensor& t);
void check_same_device_dtype(const char* fn, const char* arg, const at::Tensor& input,
                             const char* other_arg, const at::Tensor& other);

// The memory format of a convolution's output (or input gradient): channels_last
// when the data or a 4-D weight is channels_last, as PyTorch's convolutions.
at::MemoryFormat conv_output_format(const at::Tensor& data, const at::Tensor& weight);

// Convolution geometry. `padding` has 2 entries (top = bottom, left = right) or
// 4 entries (top, bottom, left, right). The bias is (C_out,) or untied
// (C_out, OH, OW).
Conv2dProblem conv2d_problem(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The input gradient of conv2d: grad_output (N, K, P, Q) and weight (K, C/g, R, S)
// give grad_input (N, C, H, W); input_size = (H, W) must be given because several
// input sizes give the same output size.
Conv2dProblem conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                            const at::Tensor& weight, at::IntArrayRef input_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups);

// The weight gradient of conv2d: grad_output (N, K, P, Q) and input (N, C, H, W)
// give grad_weight (K, C/g, R, S) with kernel_size = (R, S).
Conv2dProblem conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                             const at::Tensor& input, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, int64_t groups);

// The bias gradient of conv2d: grad_output (N, K, P, Q) gives (K,).
void check_conv2d_bias_backward(const char* fn, const at::Tensor& grad_output);

// torch.nn.functional.conv_transpose2d: input (N, C_in, H, W), weight
// (C_in, C_out/g, kH, kW), bias (C_out,) or untied (C_out, OH, OW). Returned
// as the conv2d problem it is the input gradient of: its K = C_in, its
// C = C_out and its (H, W) the output size.
Conv2dProblem conv_transpose2d_problem(const char* fn, const at::Tensor& input,
                                       const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef output_padding, int64_t groups,
                                       at::IntArrayRef dilation);

// Unshared (locally connected) convolution, SPEC 1.3: weight
// (C_out, OH, OW, C_in/g, kH, kW), bias (C_out, OH, OW). The three views as for
// conv2d; the weight gradient has the shape of the weight.
Conv2dProblem local_conv2d_problem(const char* fn, const at::Tensor& input,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups);
Conv2dProblem local_conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                  const at::Tensor& weight,
                                                  at::IntArrayRef input_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups);
Conv2dProblem local_conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, int64_t groups);

// Tiled convolution, SPEC 1.4: weight (C_out, C_in/g, kH, kW, tH, tW), bias
// (C_out, tH, tW) or untied (C_out, OH, OW); output location (p, q) uses
// kernel tile (p % tH, q % tW).
Conv2dProblem tiled_conv2d_problem(const char* fn, const at::Tensor& input,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups);
Conv2dProblem tiled_conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                  const at::Tensor& weight,
                                                  at::IntArrayRef input_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups);
Conv2dProblem tiled_conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef tiles, at::IntArrayRef stride,
                                                   at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, int64_t groups);
// The bias gradient of tiled_conv2d: grad_output (N, K, P, Q) gives (K, tH, tW).
void check_tiled_conv2d_bias_backward(const char* fn, const at::Tensor& grad_output,
                                      at::IntArrayRef tiles);

// Pooling problems: see csrc/problem.cpp for the rules, which follow PyTorch's.
Pool2dProblem max_pool2d_problem(const char* fn, const at::Tensor& input,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 bool ceil_mode);
Pool2dProblem avg_pool2d_problem(const char* fn, const at::Tensor& input,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, bool ceil_mode,
                                 bool count_include_pad, std::optional<int64_t> divisor_override);
Pool2dProblem adaptive_pool2d_problem(const char* fn, const at::Tensor& input,
                                      at::IntArrayRef output_size);
ChannelPoolProblem channel_max_pool_problem(const char* fn, const at::Tensor& input,
                                            int64_t pool_size);
// Pooling backward: the forward's problem, with grad_output (and indices) checked
// against the forward's output shape. max_pool2d_backward serves max and adaptive
// max pooling alike, so its geometry is read off the shapes alone.
Pool2dProblem max_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                          const at::Tensor& input, const at::Tensor& indices);
Pool2dProblem avg_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                          const at::Tensor& input, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          bool ceil_mode, bool count_include_pad,
                                          std::optional<int64_t> divisor_override);
Pool2dProblem adaptive_avg_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input);
ChannelPoolProblem channel_max_pool_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                     const at::Tensor& input,
                                                     const at::Tensor& indices,
                                                     int64_t pool_size);

}  // namespace cnnkit
#endif
