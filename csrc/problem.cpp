// The one place where argument checks and shape rules live. Every message names
// the function, the argument, what was expected and what came. cnnkit/_fake.py
// repeats these rules with the same messages for torch.compile.
#include "problem.h"

#include <c10/util/Exception.h>

#include <array>
#include <vector>

namespace cnnkit {

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

// The CUDA kernels take float16 and bfloat16 too; so do their emulation on
// CPU tensors (this file compiled into cnnkit._C_emu).
static bool runs_cuda_kernels(const at::Tensor& t) {
#if defined(CNNKIT_EMULATED_CUDA)
  (void)t;
  return true;
#else
  return t.is_cuda();
#endif
}

void check_dtype(const char* fn, const char* arg, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  if (runs_cuda_kernels(t)) {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                    dtype == at::kBFloat16,
                fn, ": expected ", arg, " of dtype torch.float32, torch.float64, torch.float16 or ",
                "torch.bfloat16, but got ", dtype_name(dtype));
  } else {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, fn, ": expected ", arg,
                " of dtype torch.float32 or torch.float64, but got ", dtype_name(dtype));
  }
}

void check_same_device_dtype(const char* fn, const char* arg, const at::Tensor& input,
                             const char* other_arg, const at::Tensor& other) {
  TORCH_CHECK(other.device() == input.device(), fn, ": expected ", other_arg, " on the device of ",
              arg, " (", input.device(), "), but got ", other.device());
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), fn, ": expected ", other_arg,
              " of the dtype of ", arg, " (", dtype_name(input.scalar_type()), "), but got ",
              dtype_name(other.scalar_type()));
}

