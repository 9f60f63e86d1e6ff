"""Fake (meta) kernels for the cnnkit ops: output shapes without computing, for
torch.compile and torch.library.opcheck.

They repeat the rules of csrc/problem.cpp with the same messages (the tests
check both), so errors read the same under torch.compile as in eager mode.
"""
from __future__ import annotations

import torch

from ._kinds import DENSE, LOCAL, TILED, output_size

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(cond, *message):
    if not cond:
        raise RuntimeError("".join(str(m) for m in message))


def _shape(t):
    return list(t.shape)


def _empty_in_format_of(t, shape, weight=None, dtype=None):
    """An output of `shape` (of `t`'s dtype unless given) in the memory format
    the kernels give it: that of `t` (channels_last in, channels_last out), or
    channels_last when a 4-D `weight` is (csrc's conv_output_format)."""
    fmt = torch._prims_common.suggest_memory_format(t)
    if weight is not None and weight.dim() == 4 and \
            torch._prims_common.suggest_memory_format(weight) == torch.channels_last:
        fmt = torch.channels_last
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device, memory_format=fmt)


def check_dtype(fn, arg, t):
    if t.device.type == "cuda":
        _check(t.dtype in _CUDA_DTYPES, fn, ": expected ", arg, " of dtype torch.float32, "
               "torch.float64, torch.float16 or torch.bfloat16, but got ", t.dtype)
    else:
        _check(t.dtype in _CPU_DTYPES, fn, ": expected ", arg,
               " of dtype torch.float32 or torch.float64, but got ", t.dtype)


def check_same_device_dtype(fn, arg, input, other_arg, other):
    _check(other.device == input.device, fn, ": expected ", other_arg, " on the device of ", arg,
           " (", input.device, "), but got ", other.device)
    _check(other.dtype == input.dtype, fn, ": expected ", other_arg, " of the dtype of ", arg,
           " (", input.dtype, "), but got ", other.dtype)


def check_dim(fn, arg, t, layout, dims=4):
    _check(t.dim() == dims, fn, ": expected ", dims, "D ", arg, " ", layout, ", but got shape ",
           _shape(t))


def check_positive_pair(fn, arg, v):
    v = list(v)
    _check(len(v) == 2, fn, ": expected ", arg, " of 2 entries, but got ", arg, "=", v)
    _check(v[0] > 0 and v[1] > 0, fn, ": expected ", arg, " to be positive, but got ", arg, "=", v)


# --------------------------------------------------------------------------- convolution


def _conv_padding(fn, padding):
    padding = list(padding)
    _check(len(padding) in (2, 4), fn, ": expected padding of 2 entries (or 4: top, bottom, left, "
           "right), but got padding=", padding)
    for p in padding:
        _check(p >= 0, fn, ": expected padding to be non-negative, but got padding=", padding)
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return padding


def _conv_geometry(fn, C, H, W, K, R, S, stride, padding, dilation, groups):
    """(P, Q) after the checks shared by the three views of a convolution."""
    check_positive_pair(fn, "stride", stride)
    check_positive_pair(fn, "dilation", dilation)
    pad = _conv_padding(fn, padding)
    _check(groups > 0, fn, ": expected groups to be positive, but got groups=", groups)
    _check(C % groups == 0, fn, ": expected input channels (", C, ") to be divisible by groups (",
           groups, ")")
    _check(K % groups == 0, fn, ": expected output channels (", K, ") to be divisible by groups (",
           groups, ")")
    _check(R > 0 and S > 0, fn, ": expected kernel size to be positive, but got kernel size ",
           R, "x", S)
    eff_r, eff_s = dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1
    padded_h, padded_w = H + pad[0] + pad[1], W + pad[2] + pad[3]
    _check(eff_r <= padded_h and eff_s <= padded_w, fn, ": expected the kernel (", eff_r, "x", eff_s,
           " after dilation) to fit in the padded input (", padded_h, "x", padded_w,
           "), but it is larger")
    P = output_size(H, R, stride[0], pad[0], pad[1], dilation[0])
    Q = output_size(W, S, stride[1], pad[2], pad[3], dilation[1])
    return P, Q


