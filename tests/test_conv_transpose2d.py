"""conv_transpose2d (SPEC 1.2) beyond what every convolution op shares
(tests/test_conv_families.py: forward against float64
torch.nn.functional.conv_transpose2d, gradients, gradcheck / gradgradcheck,
opcheck, property test): the identity with conv2d's input gradient, and
argument errors (kernel and fake kernel alike)."""
from __future__ import annotations

import pytest
import torch

import cnnkit.functional as CF
from conftest import (BadCase, assert_close, bad_case_params, check_bad_case, exact_message,
                      make_tensor)
from conv_family import TRANSPOSED
from problems import pair

ops = torch.ops.cnnkit
F64 = torch.float64


@pytest.mark.parametrize("pb", TRANSPOSED.by_id("t_basic", "t_stride2_outpad1", "t_odd",
                                                "t_groups2", "t_dilation_stride"), ids=str)
def test_is_the_input_gradient_of_conv2d(pb, device):
    # SPEC 1.2: conv_transpose2d(G, K) is conv2d_input_backward(G, K) for the
    # input size the output_padding selects (the bias aside).
    x, w, _ = TRANSPOSED.args(pb, F64, device)
    y = TRANSPOSED.functional(pb, x, w, None)
    gx = ops.conv2d_input_backward(x, w, list(y.shape[2:]), list(pair(pb.stride)),
                                   list(pair(pb.padding)), list(pair(pb.dilation)), pb.groups)
    torch.testing.assert_close(y, gx, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- untied bias
# With a fixed input size the transposed convolution may learn one bias per
# output location: bias (C_out, OH, OW) beside (C_out,), added to
# out[n, k, p, q]
# (forward only here; tests/test_conv_families.py has the shared ones).

# Bias shapes neither (C_out,) nor (C_out, OH, OW), for input (1, 4, 5, 6),
# weight (4, 2, 3, 3) and stride 2: C_out 2, output 11x13.
UNTIED_BAD_BIAS_SHAPES = [(4,), (2, 13, 11), (2, 11), (1, 2, 11, 13), (2, 1, 1), (4, 11, 13),
                          (2, 5, 6)]


@pytest.mark.parametrize("shape", UNTIED_BAD_BIAS_SHAPES, ids=str)
def test_wrong_bias_shape_names_both_shapes(shape, device):
    x = make_tensor((1, 4, 5, 6), torch.float32, device)
    w = make_tensor((4, 2, 3, 3), torch.float32, device)
    b = make_tensor(shape, torch.float32, device)
    message = (f"cnnkit.conv_transpose2d: expected bias of shape [2] or [2, 11, 13], but got "
               f"shape {list(shape)}")
    with pytest.raises(RuntimeError, match=exact_message(message)):
        ops.conv_transpose2d(x, w, b, [2, 2], [0, 0], [0, 0], 1, [1, 1])


# --------------------------------------------------------------------------- bad inputs

FN = "cnnkit.conv_transpose2d"


def _convT(x, w, b=None, **kw):
    return CF.conv_transpose2d(x, w, b, **kw)


CONV_TRANSPOSE2D_BAD_CASES = [
    BadCase("input_2d", lambda t: _convT(t(4, 5), t(4, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C_in, H, W), but got shape [4, 5]"),
    BadCase("input_5d", lambda t: _convT(t(1, 4, 1, 5, 5), t(4, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C_in, H, W), but got shape [1, 4, 1, 5, 5]"),
    BadCase("weight_3d", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3)), RuntimeError,
            f"{FN}: expected 4D weight (C_in, C_out/groups, kH, kW), but got shape [4, 2, 3]"),
    BadCase("weight_5d", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3, 1)), RuntimeError,
            f"{FN}: expected 4D weight (C_in, C_out/groups, kH, kW), but got shape "
            "[4, 2, 3, 3, 1]"),
    BadCase("input_int64", lambda t: _convT(t(1, 4, 5, 5, dtype=torch.int64),
                                            t(4, 2, 3, 3, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32 or torch.float64, but got torch.int64",
            devices=("cpu", "meta")),
    BadCase("input_float16_cpu", lambda t: _convT(t(1, 4, 5, 5, dtype=torch.float16),
                                                  t(4, 2, 3, 3, dtype=torch.float16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.float16", devices=("cpu", "meta")),
    BadCase("input_int64_cuda", lambda t: _convT(t(1, 4, 5, 5, dtype=torch.int64),
                                                 t(4, 2, 3, 3, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32, torch.float64, torch.float16 or "
            "torch.bfloat16, but got torch.int64", devices=("cuda",)),
    BadCase("weight_float64", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3, dtype=torch.float64)),
            RuntimeError, f"{FN}: expected weight of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("bias_float64", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3),
                                             t(2, dtype=torch.float64)), RuntimeError,
            f"{FN}: expected bias of the dtype of input (torch.float32), but got torch.float64"),
    BadCase("weight_on_cpu", lambda t: _convT(t(1, 4, 5, 5), make_tensor((4, 2, 3, 3),
                                                                         torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected weight on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("stride_0", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), stride=(2, 0)),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[2, 0]"),
    BadCase("dilation_negative", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), dilation=-1),
            RuntimeError, f"{FN}: expected dilation to be positive, but got dilation=[-1, -1]"),
    BadCase("padding_negative", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), padding=(-1, 0)),
            RuntimeError, f"{FN}: expected padding of 2 non-negative entries, but got "
            "padding=[-1, 0]"),
    BadCase("groups_0", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), groups=0), RuntimeError,
            f"{FN}: expected groups to be positive, but got groups=0"),
    BadCase("input_channels_not_divisible", lambda t: _convT(t(1, 3, 5, 5), t(3, 2, 3, 3),
                                                             groups=2), RuntimeError,
            f"{FN}: expected input channels (3) to be divisible by groups (2)"),
    BadCase("weight_shape0_mismatch", lambda t: _convT(t(1, 4, 5, 5), t(3, 2, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[0] = input channels = 4, but got weight "
            "of shape [3, 2, 3, 3]"),
    BadCase("output_padding_too_large", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), stride=2,
                                                         output_padding=(2, 0)), RuntimeError,
            f"{FN}: expected output_padding to be non-negative and smaller than either stride or "
            "dilation, but got output_padding=[2, 0] for stride=[2, 2] and dilation=[1, 1]"),
    BadCase("output_padding_at_stride1", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3),
                                                          output_padding=1), RuntimeError,
            f"{FN}: expected output_padding to be non-negative and smaller than either stride or "
            "dilation, but got output_padding=[1, 1] for stride=[1, 1] and dilation=[1, 1]"),
    BadCase("output_padding_negative", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), stride=2,
                                                        output_padding=(0, -1)), RuntimeError,
            f"{FN}: expected output_padding to be non-negative and smaller than either stride or "
            "dilation, but got output_padding=[0, -1] for stride=[2, 2] and dilation=[1, 1]"),
    BadCase("output_not_positive", lambda t: _convT(t(1, 2, 3, 3), t(2, 2, 3, 3), padding=3),
            RuntimeError, f"{FN}: expected a positive output size, but got [-1, -1] for input of "
            "shape [1, 2, 3, 3], padding=[3, 3] and kernel size 3x3"),
    BadCase("empty_kernel", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 0)), RuntimeError,
            f"{FN}: expected kernel size to be positive, but got kernel size 3x0"),
    BadCase("bias_wrong_length", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), t(4)),
            RuntimeError, f"{FN}: expected bias of shape [2] or [2, 7, 7], but got shape [4]"),
    BadCase("bias_wrong_length_groups", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), t(2),
                                                         groups=2), RuntimeError,
            f"{FN}: expected bias of shape [4] or [4, 7, 7], but got shape [2]"),
    BadCase("bias_untied_wrong_size", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3),
                                                       t(2, 5, 5)), RuntimeError,
            f"{FN}: expected bias of shape [2] or [2, 7, 7], but got shape [2, 5, 5]"),
    BadCase("stride_3_entries", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), stride=[1, 1, 1]),
            TypeError, f"{FN}: expected stride to be an int or a pair of ints, but got "
            "stride=[1, 1, 1]"),
]


@pytest.mark.parametrize("case,dev", bad_case_params(CONV_TRANSPOSE2D_BAD_CASES))
def test_bad_input(case, dev):
    check_bad_case(case, dev)