at::MemoryFormat conv_output_format(const at::Tensor& data, const at::Tensor& weight) {
  const bool channels_last = data.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             (weight.dim() == 4 &&
                              weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

namespace {

void check_dim(const char* fn, const char* arg, const at::Tensor& t, int64_t dims,
               const char* layout) {
  TORCH_CHECK(t.dim() == dims, fn, ": expected ", dims, "D ", arg, " ", layout,
              ", but got shape ", t.sizes());
}

void check_dim(const char* fn, const char* arg, const at::Tensor& t, const char* layout) {
  check_dim(fn, arg, t, 4, layout);
}

void check_positive_pair(const char* fn, const char* arg, at::IntArrayRef v) {
  TORCH_CHECK(v.size() == 2, fn, ": expected ", arg, " of 2 entries, but got ", arg, "=", v);
  TORCH_CHECK(v[0] > 0 && v[1] > 0, fn, ": expected ", arg, " to be positive, but got ", arg,
              "=", v);
}

// (top, bottom, left, right) from 2 entries (symmetric) or 4.
std::array<int64_t, 4> conv_padding(const char* fn, at::IntArrayRef padding) {
  TORCH_CHECK(padding.size() == 2 || padding.size() == 4, fn,
              ": expected padding of 2 entries (or 4: top, bottom, left, right), but got padding=",
              padding);
  for (auto p : padding) {
    TORCH_CHECK(p >= 0, fn, ": expected padding to be non-negative, but got padding=", padding);
  }
  if (padding.size() == 2) return {padding[0], padding[0], padding[1], padding[1]};
  return {padding[0], padding[1], padding[2], padding[3]};
}

// Output extent along one axis; 0 or less means the kernel does not fit.
int64_t conv_out_size(int64_t in, int64_t pad_total, int64_t kernel, int64_t stride,
                      int64_t dilation) {
  return (in + pad_total - dilation * (kernel - 1) - 1) / stride + 1;
}

// The checks and geometry common to the three views of one convolution
// (forward, input gradient, weight gradient): everything but tensor shapes.
Conv2dProblem conv_geometry(const char* fn, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                            int64_t R, int64_t S, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
  check_positive_pair(fn, "stride", stride);
  check_positive_pair(fn, "dilation", dilation);
  const auto pad = conv_padding(fn, padding);
  TORCH_CHECK(groups > 0, fn, ": expected groups to be positive, but got groups=", groups);
  TORCH_CHECK(C % groups == 0, fn, ": expected input channels (", C,
              ") to be divisible by groups (", groups, ")");
  TORCH_CHECK(K % groups == 0, fn, ": expected output channels (", K,
              ") to be divisible by groups (", groups, ")");
  TORCH_CHECK(R > 0 && S > 0, fn, ": expected kernel size to be positive, but got kernel size ",
              R, "x", S);
  const int64_t eff_r = dilation[0] * (R - 1) + 1, eff_s = dilation[1] * (S - 1) + 1;
  const int64_t padded_h = H + pad[0] + pad[1], padded_w = W + pad[2] + pad[3];
  TORCH_CHECK(eff_r <= padded_h && eff_s <= padded_w, fn, ": expected the kernel (", eff_r, "x",
              eff_s, " after dilation) to fit in the padded input (", padded_h, "x", padded_w,
              "), but it is larger");
  Conv2dProblem pb{};
  pb.N = N; pb.C = C; pb.H = H; pb.W = W; pb.K = K; pb.R = R; pb.S = S;
  pb.P = conv_out_size(H, pad[0] + pad[1], R, stride[0], dilation[0]);
  pb.Q = conv_out_size(W, pad[2] + pad[3], S, stride[1], dilation[1]);
  pb.pad_h = pad[0]; pb.pad_w = pad[2];
  pb.stride_h = stride[0]; pb.stride_w = stride[1];
  pb.dilation_h = dilation[0]; pb.dilation_w = dilation[1];
  pb.groups = groups;
  pb.op = fn;
  return pb;
}

// Where each size sits in the weight of the three convolution kinds: dense
// (K, C/g, R, S), local (K, P, Q, C/g, R, S), tiled (K, C/g, R, S, tH, tW).
// -1: the kind has no such axis.
struct WeightLayout {
  int64_t dims;
  const char* layout;
  int k, cg, r, s, p, q, th, tw;
};
constexpr WeightLayout kDense{4, "(C_out, C_in/groups, kH, kW)", 0, 1, 2, 3, -1, -1, -1, -1};
constexpr WeightLayout kLocal{6, "(C_out, OH, OW, C_in/groups, kH, kW)", 0, 3, 4, 5, 1, 2, -1, -1};
constexpr WeightLayout kTiled{6, "(C_out, C_in/groups, kH, kW, tH, tW)", 0, 1, 2, 3, -1, -1, 4, 5};

void check_weight(const char* fn, const WeightLayout& L, const at::Tensor& weight,
                  Conv2dProblem& pb) {
  TORCH_CHECK(weight.size(L.cg) * pb.groups == pb.C, fn, ": expected weight.shape[", L.cg,
              "] = input channels / groups = ", pb.C, " / ", pb.groups,
              ", but got weight of shape ", weight.sizes());
  if (L.p >= 0) {
    TORCH_CHECK(weight.size(L.p) == pb.P && weight.size(L.q) == pb.Q, fn, ": expected weight.shape[",
                L.p, ":", L.q + 1, "] = output size [", pb.P, ", ", pb.Q,
                "], but got weight of shape ", weight.sizes());
  }
  if (L.th >= 0) {
    pb.tile_h = weight.size(L.th);
    pb.tile_w = weight.size(L.tw);
    TORCH_CHECK(pb.tile_h > 0 && pb.tile_w > 0, fn, ": expected tiles to be positive, but got ",
                "weight of shape ", weight.sizes());
  }
}

// The bias shape of each kind: one per output channel, per output unit, or per
// output channel and tile.
std::vector<int64_t> bias_shape(const WeightLayout& L, const Conv2dProblem& pb) {
  if (L.p >= 0) return {pb.K, pb.P, pb.Q};
  if (L.th >= 0) return {pb.K, pb.tile_h, pb.tile_w};
  return {pb.K};
}

// Checks an optional bias against the two shapes a convolution takes: its
// kind's own `shape` and the `untied` one, per output location (C_out, OH, OW).
// Where the two are equal (local convolution; tiles the size of the output)
// the message names one. Returns whether the bias is untied: of the untied
// shape, and not of `shape`.
bool check_bias(const char* fn, const at::Tensor& input, const std::optional<at::Tensor>& bias,
                at::IntArrayRef shape, at::IntArrayRef untied) {
  if (!bias.has_value()) return false;
  check_same_device_dtype(fn, "input", input, "bias", *bias);
  if (bias->sizes() == shape) return false;
  const bool two_shapes = untied != shape;
  TORCH_CHECK(two_shapes && bias->sizes() == untied, fn, ": expected bias of shape ", shape,
              two_shapes ? c10::str(" or ", untied) : std::string(), ", but got shape ",
              bias->sizes());
  return true;
}

void check_weight_tensor(const char* fn, const WeightLayout& L, const char* arg,
                         const at::Tensor& data, const at::Tensor& weight) {
  check_dim(fn, "weight", weight, L.dims, L.layout);
  check_dtype(fn, arg, data);
  check_same_device_dtype(fn, arg, data, "weight", weight);
}

Conv2dProblem forward_problem(const char* fn, const WeightLayout& L, const at::Tensor& input,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  check_dim(fn, "input", input, 4, "(N, C, H, W)");
  check_weight_tensor(fn, L, "input", input, weight);
  auto pb = conv_geometry(fn, input.size(0), input.size(1), input.size(2), input.size(3),
                          weight.size(L.k), weight.size(L.r), weight.size(L.s), stride, padding,
                          dilation, groups);
  check_weight(fn, L, weight, pb);
  pb.untied_bias = check_bias(fn, input, bias, bias_shape(L, pb), {pb.K, pb.P, pb.Q});
  return pb;
}

Conv2dProblem input_backward_problem(const char* fn, const WeightLayout& L,
                                     const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups) {
  check_dim(fn, "grad_output", grad_output, 4, "(N, C_out, OH, OW)");
  check_weight_tensor(fn, L, "grad_output", grad_output, weight);
  TORCH_CHECK(input_size.size() == 2 && input_size[0] > 0 && input_size[1] > 0, fn,
              ": expected input_size of 2 positive entries, but got input_size=", input_size);
  TORCH_CHECK(grad_output.size(1) == weight.size(L.k), fn, ": expected grad_output.shape[1] = ",
              "weight.shape[0] = ", weight.size(L.k), ", but got grad_output of shape ",
              grad_output.sizes());
  auto pb = conv_geometry(fn, grad_output.size(0), weight.size(L.cg) * groups, input_size[0],
                          input_size[1], weight.size(L.k), weight.size(L.r), weight.size(L.s),
                          stride, padding, dilation, groups);
  TORCH_CHECK(grad_output.size(2) == pb.P && grad_output.size(3) == pb.Q, fn,
              ": expected grad_output of spatial size [", pb.P, ", ", pb.Q, "] for input_size ",
              input_size, ", but got shape ", grad_output.sizes());
  check_weight(fn, L, weight, pb);
  return pb;
}

Conv2dProblem weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                      const at::Tensor& input, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups) {
  check_dim(fn, "grad_output", grad_output, 4, "(N, C_out, OH, OW)");
  check_dim(fn, "input", input, 4, "(N, C, H, W)");
  check_dtype(fn, "input", input);
  check_same_device_dtype(fn, "input", input, "grad_output", grad_output);
  TORCH_CHECK(kernel_size.size() == 2, fn, ": expected kernel_size of 2 entries, but got ",
              "kernel_size=", kernel_size);
  TORCH_CHECK(grad_output.size(0) == input.size(0), fn, ": expected grad_output.shape[0] = ",
              "input.shape[0] = ", input.size(0), ", but got grad_output of shape ",
              grad_output.sizes());
  auto pb = conv_geometry(fn, input.size(0), input.size(1), input.size(2), input.size(3),
                          grad_output.size(1), kernel_size[0], kernel_size[1], stride, padding,
                          dilation, groups);
  TORCH_CHECK(grad_output.size(2) == pb.P && grad_output.size(3) == pb.Q, fn,
              ": expected grad_output of spatial size [", pb.P, ", ", pb.Q, "] for input of shape ",
              input.sizes(), ", but got shape ", grad_output.sizes());
  return pb;
}

}  // namespace

Conv2dProblem conv2d_problem(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward_problem(fn, kDense, input, weight, bias, stride, padding, dilation, groups);
}

Conv2dProblem conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                            const at::Tensor& weight, at::IntArrayRef input_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  return input_backward_problem(fn, kDense, grad_output, weight, input_size, stride, padding,
                                dilation, groups);
}

