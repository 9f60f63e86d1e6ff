"""tiled_conv2d (SPEC 1.4) and its three gradient views, the dispatcher ops
tiled_conv2d_input_backward, tiled_conv2d_weight_backward and
tiled_conv2d_bias_backward: forward against the float64 reference written from
the SPEC formula (tests/reference.py), gradients, gradcheck / gradgradcheck,
opcheck, torch.compile, the SPEC identities with conv2d and local_conv2d,
argument errors (kernel and fake kernel alike) and a property test over random
configurations."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkit
import cnnkit.functional as CF
import reference as ref
from conftest import (DEVICES, FLOAT_DTYPES, HALF_DTYPES, LAYOUTS, BadCase, assert_close,
                      bad_case_params, check_bad_case, make_tensor)
from problems import GRADCHECK_TILED_PROBLEMS, TILED_PROBLEMS, TiledProblem, pair

ops = torch.ops.cnnkit
F64 = torch.float64


def by_id(*ids):
    table = {pb.id: pb for pb in TILED_PROBLEMS + GRADCHECK_TILED_PROBLEMS}
    return [table[i] for i in ids]


def op_only(pb):
    """Problems with 4-entry padding, which only the dispatcher ops take."""
    return isinstance(pb.padding, tuple) and len(pb.padding) == 4


def tiled_args(pb: TiledProblem, dtype, device, layout="contiguous", requires_grad=False):
    x = make_tensor(pb.input_shape, dtype, device, layout, requires_grad)
    w = make_tensor(pb.weight_shape, dtype, device, layout, requires_grad)
    b = make_tensor(pb.bias_shape, dtype, device, layout, requires_grad) if pb.bias else None
    return x, w, b


def op_geometry(pb):
    """(stride, padding, dilation, groups) as the dispatcher ops take them."""
    return (list(pair(pb.stride)), ref.op_padding(pb.padding, pb.kernel, pb.dilation),
            list(pair(pb.dilation)), pb.groups)


def out_shape(pb):
    return (pb.N, pb.K, *pb.out_size)


def cnnkit_tiled(pb, x, w, b=None):
    if op_only(pb):
        return ops.tiled_conv2d(x, w, b, *op_geometry(pb))
    return CF.tiled_conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


def cnnkit_conv(pb, x, w, b=None):
    if op_only(pb):
        return ops.conv2d(x, w, b, *op_geometry(pb))
    return CF.conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


def cnnkit_local(pb, x, w, b=None):
    if op_only(pb):
        return ops.local_conv2d(x, w, b, *op_geometry(pb))
    return CF.local_conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


def reference_tiled(pb, x, w, b=None):
    return ref.tiled_conv2d_ref(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)


# --------------------------------------------------------------------------- the reference


def _direct_tiled(x, w, b, stride, padding, dilation, groups):
    """SPEC 1.4 term by term, one output element at a time (tiny sizes only)."""
    N, C, H, W = x.shape
    K, Cg, R, S, tH, tW = w.shape
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    top, _, left, _ = ref.explicit_padding(padding, (R, S), dilation)
    P, Q = ref.conv2d_out_size(H, W, (R, S), stride, padding, dilation)
    z = torch.zeros(N, K, P, Q, dtype=F64)
    for n, i, y, xo in itertools.product(range(N), range(K), range(P), range(Q)):
        a, c = y % tH, xo % tW
        acc = 0.0 if b is None else b[i, a, c].item()
        g = i // (K // groups)
        for l, m, q in itertools.product(range(Cg), range(R), range(S)):
            row, col = y * sh - top + m * dh, xo * sw - left + q * dw
            if 0 <= row < H and 0 <= col < W:
                acc += x[n, g * Cg + l, row, col].item() * w[i, l, m, q, a, c].item()
        z[n, i, y, xo] = acc
    return z


@pytest.mark.parametrize("pb", by_id("same_dilated", "pad_gt_kernel_strided", "tiles_not_dividing",
                                     "depthwise_mult2_stride2", "pad4_asymmetric"), ids=str)
def test_reference_is_the_spec_formula(pb):
    # The unfold + gathered-weight reference against the formula evaluated
    # literally, so that the reference itself is tested.
    pb = dataclasses.replace(pb, N=1)
    x, w, b = tiled_args(pb, F64, "cpu")
    want = _direct_tiled(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    torch.testing.assert_close(reference_tiled(pb, x, w, b), want, rtol=1e-12, atol=1e-12)


def test_reference_bias_gradient_is_the_adjoint():
    # tiled_conv2d_bias_backward_ref (explicit sums over each tile's locations)
    # against autograd of the reference's bias term.
    pb = by_id("tiles_not_dividing")[0]
    x, w, b = tiled_args(pb, F64, "cpu", requires_grad=True)
    y = ref.tiled_conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    g = make_tensor(y.shape, F64)
    (gb,) = torch.autograd.grad(y, b, g)
    torch.testing.assert_close(ref.tiled_conv2d_bias_backward_ref(g, pb.tiles), gb)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", TILED_PROBLEMS, ids=str)
def test_forward(pb, dtype, layout, device):
    x, w, b = tiled_args(pb, dtype, device, layout)
    y = cnnkit_tiled(pb, x, w, b)
    assert y.dtype == dtype and y.device == x.device
    assert tuple(y.shape) == out_shape(pb)
    assert_close(y, reference_tiled(pb, x, w, b), dtype)


UNBATCHED_PROBLEMS = by_id("tiles_2x2", "same_even", "groups2", "anisotropic", "full", "no_bias")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", UNBATCHED_PROBLEMS, ids=str)
def test_unbatched_input(pb, dtype, device):
    # A 3-D (C, H, W) input is one sample: output (C_out, OH, OW), input
    # gradient of the input's 3-D shape.
    pb = dataclasses.replace(pb, N=1)
    x, w, b = tiled_args(pb, dtype, device)
    x3 = x[0].detach().requires_grad_()
    y = CF.tiled_conv2d(x3, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    assert tuple(y.shape) == out_shape(pb)[1:]
    assert_close(y, reference_tiled(pb, x, w, b)[0], dtype)
    g = make_tensor(y.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, x3, g)
    assert tuple(gx.shape) == pb.input_shape[1:]
    gx_ref = ref.tiled_conv2d_input_backward_ref(g[None], w, (pb.H, pb.W), pb.stride, pb.padding,
                                                 pb.dilation, pb.groups)[0]
    assert_close(gx, gx_ref, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("pb", by_id("tiles_2x3", "tiles_not_dividing", "same_even",
                                     "depthwise_mult2_stride2", "long_reduction"), ids=str)
def test_forward_half_cuda(pb, dtype, cuda_device):
    # float16 / bfloat16 on CUDA accumulate in float32: only the final rounding
    # separates them from the float64 reference of the same (rounded) inputs.
    x, w, b = tiled_args(pb, dtype, cuda_device)
    y = cnnkit_tiled(pb, x, w, b)
    assert y.dtype == dtype
    assert_close(y, reference_tiled(pb, x, w, b), dtype)


# --------------------------------------------------------------------------- gradient views


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", TILED_PROBLEMS, ids=str)
def test_input_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    w = make_tensor(pb.weight_shape, dtype, device, layout)
    gx = ops.tiled_conv2d_input_backward(g, w, [pb.H, pb.W], *op_geometry(pb))
    assert gx.dtype == dtype and gx.device == g.device
    assert_close(gx, ref.tiled_conv2d_input_backward_ref(g, w, (pb.H, pb.W), pb.stride,
                                                         pb.padding, pb.dilation, pb.groups),
                 dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", TILED_PROBLEMS, ids=str)
def test_weight_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    x = make_tensor(pb.input_shape, dtype, device, layout)
    kernel, tiles = list(pair(pb.kernel)), list(pair(pb.tiles))
    gw = ops.tiled_conv2d_weight_backward(g, x, kernel, tiles, *op_geometry(pb))
    assert gw.dtype == dtype and gw.device == g.device
    assert tuple(gw.shape) == pb.weight_shape
    assert_close(gw, ref.tiled_conv2d_weight_backward_ref(g, x, kernel, tiles, pb.stride,
                                                          pb.padding, pb.dilation, pb.groups),
                 dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("pb", TILED_PROBLEMS, ids=str)
def test_bias_backward_op(pb, dtype, layout, device):
    g = make_tensor(out_shape(pb), dtype, device, layout)
    gb = ops.tiled_conv2d_bias_backward(g, list(pair(pb.tiles)))
    assert gb.dtype == dtype and gb.device == g.device
    assert tuple(gb.shape) == pb.bias_shape
    assert_close(gb, ref.tiled_conv2d_bias_backward_ref(g, pb.tiles), dtype)


@pytest.mark.parametrize("pb", by_id("anisotropic", "tiles_not_dividing", "same_even"), ids=str)
def test_views_are_adjoint(pb, device):
    # <Z(V, K), G> = <V, input_backward(G, K)> = <K, weight_backward(G, V)>: the
    # three views are one bilinear form, checked on the kernels alone.
    x, w, _ = tiled_args(pb, F64, device)
    g = make_tensor(out_shape(pb), F64, device)
    geo = op_geometry(pb)
    z = ops.tiled_conv2d(x, w, None, *geo)
    gx = ops.tiled_conv2d_input_backward(g, w, [pb.H, pb.W], *geo)
    gw = ops.tiled_conv2d_weight_backward(g, x, list(pair(pb.kernel)), list(pair(pb.tiles)), *geo)
    form = (z * g).sum()
    torch.testing.assert_close((x * gx).sum(), form, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close((w * gw).sum(), form, rtol=1e-12, atol=1e-10)


def test_unused_tiles_get_zero_gradient(device):
    # Tiles (5, 4) on a 3x3 output: kernel rows 3.. and columns 3.. serve no
    # output location, so their weight and bias gradients are exactly zero.
    pb = by_id("tiles_gt_output")[0]
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    y = cnnkit_tiled(pb, x, w, b)
    gw, gb = torch.autograd.grad(y, (w, b), make_tensor(y.shape, F64, device))
    assert torch.count_nonzero(gw[..., 3:, :]) == 0 and torch.count_nonzero(gw[..., 3:]) == 0
    assert torch.count_nonzero(gb[:, 3:, :]) == 0 and torch.count_nonzero(gb[:, :, 3:]) == 0
    assert torch.count_nonzero(gw[..., :3, :3]) == gw[..., :3, :3].numel()


# --------------------------------------------------------------------------- phase-major weights
# The kernels read a weight stored phase-major ((tH, tW, C_out, C_in/g, kH, kW)
# in memory) in place, and the weight gradient comes out in that layout, which
# TiledConv2d gives its parameter: no pass transposes the weight.


def phase_major(w: torch.Tensor) -> torch.Tensor:
    """`w`'s values, stored phase-major."""
    return w.permute(4, 5, 0, 1, 2, 3).contiguous().permute(2, 3, 4, 5, 0, 1)