def _check_weight(fn, kind, weight, C, groups, P, Q):
    cg = kind.in_channels_dim
    _check(weight.shape[cg] * groups == C, fn, ": expected weight.shape[", cg,
           "] = input channels / groups = ", C, " / ", groups, ", but got weight of shape ",
           _shape(weight))
    if kind.output_dims is not None:
        p, q = kind.output_dims
        _check(weight.shape[p] == P and weight.shape[q] == Q, fn, ": expected weight.shape[", p,
               ":", q + 1, "] = output size [", P, ", ", Q, "], but got weight of shape ",
               _shape(weight))
    if kind.tile_dims is not None:
        _check(all(t > 0 for t in kind.tiles(weight)), fn,
               ": expected tiles to be positive, but got weight of shape ", _shape(weight))


def _check_bias(fn, input, bias, shapes):
    """`shapes`: the bias shapes accepted, the op's own first, the untied one next."""
    if bias is None:
        return
    check_same_device_dtype(fn, "input", input, "bias", bias)
    _check(_shape(bias) in shapes, fn, ": expected bias of shape ",
           " or ".join(str(list(s)) for s in shapes), ", but got shape ", _shape(bias))


def _check_weight_tensor(fn, kind, arg, data, weight):
    check_dim(fn, "weight", weight, kind.layout, kind.weight_dims)
    check_dtype(fn, arg, data)
    check_same_device_dtype(fn, arg, data, "weight", weight)


def _forward_fake(fn, kind, input, weight, bias, stride, padding, dilation, groups):
    check_dim(fn, "input", input, "(N, C, H, W)")
    _check_weight_tensor(fn, kind, "input", input, weight)
    N, C, H, W = input.shape
    K = weight.shape[0]
    P, Q = _conv_geometry(fn, C, H, W, K, *kind.kernel_size(weight), stride, padding, dilation,
                          groups)
    _check_weight(fn, kind, weight, C, groups, P, Q)
    _check_bias(fn, input, bias, kind.bias_shapes(weight, (P, Q)))
    return _empty_in_format_of(input, (N, K, P, Q), weight)


def _input_backward_fake(fn, kind, grad_output, weight, input_size, stride, padding, dilation,
                         groups):
    check_dim(fn, "grad_output", grad_output, "(N, C_out, OH, OW)")
    _check_weight_tensor(fn, kind, "grad_output", grad_output, weight)
    input_size = list(input_size)
    _check(len(input_size) == 2 and input_size[0] > 0 and input_size[1] > 0, fn,
           ": expected input_size of 2 positive entries, but got input_size=", input_size)
    K = weight.shape[0]
    _check(grad_output.shape[1] == K, fn, ": expected grad_output.shape[1] = weight.shape[0] = ",
           K, ", but got grad_output of shape ", _shape(grad_output))
    C = weight.shape[kind.in_channels_dim] * groups
    P, Q = _conv_geometry(fn, C, *input_size, K, *kind.kernel_size(weight), stride, padding,
                          dilation, groups)
    _check(grad_output.shape[2] == P and grad_output.shape[3] == Q, fn,
           ": expected grad_output of spatial size [", P, ", ", Q, "] for input_size ", input_size,
           ", but got shape ", _shape(grad_output))
    _check_weight(fn, kind, weight, C, groups, P, Q)
    return _empty_in_format_of(grad_output, (grad_output.shape[0], C, *input_size), weight)