Conv2dProblem conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                             const at::Tensor& input, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, int64_t groups) {
  return weight_backward_problem(fn, grad_output, input, kernel_size, stride, padding, dilation,
                                 groups);
}

void check_conv2d_bias_backward(const char* fn, const at::Tensor& grad_output) {
  check_dim(fn, "grad_output", grad_output, 4, "(N, C_out, OH, OW)");
  check_dtype(fn, "grad_output", grad_output);
}

Conv2dProblem local_conv2d_problem(const char* fn, const at::Tensor& input,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups) {
  return forward_problem(fn, kLocal, input, weight, bias, stride, padding, dilation, groups);
}

Conv2dProblem local_conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                  const at::Tensor& weight,
                                                  at::IntArrayRef input_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups) {
  return input_backward_problem(fn, kLocal, grad_output, weight, input_size, stride, padding,
                                dilation, groups);
}

Conv2dProblem local_conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, int64_t groups) {
  return weight_backward_problem(fn, grad_output, input, kernel_size, stride, padding, dilation,
                                 groups);
}

Conv2dProblem tiled_conv2d_problem(const char* fn, const at::Tensor& input,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups) {
  return forward_problem(fn, kTiled, input, weight, bias, stride, padding, dilation, groups);
}

Conv2dProblem tiled_conv2d_input_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                  const at::Tensor& weight,
                                                  at::IntArrayRef input_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups) {
  return input_backward_problem(fn, kTiled, grad_output, weight, input_size, stride, padding,
                                dilation, groups);
}