def is_phase_major(w: torch.Tensor) -> bool:
    return w.permute(4, 5, 0, 1, 2, 3).is_contiguous()


@pytest.mark.parametrize("pb", by_id("tiles_2x2", "groups2", "anisotropic", "tiles_not_dividing"),
                         ids=str)
def test_phase_major_weight_gives_the_same_results(pb, device):
    x, w, b = tiled_args(pb, torch.float64, device)
    wp = phase_major(w)
    assert is_phase_major(wp) and not wp.is_contiguous()
    assert torch.equal(cnnkit_tiled(pb, x, wp, b), cnnkit_tiled(pb, x, w, b))
    g = make_tensor(out_shape(pb), torch.float64, device)
    input_size = list(pb.input_shape[2:])
    assert torch.equal(ops.tiled_conv2d_input_backward(g, wp, input_size, *op_geometry(pb)),
                       ops.tiled_conv2d_input_backward(g, w, input_size, *op_geometry(pb)))


@pytest.mark.parametrize("pb", by_id("tiles_2x2", "groups2"), ids=str)
def test_weight_gradient_is_phase_major(pb, device):
    x, w, b = tiled_args(pb, torch.float64, device)
    g = make_tensor(out_shape(pb), torch.float64, device)
    gw = ops.tiled_conv2d_weight_backward(g, x, list(pair(pb.kernel)), list(pair(pb.tiles)),
                                          *op_geometry(pb))
    assert is_phase_major(gw)


