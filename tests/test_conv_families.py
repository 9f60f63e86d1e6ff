"""What every convolution op (tests/conv_family.py: conv2d, conv_transpose2d,
local_conv2d, tiled_conv2d) must do alike: forward against its float64
reference over its problems, dtypes and memory layouts, unbatched inputs, half
precision on CUDA, the gradient views (dispatcher ops <op>_input_backward,
<op>_weight_backward, <op>_bias_backward), gradients, gradcheck /
gradgradcheck, determinism, opcheck and a property test over random
configurations. Test ids name the op: `-k local_conv2d` selects one family.
Each op's own file (tests/test_<op>.py) keeps what only that op has."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, FLOAT_DTYPES, HALF_DTYPES, LAYOUTS, assert_close, make_tensor
from conv_family import F64, FAMILIES, GRADIENT_OF, OTHER_OPERAND, VIEWS, shape_of

WITH_VIEWS = [fam for fam in FAMILIES if fam.view_references]


def each(problems_of, families=FAMILIES):
    """(family, problem) parameters: the problems `problems_of(family)` of every family."""
    return [pytest.param(fam, pb, id=f"{fam.name}-{pb.id}")
            for fam in families for pb in problems_of(fam)]


def view_operands(fam, view, pb, dtype, device, layout="contiguous", requires_grad=False):
    """grad_output and the other operand (or None) of a gradient view."""
    g = make_tensor(fam.out_shape(pb), dtype, device, layout, requires_grad)
    other = OTHER_OPERAND[view]
    if other is None:
        return g, None
    return g, make_tensor(shape_of(pb, other), dtype, device, layout, requires_grad)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.problems))
def test_forward(fam, pb, dtype, layout, device):
    x, w, b = fam.args(pb, dtype, device, layout)
    y = fam.call(pb, x, w, b)
    assert y.dtype == dtype and y.device == x.device
    assert tuple(y.shape) == fam.out_shape(pb)
    assert_close(y, fam.reference_output(pb, x, w, b), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.unbatched))
def test_unbatched_input(fam, pb, dtype, device):
    # A 3-D (C, H, W) input is one sample: the output is (C_out, OH, OW) and the
    # input gradient has the input's 3-D shape.
    pb = dataclasses.replace(pb, N=1)
    x, w, b = fam.args(pb, dtype, device)
    x3 = x[0].detach().requires_grad_()
    y = fam.functional(pb, x3, w, b)
    assert tuple(y.shape) == fam.out_shape(pb)[1:]
    g = make_tensor(y.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, x3, g)
    assert tuple(gx.shape) == pb.input_shape[1:]
    y_ref, grads_ref = fam.reference_and_grads(pb, x, w, b, g[None])
    assert_close(y, y_ref[0], dtype)
    assert_close(gx, grads_ref[0][0], dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.half))
def test_forward_half_cuda(fam, pb, dtype, cuda_device):
    # float16 / bfloat16 on CUDA accumulate in float32: only the final rounding
    # separates them from the float64 reference of the same (rounded) inputs.
    x, w, b = fam.args(pb, dtype, cuda_device)
    y = fam.call(pb, x, w, b)
    assert y.dtype == dtype
    assert_close(y, fam.reference_output(pb, x, w, b), dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.untied_bias))
def test_untied_bias(fam, pb, layout, device):
    # A bias (C_out, OH, OW), one per output location, added at every sample:
    # the reference without bias plus the bias; the output in the memory
    # format the op gives without a bias.
    x, w, _ = fam.args(pb, F64, device, layout)
    b = make_tensor(fam.untied_bias_shape(pb), F64, device)
    y = fam.op()(x, w, b, *fam.op_geometry(pb))
    assert_close(y, fam.untied_reference(pb, x, w, b), F64)
    assert y.stride() == fam.op()(x, w, None, *fam.op_geometry(pb)).stride()


@pytest.mark.parametrize("fam,pb", each(lambda fam: [
    pb for pb in fam.untied_bias if not fam.tiled and tuple(fam.out_shape(pb)[2:]) == (1, 1)]))
def test_untied_bias_of_a_1x1_output_equals_the_per_channel_one(fam, pb, device):
    # Output 1x1: bias (C_out, 1, 1) means what bias (C_out,) means.
    x, w, _ = fam.args(pb, F64, device)
    b = make_tensor(fam.untied_bias_shape(pb)[:1], F64, device)
    geometry = fam.op_geometry(pb)
    assert torch.equal(fam.op()(x, w, b[:, None, None], *geometry), fam.op()(x, w, b, *geometry))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.untied_bias[:2]))
def test_untied_bias_strided(fam, pb, dtype, device):
    # An untied bias that is a non-contiguous view (every other element,
    # transposed spatial axes) reads as its values.
    x, w, _ = fam.args(pb, dtype, device)
    for layout in ("sliced", "transposed"):
        b = make_tensor(fam.untied_bias_shape(pb), dtype, device, layout)
        y = fam.op()(x, w, b, *fam.op_geometry(pb))
        assert_close(y, fam.untied_reference(pb, x, w, b), dtype)


# --------------------------------------------------------------------------- gradient views


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.problems, WITH_VIEWS))
def test_backward_op(fam, pb, view, dtype, layout, device):
    # Each view alone against the adjoint of the reference, with the shape of
    # the argument it is the gradient of.
    g, other = view_operands(fam, view, pb, dtype, device, layout)
    got = fam.view(view, pb, g, other)
    assert got.dtype == dtype and got.device == g.device
    assert tuple(got.shape) == shape_of(pb, GRADIENT_OF[view])
    assert_close(got, fam.view_reference(view, pb, g, other), dtype)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.adjoint, WITH_VIEWS))
def test_views_are_adjoint(fam, pb, device):
    # <Z(V, K), G> = <V, input_backward(G, K)> = <K, weight_backward(G, V)>:
    # the three views are one bilinear form (SPEC 1.1), checked on the kernels
    # alone, without any reference.
    x, w, _ = fam.args(pb, F64, device)
    g = make_tensor(fam.out_shape(pb), F64, device)
    z = fam.op()(x, w, None, *fam.op_geometry(pb))
    gx = fam.view("input_backward", pb, g, w)
    gw = fam.view("weight_backward", pb, g, x)
    form = (z * g).sum()
    torch.testing.assert_close((x * gx).sum(), form, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close((w * gw).sum(), form, rtol=1e-12, atol=1e-10)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.problems))
def test_gradients_match_reference(fam, pb, layout, device):
    x, w, b = fam.args(pb, F64, device, layout, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = fam.call(pb, x, w, b)
    g = make_tensor(y.shape, F64, device, layout)
    grads = torch.autograd.grad(y, leaves, g)
    _, grads_ref = fam.reference_and_grads(pb, x, w, b, g)
    for name, got, want in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.shape == want.shape, name
        assert_close(got, want, F64)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.backward_of_sum))
def test_backward_of_sum(fam, pb, device):
    # y.sum().backward() hands the backward an expanded scalar: a grad_output
    # whose strides are all 0.
    x, w, b = fam.args(pb, F64, device, requires_grad=True)
    y = fam.call(pb, x, w, b)
    y.sum().backward()
    _, grads_ref = fam.reference_and_grads(pb, x, w, b, torch.ones_like(y))
    for got, want in zip([t for t in (x, w, b) if t is not None], grads_ref):
        assert_close(got.grad, want, F64)


@pytest.mark.parametrize("wanted", ["input", "weight", "bias"])
@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_gradient_of_one_argument(fam, wanted, device):
    # Only one argument requires grad (a frozen layer, a fixed input): the
    # backward must serve it alone.
    pb = fam.one_argument
    x, w, b = fam.args(pb, F64, device)
    args = {"input": x, "weight": w, "bias": b}
    args[wanted].requires_grad_()
    y = fam.call(pb, x, w, b)
    g = make_tensor(y.shape, F64, device)
    (got,) = torch.autograd.grad(y, args[wanted], g)
    _, grads_ref = fam.reference_and_grads(pb, x, w, b, g)
    assert_close(got, grads_ref[list(args).index(wanted)], F64)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems))
def test_gradcheck(fam, pb, device, one_thread):
    x, w, b = fam.args(pb, F64, device, requires_grad=True)
    args = (x, w) if b is None else (x, w, b)

    def f(x, w, b=None):
        return fam.call(pb, x, w, b)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems, WITH_VIEWS))
def test_gradcheck_backward_op(fam, pb, view, device, one_thread):
    # The input view dV = T(G, K) is bilinear: its gradients are the forward op
    # (in G) and the weight view (in K), likewise for the weight view;
    # gradgradcheck differentiates those in turn. The bias view's adjoint
    # repeats each bias entry over the locations it serves (tiled_conv2d:
    # partial last tiles and tiles larger than the output included).
    operands = [t for t in view_operands(fam, view, pb, F64, device, requires_grad=True)
                if t is not None]

    def f(*operands):
        return fam.view(view, pb, *operands)

    assert torch.autograd.gradcheck(f, operands)
    assert torch.autograd.gradgradcheck(f, operands)


@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_deterministic(fam, device):
    # SPEC 3: same inputs, same outputs, bit for bit, forward and backward.
    pb = fam.deterministic
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        x, w, b = fam.args(pb, torch.float32, device, requires_grad=True)
        y = fam.call(pb, x, w, b)
        y.backward(make_tensor(y.shape, torch.float32, device))
        results.append([y, x.grad, w.grad, b.grad])
    for first, second in zip(*results):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------- opcheck


def _opcheck_params():
    params = []
    for fam in FAMILIES:
        for view in [None, *(VIEWS if fam.view_references else ())]:
            for pb, layout, aot in fam.opcheck:
                params.append(pytest.param(fam, view, pb, layout, aot,
                                           id=f"{fam.op_name(view)}-{pb.id}-{layout}"))
    return params


@pytest.mark.parametrize("fam,view,pb,layout,aot", _opcheck_params())
def test_opcheck(fam, view, pb, layout, aot, device):
    # Schema (no mutation or aliasing the schema does not declare), autograd
    # registration, fake kernel against the real one (shapes, strides, dtypes),
    # and, where `aot`, AOT dispatch with dynamic shapes (the slow part).
    if view is None:
        x, w, b = fam.args(pb, F64, device, layout, requires_grad=True)
        args = (x, w, b, *fam.op_geometry(pb))
    else:
        g, other = view_operands(fam, view, pb, F64, device, layout, requires_grad=True)
        args = fam.view_args(view, pb, g, other)
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    torch.library.opcheck(fam.op(view).default, args,
                          test_utils=utils + ["test_aot_dispatch_dynamic"] if aot else utils)


# --------------------------------------------------------------------------- property test


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fam", FAMILIES, ids=str)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_matches_reference(fam, device, data):
    pb = data.draw(fam.random_problems, label="problem")
    x, w, b = fam.args(pb, F64, device, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = fam.functional(pb, x, w, b)
    g = make_tensor(y.shape, F64, device)
    y_ref, grads_ref = fam.reference_and_grads(pb, x, w, b, g)
    assert_close(y, y_ref, F64)
    for got, want in zip(torch.autograd.grad(y, leaves, g), grads_ref):
        assert_close(got, want, F64)