Conv2dProblem tiled_conv2d_weight_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef tiles, at::IntArrayRef stride,
                                                   at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, int64_t groups) {
  check_positive_pair(fn, "tiles", tiles);
  auto pb = weight_backward_problem(fn, grad_output, input, kernel_size, stride, padding, dilation,
                                    groups);
  pb.tile_h = tiles[0];
  pb.tile_w = tiles[1];
  return pb;
}

void check_tiled_conv2d_bias_backward(const char* fn, const at::Tensor& grad_output,
                                      at::IntArrayRef tiles) {
  check_conv2d_bias_backward(fn, grad_output);
  check_positive_pair(fn, "tiles", tiles);
}

Conv2dProblem conv_transpose2d_problem(const char* fn, const at::Tensor& input,
                                       const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef output_padding, int64_t groups,
                                       at::IntArrayRef dilation) {
  check_dim(fn, "input", input, 4, "(N, C_in, H, W)");
  check_dim(fn, "weight", weight, 4, "(C_in, C_out/groups, kH, kW)");
  check_dtype(fn, "input", input);
  check_same_device_dtype(fn, "input", input, "weight", weight);
  check_positive_pair(fn, "stride", stride);
  check_positive_pair(fn, "dilation", dilation);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, fn,
              ": expected padding of 2 non-negative entries, but got padding=", padding);
  TORCH_CHECK(groups > 0, fn, ": expected groups to be positive, but got groups=", groups);
  TORCH_CHECK(input.size(1) % groups == 0, fn, ": expected input channels (", input.size(1),
              ") to be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(0) == input.size(1), fn, ": expected weight.shape[0] = input channels = ",
              input.size(1), ", but got weight of shape ", weight.sizes());
  TORCH_CHECK(output_padding.size() == 2, fn, ": expected output_padding of 2 entries, but got ",
              "output_padding=", output_padding);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(output_padding[i] >= 0 &&
                    (output_padding[i] < stride[i] || output_padding[i] < dilation[i]),
                fn, ": expected output_padding to be non-negative and smaller than either stride ",
                "or dilation, but got output_padding=", output_padding, " for stride=", stride,
                " and dilation=", dilation);
  }
  const int64_t R = weight.size(2), S = weight.size(3);
  TORCH_CHECK(R > 0 && S > 0, fn, ": expected kernel size to be positive, but got kernel size ",
              R, "x", S);
  // The output size of the transposed convolution is the input size of the
  // convolution it is the gradient of.
  const int64_t out_h = (input.size(2) - 1) * stride[0] - 2 * padding[0] +
                        dilation[0] * (R - 1) + output_padding[0] + 1;
  const int64_t out_w = (input.size(3) - 1) * stride[1] - 2 * padding[1] +
                        dilation[1] * (S - 1) + output_padding[1] + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, fn, ": expected a positive output size, but got [", out_h,
              ", ", out_w, "] for input of shape ", input.sizes(), ", padding=", padding,
              " and kernel size ", R, "x", S);
  const int64_t out_channels = weight.size(1) * groups;
  // (The op adds an untied bias itself, after the input-gradient engine.)
  check_bias(fn, input, bias, {out_channels}, {out_channels, out_h, out_w});
  auto pb = conv_geometry(fn, input.size(0), out_channels, out_h, out_w, input.size(1), R, S,
                          stride, padding, dilation, groups);
  // output_padding below the dilation but not below the stride gives an output
  // whose convolution has more rows/columns than the input: the transposed
  // convolution is the adjoint of that convolution cut to its first H x W outputs.
  TORCH_INTERNAL_ASSERT(pb.P >= input.size(2) && pb.Q >= input.size(3));
  pb.P = input.size(2);
  pb.Q = input.size(3);
  return pb;
}

}  // namespace cnnkit