def test_layer_weight_is_phase_major_and_keeps_its_layout(device):
    layer = cnnkit.nn.TiledConv2d(4, 6, 3, tiles=(2, 3), padding=1, device=device)
    assert layer.weight.shape == (6, 4, 3, 3, 2, 3) and is_phase_major(layer.weight)
    layer(make_tensor((2, 4, 8, 9), torch.float32, device)).sum().backward()
    assert is_phase_major(layer.weight.grad)  # autograd kept the gradient as the kernel wrote it
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert is_phase_major(layer.weight)
    clone = cnnkit.nn.TiledConv2d(4, 6, 3, tiles=(2, 3), padding=1, device=device)
    clone.load_state_dict(layer.state_dict())
    assert is_phase_major(clone.weight) and torch.equal(clone.weight, layer.weight)


# --------------------------------------------------------------------------- autograd


def _reference_grads(pb, leaves, g):
    leaves_ref = [t.detach().to(F64).clone().requires_grad_() for t in leaves]
    y_ref = ref.tiled_conv2d(*leaves_ref[:2], leaves_ref[2] if pb.bias else None, pb.stride,
                             pb.padding, pb.dilation, pb.groups)
    return y_ref, torch.autograd.grad(y_ref, leaves_ref, g.to(F64))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pb", TILED_PROBLEMS, ids=str)