def _weight_backward_fake(fn, grad_output, input, kernel_size, stride, padding, dilation, groups):
    """Checks of the weight gradient; returns (N, C, K, P, Q)."""
    check_dim(fn, "grad_output", grad_output, "(N, C_out, OH, OW)")
    check_dim(fn, "input", input, "(N, C, H, W)")
    check_dtype(fn, "input", input)
    check_same_device_dtype(fn, "input", input, "grad_output", grad_output)
    kernel_size = list(kernel_size)
    _check(len(kernel_size) == 2, fn, ": expected kernel_size of 2 entries, but got kernel_size=",
           kernel_size)
    _check(grad_output.shape[0] == input.shape[0], fn, ": expected grad_output.shape[0] = "
           "input.shape[0] = ", input.shape[0], ", but got grad_output of shape ", _shape(grad_output))
    N, C, H, W = input.shape
    K = grad_output.shape[1]
    P, Q = _conv_geometry(fn, C, H, W, K, *kernel_size, stride, padding, dilation, groups)
    _check(grad_output.shape[2] == P and grad_output.shape[3] == Q, fn,
           ": expected grad_output of spatial size [", P, ", ", Q, "] for input of shape ",
           _shape(input), ", but got shape ", _shape(grad_output))
    return N, C, K, P, Q


def _check_bias_backward(fn, grad_output):
    check_dim(fn, "grad_output", grad_output, "(N, C_out, OH, OW)")
    check_dtype(fn, "grad_output", grad_output)


@torch.library.register_fake("cnnkit::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return _forward_fake("cnnkit.conv2d", DENSE, input, weight, bias, stride, padding, dilation,
                         groups)


@torch.library.register_fake("cnnkit::conv2d_input_backward")
def _conv2d_input_backward_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    return _input_backward_fake("cnnkit.conv2d_input_backward", DENSE, grad_output, weight,
                                input_size, stride, padding, dilation, groups)


