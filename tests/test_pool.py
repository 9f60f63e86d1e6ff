"""Pooling (SPEC 1.5): max_pool2d, avg_pool2d, adaptive_max_pool2d,
adaptive_avg_pool2d, channel_max_pool, their backward ops and the cnnkit.nn
pooling layers: forward values, shapes, strides and indices against
torch.nn.functional, gradients, gradcheck / gradgradcheck, opcheck,
torch.compile, argument errors (kernel and fake kernel alike) and property
tests over random configurations."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnnkit.functional as CF
from cnnkit.nn import pool as P
from conftest import (DEVICES, FLOAT_DTYPES, LAYOUTS, BadCase, assert_close, bad_case_params,
                      check_bad_case, make_tensor, with_layout)
from problems import (ADAPTIVE_POOL_PROBLEMS, CHANNEL_POOL_PROBLEMS,
                      GRADCHECK_ADAPTIVE_POOL_PROBLEMS, GRADCHECK_POOL_PROBLEMS, POOL_PROBLEMS,
                      AdaptivePoolProblem, PoolProblem, pair)

ops = torch.ops.cnnkit
F64 = torch.float64
AVG_PROBLEMS = [pb for pb in POOL_PROBLEMS if not pb.dilated]


def by_id(problems, *ids):
    table = {pb.id: pb for pb in problems}
    return [table[i] for i in ids]


def max_kwargs(pb: PoolProblem):
    return dict(kernel_size=pb.kernel, stride=pb.stride, padding=pb.padding,
                dilation=pb.dilation, ceil_mode=pb.ceil_mode)


def avg_kwargs(pb: PoolProblem):
    return dict(kernel_size=pb.kernel, stride=pb.stride, padding=pb.padding,
                ceil_mode=pb.ceil_mode, count_include_pad=pb.count_include_pad,
                divisor_override=pb.divisor_override)


def max_geometry(pb: PoolProblem):
    """(kernel_size, stride, padding, dilation, ceil_mode) as the max_pool2d op takes them."""
    return ([*pair(pb.kernel)], [*pb.stride_pair], [*pair(pb.padding)], [*pair(pb.dilation)],
            pb.ceil_mode)


def avg_geometry(pb: PoolProblem):
    """(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)."""
    return ([*pair(pb.kernel)], [*pb.stride_pair], [*pair(pb.padding)], pb.ceil_mode,
            pb.count_include_pad, pb.divisor_override)


def distinct(shape, dtype=F64, device="cpu", layout="contiguous", requires_grad=False):
    """A random permutation of 1..n, scaled: no ties anywhere, so each window has
    one maximum and max pooling is smooth under finite differences."""
    n = 1
    for s in shape:
        n *= s
    t = ((torch.randperm(n, dtype=F64) + 1) / n).reshape(shape).to(dtype).to(device)
    return with_layout(t, layout).requires_grad_(requires_grad)


def torch_grad(fn, x, g, *args, **kwargs):
    """The input gradient of torch's own op at float64 copies."""
    x64 = x.detach().cpu().double().requires_grad_()
    (gx,) = torch.autograd.grad(fn(x64, *args, **kwargs), x64, g.detach().cpu().double())
    return gx


def cnnkit_grad(fn, x, g, *args, **kwargs):
    x = x.detach().requires_grad_()
    (gx,) = torch.autograd.grad(fn(x, *args, **kwargs), x, g)
    return gx


