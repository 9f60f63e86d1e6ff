"""tiled_conv2d (SPEC 1.4) beyond what every convolution op shares
(tests/test_conv_families.py: forward against the float64 reference written
from the SPEC formula, gradient views tiled_conv2d_input_backward /
tiled_conv2d_weight_backward / tiled_conv2d_bias_backward, gradients,
gradcheck, opcheck, property test): the reference itself against the formula,
tiles no location uses, phase-major weights, the SPEC identities with conv2d
and local_conv2d, torch.compile, and argument errors (kernel and fake kernel
alike)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import cnnkit
import cnnkit.functional as CF
import reference as ref
from conftest import (BadCase, assert_close, bad_case_params, check_bad_case, exact_message,
                      make_tensor, with_layout)
from conv_family import (CONV2D, LOCAL, TILED, check_compiled_equals_eager, conv_op_geometry,
                         conv_out_shape, view_bad_cases)
from problems import pair

ops = torch.ops.cnnkit
F64 = torch.float64


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


@pytest.mark.parametrize("pb", TILED.by_id("same_dilated", "pad_gt_kernel_strided",
                                           "tiles_not_dividing", "depthwise_mult2_stride2",
                                           "pad4_asymmetric"), ids=str)
def test_reference_is_the_spec_formula(pb):
    # The unfold + gathered-weight reference against the formula evaluated
    # literally, so that the reference itself is tested.
    pb = dataclasses.replace(pb, N=1)
    x, w, b = TILED.args(pb, F64, "cpu")
    want = _direct_tiled(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    torch.testing.assert_close(TILED.reference_output(pb, x, w, b), want, rtol=1e-12, atol=1e-12)


def test_reference_bias_gradient_is_the_adjoint():
    # tiled_conv2d_bias_backward_ref (explicit sums over each tile's locations)
    # against autograd of the reference's bias term.
    pb = TILED.by_id("tiles_not_dividing")[0]
    x, w, b = TILED.args(pb, F64, "cpu", requires_grad=True)
    y = ref.tiled_conv2d(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    g = make_tensor(y.shape, F64)
    (gb,) = torch.autograd.grad(y, b, g)
    torch.testing.assert_close(ref.tiled_conv2d_bias_backward_ref(g, pb.tiles), gb)


# --------------------------------------------------------------------------- unused tiles


def test_unused_tiles_get_zero_gradient(device):
    # Tiles (5, 4) on a 3x3 output: kernel rows 3.. and columns 3.. serve no
    # output location, so their weight and bias gradients are exactly zero.
    pb = TILED.by_id("tiles_gt_output")[0]
    x, w, b = TILED.args(pb, F64, device, requires_grad=True)
    y = TILED.call(pb, x, w, b)
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


@pytest.mark.parametrize("pb", TILED.by_id("tiles_2x2", "groups2", "anisotropic",
                                           "tiles_not_dividing"), ids=str)
def test_phase_major_weight_gives_the_same_results(pb, device):
    x, w, b = TILED.args(pb, torch.float64, device)
    wp = phase_major(w)
    assert is_phase_major(wp) and not wp.is_contiguous()
    assert torch.equal(TILED.call(pb, x, wp, b), TILED.call(pb, x, w, b))
    g = make_tensor(TILED.out_shape(pb), torch.float64, device)
    assert torch.equal(TILED.view("input_backward", pb, g, wp),
                       TILED.view("input_backward", pb, g, w))


@pytest.mark.parametrize("pb", TILED.by_id("tiles_2x2", "groups2"), ids=str)
def test_weight_gradient_is_phase_major(pb, device):
    x, w, b = TILED.args(pb, torch.float64, device)
    g = make_tensor(TILED.out_shape(pb), torch.float64, device)
    assert is_phase_major(TILED.view("weight_backward", pb, g, x))


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


# --------------------------------------------------------------------------- SPEC 1.4 identities


def _grads(y, leaves, g):
    return torch.autograd.grad(y, [t for t in leaves if t is not None], g)


IDENTITY_PROBLEMS = TILED.by_id("tiles_2x2", "anisotropic", "depthwise_mult2_stride2",
                                "same_even", "full_dilated_strided", "pad_gt_kernel_strided",
                                "pad4_asymmetric", "no_bias")


@pytest.mark.parametrize("pb", IDENTITY_PROBLEMS, ids=str)
def test_tiles_1x1_equal_conv2d(pb, device):
    # Tiles (1, 1): every location uses K[..., 0, 0] and b[:, 0, 0]: conv2d,
    # forward and all three gradients.
    pb = dataclasses.replace(pb, tiles=1)
    x, w, b = TILED.args(pb, F64, device, requires_grad=True)
    y = TILED.call(pb, x, w, b)
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach()[..., 0, 0].clone().requires_grad_()
    b2 = None if b is None else b.detach()[:, 0, 0].clone().requires_grad_()
    y2 = CONV2D.call(pb, x2, w2, b2)
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
    x, w, b = TILED.args(pb, F64, device, requires_grad=True)
    y = TILED.call(pb, x, w, b)
    x2 = x.detach().clone().requires_grad_()
    w2 = w.detach().permute(0, 4, 5, 1, 2, 3).clone().requires_grad_()
    b2 = None if b is None else b.detach().clone().requires_grad_()
    y2 = LOCAL.call(pb, x2, w2, b2)
    assert_close(y, y2, F64)
    g = make_tensor(y.shape, F64, device)
    got, want = _grads(y, (x, w, b), g), _grads(y2, (x2, w2, b2), g)
    assert_close(got[0], want[0], F64)
    assert_close(got[1], want[1].permute(0, 3, 4, 5, 1, 2), F64)
    if b is not None:
        assert_close(got[2], want[2], F64)


@pytest.mark.parametrize("pb", TILED.by_id("tiles_2x3", "tiles_not_dividing", "tiles_gt_output",
                                           "groups2"), ids=str)
def test_equal_tiles_equal_conv2d(pb, device):
    # Whatever the tiling, one kernel repeated in every tile is conv2d; with the
    # tile axes an expand() of the dense kernel, autograd sums the tiled weight
    # gradient over tiles, which must be conv2d's weight gradient.
    x, _, _ = TILED.args(pb, F64, device, requires_grad=True)
    tH, tW = pair(pb.tiles)
    k = make_tensor((pb.K, pb.C // pb.groups, *pair(pb.kernel)), F64, device, requires_grad=True)
    b = make_tensor((pb.K,), F64, device, requires_grad=True)
    y = TILED.call(pb, x, k[..., None, None].expand(*k.shape, tH, tW),
                   b[:, None, None].expand(pb.K, tH, tW))
    x2 = x.detach().clone().requires_grad_()
    y2 = CONV2D.call(pb, x2, k, b)
    assert_close(y, y2, F64)
    g = make_tensor(y.shape, F64, device)
    for got, want in zip(_grads(y, (x, k, b), g), _grads(y2, (x2, k, b), g)):
        assert_close(got, want, F64)


# --------------------------------------------------------------------------- untied bias
# With a fixed input size the tiled convolution may learn one bias per output
# location: the op takes a bias (C_out, OH, OW) beside (C_out, tH, tW), and
# adds bias[k, p, q] to out[n, k, p, q]
# (forward only here; tests/test_conv_families.py has the shared ones). With tiles equal
# to the output size the two shapes are one, and mean the same.

@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("pb", TILED.by_id("tiles_2x3", "groups2"), ids=str)
def test_untied_bias_strided_bias_and_dtypes(pb, dtype, device):
    # A bias that is a non-contiguous view reads as its values; so does a
    # phase-major weight.
    x, w, _ = TILED.args(pb, dtype, device)
    for layout in ("sliced", "transposed"):
        b = with_layout(make_tensor(TILED.untied_bias_shape(pb), dtype, device), layout)
        want = TILED.untied_reference(pb, x, w, b)
        assert_close(ops.tiled_conv2d(x, w, b, *conv_op_geometry(pb)), want, dtype)
        assert_close(ops.tiled_conv2d(x, phase_major(w), b, *conv_op_geometry(pb)), want, dtype)


def test_untied_bias_is_the_tiled_bias_repeated(device):
    # A (C_out, tH, tW) bias repeated over the output is the same convolution.
    pb = TILED.by_id("tiles_not_dividing")[0]
    x, w, b = TILED.args(pb, F64, device)
    _, _, P, Q = conv_out_shape(pb)
    tH, tW = pair(pb.tiles)
    untied = b[:, torch.arange(P) % tH][:, :, torch.arange(Q) % tW]
    geometry = conv_op_geometry(pb)
    assert_close(ops.tiled_conv2d(x, w, untied, *geometry), ops.tiled_conv2d(x, w, b, *geometry),
                 F64)


# Bias shapes neither (C_out, tH, tW) nor (C_out, OH, OW), for input
# (2, 3, 7, 9) and weight (8, 3, 3, 3, 2, 2): output 5x7.
UNTIED_BAD_BIAS_SHAPES = [(3,), (8,), (8, 7, 5), (8, 2, 3), (8, 5), (1, 8, 5, 7), (8, 1, 1),
                          (9, 5, 7)]


@pytest.mark.parametrize("shape", UNTIED_BAD_BIAS_SHAPES, ids=str)
def test_wrong_bias_shape_names_both_shapes(shape, device):
    x = make_tensor((2, 3, 7, 9), torch.float32, device)
    w = make_tensor((8, 3, 3, 3, 2, 2), torch.float32, device)
    b = make_tensor(shape, torch.float32, device)
    message = (f"cnnkit.tiled_conv2d: expected bias of shape [8, 2, 2] or [8, 5, 7], but got "
               f"shape {list(shape)}")
    with pytest.raises(RuntimeError, match=exact_message(message)):
        ops.tiled_conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.parametrize("shape", [(3,), (8,), (8, 7, 5), (8, 2, 2)], ids=str)
def test_wrong_bias_shape_tiles_equal_to_output(shape, device):
    # Tiles (5, 7) on the 5x7 output: the two shapes are one, named once.
    x = make_tensor((2, 3, 7, 9), torch.float32, device)
    w = make_tensor((8, 3, 3, 3, 5, 7), torch.float32, device)
    b = make_tensor(shape, torch.float32, device)
    message = f"cnnkit.tiled_conv2d: expected bias of shape [8, 5, 7], but got shape {list(shape)}"
    with pytest.raises(RuntimeError, match=exact_message(message)):
        ops.tiled_conv2d(x, w, b, [1, 1], [0, 0], [1, 1], 1)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A tiled block traced without graph breaks (the fake kernels give the
    # shapes), forward and backward equal to eager.
    def block(x, w1, b1, w2):
        y = torch.relu(CF.tiled_conv2d(x, w1, b1, padding="same"))
        return CF.tiled_conv2d(y, w2, None, stride=2, padding=1, groups=2)

    check_compiled_equals_eager(block, [(2, 3, 9, 8), (4, 3, 2, 2, 2, 3), (4, 2, 3),
                                        (6, 2, 3, 3, 3, 2)], device)


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
            RuntimeError, f"{FN}: expected bias of shape [2, 2, 2] or [2, 3, 3], but got shape "
            "[2]"),
    BadCase("bias_per_location_transposed", lambda t: _tiled(t(1, 2, 5, 6), t(2, 2, 3, 3, 2, 2),
                                                             t(2, 4, 3)), RuntimeError,
            f"{FN}: expected bias of shape [2, 2, 2] or [2, 3, 4], but got shape [2, 4, 3]"),
    BadCase("bias_tiles_transposed", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 3),
                                                      t(2, 3, 2)), RuntimeError,
            f"{FN}: expected bias of shape [2, 2, 3] or [2, 3, 3], but got shape [2, 3, 2]"),
    BadCase("bias_tiles_equal_to_output", lambda t: _tiled(t(1, 2, 5, 5), t(2, 2, 3, 3, 3, 3),
                                                           t(2)), RuntimeError,
            f"{FN}: expected bias of shape [2, 3, 3], but got shape [2]"),
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


# The gradient views: errors of their own, then those the three convolutions
# share (tests/conv_family.py).
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
    BadCase("wb_zero_tiles", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [0, 1]),
            RuntimeError, f"{FN_WB}: expected tiles to be positive, but got tiles=[0, 1]"),
    BadCase("wb_tiles_3_entries", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [1, 2, 3]),
            RuntimeError, f"{FN_WB}: expected tiles of 2 entries, but got tiles=[1, 2, 3]"),
    BadCase("wb_stride_negative", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [2, 2],
                                                ([-1, 1], [0, 0], [1, 1], 1)), RuntimeError,
            f"{FN_WB}: expected stride to be positive, but got stride=[-1, 1]"),
    BadCase("bb_zero_tiles", lambda t: ops.tiled_conv2d_bias_backward(t(1, 2, 3, 3), [2, 0]),
            RuntimeError, f"{FN_BB}: expected tiles to be positive, but got tiles=[2, 0]"),
] + view_bad_cases(TILED)


@pytest.mark.parametrize("case,dev", bad_case_params(TILED_BAD_CASES + GRAD_VIEW_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)
