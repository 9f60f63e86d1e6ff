"""conv2d (SPEC 1.1) and its three gradient views, the dispatcher ops
conv2d_input_backward, conv2d_weight_backward and conv2d_bias_backward:
forward against float64 ATen, gradients, gradcheck / gradgradcheck, opcheck,
torch.compile, argument errors (kernel and fake kernel alike) and a property
test over random configurations."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkit.functional as CF
import reference as ref
from conftest import (DEVICES, FLOAT_DTYPES, HALF_DTYPES, LAYOUTS, BadCase, assert_close,
                      bad_case_params, check_bad_case, make_tensor)
from problems import (CONV_PROBLEMS, GRADCHECK_CONV_PROBLEMS, OP_ONLY_CONV_PROBLEMS, ConvProblem,
                      pair)

ops = torch.ops.cnnkit
F64 = torch.float64
ALL_OP_PROBLEMS = CONV_PROBLEMS + OP_ONLY_CONV_PROBLEMS


def by_id(*ids):
    table = {pb.id: pb for pb in ALL_OP_PROBLEMS + GRADCHECK_CONV_PROBLEMS}
    return [table[i] for i in ids]


def conv_args(pb: ConvProblem, dtype, device, layout="contiguous", requires_grad=False):
    x = make_tensor(pb.input_shape, dtype, device, layout, requires_grad)
    w = make_tensor(pb.weight_shape, dtype, device, layout, requires_grad)
    b = make_tensor(pb.bias_shape, dtype, device, layout, requires_grad) if pb.bias else None
    return x, w, b


def op_geometry(pb: ConvProblem):
    """(stride, padding, dilation, groups) as the dispatcher ops take them."""
    return (list(pair(pb.stride)), ref.op_padding(pb.padding, pb.kernel, pb.dilation),
            list(pair(pb.dilation)), pb.groups)


def out_shape(pb: ConvProblem):
    P, Q = ref.conv2d_out_size(pb.H, pb.W, pb.kernel, pb.stride, pb.padding, pb.dilation)
    return (pb.N, pb.K, P, Q)


def cnnkit_conv(pb: ConvProblem, x, w, b=None):
    if isinstance(pb.padding, tuple) and len(pb.padding) == 4:
        return ops.conv2d(x, w, b, *op_geometry(pb))
    return CF.conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


def reference_conv(pb: ConvProblem, x, w, b=None):
    return ref.conv2d_ref(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ALL_OP_PROBLEMS, ids=str)
def test_forward(pb, dtype, layout, device):
    x, w, b = conv_args(pb, dtype, device, layout)
    y = cnnkit_conv(pb, x, w, b)
    assert y.dtype == dtype and y.device == x.device
    assert tuple(y.shape) == out_shape(pb)
    assert_close(y, reference_conv(pb, x, w, b), dtype)


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
    x, w, b = conv_args(pb, dtype, device, requires_grad=True)
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


UNBATCHED_PROBLEMS = by_id("basic_3x3", "same_even", "groups2", "stride2_dilation2", "full",
                           "no_bias")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", UNBATCHED_PROBLEMS, ids=str)
def test_unbatched_input(pb, dtype, device):
    # A 3-D (C, H, W) input is one sample: the output is (C_out, OH, OW) and the
    # input gradient has the input's 3-D shape.
    pb = dataclasses.replace(pb, N=1)
    x, w, b = conv_args(pb, dtype, device)
    x3 = x[0].detach().requires_grad_()
    y = CF.conv2d(x3, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    assert tuple(y.shape) == out_shape(pb)[1:]
    assert_close(y, reference_conv(pb, x, w, b)[0], dtype)
    g = make_tensor(y.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, x3, g)
    assert tuple(gx.shape) == pb.input_shape[1:]
    gx_ref = ref.conv2d_input_backward_ref(g[None], w, (pb.H, pb.W), pb.stride, pb.padding,
                                           pb.dilation, pb.groups)[0]
    assert_close(gx, gx_ref, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("pb", by_id("basic_3x3", "groups3_stride2", "same_even",
                                     "depthwise_mult2", "long_reduction"), ids=str)
def test_forward_half_cuda(pb, dtype, cuda_device):
    # float16 / bfloat16 on CUDA accumulate in float32: only the final rounding
    # separates them from the float64 reference of the same (rounded) inputs.
    x, w, b = conv_args(pb, dtype, cuda_device)
    y = cnnkit_conv(pb, x, w, b)
    assert y.dtype == dtype
    assert_close(y, reference_conv(pb, x, w, b), dtype)


# --------------------------------------------------------------------------- gradient views


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ALL_OP_PROBLEMS, ids=str)
def test_input_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    w = make_tensor(pb.weight_shape, dtype, device, layout)
    gx = ops.conv2d_input_backward(g, w, [pb.H, pb.W], *op_geometry(pb))
    assert gx.dtype == dtype and gx.device == g.device
    assert_close(gx, ref.conv2d_input_backward_ref(g, w, (pb.H, pb.W), pb.stride, pb.padding,
                                                   pb.dilation, pb.groups), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ALL_OP_PROBLEMS, ids=str)
def test_weight_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    x = make_tensor(pb.input_shape, dtype, device, layout)
    kernel = list(pair(pb.kernel))
    gw = ops.conv2d_weight_backward(g, x, kernel, *op_geometry(pb))
    assert gw.dtype == dtype and gw.device == g.device
    assert_close(gw, ref.conv2d_weight_backward_ref(g, x, kernel, pb.stride, pb.padding,
                                                    pb.dilation, pb.groups), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ALL_OP_PROBLEMS, ids=str)
def test_bias_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    gb = ops.conv2d_bias_backward(g)
    assert gb.dtype == dtype and gb.device == g.device
    assert_close(gb, ref.conv2d_bias_backward_ref(g), dtype)


def test_views_are_adjoint(device):
    # <conv2d(V, K), G> = <V, input_backward(G, K)> = <K, weight_backward(G, V)>:
    # the three views are one bilinear form (SPEC 1.1), checked on the kernels
    # alone, without any reference.
    pb = by_id("anisotropic")[0]
    x, w, _ = conv_args(pb, F64, device)
    g = make_tensor(out_shape(pb), F64, device)
    geo = op_geometry(pb)
    z = ops.conv2d(x, w, None, *geo)
    gx = ops.conv2d_input_backward(g, w, [pb.H, pb.W], *geo)
    gw = ops.conv2d_weight_backward(g, x, list(pair(pb.kernel)), *geo)
    form = (z * g).sum()
    torch.testing.assert_close((x * gx).sum(), form, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close((w * gw).sum(), form, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pb", CONV_PROBLEMS, ids=str)
def test_gradients_match_torch(pb, layout, device):
    x, w, b = conv_args(pb, F64, device, layout, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = cnnkit_conv(pb, x, w, b)
    g = make_tensor(y.shape, F64, device, layout)
    grads = torch.autograd.grad(y, leaves, g)

    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    y_ref = ref.conv2d(*leaves_ref[:2], leaves_ref[2] if pb.bias else None, pb.stride, pb.padding,
                       pb.dilation, pb.groups)
    grads_ref = torch.autograd.grad(y_ref, leaves_ref, g)
    for name, got, want in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.shape == want.shape, name
        assert_close(got, want, F64)


@pytest.mark.parametrize("pb", by_id("basic_3x3", "stride2_dilation2", "same_even",
                                     "depthwise_mult2", "batch0"), ids=str)
def test_backward_of_sum(pb, device):
    # y.sum().backward() hands the backward an expanded scalar: a grad_output
    # whose strides are all 0.
    x, w, b = conv_args(pb, F64, device, requires_grad=True)
    cnnkit_conv(pb, x, w, b).sum().backward()
    leaves_ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref.conv2d(*leaves_ref, pb.stride, pb.padding, pb.dilation, pb.groups).sum().backward()
    for got, want in zip((x, w, b), leaves_ref):
        assert_close(got.grad, want.grad, F64)


@pytest.mark.parametrize("wanted", ["input", "weight", "bias"])
def test_gradient_of_one_argument(wanted, device):
    # Only one argument requires grad (a frozen layer, a fixed input): the
    # backward must serve it alone.
    pb = by_id("groups3_stride2")[0]
    x, w, b = conv_args(pb, F64, device)
    args = {"input": x, "weight": w, "bias": b}
    args[wanted].requires_grad_()
    y = CF.conv2d(args["input"], args["weight"], args["bias"], pb.stride, pb.padding, pb.dilation,
                  pb.groups)
    g = make_tensor(y.shape, F64, device)
    (got,) = torch.autograd.grad(y, args[wanted], g)
    if wanted == "input":
        want = ref.conv2d_input_backward_ref(g, w, (pb.H, pb.W), pb.stride, pb.padding,
                                             pb.dilation, pb.groups)
    elif wanted == "weight":
        want = ref.conv2d_weight_backward_ref(g, x, pair(pb.kernel), pb.stride, pb.padding,
                                              pb.dilation, pb.groups)
    else:
        want = ref.conv2d_bias_backward_ref(g)
    assert_close(got, want, F64)


def _functional(pb):
    def f(x, w, b=None):
        return cnnkit_conv(pb, x, w, b)
    return f


@pytest.mark.parametrize("pb", GRADCHECK_CONV_PROBLEMS, ids=str)
def test_gradcheck_conv2d(pb, device):
    x, w, b = conv_args(pb, F64, device, requires_grad=True)
    args = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(_functional(pb), args)
    assert torch.autograd.gradgradcheck(_functional(pb), args)


@pytest.mark.parametrize("pb", GRADCHECK_CONV_PROBLEMS, ids=str)
def test_gradcheck_input_backward(pb, device):
    # dV = T(G, K) is bilinear: its gradients are conv2d (in G) and the weight
    # gradient (in K); gradgradcheck differentiates those in turn.
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)
    w = make_tensor(pb.weight_shape, F64, device, requires_grad=True)

    def f(g, w):
        return ops.conv2d_input_backward(g, w, [pb.H, pb.W], *op_geometry(pb))

    assert torch.autograd.gradcheck(f, (g, w))
    assert torch.autograd.gradgradcheck(f, (g, w))


@pytest.mark.parametrize("pb", GRADCHECK_CONV_PROBLEMS, ids=str)
def test_gradcheck_weight_backward(pb, device):
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)
    x = make_tensor(pb.input_shape, F64, device, requires_grad=True)

    def f(g, x):
        return ops.conv2d_weight_backward(g, x, list(pair(pb.kernel)), *op_geometry(pb))

    assert torch.autograd.gradcheck(f, (g, x))
    assert torch.autograd.gradgradcheck(f, (g, x))


@pytest.mark.parametrize("pb", GRADCHECK_CONV_PROBLEMS[:2], ids=str)
def test_gradcheck_bias_backward(pb, device):
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)
    assert torch.autograd.gradcheck(ops.conv2d_bias_backward, (g,))
    assert torch.autograd.gradgradcheck(ops.conv2d_bias_backward, (g,))


def test_deterministic(device):
    # SPEC 3: same inputs, same outputs, bit for bit, forward and backward.
    pb = by_id("block_remainders")[0]
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        x, w, b = conv_args(pb, torch.float32, device, requires_grad=True)
        y = cnnkit_conv(pb, x, w, b)
        y.backward(make_tensor(y.shape, torch.float32, device))
        results.append([y, x.grad, w.grad, b.grad])
    for first, second in zip(*results):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------- opcheck


def _opcheck_cases():
    """(op, args builder) over representative problems: plain, asymmetric
    4-entry padding, groups with stride, channel multiplier, empty batch; and a
    channels_last input, whose output strides the fake kernel must predict."""
    cases = []
    for pb, layout in [(by_id("basic_3x3")[0], "contiguous"), (by_id("same_even")[0], "contiguous"),
                       (by_id("groups3_stride2")[0], "contiguous"),
                       (by_id("depthwise_mult2")[0], "sliced"), (by_id("batch0")[0], "contiguous"),
                       (by_id("anisotropic")[0], "channels_last")]:
        cases.append(pytest.param(pb, layout, id=f"{pb.id}-{layout}"))
    return cases


def _opcheck_args(name, pb, layout, device):
    def t(shape):
        return make_tensor(shape, F64, device, layout, requires_grad=True)

    geo = op_geometry(pb)
    if name == "conv2d":
        return (t(pb.input_shape), t(pb.weight_shape), t(pb.bias_shape) if pb.bias else None, *geo)
    if name == "conv2d_input_backward":
        return (t(out_shape(pb)), t(pb.weight_shape), [pb.H, pb.W], *geo)
    if name == "conv2d_weight_backward":
        return (t(out_shape(pb)), t(pb.input_shape), list(pair(pb.kernel)), *geo)
    return (t(out_shape(pb)),)


@pytest.mark.parametrize("name", ["conv2d", "conv2d_input_backward", "conv2d_weight_backward",
                                  "conv2d_bias_backward"])
@pytest.mark.parametrize("pb,layout", _opcheck_cases())
def test_opcheck(name, pb, layout, device):
    # Schema (no mutation or aliasing the schema does not declare), autograd
    # registration, fake kernel against the real one (shapes, strides, dtypes),
    # and AOT dispatch with dynamic shapes.
    torch.library.opcheck(getattr(ops, name).default, _opcheck_args(name, pb, layout, device))


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A small block traced without graph breaks (the fake kernels give the
    # shapes), forward and backward equal to eager.
    def block(x, w1, b1, w2):
        y = torch.relu(CF.conv2d(x, w1, b1, padding="same"))
        return CF.conv2d(y, w2, None, stride=2, padding=1, groups=2)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    shapes = [(2, 3, 9, 8), (4, 3, 2, 2), (4,), (6, 2, 3, 3)]
    eager_args = [make_tensor(s, torch.float32, device, requires_grad=True) for s in shapes]
    comp_args = [a.detach().clone().requires_grad_() for a in eager_args]
    y_eager, y_comp = block(*eager_args), compiled(*comp_args)
    assert_close(y_comp, y_eager, torch.float32)
    g = make_tensor(y_eager.shape, torch.float32, device)
    y_eager.backward(g)
    y_comp.backward(g)
    for a, c in zip(eager_args, comp_args):
        assert_close(c.grad, a.grad, torch.float32)
    torch._dynamo.reset()


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
            RuntimeError, f"{FN}: expected bias of shape [2], but got shape [3]"),
    BadCase("bias_2d", lambda t: _conv(t(1, 2, 5, 5), t(2, 2, 3, 3), t(2, 1)), RuntimeError,
            f"{FN}: expected bias of shape [2], but got shape [2, 1]"),
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

FN_IB, FN_WB, FN_BB = ("cnnkit.conv2d_input_backward", "cnnkit.conv2d_weight_backward",
                       "cnnkit.conv2d_bias_backward")
G1 = ([1, 1], [0, 0], [1, 1], 1)  # stride, padding, dilation, groups


def _ib(g, w, input_size, geo=G1):
    return ops.conv2d_input_backward(g, w, input_size, *geo)


def _wb(g, x, kernel_size, geo=G1):
    return ops.conv2d_weight_backward(g, x, kernel_size, *geo)


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
    BadCase("wb_input_3d", lambda t: _wb(t(1, 2, 3, 3), t(3, 5, 5), [3, 3]), RuntimeError,
            f"{FN_WB}: expected 4D input (N, C, H, W), but got shape [3, 5, 5]"),
    BadCase("wb_float16", lambda t: _wb(t(1, 2, 3, 3, dtype=torch.float16),
                                        t(1, 3, 5, 5, dtype=torch.float16), [3, 3]), RuntimeError,
            f"{FN_WB}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.float16", devices=("cpu", "meta")),
    BadCase("wb_grad_dtype", lambda t: _wb(t(1, 2, 3, 3, dtype=torch.float64), t(1, 3, 5, 5),
                                           [3, 3]), RuntimeError,
            f"{FN_WB}: expected grad_output of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("wb_batch_mismatch", lambda t: _wb(t(1, 2, 3, 3), t(2, 3, 5, 5), [3, 3]),
            RuntimeError, f"{FN_WB}: expected grad_output.shape[0] = input.shape[0] = 2, but got "
            "grad_output of shape [1, 2, 3, 3]"),
    BadCase("wb_spatial_mismatch", lambda t: _wb(t(2, 2, 3, 4), t(2, 4, 5, 5), [3, 3]),
            RuntimeError, f"{FN_WB}: expected grad_output of spatial size [3, 3] for input of "
            "shape [2, 4, 5, 5], but got shape [2, 2, 3, 4]"),
    BadCase("wb_groups", lambda t: _wb(t(2, 2, 3, 3), t(2, 3, 5, 5), [3, 3],
                                       ([1, 1], [0, 0], [1, 1], 2)), RuntimeError,
            f"{FN_WB}: expected input channels (3) to be divisible by groups (2)"),
    BadCase("bb_grad_output_2d", lambda t: ops.conv2d_bias_backward(t(2, 3)), RuntimeError,
            f"{FN_BB}: expected 4D grad_output (N, C_out, OH, OW), but got shape [2, 3]"),
    BadCase("bb_int64", lambda t: ops.conv2d_bias_backward(t(1, 2, 3, 3, dtype=torch.int64)),
            RuntimeError, f"{FN_BB}: expected grad_output of dtype torch.float32 or "
            "torch.float64, but got torch.int64", devices=("cpu", "meta")),
]


@pytest.mark.parametrize("case,dev", bad_case_params(CONV2D_BAD_CASES + GRAD_VIEW_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)


# --------------------------------------------------------------------------- property test


@st.composite
def conv2d_problems(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["valid", "same", "full"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    top, bottom, left, right = ref.explicit_padding(padding, kernel, dilation)
    # The smallest input the dilated kernel fits in once padded, and a few more.
    H = max(1, dilation[0] * (kernel[0] - 1) + 1 - top - bottom) + draw(st.integers(0, 5))
    W = max(1, dilation[1] * (kernel[1] - 1) + 1 - left - right) + draw(st.integers(0, 5))
    return ConvProblem("random", N=draw(st.integers(0, 2)), C=groups * draw(st.integers(1, 3)),
                       K=groups * draw(st.integers(1, 3)), H=H, W=W, kernel=kernel, stride=stride,
                       padding=padding, dilation=dilation, groups=groups,
                       bias=draw(st.booleans()))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pb=conv2d_problems())
def test_property_matches_torch(pb, device):
    x, w, b = conv_args(pb, F64, device, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = CF.conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    y_ref = ref.conv2d(*leaves_ref[:2], leaves_ref[2] if pb.bias else None, pb.stride, pb.padding,
                       pb.dilation, pb.groups)
    assert_close(y, y_ref, F64)
    g = make_tensor(y.shape, F64, device)
    for got, want in zip(torch.autograd.grad(y, leaves, g),
                         torch.autograd.grad(y_ref, leaves_ref, g)):
        assert_close(got, want, F64)