def assert_layout_kept(out, x):
    """Outputs keep a channels_last input's memory format, as torch's pooling does."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        assert out.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- max_pool2d


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", POOL_PROBLEMS, ids=str)
def test_max_pool_forward(pb, dtype, layout, device):
    # Max pooling is exact: values and indices equal torch's, bit for bit, and
    # the output has the strides of torch's output.
    x = make_tensor(pb.input_shape, dtype, device, layout)
    y, i = CF.max_pool2d(x, **max_kwargs(pb), return_indices=True)
    y_ref, i_ref = F.max_pool2d(x.cpu(), **max_kwargs(pb), return_indices=True)
    assert y.dtype == dtype and i.dtype == torch.int64 and y.device == x.device
    assert torch.equal(y.cpu(), y_ref) and torch.equal(i.cpu(), i_ref)
    if y.numel():
        assert y.stride() == y_ref.stride() and i.stride() == i_ref.stride()
    assert_layout_kept(y, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", POOL_PROBLEMS, ids=str)
def test_max_pool_backward(pb, dtype, layout, device):
    x = make_tensor(pb.input_shape, dtype, device, layout)
    y = CF.max_pool2d(x, **max_kwargs(pb))
    g = make_tensor(y.shape, dtype, device, layout)
    gx = cnnkit_grad(CF.max_pool2d, x, g, **max_kwargs(pb))
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, torch_grad(F.max_pool2d, x, g, **max_kwargs(pb)), dtype)
    assert_layout_kept(gx, x)


NAN_PROBLEMS = by_id(POOL_PROBLEMS, "resnet_3x3_s2_p1", "s2_pad1_wide", "dilation2",
                     "ceil_partial", "window_eq_input", "channels19")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pb", NAN_PROBLEMS, ids=str)
def test_max_pool_nan(pb, layout, device):
    # NaN counts as the maximum, as in torch: a window with NaNs yields NaN at
    # the index torch gives (its last NaN in scan order); the gradient goes there.
    x = make_tensor(pb.input_shape, torch.float32, device)
    x[torch.rand(pb.input_shape) < 0.15] = float("nan")
    x = with_layout(x, layout)
    y, i = CF.max_pool2d(x, **max_kwargs(pb), return_indices=True)
    y_ref, i_ref = F.max_pool2d(x.cpu(), **max_kwargs(pb), return_indices=True)
    assert torch.equal(y.isnan().cpu(), y_ref.isnan()) and y.isnan().any()
    assert torch.equal(y.cpu().nan_to_num(), y_ref.nan_to_num()) and torch.equal(i.cpu(), i_ref)
    g = make_tensor(y.shape, torch.float32, device)
    assert_close(cnnkit_grad(CF.max_pool2d, x, g, **max_kwargs(pb)),
                 torch_grad(F.max_pool2d, x, g, **max_kwargs(pb)), torch.float32)


@pytest.mark.parametrize("fill", [0.0, float("-inf")])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pb", by_id(POOL_PROBLEMS, "resnet_3x3_s2_p1", "dilation2",
                                     "s1_pad1_wide", "ceil_dropped"), ids=str)
def test_max_pool_ties(pb, layout, fill, device):
    # All elements equal (also all -inf): every window's index is its first
    # element inside the input, as torch has it, and gradients follow.
    x = with_layout(torch.full(pb.input_shape, fill, device=device), layout)
    _, i = CF.max_pool2d(x, **max_kwargs(pb), return_indices=True)
    _, i_ref = F.max_pool2d(x.cpu(), **max_kwargs(pb), return_indices=True)
    assert torch.equal(i.cpu(), i_ref)


def test_max_pool_backward_rejects_bad_indices():
    # Indices come from the forward; one outside the plane would write outside
    # grad_input, so the kernel checks each one it reads.
    x, g = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)
    indices = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    indices[0, 1, 1, 0] = 16
    with pytest.raises(RuntimeError, match=r"^cnnkit\.max_pool2d_backward: expected indices in "
                       r"\[0, 16\) \(positions h \* W \+ w in the input plane\), but got 16$"):
        ops.max_pool2d_backward(g, x, indices)
    indices[0, 1, 1, 0] = -1
    with pytest.raises(RuntimeError, match=r"but got -1$"):
        ops.max_pool2d_backward(g, x.to(memory_format=torch.channels_last),
                                indices.to(memory_format=torch.channels_last))


# --------------------------------------------------------------------------- avg_pool2d


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", AVG_PROBLEMS, ids=str)
def test_avg_pool_forward(pb, dtype, layout, device):
    x = make_tensor(pb.input_shape, dtype, device, layout)
    y = CF.avg_pool2d(x, **avg_kwargs(pb))
    y_ref = F.avg_pool2d(x.cpu().double(), **avg_kwargs(pb))
    assert y.dtype == dtype and y.device == x.device
    assert_close(y, y_ref, dtype)
    if y.numel():
        assert y.stride() == F.avg_pool2d(x.cpu(), **avg_kwargs(pb)).stride()
    assert_layout_kept(y, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", AVG_PROBLEMS, ids=str)
def test_avg_pool_backward(pb, dtype, layout, device):
    x = make_tensor(pb.input_shape, dtype, device, layout)
    y = CF.avg_pool2d(x, **avg_kwargs(pb))
    g = make_tensor(y.shape, dtype, device, layout)
    gx = cnnkit_grad(CF.avg_pool2d, x, g, **avg_kwargs(pb))
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, torch_grad(F.avg_pool2d, x, g, **avg_kwargs(pb)), dtype)
    assert_layout_kept(gx, x)


def test_avg_pool_backward_is_adjoint(device):
    # <avg_pool2d(X), G> = <X, avg_pool2d_backward(G)>: the two ops are one
    # bilinear form, checked on the kernels alone (no reference).
    for pb in by_id(POOL_PROBLEMS, "ceil_no_count_pad", "divisor_override", "resnet_3x3_s2_p1"):
        x = make_tensor(pb.input_shape, F64, device)
        y = ops.avg_pool2d(x, *avg_geometry(pb))
        g = make_tensor(y.shape, F64, device)
        gx = ops.avg_pool2d_backward(g, x, *avg_geometry(pb))
        torch.testing.assert_close((x * gx).sum(), (y * g).sum(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- adaptive pooling


def adaptive_args(pb: AdaptivePoolProblem, dtype, device, layout="contiguous"):
    return make_tensor(pb.input_shape, dtype, device, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ADAPTIVE_POOL_PROBLEMS, ids=str)
def test_adaptive_max_pool(pb, dtype, layout, device):
    x = adaptive_args(pb, dtype, device, layout)
    y, i = CF.adaptive_max_pool2d(x, pb.output_size, return_indices=True)
    y_ref, i_ref = F.adaptive_max_pool2d(x.cpu(), pb.output_size, return_indices=True)
    assert tuple(y.shape) == (pb.N, pb.C, *pb.out_hw)
    assert torch.equal(y.cpu(), y_ref) and torch.equal(i.cpu(), i_ref)
    assert_layout_kept(y, x)
    g = make_tensor(y.shape, dtype, device, layout)
    gx = cnnkit_grad(CF.adaptive_max_pool2d, x, g, pb.output_size)
    assert_close(gx, torch_grad(F.adaptive_max_pool2d, x, g, pb.output_size), dtype)
    assert_layout_kept(gx, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", ADAPTIVE_POOL_PROBLEMS, ids=str)
def test_adaptive_avg_pool(pb, dtype, layout, device):
    x = adaptive_args(pb, dtype, device, layout)
    y = CF.adaptive_avg_pool2d(x, pb.output_size)
    assert tuple(y.shape) == (pb.N, pb.C, *pb.out_hw)
    assert_close(y, F.adaptive_avg_pool2d(x.cpu().double(), pb.output_size), dtype)
    assert_layout_kept(y, x)
    g = make_tensor(y.shape, dtype, device, layout)
    gx = cnnkit_grad(CF.adaptive_avg_pool2d, x, g, pb.output_size)
    assert_close(gx, torch_grad(F.adaptive_avg_pool2d, x, g, pb.output_size), dtype)
    assert_layout_kept(gx, x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_adaptive_nan(layout, device):
    # Adaptive max pooling follows max pooling's NaN rule, as torch.
    x = make_tensor((2, 3, 7, 9), torch.float32, device)
    x[torch.rand(x.shape) < 0.1] = float("nan")
    x = with_layout(x, layout)
    y, i = CF.adaptive_max_pool2d(x, (3, 4), return_indices=True)
    y_ref, i_ref = F.adaptive_max_pool2d(x.cpu(), (3, 4), return_indices=True)
    assert torch.equal(y.isnan().cpu(), y_ref.isnan()) and torch.equal(i.cpu(), i_ref)


@pytest.mark.parametrize("output_size", [0, (0, 3), (2, 0)])
def test_adaptive_output_size_zero(output_size, device):
    # As in torch, an output size of 0 gives an empty output and a zero gradient.
    x = make_tensor((2, 3, 5, 6), F64, device, requires_grad=True)
    for fn, ref in [(CF.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
                    (CF.adaptive_max_pool2d, F.adaptive_max_pool2d)]:
        y = fn(x, output_size)
        assert y.shape == ref(x.detach().cpu(), output_size).shape
        (gx,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(gx, torch.zeros_like(gx))


# --------------------------------------------------------------------------- channel_max_pool


def channel_max_ref(x, pool_size):
    """Values and input channels of the group maxima: the first maximum, or the
    last NaN of a group with NaNs (max pooling's rule)."""
    N, C, H, W = x.shape
    groups = x.detach().cpu().reshape(N, C // pool_size, pool_size, H, W)
    values = groups.amax(2) if groups.numel() else groups.sum(2)
    nan = groups.isnan()
    last_nan = pool_size - 1 - nan.flip(2).int().argmax(2) if groups.numel() else values.long()
    first_max = groups.argmax(2) if groups.numel() else values.long()
    within = torch.where(nan.any(2), last_nan, first_max)
    first_channel = torch.arange(0, C, pool_size).view(1, -1, 1, 1)
    return torch.where(nan.any(2), float("nan"), values), within + first_channel


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", CHANNEL_POOL_PROBLEMS, ids=str)
def test_channel_max_pool(pb, dtype, layout, device):
    x = make_tensor(pb.input_shape, dtype, device, layout)
    y, i = ops.channel_max_pool(x, pb.pool_size)
    y_ref, i_ref = channel_max_ref(x, pb.pool_size)
    assert tuple(y.shape) == pb.output_shape and y.dtype == dtype
    assert torch.equal(y.cpu(), y_ref) and torch.equal(i.cpu(), i_ref)
    assert torch.equal(CF.channel_max_pool(x, pb.pool_size), y)
    assert_layout_kept(y, x)
    g = make_tensor(y.shape, dtype, device, layout)
    gx = cnnkit_grad(CF.channel_max_pool, x, g, pb.pool_size)
    # The gradient of the maxima: grad_output at the maximal channel of each group.
    x64 = x.detach().cpu().double().requires_grad_()
    groups = x64.reshape(pb.N, pb.C // pb.pool_size, pb.pool_size, pb.H, pb.W)
    (gx_ref,) = torch.autograd.grad(groups.amax(2) if x64.numel() else groups.sum(2), x64,
                                    g.cpu().double(), allow_unused=True)
    assert_close(gx, gx_ref, dtype)
    assert_layout_kept(gx, x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channel_max_pool_nan_and_ties(layout, device):
    # Ties go to the first channel of the group; NaN is the maximum (the last
    # NaN of the group, as max pooling), and the gradient follows the index.
    x = torch.randn(2, 8, 4, 5).round()  # many ties
    x[torch.rand(x.shape) < 0.1] = float("nan")
    x = with_layout(x.to(device), layout)
    y, i = ops.channel_max_pool(x, 4)
    y_ref, i_ref = channel_max_ref(x, 4)
    assert torch.equal(y.isnan().cpu(), y_ref.isnan()) and torch.equal(i.cpu(), i_ref)
    g = torch.randn(y.shape, device=device)
    gx = ops.channel_max_pool_backward(g, x, i, 4)
    expected = torch.zeros(x.shape).scatter(1, i_ref, g.cpu())
    assert torch.equal(gx.cpu(), expected)


# --------------------------------------------------------------------------- shared behaviour


def _all_pools():
    """(name, cnnkit call, torch call) of every pooling function on one geometry."""
    return [
        ("max", lambda f, x: f.max_pool2d(x, 3, 2, 1, return_indices=True)),
        ("avg", lambda f, x: f.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
        ("adaptive_max", lambda f, x: f.adaptive_max_pool2d(x, (2, 3), return_indices=True)),
        ("adaptive_avg", lambda f, x: f.adaptive_avg_pool2d(x, (None, 3))),
    ]


@pytest.mark.parametrize("name,call", _all_pools(), ids=[n for n, _ in _all_pools()])
def test_unbatched_input(name, call, device):
    # A 3-D (C, H, W) input is one sample: outputs (and indices) drop the batch
    # dimension, and the input gradient has the 3-D shape.
    x = make_tensor((3, 7, 8), F64, device, requires_grad=True)
    out, ref = call(CF, x), call(F, x.detach().cpu())
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for got, want in zip(outs, refs):
        assert got.shape == want.shape
        assert_close(got, want, F64)
    (gx,) = torch.autograd.grad(outs[0].sum(), x)
    assert gx.shape == x.shape


def test_unbatched_channel_max_pool(device):
    x = make_tensor((6, 4, 5), F64, device)
    assert torch.equal(CF.channel_max_pool(x, 3), CF.channel_max_pool(x[None], 3)[0])


@pytest.mark.parametrize("name,call", _all_pools(), ids=[n for n, _ in _all_pools()])
def test_empty_channels(name, call, device):
    # No channels (torch rejects C = 0 for some pools; here every pool accepts
    # it): empty outputs of the right shape, empty gradients.
    x = make_tensor((2, 0, 7, 8), F64, device, requires_grad=True)
    out = call(CF, x)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape[:2] == (2, 0) and out.numel() == 0
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.shape == x.shape


@pytest.mark.parametrize("name,call", _all_pools(), ids=[n for n, _ in _all_pools()])
def test_backward_of_sum(name, call, device):
    # y.sum().backward() hands the backward an expanded scalar: a grad_output
    # whose strides are all 0.
    x = make_tensor((2, 3, 7, 8), F64, device, "channels_last", requires_grad=True)
    out = call(CF, x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    x_ref = x.detach().cpu().requires_grad_()
    ref = call(F, x_ref)
    (ref[0] if isinstance(ref, tuple) else ref).sum().backward()
    assert_close(x.grad, x_ref.grad, F64)


def test_deterministic(device):
    # SPEC 3: same inputs, same outputs, bit for bit, forward and backward, in
    # both layouts (the backward scatters are the risk).
    for layout in ["contiguous", "channels_last"]:
        results = []
        for _ in range(2):
            torch.manual_seed(1)
            x = make_tensor((4, 20, 33, 35), torch.float32, device, layout, requires_grad=True)
            outs = [CF.max_pool2d(x, 3, 1, 1), CF.avg_pool2d(x, 3, 1, 1),
                    CF.adaptive_avg_pool2d(x, (5, 7)), CF.adaptive_max_pool2d(x, (5, 7))]
            grads = torch.autograd.grad([o.sum() * 1.5 for o in outs], x)
            results.append(outs + list(grads))
        for first, second in zip(*results):
            assert torch.equal(first, second)


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("pb", GRADCHECK_POOL_PROBLEMS, ids=str)
def test_gradcheck_max_pool(pb, device):
    x = distinct(pb.input_shape, device=device, requires_grad=True)

    def f(x):
        return CF.max_pool2d(x, **max_kwargs(pb))

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("pb", GRADCHECK_POOL_PROBLEMS, ids=str)
def test_gradcheck_avg_pool(pb, device):
    pb = dataclasses.replace(pb, dilation=1)
    x = make_tensor(pb.input_shape, F64, device, requires_grad=True)

    def f(x):
        return CF.avg_pool2d(x, **avg_kwargs(pb))

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("pb", GRADCHECK_ADAPTIVE_POOL_PROBLEMS, ids=str)
def test_gradcheck_adaptive(pb, device):
    x_max = distinct(pb.input_shape, device=device, requires_grad=True)
    x_avg = make_tensor(pb.input_shape, F64, device, requires_grad=True)
    for fn, x in [(CF.adaptive_max_pool2d, x_max), (CF.adaptive_avg_pool2d, x_avg)]:
        assert torch.autograd.gradcheck(lambda x: fn(x, pb.output_size), (x,))
        assert torch.autograd.gradgradcheck(lambda x: fn(x, pb.output_size), (x,))


@pytest.mark.parametrize("pool_size", [2, 3])
def test_gradcheck_channel_max_pool(pool_size, device):
    x = distinct((2, 6, 3, 4), device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: CF.channel_max_pool(x, pool_size), (x,))
    assert torch.autograd.gradgradcheck(lambda x: CF.channel_max_pool(x, pool_size), (x,))


def test_gradcheck_backward_ops(device):
    # The backward ops on their own, differentiated in grad_output (their
    # double backward is the adjoint: a gather, avg_pool2d, adaptive_avg_pool2d).
    pb = GRADCHECK_POOL_PROBLEMS[1]
    x = distinct(pb.input_shape, device=device)
    _, indices = ops.max_pool2d(x, *max_geometry(pb))
    g = make_tensor(indices.shape, F64, device, requires_grad=True)
    checks = [
        lambda g: ops.max_pool2d_backward(g, x, indices),
        lambda g: ops.avg_pool2d_backward(g, x, *avg_geometry(pb)),
    ]
    for f in checks:
        assert torch.autograd.gradcheck(f, (g,))
        assert torch.autograd.gradgradcheck(f, (g,))
    ga = make_tensor((pb.N, pb.C, 2, 3), F64, device, requires_grad=True)
    xc = distinct((1, 4, 3, 3), device=device)
    _, ic = ops.channel_max_pool(xc, 2)
    gc = make_tensor(ic.shape, F64, device, requires_grad=True)
    for f, g in [(lambda g: ops.adaptive_avg_pool2d_backward(g, x), ga),
                 (lambda g: ops.channel_max_pool_backward(g, xc, ic, 2), gc)]:
        assert torch.autograd.gradcheck(f, (g,))
        assert torch.autograd.gradgradcheck(f, (g,))


# --------------------------------------------------------------------------- opcheck

OPCHECK_LAYOUTS = [("resnet_3x3_s2_p1", "contiguous"), ("ceil_count_pad", "channels_last"),
                   ("anisotropic", "sliced"), ("batch0", "contiguous")]


def _opcheck_args(name, pb, layout, device):
    x = make_tensor(pb.input_shape, F64, device, layout, requires_grad=True)
    if name == "max_pool2d":
        return (x, *max_geometry(pb))
    if name == "max_pool2d_backward":
        y, i = ops.max_pool2d(x.detach(), *max_geometry(pb))
        return (make_tensor(y.shape, F64, device, layout, requires_grad=True), x, i)
    avg = avg_geometry(dataclasses.replace(pb, dilation=1))
    if name == "avg_pool2d":
        return (x, *avg)
    if name == "avg_pool2d_backward":
        y = ops.avg_pool2d(x.detach(), *avg)
        return (make_tensor(y.shape, F64, device, layout, requires_grad=True), x, *avg)
    if name in ("adaptive_max_pool2d", "adaptive_avg_pool2d"):
        return (x, [3, 2])
    if name == "adaptive_avg_pool2d_backward":
        return (make_tensor((pb.N, pb.C, 3, 2), F64, device, layout, requires_grad=True), x)
    xc = make_tensor((pb.N, 2 * pb.C, pb.H, pb.W), F64, device, layout, requires_grad=True)
    if name == "channel_max_pool":
        return (xc, 2)
    y, i = ops.channel_max_pool(xc.detach(), 2)
    return (make_tensor(y.shape, F64, device, layout, requires_grad=True), xc, i, 2)


POOL_OPS = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
            "adaptive_max_pool2d", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
            "channel_max_pool", "channel_max_pool_backward"]


@pytest.mark.parametrize("name", POOL_OPS)
@pytest.mark.parametrize("pb_id,layout", OPCHECK_LAYOUTS)
def test_opcheck(name, pb_id, layout, device):
    # Schema, autograd registration, the fake kernel against the real one
    # (shapes, strides, dtypes) and AOT dispatch.
    pb = by_id(POOL_PROBLEMS, pb_id)[0]
    torch.library.opcheck(getattr(ops, name).default, _opcheck_args(name, pb, layout, device))


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A pooling block traced without graph breaks, forward and backward equal to eager.
    def block(x):
        y = CF.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        y = CF.avg_pool2d(y, 2, count_include_pad=False) + CF.adaptive_max_pool2d(y, (2, 3))
        return CF.channel_max_pool(CF.adaptive_avg_pool2d(y, 1), 2)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    x = make_tensor((2, 4, 9, 10), torch.float32, device, requires_grad=True)
    xc = x.detach().clone().requires_grad_()
    y, yc = block(x), compiled(xc)
    assert_close(yc, y, torch.float32)
    g = make_tensor(y.shape, torch.float32, device)
    y.backward(g)
    yc.backward(g)
    assert_close(xc.grad, x.grad, torch.float32)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- layers

LAYER_CASES = [
    (P.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1)),
    (P.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=(2, 3), dilation=(1, 2),
                                           return_indices=True, ceil_mode=True)),
    (P.AvgPool2d, torch.nn.AvgPool2d, dict(kernel_size=2)),
    (P.AvgPool2d, torch.nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                           count_include_pad=False, divisor_override=4)),
    (P.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d, dict(output_size=(3, None),
                                                           return_indices=True)),
    (P.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, dict(output_size=1)),
    (P.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, dict(output_size=(4, 3))),
]


@pytest.mark.parametrize("ours,theirs,kwargs", LAYER_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(LAYER_CASES)])
def test_layers_match_torch(ours, theirs, kwargs, device):
    # Same constructor, attributes, repr and state_dict as the torch.nn
    # namesake, and the same outputs (3-D and 4-D inputs).
    layer, twin = ours(**kwargs), theirs(**kwargs)
    assert isinstance(layer, theirs)
    assert repr(layer) == repr(twin)
    assert layer.state_dict() == twin.state_dict() == {}
    assert layer.__dict__.keys() == twin.__dict__.keys()
    for shape in [(2, 3, 9, 10), (3, 9, 10)]:
        x = make_tensor(shape, F64, device)
        got, want = layer(x), twin(x.cpu())
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert g.shape == w.shape
            assert_close(g, w, F64)


def test_maxout(device):
    layer = P.Maxout(3)
    assert repr(layer) == "Maxout(pool_size=3)"
    assert layer.state_dict() == {}
    x = make_tensor((2, 6, 4, 5), F64, device, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, CF.channel_max_pool(x, 3))
    assert_close(y, x.detach().cpu().reshape(2, 2, 3, 4, 5).amax(2), F64)
    y.sum().backward()
    assert x.grad.sum().item() == y.numel()  # one maximum per output receives its gradient
    for bad in [0, -1, 2.0, True]:
        with pytest.raises(ValueError, match=r"^Maxout: expected pool_size to be a positive int, "
                           r"but got pool_size="):
            P.Maxout(bad)


# --------------------------------------------------------------------------- bad inputs

FMP, FAP, FAMP, FAAP, FCMP = ("cnnkit.max_pool2d", "cnnkit.avg_pool2d",
                              "cnnkit.adaptive_max_pool2d", "cnnkit.adaptive_avg_pool2d",
                              "cnnkit.channel_max_pool")
FMPB, FAPB, FAAPB, FCMPB = ("cnnkit.max_pool2d_backward", "cnnkit.avg_pool2d_backward",
                            "cnnkit.adaptive_avg_pool2d_backward",
                            "cnnkit.channel_max_pool_backward")
CPU_ONLY = ("cpu", "meta")


def _dtype_cases(fn, call):
    """Unsupported dtypes: integers everywhere, 16-bit floats on the CPU."""
    return [
        BadCase(f"{fn}-int64", lambda t: call(t(1, 2, 6, 6, dtype=torch.int64)), RuntimeError,
                f"{fn}: expected input of dtype torch.float32 or torch.float64, but got "
                "torch.int64", devices=CPU_ONLY),
        BadCase(f"{fn}-float16", lambda t: call(t(1, 2, 6, 6, dtype=torch.float16)), RuntimeError,
                f"{fn}: expected input of dtype torch.float32 or torch.float64, but got "
                "torch.float16", devices=CPU_ONLY),
        BadCase(f"{fn}-int32-cuda", lambda t: call(t(1, 2, 6, 6, dtype=torch.int32)),
                RuntimeError, f"{fn}: expected input of dtype torch.float32, torch.float64, "
                "torch.float16 or torch.bfloat16, but got torch.int32", devices=("cuda",)),
    ]


def _dim_cases(fn, call):
    return [
        BadCase(f"{fn}-2d", lambda t: call(t(6, 6)), RuntimeError,
                f"{fn}: expected 4D input (N, C, H, W), but got shape [6, 6]"),
        BadCase(f"{fn}-5d", lambda t: call(t(1, 1, 2, 6, 6)), RuntimeError,
                f"{fn}: expected 4D input (N, C, H, W), but got shape [1, 1, 2, 6, 6]"),
    ]


def _max(x, kernel_size=2, **kw):
    return CF.max_pool2d(x, kernel_size, **kw)


def _avg(x, kernel_size=2, **kw):
    return CF.avg_pool2d(x, kernel_size, **kw)


def _geometry_cases(fn, call):
    """The window rules max and average pooling share."""
    return [
        BadCase(f"{fn}-kernel_0", lambda t: call(t(1, 2, 6, 6), (0, 3)), RuntimeError,
                f"{fn}: expected kernel_size to be positive, but got kernel_size=[0, 3]"),
        BadCase(f"{fn}-kernel_negative", lambda t: call(t(1, 2, 6, 6), -2), RuntimeError,
                f"{fn}: expected kernel_size to be positive, but got kernel_size=[-2, -2]"),
        BadCase(f"{fn}-stride_0", lambda t: call(t(1, 2, 6, 6), 2, stride=(1, 0)), RuntimeError,
                f"{fn}: expected stride to be positive, but got stride=[1, 0]"),
        BadCase(f"{fn}-padding_negative", lambda t: call(t(1, 2, 6, 6), 3, padding=(0, -1)),
                RuntimeError, f"{fn}: expected padding to be non-negative, but got "
                "padding=[0, -1]"),
        BadCase(f"{fn}-padding_over_half", lambda t: call(t(1, 2, 6, 6), 3, padding=2),
                RuntimeError, f"{fn}: expected padding to be at most half of kernel_size, but got "
                "padding=[2, 2] and kernel_size=[3, 3]"),
        BadCase(f"{fn}-padding_over_half_even", lambda t: call(t(1, 2, 6, 6), (4, 2),
                                                               padding=(2, 2)),
                RuntimeError, f"{fn}: expected padding to be at most half of kernel_size, but got "
                "padding=[2, 2] and kernel_size=[4, 2]"),
        BadCase(f"{fn}-output_too_small", lambda t: call(t(1, 2, 4, 6), 5), RuntimeError,
                f"{fn}: expected an output size of at least 1x1, but got 0x1 for input of shape "
                "[1, 2, 4, 6], kernel_size=[5, 5], stride=[5, 5], padding=[0, 0] and "
                "dilation=[1, 1]"),
        BadCase(f"{fn}-output_too_small_ceil", lambda t: call(t(1, 2, 6, 2), (2, 4), stride=2,
                                                              ceil_mode=True),
                RuntimeError, f"{fn}: expected an output size of at least 1x1, but got 3x0 for "
                "input of shape [1, 2, 6, 2], kernel_size=[2, 4], stride=[2, 2], padding=[0, 0] "
                "and dilation=[1, 1]"),
        BadCase(f"{fn}-empty_height", lambda t: call(t(1, 2, 0, 6), 1), RuntimeError,
                f"{fn}: expected input of non-zero height and width, but got shape [1, 2, 0, 6]"),
        BadCase(f"{fn}-kernel_3_entries", lambda t: call(t(1, 2, 6, 6), (1, 2, 3)), TypeError,
                f"{fn}: expected kernel_size to be an int or a pair of ints, but got "
                "kernel_size=(1, 2, 3)"),
        BadCase(f"{fn}-padding_float", lambda t: call(t(1, 2, 6, 6), 2, padding=(1, 0.5)),
                TypeError, f"{fn}: expected padding to be an int or a pair of ints, but got "
                "padding=(1, 0.5)"),
        BadCase(f"{fn}-not_a_tensor", lambda t: call([[1.0]], 2), TypeError,
                f"{fn}: expected input to be a torch.Tensor, but got list"),
    ] + _dim_cases(fn, call) + _dtype_cases(fn, call)


MAX_BAD_CASES = _geometry_cases(FMP, _max) + [
    BadCase("max-dilation_0", lambda t: _max(t(1, 2, 6, 6), 2, dilation=(0, 1)), RuntimeError,
            f"{FMP}: expected dilation to be positive, but got dilation=[0, 1]"),
    BadCase("max-dilated_too_large", lambda t: _max(t(1, 2, 6, 6), 3, dilation=3), RuntimeError,
            f"{FMP}: expected an output size of at least 1x1, but got 0x0 for input of shape "
            "[1, 2, 6, 6], kernel_size=[3, 3], stride=[3, 3], padding=[0, 0] and "
            "dilation=[3, 3]"),
    # Taps at -1 and 2 of a 2-row input: torch returns -inf and an index outside
    # the plane; cnnkit refuses.
    BadCase("max-window_in_padding_only", lambda t: _max(t(1, 2, 2, 5), 2, stride=1, padding=1,
                                                         dilation=(3, 1)), RuntimeError,
            f"{FMP}: expected every pooling window to cover at least one input element, but with "
            "kernel_size=[2, 2], padding=[1, 1] and dilation=[3, 1] a window of input of shape "
            "[1, 2, 2, 5] covers padding only"),
]

AVG_BAD_CASES = _geometry_cases(FAP, _avg) + [
    BadCase("avg-divisor_0", lambda t: _avg(t(1, 2, 6, 6), 2, divisor_override=0), RuntimeError,
            f"{FAP}: expected divisor_override to be non-zero, but got divisor_override=0"),
]


def _amax(x, output_size=2):
    return CF.adaptive_max_pool2d(x, output_size)


def _aavg(x, output_size=2):
    return CF.adaptive_avg_pool2d(x, output_size)


def _adaptive_cases(fn, call):
    return [
        BadCase(f"{fn}-negative", lambda t: call(t(1, 2, 6, 6), (-1, 3)), RuntimeError,
                f"{fn}: expected output_size to be non-negative, but got output_size=[-1, 3]"),
        BadCase(f"{fn}-empty_width", lambda t: call(t(1, 2, 6, 0), 2), RuntimeError,
                f"{fn}: expected input of non-zero height and width, but got shape [1, 2, 6, 0]"),
        BadCase(f"{fn}-3_entries", lambda t: call(t(1, 2, 6, 6), (1, 2, 3)), TypeError,
                f"{fn}: expected output_size to be an int or a pair of ints (None entries keep "
                "the input size), but got output_size=(1, 2, 3)"),
        BadCase(f"{fn}-float", lambda t: call(t(1, 2, 6, 6), 2.5), TypeError,
                f"{fn}: expected output_size to be an int or a pair of ints (None entries keep "
                "the input size), but got output_size=2.5"),
    ] + _dim_cases(fn, call) + _dtype_cases(fn, call)


def _cmax(x, pool_size=2):
    return CF.channel_max_pool(x, pool_size)


CHANNEL_BAD_CASES = [
    BadCase("channel-pool_0", lambda t: _cmax(t(1, 4, 3, 3), 0), RuntimeError,
            f"{FCMP}: expected pool_size to be positive, but got pool_size=0"),
    BadCase("channel-pool_negative", lambda t: _cmax(t(1, 4, 3, 3), -2), RuntimeError,
            f"{FCMP}: expected pool_size to be positive, but got pool_size=-2"),
    BadCase("channel-not_divisible", lambda t: _cmax(t(1, 6, 3, 3), 4), RuntimeError,
            f"{FCMP}: expected input channels (6) to be divisible by pool_size (4)"),
    BadCase("channel-pool_float", lambda t: _cmax(t(1, 4, 3, 3), 2.0), TypeError,
            f"{FCMP}: expected pool_size to be an int, but got pool_size=2.0"),
] + _dim_cases(FCMP, _cmax) + _dtype_cases(FCMP, _cmax)

G22 = ([2, 2], [2, 2], [0, 0])  # kernel_size, stride, padding


def _avgb(g, x, geo=G22, ceil_mode=False, divisor_override=None):
    return ops.avg_pool2d_backward(g, x, *geo, ceil_mode, True, divisor_override)


def _long(t, *shape):
    return t(*shape, dtype=torch.int64).zero_()


BACKWARD_BAD_CASES = [
    BadCase("maxb-grad_3d", lambda t: ops.max_pool2d_backward(t(2, 2, 2), t(1, 2, 4, 4),
                                                              _long(t, 1, 2, 2, 2)), RuntimeError,
            f"{FMPB}: expected 4D grad_output (N, C, OH, OW), but got shape [2, 2, 2]"),
    BadCase("maxb-grad_dtype", lambda t: ops.max_pool2d_backward(
        t(1, 2, 2, 2, dtype=F64), t(1, 2, 4, 4), _long(t, 1, 2, 2, 2)), RuntimeError,
        f"{FMPB}: expected grad_output of the dtype of input (torch.float32), but got "
        "torch.float64"),
    BadCase("maxb-indices_int32", lambda t: ops.max_pool2d_backward(
        t(1, 2, 2, 2), t(1, 2, 4, 4), t(1, 2, 2, 2, dtype=torch.int32)), RuntimeError,
        f"{FMPB}: expected indices of dtype torch.int64, but got torch.int32"),
    BadCase("maxb-indices_on_cpu", lambda t: ops.max_pool2d_backward(
        t(1, 2, 2, 2), t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.int64)), RuntimeError,
        f"{FMPB}: expected indices on the device of input ({{device}}), but got cpu",
        devices=("meta", "cuda")),
    BadCase("maxb-channels", lambda t: ops.max_pool2d_backward(
        t(1, 3, 2, 2), t(1, 2, 4, 4), _long(t, 1, 3, 2, 2)), RuntimeError,
        f"{FMPB}: expected grad_output of batch and channels [1, 2] (those of input), but got "
        "shape [1, 3, 2, 2]"),
    BadCase("maxb-indices_shape", lambda t: ops.max_pool2d_backward(
        t(1, 2, 2, 2), t(1, 2, 4, 4), _long(t, 1, 2, 2, 3)), RuntimeError,
        f"{FMPB}: expected indices of shape [1, 2, 2, 2] (the output of the forward), but got "
        "shape [1, 2, 2, 3]"),
    BadCase("avgb-grad_shape", lambda t: _avgb(t(1, 2, 3, 3), t(1, 2, 4, 4)), RuntimeError,
            f"{FAPB}: expected grad_output of shape [1, 2, 2, 2] (the output of the forward), "
            "but got shape [1, 2, 3, 3]"),
    BadCase("avgb-grad_shape_ceil", lambda t: _avgb(t(1, 2, 2, 2), t(1, 2, 5, 5),
                                                    ceil_mode=True), RuntimeError,
            f"{FAPB}: expected grad_output of shape [1, 2, 3, 3] (the output of the forward), "
            "but got shape [1, 2, 2, 2]"),
    BadCase("avgb-divisor_0", lambda t: _avgb(t(1, 2, 2, 2), t(1, 2, 4, 4), divisor_override=0),
            RuntimeError, f"{FAPB}: expected divisor_override to be non-zero, but got "
            "divisor_override=0"),
    BadCase("avgb-input_float16", lambda t: _avgb(t(1, 2, 2, 2, dtype=torch.float16),
                                                  t(1, 2, 4, 4, dtype=torch.float16)),
            RuntimeError, f"{FAPB}: expected input of dtype torch.float32 or torch.float64, but "
            "got torch.float16", devices=CPU_ONLY),
    BadCase("aavgb-batch", lambda t: ops.adaptive_avg_pool2d_backward(t(2, 2, 3, 3),
                                                                      t(1, 2, 6, 6)),
            RuntimeError, f"{FAAPB}: expected grad_output of shape [1, 2, 3, 3] (the output of "
            "the forward), but got shape [2, 2, 3, 3]"),
    BadCase("aavgb-grad_5d", lambda t: ops.adaptive_avg_pool2d_backward(t(1, 2, 3, 3, 1),
                                                                        t(1, 2, 6, 6)),
            RuntimeError, f"{FAAPB}: expected 4D grad_output (N, C, OH, OW), but got shape "
            "[1, 2, 3, 3, 1]"),
    BadCase("cmaxb-grad_shape", lambda t: ops.channel_max_pool_backward(
        t(1, 3, 3, 3), t(1, 4, 3, 3), _long(t, 1, 2, 3, 3), 2), RuntimeError,
        f"{FCMPB}: expected grad_output of shape [1, 2, 3, 3] (the output of the forward), but "
        "got shape [1, 3, 3, 3]"),
    BadCase("cmaxb-indices_float", lambda t: ops.channel_max_pool_backward(
        t(1, 2, 3, 3), t(1, 4, 3, 3), t(1, 2, 3, 3), 2), RuntimeError,
        f"{FCMPB}: expected indices of dtype torch.int64, but got torch.float32"),
    BadCase("cmaxb-not_divisible", lambda t: ops.channel_max_pool_backward(
        t(1, 2, 3, 3), t(1, 5, 3, 3), _long(t, 1, 2, 3, 3), 2), RuntimeError,
        f"{FCMPB}: expected input channels (5) to be divisible by pool_size (2)"),
]