// --------------------------------------------------------------------------- pooling
//
// The rules are PyTorch's (ATen's Pool.h): window p along an axis starts at
// p * stride - pad and has taps every `dilation` elements; the output size is
// floor((size + 2 * pad - dilation * (kernel - 1) - 1) / stride) + 1, or the
// ceiling with ceil_mode, where a last window that would start in the right
// padding is dropped; padding is at most half the kernel.
namespace cnnkit {
namespace {

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

int64_t pool_out_size(int64_t size, int64_t kernel, int64_t pad, int64_t stride,
                      int64_t dilation, bool ceil_mode) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1;
  int64_t out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

// Whether every window along one axis has a tap inside the input. Only windows
// starting in the left padding can miss: with dilation their taps may step over
// a short input (size 2, kernel 2, dilation 3, padding 1: taps at -1 and 2).
bool every_window_hits_input(int64_t size, int64_t out, int64_t kernel, int64_t pad,
                             int64_t stride, int64_t dilation) {
  for (int64_t p = 0; p < out && p * stride < pad; ++p) {
    const int64_t start = p * stride - pad;
    const int64_t first = (-start + dilation - 1) / dilation;  // first tap at or after 0
    if (first >= kernel || start + first * dilation >= size) return false;
  }
  return true;
}

// 4-D floating input with non-empty planes (N and C may be 0).
void check_pool_input(const char* fn, const at::Tensor& input) {
  check_dim(fn, "input", input, "(N, C, H, W)");
  check_dtype(fn, "input", input);
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, fn,
              ": expected input of non-zero height and width, but got shape ", input.sizes());
}

// The geometry shared by max and average pooling (average: dilation 1).
Pool2dProblem pool_geometry(const char* fn, const at::Tensor& input, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool ceil_mode) {
  check_positive_pair(fn, "kernel_size", kernel_size);
  check_positive_pair(fn, "stride", stride);
  check_positive_pair(fn, "dilation", dilation);
  TORCH_CHECK(padding.size() == 2, fn, ": expected padding of 2 entries, but got padding=",
              padding);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, fn,
              ": expected padding to be non-negative, but got padding=", padding);
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, fn,
              ": expected padding to be at most half of kernel_size, but got padding=", padding,
              " and kernel_size=", kernel_size);
  Pool2dProblem pb{};
  pb.N = input.size(0); pb.C = input.size(1); pb.H = input.size(2); pb.W = input.size(3);
  pb.kernel_h = kernel_size[0]; pb.kernel_w = kernel_size[1];
  pb.stride_h = stride[0]; pb.stride_w = stride[1];
  pb.pad_h = padding[0]; pb.pad_w = padding[1];
  pb.dilation_h = dilation[0]; pb.dilation_w = dilation[1];
  pb.ceil_mode = ceil_mode;
  pb.P = pool_out_size(pb.H, pb.kernel_h, pb.pad_h, pb.stride_h, pb.dilation_h, ceil_mode);
  pb.Q = pool_out_size(pb.W, pb.kernel_w, pb.pad_w, pb.stride_w, pb.dilation_w, ceil_mode);
  TORCH_CHECK(pb.P >= 1 && pb.Q >= 1, fn, ": expected an output size of at least 1x1, but got ",
              pb.P, "x", pb.Q, " for input of shape ", input.sizes(), ", kernel_size=",
              kernel_size, ", stride=", stride, ", padding=", padding, " and dilation=", dilation);
  TORCH_CHECK(every_window_hits_input(pb.H, pb.P, pb.kernel_h, pb.pad_h, pb.stride_h,
                                      pb.dilation_h) &&
                  every_window_hits_input(pb.W, pb.Q, pb.kernel_w, pb.pad_w, pb.stride_w,
                                          pb.dilation_w),
              fn, ": expected every pooling window to cover at least one input element, but ",
              "with kernel_size=", kernel_size, ", padding=", padding, " and dilation=", dilation,
              " a window of input of shape ", input.sizes(), " covers padding only");
  return pb;
}

