"""conv_transpose2d (SPEC 1.2): forward against float64
torch.nn.functional.conv_transpose2d, gradients, gradcheck / gradgradcheck,
opcheck, argument errors (kernel and fake kernel alike) and a property test."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkit.functional as CF
import reference as ref
from conftest import (DEVICES, FLOAT_DTYPES, HALF_DTYPES, LAYOUTS, BadCase, assert_close,
                      bad_case_params, check_bad_case, make_tensor)
from problems import (CONV_TRANSPOSE_PROBLEMS, GRADCHECK_CONV_TRANSPOSE_PROBLEMS,
                      ConvTransposeProblem, pair)

ops = torch.ops.cnnkit
F64 = torch.float64


def by_id(*ids):
    table = {pb.id: pb for pb in CONV_TRANSPOSE_PROBLEMS + GRADCHECK_CONV_TRANSPOSE_PROBLEMS}
    return [table[i] for i in ids]


def args_of(pb: ConvTransposeProblem, dtype, device, layout="contiguous", requires_grad=False):
    x = make_tensor(pb.input_shape, dtype, device, layout, requires_grad)
    w = make_tensor(pb.weight_shape, dtype, device, layout, requires_grad)
    b = make_tensor(pb.bias_shape, dtype, device, layout, requires_grad) if pb.bias else None
    return x, w, b


def hyper(pb: ConvTransposeProblem):
    return dict(stride=pb.stride, padding=pb.padding, output_padding=pb.output_padding,
                groups=pb.groups, dilation=pb.dilation)


def out_shape(pb: ConvTransposeProblem):
    OH, OW = ref.conv_transpose2d_out_size(pb.H, pb.W, pb.kernel, pb.stride, pb.padding,
                                           pb.output_padding, pb.dilation)
    return (pb.N, pb.C_out, OH, OW)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", CONV_TRANSPOSE_PROBLEMS, ids=str)
def test_forward(pb, dtype, layout, device):
    x, w, b = args_of(pb, dtype, device, layout)
    y = CF.conv_transpose2d(x, w, b, **hyper(pb))
    assert y.dtype == dtype and y.device == x.device
    assert tuple(y.shape) == out_shape(pb)
    assert_close(y, ref.conv_transpose2d_ref(x, w, b, **hyper(pb)), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", by_id("t_stride2_outpad1", "t_groups2", "t_anisotropic",
                                     "t_no_bias"), ids=str)
def test_unbatched_input(pb, dtype, device):
    pb = dataclasses.replace(pb, N=1)
    x, w, b = args_of(pb, dtype, device)
    x3 = x[0].detach().requires_grad_()
    y = CF.conv_transpose2d(x3, w, b, **hyper(pb))
    assert tuple(y.shape) == out_shape(pb)[1:]
    assert_close(y, ref.conv_transpose2d_ref(x, w, b, **hyper(pb))[0], dtype)
    g = make_tensor(y.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, x3, g)
    assert tuple(gx.shape) == pb.input_shape[1:]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("pb", by_id("t_stride2_outpad1", "t_groups2", "t_block_remainders"),
                         ids=str)
def test_forward_half_cuda(pb, dtype, cuda_device):
    x, w, b = args_of(pb, dtype, cuda_device)
    y = CF.conv_transpose2d(x, w, b, **hyper(pb))
    assert y.dtype == dtype
    assert_close(y, ref.conv_transpose2d_ref(x, w, b, **hyper(pb)), dtype)


@pytest.mark.parametrize("pb", by_id("t_basic", "t_stride2_outpad1", "t_odd", "t_groups2",
                                     "t_dilation_stride"), ids=str)
def test_is_the_input_gradient_of_conv2d(pb, device):
    # SPEC 1.2: conv_transpose2d(G, K) is conv2d_input_backward(G, K) for the
    # input size the output_padding selects (the bias aside).
    x, w, _ = args_of(pb, F64, device)
    y = CF.conv_transpose2d(x, w, None, **hyper(pb))
    gx = ops.conv2d_input_backward(x, w, list(y.shape[2:]), list(pair(pb.stride)),
                                   list(pair(pb.padding)), list(pair(pb.dilation)), pb.groups)
    torch.testing.assert_close(y, gx, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pb", CONV_TRANSPOSE_PROBLEMS, ids=str)
def test_gradients_match_torch(pb, layout, device):
    x, w, b = args_of(pb, F64, device, layout, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = CF.conv_transpose2d(x, w, b, **hyper(pb))
    g = make_tensor(y.shape, F64, device, layout)
    grads = torch.autograd.grad(y, leaves, g)

    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    y_ref = ref.conv_transpose2d(*leaves_ref[:2], leaves_ref[2] if pb.bias else None, **hyper(pb))
    grads_ref = torch.autograd.grad(y_ref, leaves_ref, g)
    for name, got, want in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.shape == want.shape, name
        assert_close(got, want, F64)


@pytest.mark.parametrize("pb", by_id("t_stride2_outpad1", "t_groups2", "t_batch0"), ids=str)
def test_backward_of_sum(pb, device):
    # An expanded scalar grad_output (all strides 0).
    x, w, b = args_of(pb, F64, device, requires_grad=True)
    CF.conv_transpose2d(x, w, b, **hyper(pb)).sum().backward()
    xr, wr, br = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref.conv_transpose2d(xr, wr, br, **hyper(pb)).sum().backward()
    for got, want in zip((x, w, b), (xr, wr, br)):
        assert_close(got.grad, want.grad, F64)


def _functional(pb):
    def f(x, w, b=None):
        return CF.conv_transpose2d(x, w, b, **hyper(pb))
    return f


@pytest.mark.parametrize("pb", GRADCHECK_CONV_TRANSPOSE_PROBLEMS, ids=str)
def test_gradcheck(pb, device):
    x, w, b = args_of(pb, F64, device, requires_grad=True)
    args = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(_functional(pb), args)
    assert torch.autograd.gradgradcheck(_functional(pb), args)


@pytest.mark.parametrize("pb", by_id("t_stride2_outpad1", "t_groups2", "t_outpad_by_dilation",
                                     "t_batch0"), ids=str)
def test_opcheck(pb, device):
    x, w, b = args_of(pb, F64, device, requires_grad=True)
    torch.library.opcheck(ops.conv_transpose2d.default,
                          (x, w, b, list(pair(pb.stride)), list(pair(pb.padding)),
                           list(pair(pb.output_padding)), pb.groups, list(pair(pb.dilation))))


def test_opcheck_channels_last(device):
    # The fake kernel must predict the output strides the kernel produces for
    # a channels_last input.
    pb = by_id("t_anisotropic")[0]
    x, w, b = args_of(pb, F64, device, "channels_last", requires_grad=True)
    torch.library.opcheck(ops.conv_transpose2d.default,
                          (x, w, b, list(pair(pb.stride)), list(pair(pb.padding)),
                           list(pair(pb.output_padding)), pb.groups, list(pair(pb.dilation))))


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
            RuntimeError, f"{FN}: expected bias of shape [2], but got shape [4]"),
    BadCase("bias_wrong_length_groups", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), t(2),
                                                         groups=2), RuntimeError,
            f"{FN}: expected bias of shape [4], but got shape [2]"),
    BadCase("stride_3_entries", lambda t: _convT(t(1, 4, 5, 5), t(4, 2, 3, 3), stride=[1, 1, 1]),
            TypeError, f"{FN}: expected stride to be an int or a pair of ints, but got "
            "stride=[1, 1, 1]"),
]


@pytest.mark.parametrize("case,dev", bad_case_params(CONV_TRANSPOSE2D_BAD_CASES))
def test_bad_input(case, dev):
    check_bad_case(case, dev)


# --------------------------------------------------------------------------- property test


@st.composite
def conv_transpose2d_problems(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    # output_padding picks one of the stride (or dilation) many input sizes of
    # the forward convolution: any value below max(stride, dilation).
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    # Padding crops the output; keep at least one output pixel per axis.
    padding = []
    for n, k, s, d, op in zip((H, W), kernel, stride, dilation, output_padding):
        full = (n - 1) * s + d * (k - 1) + op + 1
        padding.append(draw(st.integers(0, (full - 1) // 2)))
    return ConvTransposeProblem("random", N=draw(st.integers(0, 2)),
                                C_in=groups * draw(st.integers(1, 3)),
                                C_out=groups * draw(st.integers(1, 3)), H=H, W=W, kernel=kernel,
                                stride=stride, padding=tuple(padding),
                                output_padding=output_padding, dilation=dilation, groups=groups,
                                bias=draw(st.booleans()))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pb=conv_transpose2d_problems())
def test_property_matches_torch(pb, device):
    x, w, b = args_of(pb, F64, device, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = CF.conv_transpose2d(x, w, b, **hyper(pb))
    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    y_ref = ref.conv_transpose2d(*leaves_ref[:2], leaves_ref[2] if pb.bias else None, **hyper(pb))
    assert_close(y, y_ref, F64)
    g = make_tensor(y.shape, F64, device)
    for got, want in zip(torch.autograd.grad(y, leaves, g),
                         torch.autograd.grad(y_ref, leaves_ref, g)):
        assert_close(got, want, F64)