ALL_BAD_CASES = (MAX_BAD_CASES + AVG_BAD_CASES + _adaptive_cases(FAMP, _amax)
                 + _adaptive_cases(FAAP, _aavg) + CHANNEL_BAD_CASES + BACKWARD_BAD_CASES)


@pytest.mark.parametrize("case,dev", bad_case_params(ALL_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)


# --------------------------------------------------------------------------- property tests


def _window_hits_input(size, out, kernel, stride, pad, dilation):
    """Whether every window along one axis has a tap inside [0, size)."""
    return all(any(0 <= o * stride - pad + i * dilation < size for i in range(kernel))
               for o in range(out))


@st.composite
def pool_problems(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    # From the smallest input the dilated window fits in once padded, upwards.
    H = max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 6))
    W = max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 20))
    return PoolProblem("random", N=draw(st.integers(0, 2)), C=draw(st.integers(1, 18)), H=H, W=W,
                       kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                       ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                       divisor_override=draw(st.sampled_from([None, None, 1, 3, -2])))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pb=pool_problems(), layout=st.sampled_from(LAYOUTS))
def test_property_max_avg_match_torch(pb, layout, device):
    x = make_tensor(pb.input_shape, F64, device, layout)
    y_ref, i_ref = F.max_pool2d(x.cpu(), **max_kwargs(pb), return_indices=True)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(pb.kernel), pb.stride_pair, pair(pb.padding),
                                              pair(pb.dilation))
    # Windows of padding only: torch answers -inf at an index outside the plane,
    # cnnkit raises (see test_bad_input).
    assume(_window_hits_input(pb.H, y_ref.shape[2], kh, sh, ph, dh) and
           _window_hits_input(pb.W, y_ref.shape[3], kw, sw, pw, dw))
    y, i = CF.max_pool2d(x, **max_kwargs(pb), return_indices=True)
    assert torch.equal(y.cpu(), y_ref) and torch.equal(i.cpu(), i_ref)
    g = make_tensor(y.shape, F64, device)
    assert_close(cnnkit_grad(CF.max_pool2d, x, g, **max_kwargs(pb)),
                 torch_grad(F.max_pool2d, x, g, **max_kwargs(pb)), F64)

    avg = dataclasses.replace(pb, dilation=1)
    y = CF.avg_pool2d(x, **avg_kwargs(avg))
    assert_close(y, F.avg_pool2d(x.cpu(), **avg_kwargs(avg)), F64)
    g = make_tensor(y.shape, F64, device)
    assert_close(cnnkit_grad(CF.avg_pool2d, x, g, **avg_kwargs(avg)),
                 torch_grad(F.avg_pool2d, x, g, **avg_kwargs(avg)), F64)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(0, 2), st.integers(1, 18), st.integers(1, 12),
                       st.integers(1, 25)),
       output_size=st.tuples(st.one_of(st.none(), st.integers(1, 12)),
                             st.one_of(st.none(), st.integers(1, 12))),
       layout=st.sampled_from(LAYOUTS))
def test_property_adaptive_match_torch(shape, output_size, layout, device):
    x = make_tensor(shape, F64, device, layout)
    y, i = CF.adaptive_max_pool2d(x, output_size, return_indices=True)
    y_ref, i_ref = F.adaptive_max_pool2d(x.cpu(), output_size, return_indices=True)
    assert torch.equal(y.cpu(), y_ref) and torch.equal(i.cpu(), i_ref)
    g = make_tensor(y.shape, F64, device)
    assert_close(cnnkit_grad(CF.adaptive_max_pool2d, x, g, output_size),
                 torch_grad(F.adaptive_max_pool2d, x, g, output_size), F64)
    y = CF.adaptive_avg_pool2d(x, output_size)
    assert_close(y, F.adaptive_avg_pool2d(x.cpu(), output_size), F64)
    assert_close(cnnkit_grad(CF.adaptive_avg_pool2d, x, g, output_size),
                 torch_grad(F.adaptive_avg_pool2d, x, g, output_size), F64)