// A gradient (or indices) tensor must have the shape of the forward's output.
void check_output_shaped(const char* fn, const char* arg, const at::Tensor& t,
                         at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, fn, ": expected ", arg, " of shape ", expected,
              " (the output of the forward), but got shape ", t.sizes());
}

// Indices of a max pool: int64 on the device of the input.
void check_indices(const char* fn, const at::Tensor& input, const at::Tensor& indices) {
  TORCH_CHECK(indices.device() == input.device(), fn,
              ": expected indices on the device of input (", input.device(), "), but got ",
              indices.device());
  TORCH_CHECK(indices.scalar_type() == at::kLong, fn,
              ": expected indices of dtype torch.int64, but got ",
              dtype_name(indices.scalar_type()));
}

// grad_output of a pool of `input`: 4-D, on its device, of its dtype.
void check_grad_output(const char* fn, const at::Tensor& input, const at::Tensor& grad_output) {
  check_dim(fn, "grad_output", grad_output, "(N, C, OH, OW)");
  check_same_device_dtype(fn, "input", input, "grad_output", grad_output);
}

}  // namespace

Pool2dProblem max_pool2d_problem(const char* fn, const at::Tensor& input,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 bool ceil_mode) {
  check_pool_input(fn, input);
  return pool_geometry(fn, input, kernel_size, stride, padding, dilation, ceil_mode);
}