@torch.library.register_fake("cnnkit::conv2d_weight_backward")
def _conv2d_weight_backward_fake(grad_output, input, kernel_size, stride, padding, dilation, groups):
    N, C, K, P, Q = _weight_backward_fake("cnnkit.conv2d_weight_backward", grad_output, input,
                                          kernel_size, stride, padding, dilation, groups)
    return input.new_empty((K, C // groups, *kernel_size))


@torch.library.register_fake("cnnkit::conv2d_bias_backward")
def _conv2d_bias_backward_fake(grad_output):
    _check_bias_backward("cnnkit.conv2d_bias_backward", grad_output)
    return grad_output.new_empty((grad_output.shape[1],))


@torch.library.register_fake("cnnkit::local_conv2d")
def _local_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return _forward_fake("cnnkit.local_conv2d", LOCAL, input, weight, bias, stride, padding,
                         dilation, groups)


@torch.library.register_fake("cnnkit::local_conv2d_input_backward")
def _local_conv2d_input_backward_fake(grad_output, weight, input_size, stride, padding, dilation,
                                      groups):
    return _input_backward_fake("cnnkit.local_conv2d_input_backward", LOCAL, grad_output, weight,
                                input_size, stride, padding, dilation, groups)


@torch.library.register_fake("cnnkit::local_conv2d_weight_backward")
def _local_conv2d_weight_backward_fake(grad_output, input, kernel_size, stride, padding, dilation,
                                       groups):
    N, C, K, P, Q = _weight_backward_fake("cnnkit.local_conv2d_weight_backward", grad_output,
                                          input, kernel_size, stride, padding, dilation, groups)
    return input.new_empty((K, P, Q, C // groups, *kernel_size))


@torch.library.register_fake("cnnkit::local_conv2d_bias_backward")
def _local_conv2d_bias_backward_fake(grad_output):
    _check_bias_backward("cnnkit.local_conv2d_bias_backward", grad_output)
    return grad_output.new_empty(grad_output.shape[1:])


@torch.library.register_fake("cnnkit::tiled_conv2d")
def _tiled_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return _forward_fake("cnnkit.tiled_conv2d", TILED, input, weight, bias, stride, padding,
                         dilation, groups)


@torch.library.register_fake("cnnkit::tiled_conv2d_input_backward")
def _tiled_conv2d_input_backward_fake(grad_output, weight, input_size, stride, padding, dilation,
                                      groups):
    return _input_backward_fake("cnnkit.tiled_conv2d_input_backward", TILED, grad_output, weight,
                                input_size, stride, padding, dilation, groups)


@torch.library.register_fake("cnnkit::tiled_conv2d_weight_backward")
def _tiled_conv2d_weight_backward_fake(grad_output, input, kernel_size, tiles, stride, padding,
                                       dilation, groups):
    fn = "cnnkit.tiled_conv2d_weight_backward"
    check_positive_pair(fn, "tiles", tiles)
    N, C, K, P, Q = _weight_backward_fake(fn, grad_output, input, kernel_size, stride, padding,
                                          dilation, groups)
    # Stored phase-major, (tH, tW, K, C/g, kH, kW) in memory, as the kernels write it.
    return input.new_empty((*tiles, K, C // groups, *kernel_size)).permute(2, 3, 4, 5, 0, 1)


@torch.library.register_fake("cnnkit::tiled_conv2d_bias_backward")
def _tiled_conv2d_bias_backward_fake(grad_output, tiles):
    fn = "cnnkit.tiled_conv2d_bias_backward"
    _check_bias_backward(fn, grad_output)
    check_positive_pair(fn, "tiles", tiles)
    return grad_output.new_empty((grad_output.shape[1], *tiles))


@torch.library.register_fake("cnnkit::conv_transpose2d")
def _conv_transpose2d_fake(input, weight, bias, stride, padding, output_padding, groups, dilation):
    fn = "cnnkit.conv_transpose2d"
    check_dim(fn, "input", input, "(N, C_in, H, W)")
    check_dim(fn, "weight", weight, "(C_in, C_out/groups, kH, kW)")
    check_dtype(fn, "input", input)
    check_same_device_dtype(fn, "input", input, "weight", weight)
    check_positive_pair(fn, "stride", stride)
    check_positive_pair(fn, "dilation", dilation)
    padding, output_padding = list(padding), list(output_padding)
    _check(len(padding) == 2 and padding[0] >= 0 and padding[1] >= 0, fn,
           ": expected padding of 2 non-negative entries, but got padding=", padding)
    _check(groups > 0, fn, ": expected groups to be positive, but got groups=", groups)
    N, C_in, H, W = input.shape
    _check(C_in % groups == 0, fn, ": expected input channels (", C_in,
           ") to be divisible by groups (", groups, ")")
    _check(weight.shape[0] == C_in, fn, ": expected weight.shape[0] = input channels = ", C_in,
           ", but got weight of shape ", _shape(weight))
    _check(len(output_padding) == 2, fn, ": expected output_padding of 2 entries, but got "
           "output_padding=", output_padding)
    for i in range(2):
        _check(output_padding[i] >= 0 and (output_padding[i] < stride[i] or
                                           output_padding[i] < dilation[i]),
               fn, ": expected output_padding to be non-negative and smaller than either stride "
               "or dilation, but got output_padding=", output_padding, " for stride=", list(stride),
               " and dilation=", list(dilation))
    R, S = weight.shape[2:]
    _check(R > 0 and S > 0, fn, ": expected kernel size to be positive, but got kernel size ",
           R, "x", S)
    out_h = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (R - 1) + output_padding[0] + 1
    out_w = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (S - 1) + output_padding[1] + 1
    _check(out_h > 0 and out_w > 0, fn, ": expected a positive output size, but got [", out_h,
           ", ", out_w, "] for input of shape ", _shape(input), ", padding=", padding,
           " and kernel size ", R, "x", S)
    C_out = weight.shape[1] * groups
    _check_bias(fn, input, bias, [[C_out], [C_out, out_h, out_w]])
    _conv_geometry(fn, C_out, out_h, out_w, C_in, R, S, stride, padding, dilation, groups)
    return _empty_in_format_of(input, (N, C_out, out_h, out_w), weight)


# --------------------------------------------------------------------------- pooling


def _pool_out_size(size, kernel, pad, stride, dilation, ceil_mode):
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) \
        // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window would start in the right padding
    return out


def _every_window_hits_input(size, out, kernel, pad, stride, dilation):
    p = 0
    while p < out and p * stride < pad:
        start = p * stride - pad
        first = (-start + dilation - 1) // dilation  # first tap at or after 0
        if first >= kernel or start + first * dilation >= size:
            return False
        p += 1
    return True


def _check_pool_input(fn, input):
    check_dim(fn, "input", input, "(N, C, H, W)")
    check_dtype(fn, "input", input)
    _check(input.shape[2] > 0 and input.shape[3] > 0, fn,
           ": expected input of non-zero height and width, but got shape ", _shape(input))


def _pool_geometry(fn, input, kernel_size, stride, padding, dilation, ceil_mode):
    """(P, Q) of max / average pooling after the checks of pool_geometry in problem.cpp."""
    check_positive_pair(fn, "kernel_size", kernel_size)
    check_positive_pair(fn, "stride", stride)
    check_positive_pair(fn, "dilation", dilation)
    kernel_size, stride, padding, dilation = (list(v) for v in (kernel_size, stride, padding,
                                                                dilation))
    _check(len(padding) == 2, fn, ": expected padding of 2 entries, but got padding=", padding)
    _check(padding[0] >= 0 and padding[1] >= 0, fn,
           ": expected padding to be non-negative, but got padding=", padding)
    _check(padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2, fn,
           ": expected padding to be at most half of kernel_size, but got padding=", padding,
           " and kernel_size=", kernel_size)
    H, W = input.shape[2:]
    P = _pool_out_size(H, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    Q = _pool_out_size(W, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    _check(P >= 1 and Q >= 1, fn, ": expected an output size of at least 1x1, but got ", P, "x", Q,
           " for input of shape ", _shape(input), ", kernel_size=", kernel_size, ", stride=",
           stride, ", padding=", padding, " and dilation=", dilation)
    _check(_every_window_hits_input(H, P, kernel_size[0], padding[0], stride[0], dilation[0]) and
           _every_window_hits_input(W, Q, kernel_size[1], padding[1], stride[1], dilation[1]),
           fn, ": expected every pooling window to cover at least one input element, but with "
           "kernel_size=", kernel_size, ", padding=", padding, " and dilation=", dilation,
           " a window of input of shape ", _shape(input), " covers padding only")
    return P, Q


def _check_output_shaped(fn, arg, t, expected):
    expected = list(expected)
    _check(_shape(t) == expected, fn, ": expected ", arg, " of shape ", expected,
           " (the output of the forward), but got shape ", _shape(t))


def _check_indices(fn, input, indices):
    _check(indices.device == input.device, fn, ": expected indices on the device of input (",
           input.device, "), but got ", indices.device)
    _check(indices.dtype == torch.int64, fn, ": expected indices of dtype torch.int64, but got ",
           indices.dtype)


def _check_grad_output(fn, input, grad_output):
    check_dim(fn, "grad_output", grad_output, "(N, C, OH, OW)")
    check_same_device_dtype(fn, "input", input, "grad_output", grad_output)


def _adaptive_geometry(fn, input, output_size):
    _check_pool_input(fn, input)
    output_size = list(output_size)
    _check(len(output_size) == 2, fn, ": expected output_size of 2 entries, but got output_size=",
           output_size)
    _check(output_size[0] >= 0 and output_size[1] >= 0, fn,
           ": expected output_size to be non-negative, but got output_size=", output_size)
    return output_size


def _channel_pool_geometry(fn, input, pool_size):
    check_dim(fn, "input", input, "(N, C, H, W)")
    check_dtype(fn, "input", input)
    _check(pool_size > 0, fn, ": expected pool_size to be positive, but got pool_size=", pool_size)
    _check(input.shape[1] % pool_size == 0, fn, ": expected input channels (", input.shape[1],
           ") to be divisible by pool_size (", pool_size, ")")
    N, C, H, W = input.shape
    return [N, C // pool_size, H, W]


@torch.library.register_fake("cnnkit::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    fn = "cnnkit.max_pool2d"
    _check_pool_input(fn, input)
    P, Q = _pool_geometry(fn, input, kernel_size, stride, padding, dilation, ceil_mode)
    shape = [*input.shape[:2], P, Q]
    return _empty_in_format_of(input, shape), _empty_in_format_of(input, shape, dtype=torch.int64)


@torch.library.register_fake("cnnkit::adaptive_max_pool2d")
def _adaptive_max_pool2d_fake(input, output_size):
    shape = [*input.shape[:2], *_adaptive_geometry("cnnkit.adaptive_max_pool2d", input,
                                                   output_size)]
    return _empty_in_format_of(input, shape), _empty_in_format_of(input, shape, dtype=torch.int64)


@torch.library.register_fake("cnnkit::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices):
    fn = "cnnkit.max_pool2d_backward"
    _check_pool_input(fn, input)
    _check_grad_output(fn, input, grad_output)
    _check_indices(fn, input, indices)
    _check(grad_output.shape[0] == input.shape[0] and grad_output.shape[1] == input.shape[1], fn,
           ": expected grad_output of batch and channels [", input.shape[0], ", ", input.shape[1],
           "] (those of input), but got shape ", _shape(grad_output))
    _check_output_shaped(fn, "indices", indices, grad_output.shape)
    return _empty_in_format_of(input, input.shape)


@torch.library.register_fake("cnnkit::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
    fn = "cnnkit.avg_pool2d"
    _check_pool_input(fn, input)
    _check(divisor_override is None or divisor_override != 0, fn,
           ": expected divisor_override to be non-zero, but got divisor_override=0")
    P, Q = _pool_geometry(fn, input, kernel_size, stride, padding, [1, 1], ceil_mode)
    return _empty_in_format_of(input, [*input.shape[:2], P, Q])


@torch.library.register_fake("cnnkit::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override):
    fn = "cnnkit.avg_pool2d_backward"
    _check_pool_input(fn, input)
    _check(divisor_override is None or divisor_override != 0, fn,
           ": expected divisor_override to be non-zero, but got divisor_override=0")
    P, Q = _pool_geometry(fn, input, kernel_size, stride, padding, [1, 1], ceil_mode)
    _check_grad_output(fn, input, grad_output)
    _check_output_shaped(fn, "grad_output", grad_output, [*input.shape[:2], P, Q])
    return _empty_in_format_of(input, input.shape)


@torch.library.register_fake("cnnkit::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    shape = [*input.shape[:2], *_adaptive_geometry("cnnkit.adaptive_avg_pool2d", input,
                                                   output_size)]
    return _empty_in_format_of(input, shape)


@torch.library.register_fake("cnnkit::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    fn = "cnnkit.adaptive_avg_pool2d_backward"
    _check_pool_input(fn, input)
    _check_grad_output(fn, input, grad_output)
    output_size = _adaptive_geometry(fn, input, grad_output.shape[2:])
    _check_output_shaped(fn, "grad_output", grad_output, [*input.shape[:2], *output_size])
    return _empty_in_format_of(input, input.shape)


@torch.library.register_fake("cnnkit::channel_max_pool")
def _channel_max_pool_fake(input, pool_size):
    shape = _channel_pool_geometry("cnnkit.channel_max_pool", input, pool_size)
    return _empty_in_format_of(input, shape), _empty_in_format_of(input, shape, dtype=torch.int64)


@torch.library.register_fake("cnnkit::channel_max_pool_backward")
def _channel_max_pool_backward_fake(grad_output, input, indices, pool_size):
    fn = "cnnkit.channel_max_pool_backward"
    shape = _channel_pool_geometry(fn, input, pool_size)
    _check_grad_output(fn, input, grad_output)
    _check_indices(fn, input, indices)
    _check_output_shaped(fn, "grad_output", grad_output, shape)
    _check_output_shaped(fn, "indices", indices, shape)
    return _empty_in_format_of(input, input.shape)
