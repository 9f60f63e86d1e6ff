"""conv2d (SPEC 1.1) beyond what every convolution op shares
(tests/test_conv_families.py: forward, gradient views conv2d_input_backward /
conv2d_weight_backward / conv2d_bias_backward, gradients, gradcheck, opcheck,
property test): the padding strings against torch.nn.functional.conv2d,
torch.compile, and argument errors (kernel and fake kernel alike)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnkit.functional as CF
from conftest import (FLOAT_DTYPES, BadCase, assert_close, bad_case_params, check_bad_case,
                      exact_message, make_tensor)
from conv_family import CONV2D, check_compiled_equals_eager, view_bad_cases
from problems import CONV_PROBLEMS, ConvProblem, pair

ops = torch.ops.cnnkit


# --------------------------------------------------------------------------- padding strings


def torch_string_padding(pb: ConvProblem):
    """The padding strings as torch.nn.functional.conv2d takes them: 'same' and
    'valid' as they are, 'full' as the symmetric padding d*(k-1) per axis."""
    if pb.padding != "full":
        return pb.padding
    (kh, kw), (dh, dw) = pair(pb.kernel), pair(pb.dilation)
    return (dh * (kh - 1), dw * (kw - 1))


STRING_PADDING_PROBLEMS = [pb for pb in CONV_PROBLEMS if isinstance(pb.padding, str)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", STRING_PADDING_PROBLEMS, ids=str)
def test_padding_strings_match_torch(pb, dtype, device):
    # Independent of tests/reference.py's padding rules: 'same' (an odd total
    # padded one more at the bottom/right) as ATen implements it, 'full' as
    # F.conv2d with padding d*(k-1); forward and all three gradients.
    x, w, b = CONV2D.args(pb, dtype, device, requires_grad=True)
    y = CF.conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b) if t is not None]
    y_ref = F.conv2d(leaves64[0], leaves64[1], leaves64[2] if pb.bias else None, pair(pb.stride),
                     torch_string_padding(pb), pair(pb.dilation), pb.groups)
    assert_close(y, y_ref, dtype)
    g = make_tensor(y.shape, dtype, device)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g)
    grads_ref = torch.autograd.grad(y_ref, leaves64, g.double())
    for got, want in zip(grads, grads_ref):
        assert_close(got, want, dtype)


# --------------------------------------------------------------------------- untied bias
# With a fixed input size a convolution may learn one bias per output location:
# the op takes a bias (C_out, OH, OW) beside the (C_out,) one, and adds
# bias[k, p, q] to out[n, k, p, q]
# (forward only here; tests/test_conv_families.py has the shared ones).

# Bias shapes neither (C_out,) nor (C_out, OH, OW), for input (2, 3, 7, 9) and
# weight (8, 3, 3, 3): output 5x7.
UNTIED_BAD_BIAS_SHAPES = [(3,), (8, 7, 5), (8, 5), (1, 8, 5, 7), (8, 1, 1), (8, 5, 8), (9, 5, 7),
                          (1, 8), ()]


@pytest.mark.parametrize("shape", UNTIED_BAD_BIAS_SHAPES, ids=str)
def test_wrong_bias_shape_names_both_shapes(shape, device):
    x = make_tensor((2, 3, 7, 9), torch.float32, device)
    w = make_tensor((8, 3, 3, 3), torch.float32, device)
    b = torch.zeros(shape, dtype=torch.float32, device=device)
    message = (f"cnnkit.conv2d: expected bias of shape [8] or [8, 5, 7], but got shape "
               f"{list(shape)}")
    with pytest.raises(RuntimeError, match=exact_message(message)):
        ops.conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 1)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A small block traced without graph breaks (the fake kernels give the
    # shapes), forward and backward equal to eager.
    def block(x, w1, b1, w2):
        y = torch.relu(CF.conv2d(x, w1, b1, padding="same"))
        return CF.conv2d(y, w2, None, stride=2, padding=1, groups=2)

    check_compiled_equals_eager(block, [(2, 3, 9, 8), (4, 3, 2, 2), (4,), (6, 2, 3, 3)], device)


# --------------------------------------------------------------------------- bad inputs

FN = "cnnkit.conv2d"


def _conv(x, w, b=None, **kw):
    return CF.conv2d(x, w, b, **kw)


CONV2D_BAD_CASES = [
    BadCase("input_2d", lambda t: _conv(t(3, 5), t(2, 5, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [3, 5]"),
    BadCase("input_5d", lambda t: _conv(t(1, 2, 3, 6, 6), t(2, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [1, 2, 3, 6, 6]"),
    BadCase("weight_5d", lambda t: _conv(t(1, 4, 6, 6), t(2, 4, 3, 3, 1)), RuntimeError,
            f"{FN}: expected 4D weight (C_out, C_in/groups, kH, kW), but got shape "
            "[2, 4, 3, 3, 1]"),
    BadCase("weight_3d", lambda t: _conv(t(1, 4, 6, 6), t(2, 4, 3)), RuntimeError,
            f"{FN}: expected 4D weight (C_out, C_in/groups, kH, kW), but got shape [2, 4, 3]"),
    BadCase("input_int64", lambda t: _conv(t(1, 2, 5, 5, dtype=torch.int64),
                                           t(2, 2, 3, 3, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32 or torch.float64, but got torch.int64",
            devices=("cpu", "meta")),
    BadCase("input_int64_cuda", lambda t: _conv(t(1, 2, 5, 5, dtype=torch.int64),
                                                t(2, 2, 3, 3, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32, torch.float64, torch.float16 or "
            "torch.bfloat16, but got torch.int64", devices=("cuda",)),
    BadCase("input_float16_cpu", lambda t: _conv(t(1, 2, 5, 5, dtype=torch.float16),
                                                 t(2, 2, 3, 3, dtype=torch.float16)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32 or torch.float64, but got torch.float16",
            devices=("cpu", "meta")),
    BadCase("input_bfloat16_cpu", lambda t: _conv(t(1, 2, 5, 5, dtype=torch.bfloat16),
                                                  t(2, 2, 3, 3, dtype=torch.bfloat16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.bfloat16", devices=("cpu", "meta")),
    BadCase("weight_float64", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3, dtype=torch.float64)),
            RuntimeError, f"{FN}: expected weight of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("bias_float64", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3),
                                            t(2, dtype=torch.float64)), RuntimeError,
            f"{FN}: expected bias of the dtype of input (torch.float32), but got torch.float64"),
    BadCase("weight_on_cpu", lambda t: _conv(t(1, 2, 5, 5), make_tensor((2, 2, 3, 3),
                                                                        torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected weight on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("bias_on_cpu", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3),
                                           make_tensor((2,), torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected bias on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("input_channels_not_divisible", lambda t: _conv(t(1, 5, 5, 5), t(4, 2, 3, 3),
                                                            groups=2), RuntimeError,
            f"{FN}: expected input channels (5) to be divisible by groups (2)"),
    BadCase("output_channels_not_divisible", lambda t: _conv(t(1, 4, 5, 5), t(3, 2, 3, 3),
                                                             groups=2), RuntimeError,
            f"{FN}: expected output channels (3) to be divisible by groups (2)"),
    BadCase("weight_channels_mismatch", lambda t: _conv(t(1, 4, 5, 5), t(2, 3, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[1] = input channels / groups = 4 / 1, but "
            "got weight of shape [2, 3, 3, 3]"),
    BadCase("weight_channels_mismatch_groups", lambda t: _conv(t(1, 4, 5, 5), t(6, 4, 3, 3),
                                                               groups=2), RuntimeError,
            f"{FN}: expected weight.shape[1] = input channels / groups = 4 / 2, but got weight of "
            "shape [6, 4, 3, 3]"),
    BadCase("bias_wrong_length", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), t(3)),
            RuntimeError, f"{FN}: expected bias of shape [2] or [2, 3, 3], but got shape [3]"),
    BadCase("bias_2d", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), t(2, 1)), RuntimeError,
            f"{FN}: expected bias of shape [2] or [2, 3, 3], but got shape [2, 1]"),
    BadCase("bias_untied_wrong_size", lambda t: _conv(t(1, 2, 5, 6), t(2, 2, 3, 3), t(2, 4, 3)),
            RuntimeError, f"{FN}: expected bias of shape [2] or [2, 3, 4], but got shape "
            "[2, 4, 3]"),
    BadCase("kernel_larger_than_input", lambda t: _conv(t(1, 1, 4, 4), t(1, 1, 5, 3)),
            RuntimeError, f"{FN}: expected the kernel (5x3 after dilation) to fit in the padded "
            "input (4x4), but it is larger"),
    BadCase("kernel_larger_after_dilation", lambda t: _conv(t(1, 1, 6, 4), t(1, 1, 3, 3),
                                                            dilation=2), RuntimeError,
            f"{FN}: expected the kernel (5x5 after dilation) to fit in the padded input (6x4), "
            "but it is larger"),
    BadCase("kernel_larger_than_padded_input", lambda t: _conv(t(1, 1, 4, 4), t(1, 1, 7, 3),
                                                               padding=1), RuntimeError,
            f"{FN}: expected the kernel (7x3 after dilation) to fit in the padded input (6x6), "
            "but it is larger"),
    BadCase("empty_kernel", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 0, 3)), RuntimeError,
            f"{FN}: expected kernel size to be positive, but got kernel size 0x3"),
    BadCase("stride_0", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), stride=(0, 1)),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[0, 1]"),
    BadCase("stride_negative", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), stride=-1),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[-1, -1]"),
    BadCase("dilation_0", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), dilation=(1, 0)),
            RuntimeError, f"{FN}: expected dilation to be positive, but got dilation=[1, 0]"),
    BadCase("padding_negative", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), padding=(-1, 0)),
            RuntimeError, f"{FN}: expected padding to be non-negative, but got padding=[-1, 0]"),
    BadCase("groups_0", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), groups=0), RuntimeError,
            f"{FN}: expected groups to be positive, but got groups=0"),
    BadCase("groups_negative", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), groups=-2),
            RuntimeError, f"{FN}: expected groups to be positive, but got groups=-2"),
    BadCase("padding_bad_string", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3),
                                                  padding="circular"), ValueError,
            f"{FN}: expected padding to be an int, a pair of ints, 'valid', 'same' or 'full', but "
            "got padding='circular'"),
    BadCase("padding_same_stride2", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), stride=2,
                                                    padding="same"), ValueError,
            f"{FN}: padding='same' is not supported for strided convolutions, but got "
            "stride=[2, 2]"),
    BadCase("stride_3_entries", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), stride=(1, 2, 3)),
            TypeError, f"{FN}: expected stride to be an int or a pair of ints, but got "
            "stride=(1, 2, 3)"),
    BadCase("padding_float", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), padding=1.5),
            TypeError, f"{FN}: expected padding to be an int or a pair of ints, but got "
            "padding=1.5"),
    BadCase("input_not_a_tensor", lambda t: _conv([[1.0]], t(2, 2, 3, 3)), TypeError,
            f"{FN}: expected input to be a torch.Tensor, but got list"),
]

FN_IB = "cnnkit.conv2d_input_backward"
G1 = ([1, 1], [0, 0], [1, 1], 1)  # stride, padding, dilation, groups


def _ib(g, w, input_size, geo=G1):
    return ops.conv2d_input_backward(g, w, input_size, *geo)


# The gradient views: errors of their own, then those the three convolutions
# share (tests/conv_family.py).
GRAD_VIEW_BAD_CASES = [
    BadCase("ib_grad_output_3d", lambda t: _ib(t(2, 3, 3), t(2, 3, 3, 3), [5, 5]), RuntimeError,
            f"{FN_IB}: expected 4D grad_output (N, C_out, OH, OW), but got shape [2, 3, 3]"),
    BadCase("ib_weight_2d", lambda t: _ib(t(1, 2, 3, 3), t(2, 3), [5, 5]), RuntimeError,
            f"{FN_IB}: expected 4D weight (C_out, C_in/groups, kH, kW), but got shape [2, 3]"),
    BadCase("ib_int32", lambda t: _ib(t(1, 2, 3, 3, dtype=torch.int32),
                                      t(2, 3, 3, 3, dtype=torch.int32), [5, 5]), RuntimeError,
            f"{FN_IB}: expected grad_output of dtype torch.float32 or torch.float64, but got "
            "torch.int32", devices=("cpu", "meta")),
    BadCase("ib_weight_dtype", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, dtype=torch.float64),
                                             [5, 5]), RuntimeError,
            f"{FN_IB}: expected weight of the dtype of grad_output (torch.float32), but got "
            "torch.float64"),
    BadCase("ib_input_size_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3), [0, 5]), RuntimeError,
            f"{FN_IB}: expected input_size of 2 positive entries, but got input_size=[0, 5]"),
    BadCase("ib_channels_mismatch", lambda t: _ib(t(1, 3, 3, 3), t(2, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output.shape[1] = weight.shape[0] = 2, but got "
            "grad_output of shape [1, 3, 3, 3]"),
    BadCase("ib_spatial_mismatch", lambda t: _ib(t(1, 2, 4, 3), t(2, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output of spatial size [3, 3] for input_size "
            "[5, 5], but got shape [1, 2, 4, 3]"),
    BadCase("ib_stride_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3), [5, 5],
                                         ([0, 1], [0, 0], [1, 1], 1)), RuntimeError,
            f"{FN_IB}: expected stride to be positive, but got stride=[0, 1]"),
    BadCase("ib_kernel_too_large", lambda t: _ib(t(1, 2, 1, 1), t(2, 3, 3, 3), [2, 2]),
            RuntimeError, f"{FN_IB}: expected the kernel (3x3 after dilation) to fit in the padded "
            "input (2x2), but it is larger"),
] + view_bad_cases(CONV2D)


@pytest.mark.parametrize("case,dev", bad_case_params(CONV2D_BAD_CASES + GRAD_VIEW_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)