Pool2dProblem avg_pool2d_problem(const char* fn, const at::Tensor& input,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, bool ceil_mode,
                                 bool count_include_pad, std::optional<int64_t> divisor_override) {
  check_pool_input(fn, input);
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, fn,
              ": expected divisor_override to be non-zero, but got divisor_override=0");
  const int64_t no_dilation[2] = {1, 1};
  auto pb = pool_geometry(fn, input, kernel_size, stride, padding, no_dilation, ceil_mode);
  pb.count_include_pad = count_include_pad;
  pb.divisor_override = divisor_override.value_or(0);
  return pb;
}

Pool2dProblem adaptive_pool2d_problem(const char* fn, const at::Tensor& input,
                                      at::IntArrayRef output_size) {
  check_pool_input(fn, input);
  TORCH_CHECK(output_size.size() == 2, fn,
              ": expected output_size of 2 entries, but got output_size=", output_size);
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, fn,
              ": expected output_size to be non-negative, but got output_size=", output_size);
  Pool2dProblem pb{};
  pb.N = input.size(0); pb.C = input.size(1); pb.H = input.size(2); pb.W = input.size(3);
  pb.P = output_size[0]; pb.Q = output_size[1];
  return pb;
}

ChannelPoolProblem channel_max_pool_problem(const char* fn, const at::Tensor& input,
                                            int64_t pool_size) {
  check_dim(fn, "input", input, "(N, C, H, W)");
  check_dtype(fn, "input", input);
  TORCH_CHECK(pool_size > 0, fn, ": expected pool_size to be positive, but got pool_size=",
              pool_size);
  TORCH_CHECK(input.size(1) % pool_size == 0, fn, ": expected input channels (", input.size(1),
              ") to be divisible by pool_size (", pool_size, ")");
  return ChannelPoolProblem{input.size(0), input.size(1), input.size(2), input.size(3), pool_size};
}

Pool2dProblem max_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                          const at::Tensor& input, const at::Tensor& indices) {
  check_pool_input(fn, input);
  check_grad_output(fn, input, grad_output);
  check_indices(fn, input, indices);
  TORCH_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1), fn,
              ": expected grad_output of batch and channels [", input.size(0), ", ",
              input.size(1), "] (those of input), but got shape ", grad_output.sizes());
  check_output_shaped(fn, "indices", indices, grad_output.sizes());
  Pool2dProblem pb{};
  pb.N = input.size(0); pb.C = input.size(1); pb.H = input.size(2); pb.W = input.size(3);
  pb.P = grad_output.size(2); pb.Q = grad_output.size(3);
  return pb;
}

Pool2dProblem avg_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                          const at::Tensor& input, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          bool ceil_mode, bool count_include_pad,
                                          std::optional<int64_t> divisor_override) {
  auto pb = avg_pool2d_problem(fn, input, kernel_size, stride, padding, ceil_mode,
                               count_include_pad, divisor_override);
  check_grad_output(fn, input, grad_output);
  check_output_shaped(fn, "grad_output", grad_output, {pb.N, pb.C, pb.P, pb.Q});
  return pb;
}

Pool2dProblem adaptive_avg_pool2d_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                   const at::Tensor& input) {
  check_pool_input(fn, input);
  check_grad_output(fn, input, grad_output);
  auto pb = adaptive_pool2d_problem(fn, input, grad_output.sizes().slice(2));
  check_output_shaped(fn, "grad_output", grad_output, {pb.N, pb.C, pb.P, pb.Q});
  return pb;
}

ChannelPoolProblem channel_max_pool_backward_problem(const char* fn, const at::Tensor& grad_output,
                                                     const at::Tensor& input,
                                                     const at::Tensor& indices,
                                                     int64_t pool_size) {
  auto pb = channel_max_pool_problem(fn, input, pool_size);
  check_grad_output(fn, input, grad_output);
  check_indices(fn, input, indices);
  check_output_shaped(fn, "grad_output", grad_output, {pb.N, pb.out_channels(), pb.H, pb.W});
  check_output_shaped(fn, "indices", indices, {pb.N, pb.out_channels(), pb.H, pb.W});
  return pb;
}

}  // namespace cnnkit