def test_gradients_match_reference(pb, layout, device):
    x, w, b = tiled_args(pb, F64, device, layout, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = cnnkit_tiled(pb, x, w, b)
    g = make_tensor(y.shape, F64, device, layout)
    grads = torch.autograd.grad(y, leaves, g)
    _, grads_ref = _reference_grads(pb, leaves, g)
    for name, got, want in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.shape == want.shape, name
        assert_close(got, want, F64)


@pytest.mark.parametrize("pb", by_id("tiles_2x3", "anisotropic", "same_even",
                                     "depthwise_mult2_stride2", "batch0"), ids=str)
def test_backward_of_sum(pb, device):
    # y.sum().backward() hands the backward an expanded scalar: a grad_output
    # whose strides are all 0.
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    cnnkit_tiled(pb, x, w, b).sum().backward()
    leaves_ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref.tiled_conv2d(*leaves_ref, pb.stride, pb.padding, pb.dilation, pb.groups).sum().backward()
    for got, want in zip((x, w, b), leaves_ref):
        assert_close(got.grad, want.grad, F64)


@pytest.mark.parametrize("wanted", ["input", "weight", "bias"])
def test_gradient_of_one_argument(wanted, device):
    # Only one argument requires grad (a frozen layer, a fixed input).
    pb = by_id("stride2_pad1")[0]
    x, w, b = tiled_args(pb, F64, device)
    args = {"input": x, "weight": w, "bias": b}
    args[wanted].requires_grad_()
    y = cnnkit_tiled(pb, args["input"], args["weight"], args["bias"])
    g = make_tensor(y.shape, F64, device)
    (got,) = torch.autograd.grad(y, args[wanted], g)
    if wanted == "input":
        want = ref.tiled_conv2d_input_backward_ref(g, w, (pb.H, pb.W), pb.stride, pb.padding,
                                                   pb.dilation, pb.groups)
    elif wanted == "weight":
        want = ref.tiled_conv2d_weight_backward_ref(g, x, pair(pb.kernel), pair(pb.tiles),
                                                    pb.stride, pb.padding, pb.dilation, pb.groups)
    else:
        want = ref.tiled_conv2d_bias_backward_ref(g, pb.tiles)
    assert_close(got, want, F64)


def _functional(pb):
    def f(x, w, b=None):
        return cnnkit_tiled(pb, x, w, b)
    return f


@pytest.fixture
def one_thread():
    """gradcheck / gradgradcheck call the ops thousands of times on tensors of a
    few dozen elements, where intra-op threads only add a thread wake-up per
    call (milliseconds each when the machine is loaded). The threaded paths
    are exercised by every other test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("pb", GRADCHECK_TILED_PROBLEMS, ids=str)
def test_gradcheck_tiled_conv2d(pb, device, one_thread):
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    args = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(_functional(pb), args)
    assert torch.autograd.gradgradcheck(_functional(pb), args)


@pytest.mark.parametrize("pb", GRADCHECK_TILED_PROBLEMS, ids=str)
def test_gradcheck_input_backward(pb, device, one_thread):
    # dV = T(G, K) is bilinear: its gradients are tiled_conv2d (in G) and the
    # weight gradient (in K); gradgradcheck differentiates those in turn.
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)
    w = make_tensor(pb.weight_shape, F64, device, requires_grad=True)

    def f(g, w):
        return ops.tiled_conv2d_input_backward(g, w, [pb.H, pb.W], *op_geometry(pb))

    assert torch.autograd.gradcheck(f, (g, w))
    assert torch.autograd.gradgradcheck(f, (g, w))


@pytest.mark.parametrize("pb", GRADCHECK_TILED_PROBLEMS, ids=str)
def test_gradcheck_weight_backward(pb, device, one_thread):
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)
    x = make_tensor(pb.input_shape, F64, device, requires_grad=True)

    def f(g, x):
        return ops.tiled_conv2d_weight_backward(g, x, list(pair(pb.kernel)), list(pair(pb.tiles)),
                                                *op_geometry(pb))

    assert torch.autograd.gradcheck(f, (g, x))
    assert torch.autograd.gradgradcheck(f, (g, x))


@pytest.mark.parametrize("pb", GRADCHECK_TILED_PROBLEMS, ids=str)
def test_gradcheck_bias_backward(pb, device, one_thread):
    # Its adjoint repeats each tile's entry over the locations it serves,
    # including partial last tiles and tiles larger than the output.
    g = make_tensor(out_shape(pb), F64, device, requires_grad=True)

    def f(g):
        return ops.tiled_conv2d_bias_backward(g, list(pair(pb.tiles)))

    assert torch.autograd.gradcheck(f, (g,))
    assert torch.autograd.gradgradcheck(f, (g,))


# --------------------------------------------------------------------------- SPEC 1.4 identities


def _grads(y, leaves, g):
    return torch.autograd.grad(y, [t for t in leaves if t is not None], g)


IDENTITY_PROBLEMS = by_id("tiles_2x2", "anisotropic", "depthwise_mult2_stride2", "same_even",
                          "full_dilated_strided", "pad_gt_kernel_strided", "pad4_asymmetric",
                          "no_bias")


@pytest.mark.parametrize("pb", IDENTITY_PROBLEMS, ids=str)
def test_tiles_1x1_equal_conv2d(pb, device):
    # Tiles (1, 1): every location uses K[..., 0, 0] and b[:, 0, 0]: conv2d,
    # forward and all three gradients.
    pb = dataclasses.replace(pb, tiles=1)
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    y = cnnkit_tiled(pb, x, w, b)
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach()[..., 0, 0].clone().requires_grad_()
    b2 = None if b is None else b.detach()[:, 0, 0].clone().requires_grad_()
    y2 = cnnkit_conv(pb, x2, w2, b2)
    assert_close(y, y2, F64)
    g = make_tensor(y.shape, F64, device)
    got, want = _grads(y, (x, w, b), g), _grads(y2, (x2, w2, b2), g)
    assert_close(got[0], want[0], F64)
    assert_close(got[1], want[1][..., None, None], F64)
    if b is not None:
        assert_close(got[2], want[2][:, None, None], F64)


@pytest.mark.parametrize("pb", IDENTITY_PROBLEMS, ids=str)
def test_tiles_equal_to_output_size_equal_local_conv2d(pb, device):
    # Tiles (OH, OW): every location its own kernel, local_conv2d with the
    # weight permuted from (C_out, C_in/g, kH, kW, OH, OW) to
    # (C_out, OH, OW, C_in/g, kH, kW); the bias (C_out, OH, OW) as it is.
    pb = dataclasses.replace(pb, tiles=pb.out_size)
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    y = cnnkit_tiled(pb, x, w, b)
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().permute(0, 4, 5, 1, 2, 3).clone().requires_grad_()
    b2 = None if b is None else b.detach().clone().requires_grad_()
    y2 = cnnkit_local(pb, x2, w2, b2)
    assert_close(y, y2, F64)
    g = make_tensor(y.shape, F64, device)
    got, want = _grads(y, (x, w, b), g), _grads(y2, (x2, w2, b2), g)
    assert_close(got[0], want[0], F64)
    assert_close(got[1], want[1].permute(0, 3, 4, 5, 1, 2), F64)
    if b is not None:
        assert_close(got[2], want[2], F64)


@pytest.mark.parametrize("pb", by_id("tiles_2x3", "tiles_not_dividing", "tiles_gt_output",
                                     "groups2"), ids=str)
def test_equal_tiles_equal_conv2d(pb, device):
    # Whatever the tiling, one kernel repeated in every tile is conv2d; with the
    # tile axes an expand() of the dense kernel, autograd sums the tiled weight
    # gradient over tiles, which must be conv2d's weight gradient.
    x, _, _ = tiled_args(pb, F64, device, requires_grad=True)
    tH, tW = pair(pb.tiles)
    k = make_tensor((pb.K, pb.C // pb.groups, *pair(pb.kernel)), F64, device, requires_grad=True)
    b = make_tensor((pb.K,), F64, device, requires_grad=True)
    y = cnnkit_tiled(pb, x, k[..., None, None].expand(*k.shape, tH, tW),
                     b[:, None, None].expand(pb.K, tH, tW))
    x2 = x.detach().clone().requires_grad_()
    y2 = cnnkit_conv(pb, x2, k, b)
    assert_close(y, y2, F64)
    g = make_tensor(y.shape, F64, device)
    for got, want in zip(_grads(y, (x, k, b), g), _grads(y2, (x2, k, b), g)):
        assert_close(got, want, F64)


# --------------------------------------------------------------------------- determinism


def test_deterministic(device):
    # SPEC 3: same inputs, same outputs, bit for bit, forward and backward.
    pb = by_id("remainders")[0]
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        x, w, b = tiled_args(pb, torch.float32, device, requires_grad=True)
        y = cnnkit_tiled(pb, x, w, b)
        y.backward(make_tensor(y.shape, torch.float32, device))
        results.append([y, x.grad, w.grad, b.grad])
    for first, second in zip(*results):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------- opcheck


# (problem, layout, AOT): AOT dispatch with dynamic shapes (the slow part of
# opcheck) on a contiguous and a channels_last case; schema, autograd
# registration and fake-kernel checks on every case.
OPCHECK_CASES = [pytest.param(pb, layout, aot, id=f"{pb.id}-{layout}") for pb, layout, aot in [
    (by_id("tiles_2x3")[0], "contiguous", True), (by_id("same_even")[0], "contiguous", False),
    (by_id("depthwise_mult2_stride2")[0], "sliced", False),
    (by_id("batch0")[0], "contiguous", False), (by_id("anisotropic")[0], "channels_last", True)]]


def _opcheck_args(name, pb, layout, device):
    def t(shape):
        return make_tensor(shape, F64, device, layout, requires_grad=True)

    geo = op_geometry(pb)
    tiles = list(pair(pb.tiles))
    if name == "tiled_conv2d":
        return (t(pb.input_shape), t(pb.weight_shape), t(pb.bias_shape) if pb.bias else None,
                *geo)
    if name == "tiled_conv2d_input_backward":
        return (t(out_shape(pb)), t(pb.weight_shape), [pb.H, pb.W], *geo)
    if name == "tiled_conv2d_weight_backward":
        return (t(out_shape(pb)), t(pb.input_shape), list(pair(pb.kernel)), tiles, *geo)
    return (t(out_shape(pb)), tiles)


@pytest.mark.parametrize("name", ["tiled_conv2d", "tiled_conv2d_input_backward",
                                  "tiled_conv2d_weight_backward", "tiled_conv2d_bias_backward"])
@pytest.mark.parametrize("pb,layout,aot", OPCHECK_CASES)
def test_opcheck(name, pb, layout, aot, device):
    # Schema, autograd registration, fake kernel against the real one (shapes,
    # strides, dtypes), and AOT dispatch with dynamic shapes.
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    torch.library.opcheck(getattr(ops, name).default, _opcheck_args(name, pb, layout, device),
                          test_utils=utils + ["test_aot_dispatch_dynamic"] if aot else utils)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A tiled block traced without graph breaks (the fake kernels give the
    # shapes), forward and backward equal to eager.
    def block(x, w1, b1, w2):
        y = torch.relu(CF.tiled_conv2d(x, w1, b1, padding="same"))
        return CF.tiled_conv2d(y, w2, None, stride=2, padding=1, groups=2)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    shapes = [(2, 3, 9, 8), (4, 3, 2, 2, 2, 3), (4, 2, 3), (6, 2, 3, 3, 3, 2)]
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

FN = "cnnkit.tiled_conv2d"
LAYOUT = "(C_out, C_in/groups, kH, kW, tH, tW)"


def _tiled(x, w, b=None, **kw):
    return CF.tiled_conv2d(x, w, b, **kw)


TILED_BAD_CASES = [
    BadCase("input_2d", lambda t: _tiled(t(3, 5), t(2, 3, 3, 3, 2, 2)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [3, 5]"),
    BadCase("input_5d", lambda t: _tiled(t(1, 2, 3, 6, 6), t(2, 2, 3, 3, 2, 2)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [1, 2, 3, 6, 6]"),
    BadCase("weight_4d", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 6D weight {LAYOUT}, but got shape [2, 2, 3, 3]"),
    BadCase("weight_5d", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2)), RuntimeError,
            f"{FN}: expected 6D weight {LAYOUT}, but got shape [2, 2, 3, 3, 2]"),
    BadCase("weight_local_layout", lambda t: _tiled(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[1] = input channels / groups = 2 / 1, "
            "but got weight of shape [2, 3, 3, 2, 3, 3]"),
    BadCase("zero_tiles", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 0, 2)), RuntimeError,
            f"{FN}: expected tiles to be positive, but got weight of shape [2, 2, 3, 3, 0, 2]"),
    BadCase("zero_tiles_width", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 0)),
            RuntimeError, f"{FN}: expected tiles to be positive, but got weight of shape "
            "[2, 2, 3, 3, 2, 0]"),
    BadCase("weight_channels_mismatch", lambda t: _tiled(t(1, 4, 5, 5), t(2, 3, 3, 3, 2, 2)),
            RuntimeError, f"{FN}: expected weight.shape[1] = input channels / groups = 4 / 1, but "
            "got weight of shape [2, 3, 3, 3, 2, 2]"),
    BadCase("weight_channels_mismatch_groups", lambda t: _tiled(t(1, 4, 5, 5),
                                                                t(2, 4, 3, 3, 2, 2), groups=2),
            RuntimeError, f"{FN}: expected weight.shape[1] = input channels / groups = 4 / 2, but "
            "got weight of shape [2, 4, 3, 3, 2, 2]"),
    BadCase("input_channels_not_divisible", lambda t: _tiled(t(1, 5, 5, 5), t(4, 2, 3, 3, 2, 2),
                                                             groups=2), RuntimeError,
            f"{FN}: expected input channels (5) to be divisible by groups (2)"),
    BadCase("output_channels_not_divisible", lambda t: _tiled(t(1, 4, 5, 5), t(3, 2, 3, 3, 2, 2),
                                                              groups=2), RuntimeError,
            f"{FN}: expected output channels (3) to be divisible by groups (2)"),
    BadCase("bias_per_channel", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), t(2)),
            RuntimeError, f"{FN}: expected bias of shape [2, 2, 2], but got shape [2]"),
    BadCase("bias_per_location", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                                  t(2, 3, 3)), RuntimeError,
            f"{FN}: expected bias of shape [2, 2, 2], but got shape [2, 3, 3]"),
    BadCase("bias_tiles_transposed", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 3),
                                                      t(2, 3, 2)), RuntimeError,
            f"{FN}: expected bias of shape [2, 2, 3], but got shape [2, 3, 2]"),
    BadCase("input_int64", lambda t: _tiled(t(1, 2, 5, 5, dtype=torch.int64),
                                            t(2, 2, 3, 3, 2, 2, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32 or torch.float64, but got torch.int64",
            devices=("cpu", "meta")),
    BadCase("input_int64_cuda", lambda t: _tiled(t(1, 2, 5, 5, dtype=torch.int64),
                                                 t(2, 2, 3, 3, 2, 2, dtype=torch.int64)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32, torch.float64, "
            "torch.float16 or torch.bfloat16, but got torch.int64", devices=("cuda",)),
    BadCase("input_float16_cpu", lambda t: _tiled(t(1, 2, 5, 5, dtype=torch.float16),
                                                  t(2, 2, 3, 3, 2, 2, dtype=torch.float16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.float16", devices=("cpu", "meta")),
    BadCase("input_bfloat16_cpu", lambda t: _tiled(t(1, 2, 5, 5, dtype=torch.bfloat16),
                                                   t(2, 2, 3, 3, 2, 2, dtype=torch.bfloat16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.bfloat16", devices=("cpu", "meta")),
    BadCase("weight_float64", lambda t: _tiled(t(1, 2, 5, 5),
                                               t(2, 2, 3, 3, 2, 2, dtype=torch.float64)),
            RuntimeError, f"{FN}: expected weight of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("bias_float64", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                             t(2, 2, 2, dtype=torch.float64)), RuntimeError,
            f"{FN}: expected bias of the dtype of input (torch.float32), but got torch.float64"),
    BadCase("weight_on_cpu", lambda t: _tiled(t(1, 2, 5, 5), make_tensor((2, 2, 3, 3, 2, 2),
                                                                         torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected weight on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("bias_on_cpu", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                            make_tensor((2, 2, 2), torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected bias on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("kernel_larger_than_input", lambda t: _tiled(t(1, 1, 4, 4), t(1, 1, 5, 3, 1, 1)),
            RuntimeError, f"{FN}: expected the kernel (5x3 after dilation) to fit in the padded "
            "input (4x4), but it is larger"),
    BadCase("kernel_larger_after_dilation", lambda t: _tiled(t(1, 1, 6, 4), t(1, 1, 3, 3, 2, 2),
                                                             dilation=2), RuntimeError,
            f"{FN}: expected the kernel (5x5 after dilation) to fit in the padded input (6x4), "
            "but it is larger"),
    BadCase("kernel_larger_than_padded_input", lambda t: _tiled(t(1, 1, 4, 4),
                                                                t(1, 1, 7, 3, 2, 2), padding=1),
            RuntimeError, f"{FN}: expected the kernel (7x3 after dilation) to fit in the padded "
            "input (6x6), but it is larger"),
    BadCase("empty_kernel", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 0, 3, 2, 2)), RuntimeError,
            f"{FN}: expected kernel size to be positive, but got kernel size 0x3"),
    BadCase("stride_0", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), stride=(0, 1)),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[0, 1]"),
    BadCase("stride_negative", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), stride=-1),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[-1, -1]"),
    BadCase("dilation_0", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), dilation=(1, 0)),
            RuntimeError, f"{FN}: expected dilation to be positive, but got dilation=[1, 0]"),
    BadCase("padding_negative", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                                 padding=(0, -2)), RuntimeError,
            f"{FN}: expected padding to be non-negative, but got padding=[0, -2]"),
    BadCase("groups_0", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), groups=0),
            RuntimeError, f"{FN}: expected groups to be positive, but got groups=0"),
    BadCase("padding_bad_string", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                                   padding="reflect"), ValueError,
            f"{FN}: expected padding to be an int, a pair of ints, 'valid', 'same' or 'full', but "
            "got padding='reflect'"),
    BadCase("padding_same_stride2", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                                     stride=(1, 2), padding="same"), ValueError,
            f"{FN}: padding='same' is not supported for strided convolutions, but got "
            "stride=[1, 2]"),
    BadCase("stride_3_entries", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2),
                                                 stride=(1, 2, 3)), TypeError,
            f"{FN}: expected stride to be an int or a pair of ints, but got stride=(1, 2, 3)"),
    BadCase("input_not_a_tensor", lambda t: _tiled(None, t(2, 2, 3, 3, 2, 2)), TypeError,
            f"{FN}: expected input to be a torch.Tensor, but got NoneType"),
]

FN_IB, FN_WB, FN_BB = ("cnnkit.tiled_conv2d_input_backward", "cnnkit.tiled_conv2d_weight_backward",
                       "cnnkit.tiled_conv2d_bias_backward")
G1 = ([1, 1], [0, 0], [1, 1], 1)  # stride, padding, dilation, groups


def _ib(g, w, input_size, geo=G1):
    return ops.tiled_conv2d_input_backward(g, w, input_size, *geo)


def _wb(g, x, kernel_size, tiles, geo=G1):
    return ops.tiled_conv2d_weight_backward(g, x, kernel_size, tiles, *geo)


GRAD_VIEW_BAD_CASES = [
    BadCase("ib_grad_output_3d", lambda t: _ib(t(2, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 5]),
            RuntimeError, f"{FN_IB}: expected 4D grad_output (N, C_out, OH, OW), but got shape "
            "[2, 3, 3]"),
    BadCase("ib_weight_4d", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3), [5, 5]), RuntimeError,
            f"{FN_IB}: expected 6D weight {LAYOUT}, but got shape [2, 3, 3, 3]"),
    BadCase("ib_zero_tiles", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 0, 1), [5, 5]),
            RuntimeError, f"{FN_IB}: expected tiles to be positive, but got weight of shape "
            "[2, 3, 3, 3, 0, 1]"),
    BadCase("ib_int32", lambda t: _ib(t(1, 2, 3, 3, dtype=torch.int32),
                                      t(2, 3, 3, 3, 2, 2, dtype=torch.int32), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output of dtype torch.float32 or torch.float64,"
            " but got torch.int32", devices=("cpu", "meta")),
    BadCase("ib_weight_dtype", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 2, 2,
                                                              dtype=torch.float64), [5, 5]),
            RuntimeError, f"{FN_IB}: expected weight of the dtype of grad_output (torch.float32), "
            "but got torch.float64"),
    BadCase("ib_input_size_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 0]),
            RuntimeError, f"{FN_IB}: expected input_size of 2 positive entries, but got "
            "input_size=[5, 0]"),
    BadCase("ib_channels_mismatch", lambda t: _ib(t(1, 3, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output.shape[1] = weight.shape[0] = 2, but got "
            "grad_output of shape [1, 3, 3, 3]"),
    BadCase("ib_spatial_mismatch", lambda t: _ib(t(1, 2, 3, 4), t(2, 3, 3, 3, 2, 2), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output of spatial size [3, 3] for input_size "
            "[5, 5], but got shape [1, 2, 3, 4]"),
    BadCase("ib_dilation_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 5],
                                           ([1, 1], [0, 0], [1, 0], 1)), RuntimeError,
            f"{FN_IB}: expected dilation to be positive, but got dilation=[1, 0]"),
    BadCase("ib_kernel_too_large", lambda t: _ib(t(1, 2, 1, 1), t(2, 3, 3, 3, 1, 1), [2, 2]),
            RuntimeError, f"{FN_IB}: expected the kernel (3x3 after dilation) to fit in the padded "
            "input (2x2), but it is larger"),
    BadCase("wb_input_3d", lambda t: _wb(t(1, 2, 3, 3), t(3, 5, 5), [3, 3], [2, 2]), RuntimeError,
            f"{FN_WB}: expected 4D input (N, C, H, W), but got shape [3, 5, 5]"),
    BadCase("wb_zero_tiles", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [0, 1]),
            RuntimeError, f"{FN_WB}: expected tiles to be positive, but got tiles=[0, 1]"),
    BadCase("wb_tiles_3_entries", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [1, 2, 3]),
            RuntimeError, f"{FN_WB}: expected tiles of 2 entries, but got tiles=[1, 2, 3]"),
    BadCase("wb_float16", lambda t: _wb(t(1, 2, 3, 3, dtype=torch.float16),
                                        t(1, 3, 5, 5, dtype=torch.float16), [3, 3], [2, 2]),
            RuntimeError, f"{FN_WB}: expected input of dtype torch.float32 or torch.float64, but "
            "got torch.float16", devices=("cpu", "meta")),
    BadCase("wb_grad_dtype", lambda t: _wb(t(1, 2, 3, 3, dtype=torch.float64), t(1, 3, 5, 5),
                                           [3, 3], [2, 2]), RuntimeError,
            f"{FN_WB}: expected grad_output of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("wb_batch_mismatch", lambda t: _wb(t(1, 2, 3, 3), t(2, 3, 5, 5), [3, 3], [2, 2]),
            RuntimeError, f"{FN_WB}: expected grad_output.shape[0] = input.shape[0] = 2, but got "
            "grad_output of shape [1, 2, 3, 3]"),
    BadCase("wb_spatial_mismatch", lambda t: _wb(t(2, 2, 3, 4), t(2, 4, 5, 5), [3, 3], [2, 2]),
            RuntimeError, f"{FN_WB}: expected grad_output of spatial size [3, 3] for input of "
            "shape [2, 4, 5, 5], but got shape [2, 2, 3, 4]"),
    BadCase("wb_groups", lambda t: _wb(t(2, 2, 3, 3), t(2, 3, 5, 5), [3, 3], [2, 2],
                                       ([1, 1], [0, 0], [1, 1], 2)), RuntimeError,
            f"{FN_WB}: expected input channels (3) to be divisible by groups (2)"),
    BadCase("wb_stride_negative", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [2, 2],
                                                ([-1, 1], [0, 0], [1, 1], 1)), RuntimeError,
            f"{FN_WB}: expected stride to be positive, but got stride=[-1, 1]"),
    BadCase("bb_grad_output_2d", lambda t: ops.tiled_conv2d_bias_backward(t(2, 3), [2, 2]),
            RuntimeError, f"{FN_BB}: expected 4D grad_output (N, C_out, OH, OW), but got shape "
            "[2, 3]"),
    BadCase("bb_zero_tiles", lambda t: ops.tiled_conv2d_bias_backward(t(1, 2, 3, 3), [2, 0]),
            RuntimeError, f"{FN_BB}: expected tiles to be positive, but got tiles=[2, 0]"),
    BadCase("bb_int64", lambda t: ops.tiled_conv2d_bias_backward(
        t(1, 2, 3, 3, dtype=torch.int64), [2, 2]), RuntimeError,
        f"{FN_BB}: expected grad_output of dtype torch.float32 or torch.float64, but got "
        "torch.int64", devices=("cpu", "meta")),
]


@pytest.mark.parametrize("case,dev", bad_case_params(TILED_BAD_CASES + GRAD_VIEW_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)


# --------------------------------------------------------------------------- property test


@st.composite
def tiled_problems(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["valid", "same", "full"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    top, bottom, left, right = ref.explicit_padding(padding, kernel, dilation)
    # The smallest input the dilated kernel fits in once padded, and a few more.
    H = max(1, dilation[0] * (kernel[0] - 1) + 1 - top - bottom) + draw(st.integers(0, 5))
    W = max(1, dilation[1] * (kernel[1] - 1) + 1 - left - right) + draw(st.integers(0, 5))
    # Tiles from (1, 1) to larger than most outputs.
    tiles = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return TiledProblem("random", N=draw(st.integers(0, 2)), C=groups * draw(st.integers(1, 2)),
                        K=groups * draw(st.integers(1, 2)), H=H, W=W, kernel=kernel,
                        stride=stride, padding=padding, dilation=dilation, groups=groups,
                        bias=draw(st.booleans()), tiles=tiles)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pb=tiled_problems())
def test_property_matches_reference(pb, device):
    x, w, b = tiled_args(pb, F64, device, requires_grad=True)
    leaves = [t for t in (x, w, b) if t is not None]
    y = CF.tiled_conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    g = make_tensor(y.shape, F64, device)
    y_ref, grads_ref = _reference_grads(pb, leaves, g)
    assert_close(y, y_ref, F64)
    for got, want in zip(torch.autograd.grad(y, leaves, g), grads_ref):
        assert_close(got, want, F64)
