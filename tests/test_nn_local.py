"""cnnkit.nn.LocallyConnected2d and TiledConv2d (SPEC 1.3, 1.4): parameter
shapes and names, initialisation, repr, state_dict round trips, constructor and
input errors, unbatched inputs, and outputs and gradients against the float64
references and against torch.nn.Conv2d where the SPEC identities make them equal."""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cnnkit
import cnnkit.nn as cnn
import reference as ref
from conftest import assert_close, make_tensor

F64 = torch.float64


@dataclass
class LayerCase:
    """A layer configuration: class name in cnnkit.nn, constructor arguments,
    an input shape, and the expected output size (worked out by hand)."""
    id: str
    cls: str
    args: tuple
    kwargs: dict
    input_shape: tuple
    out_size: tuple
    extra: dict = field(default_factory=dict)

    def __str__(self):
        return self.id

    def make(self, seed=0, device="cpu", dtype=F64):
        torch.manual_seed(seed)
        return getattr(cnn, self.cls)(*self.args, **self.kwargs, device=device, dtype=dtype)

    def kw(self, name, default):
        return self.kwargs.get(name, default)


CASES = [
    # Defaults: stride 1, no padding, bias; 8x7 -> 6x5.
    LayerCase("local_default", "LocallyConnected2d", (3, 4, 3, (8, 7)), {}, (2, 3, 8, 7), (6, 5)),
    # Everything per axis, groups, no bias: H (9 + 2 - 3)//2 + 1 = 5, W (11 + 4 - 9)//1 + 1 = 7.
    LayerCase("local_anisotropic_groups", "LocallyConnected2d", (4, 6, (3, 5), (9, 11)),
              dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False),
              (2, 4, 9, 11), (5, 7)),
    # Depthwise with channel multiplier 2, in_size as an int.
    LayerCase("local_depthwise", "LocallyConnected2d", (3, 6, 3, 6), dict(padding=1, groups=3),
              (2, 3, 6, 6), (6, 6)),
    # 'same' with an even kernel: one more padding at the bottom/right, output = input size.
    LayerCase("local_same_even", "LocallyConnected2d", (2, 3, 4, (7, 6)), dict(padding="same"),
              (2, 2, 7, 6), (7, 6)),
    # 'same' with a dilated kernel of odd total in width only.
    LayerCase("local_same_dilated", "LocallyConnected2d", (2, 2, (3, 2), (5, 6)),
              dict(padding="same", dilation=(1, 3)), (1, 2, 5, 6), (5, 6)),
    # 'full': output H + d*(k-1) = 7, W + d*(k-1) = 6.
    LayerCase("local_full", "LocallyConnected2d", (2, 3, 3, (5, 4)), dict(padding="full"),
              (2, 2, 5, 4), (7, 6)),
    # 'valid' with stride.
    LayerCase("local_valid_strided", "LocallyConnected2d", (2, 2, 3, (9, 8)),
              dict(padding="valid", stride=2), (2, 2, 9, 8), (4, 3)),
    # Tiled: defaults, tiles (2, 2) on an 8x7 -> 6x5 output (not dividing 5).
    LayerCase("tiled_default", "TiledConv2d", (3, 4, 3, 2), {}, (2, 3, 8, 7), (6, 5)),
    # Tiled: everything per axis, groups, no bias, tiles (3, 2).
    LayerCase("tiled_anisotropic_groups", "TiledConv2d", (4, 6, (3, 5), (3, 2)),
              dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False),
              (2, 4, 9, 11), (5, 7)),
    # Tiled: 'same' with an even kernel, tiles larger than the 3x4 output.
    LayerCase("tiled_same_even_large_tiles", "TiledConv2d", (2, 3, 2, (4, 5)),
              dict(padding="same"), (2, 2, 3, 4), (3, 4)),
    # Tiled: 'full' with dilation, depthwise.
    LayerCase("tiled_full_depthwise", "TiledConv2d", (3, 3, 2, (2, 3)),
              dict(padding="full", dilation=2, groups=3), (2, 3, 5, 6), (7, 8)),
]

LOCAL_CASES = [c for c in CASES if c.cls == "LocallyConnected2d"]
TILED_CASES = [c for c in CASES if c.cls == "TiledConv2d"]


def expected_shapes(case):
    C_in, C_out, kernel = case.args[:3]
    g = case.kw("groups", 1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    if case.cls == "LocallyConnected2d":
        return (C_out, *case.out_size, C_in // g, kh, kw), (C_out, *case.out_size)
    tiles = case.args[3]
    th, tw = (tiles, tiles) if isinstance(tiles, int) else tiles
    return (C_out, C_in // g, kh, kw, th, tw), (C_out, th, tw)


def reference_forward(case, layer, x, weight, bias):
    fn = ref.local_conv2d if case.cls == "LocallyConnected2d" else ref.tiled_conv2d
    return fn(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("case", CASES, ids=str)
def test_parameter_shapes_and_names(case):
    layer = case.make()
    w_shape, b_shape = expected_shapes(case)
    assert tuple(layer.weight.shape) == w_shape
    has_bias = case.kw("bias", True)
    assert [n for n, _ in layer.named_parameters()] == (["weight", "bias"] if has_bias else
                                                        ["weight"])
    assert list(layer.state_dict()) == (["weight", "bias"] if has_bias else ["weight"])
    if has_bias:
        assert tuple(layer.bias.shape) == b_shape
    else:
        assert layer.bias is None
    if case.cls == "LocallyConnected2d":
        assert layer.out_size == case.out_size


@pytest.mark.parametrize("case", CASES, ids=str)
def test_output_shape(case):
    layer = case.make()
    y = layer(make_tensor(case.input_shape))
    assert tuple(y.shape) == (case.input_shape[0], case.args[1], *case.out_size)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_factory_kwargs(dtype, device):
    for layer in (cnn.LocallyConnected2d(2, 3, 2, 4, device=device, dtype=dtype),
                  cnn.TiledConv2d(2, 3, 2, 2, device=device, dtype=dtype)):
        for p in layer.parameters():
            assert p.dtype == dtype and p.device.type == device


def test_exported_from_cnnkit_nn():
    assert cnnkit.nn.LocallyConnected2d is cnn.LocallyConnected2d
    for name in ("LocallyConnected2d", "TiledConv2d", "UntiedBiasConv2d"):
        assert name in cnnkit.nn.__all__


REPRS = {
    "local_default": "LocallyConnected2d(3, 4, kernel_size=(3, 3), in_size=(8, 7), "
                     "stride=(1, 1))",
    "local_anisotropic_groups": "LocallyConnected2d(4, 6, kernel_size=(3, 5), in_size=(9, 11), "
                                "stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, "
                                "bias=False)",
    "local_depthwise": "LocallyConnected2d(3, 6, kernel_size=(3, 3), in_size=(6, 6), "
                       "stride=(1, 1), padding=(1, 1), groups=3)",
    "local_same_even": "LocallyConnected2d(2, 3, kernel_size=(4, 4), in_size=(7, 6), "
                       "stride=(1, 1), padding=same)",
    "local_full": "LocallyConnected2d(2, 3, kernel_size=(3, 3), in_size=(5, 4), stride=(1, 1), "
                  "padding=full)",
    "tiled_default": "TiledConv2d(3, 4, kernel_size=(3, 3), tiles=(2, 2), stride=(1, 1))",
    "tiled_anisotropic_groups": "TiledConv2d(4, 6, kernel_size=(3, 5), tiles=(3, 2), "
                                "stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, "
                                "bias=False)",
    "tiled_full_depthwise": "TiledConv2d(3, 3, kernel_size=(2, 2), tiles=(2, 3), stride=(1, 1), "
                            "padding=full, dilation=(2, 2), groups=3)",
}


@pytest.mark.parametrize("case_id", sorted(REPRS))
def test_repr(case_id):
    # torch.nn's style: channels positionally, then the geometry; defaults
    # (padding 0, dilation 1, groups 1, bias) left out.
    case = next(c for c in CASES if c.id == case_id)
    assert repr(case.make()) == REPRS[case_id]


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("cls,args,kwargs", [
    ("LocallyConnected2d", (6, 8, 3, (12, 12)), dict(padding=1)),
    ("LocallyConnected2d", (6, 9, (2, 3), (10, 9)), dict(groups=3)),
    ("TiledConv2d", (6, 16, 3, (4, 5)), {}),
    ("TiledConv2d", (8, 16, (3, 2), 3), dict(groups=4)),
], ids=["local", "local_groups", "tiled", "tiled_groups"])
def test_init_bounds(cls, args, kwargs, dtype):
    # nn.Conv2d's initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
    # and bias, fan_in = C_in/groups * kH * kW (neither locations nor tiles).
    torch.manual_seed(0)
    layer = getattr(cnn, cls)(*args, **kwargs, dtype=dtype)
    C_in, groups = args[0], kwargs.get("groups", 1)
    kh, kw = (args[2], args[2]) if isinstance(args[2], int) else args[2]
    bound = 1 / math.sqrt(C_in // groups * kh * kw)
    for name, p in layer.named_parameters():
        p = p.detach().double()
        assert p.abs().max() <= bound, name
        # Uniform over the whole interval: the extremes are reached, the mean
        # is ~0, the standard deviation is bound / sqrt(3) (thousands of draws).
        n = p.numel()
        assert p.max() > bound * (1 - 20 / n) and p.min() < -bound * (1 - 20 / n), name
        assert abs(p.mean().item()) < 5 * bound / math.sqrt(3 * n), name
        assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
    # reset_parameters draws again from the same distribution.
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight) and layer.weight.abs().max() <= bound


def test_init_matches_conv2d_bound():
    # The bound is torch.nn.Conv2d's for the same geometry: the largest of
    # n uniform draws in [-bound, bound] lies within ~2 * bound / n of it, and
    # none passes it, for nn.Conv2d's parameters and ours alike.
    torch.manual_seed(0)
    bound = 1 / math.sqrt(2 * 9)  # fan_in = C_in / groups * kH * kW
    layers = (torch.nn.Conv2d(4, 64, 3, groups=2), cnn.LocallyConnected2d(4, 64, 3, 5, groups=2),
              cnn.TiledConv2d(4, 64, 3, 2, groups=2))
    for layer in layers:
        for name, p in layer.named_parameters():
            largest, n = p.abs().max().item(), p.numel()
            assert bound * (1 - 20 / n) < largest <= bound, (type(layer).__name__, name)


# --------------------------------------------------------------------------- numerics


class _OpLog(TorchDispatchMode):
    """Records the name of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(f"{func.namespace}.{func._opname}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case, device):
    layer = case.make(device=device)
    x = make_tensor(case.input_shape, F64, device, requires_grad=True)
    with _OpLog() as log:
        y = layer(x)
    op = "cnnkit.local_conv2d" if case.cls == "LocallyConnected2d" else "cnnkit.tiled_conv2d"
    assert op in log.names, log.names
    leaves = [x] + list(layer.parameters())
    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    bias_ref = leaves_ref[2] if layer.bias is not None else None
    y_ref = reference_forward(case, layer, leaves_ref[0], leaves_ref[1], bias_ref)
    assert_close(y, y_ref, F64)
    g = make_tensor(y.shape, F64, device)
    for got, want in zip(torch.autograd.grad(y, leaves, g),
                         torch.autograd.grad(y_ref, leaves_ref, g)):
        assert_close(got, want, F64)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_unbatched_input(case, device):
    # A 3-D (C, H, W) input is one sample: the same as a batch of one, squeezed.
    layer = case.make(device=device)
    x = make_tensor(case.input_shape[1:], F64, device, requires_grad=True)
    y = layer(x)
    assert tuple(y.shape) == (case.args[1], *case.out_size)
    assert_close(y, layer(x.detach()[None])[0], F64)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.shape == x.shape


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_round_trip(case, device):
    # Saved and loaded into a layer of other initial weights: the same
    # parameters, bit for bit, and the same outputs.
    a, b = case.make(seed=1, device=device), case.make(seed=2, device=device)
    assert not torch.equal(a.weight, b.weight)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = make_tensor(case.input_shape, F64, device)
    assert torch.equal(a(x), b(x))


def test_state_dict_of_other_size_rejected():
    # A LocallyConnected2d built for another input size has another weight shape.
    a = cnn.LocallyConnected2d(2, 3, 3, (8, 8))
    b = cnn.LocallyConnected2d(2, 3, 3, (9, 8))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs", [
    dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
    dict(padding="full", groups=2), dict(stride=(1, 2), dilation=(2, 1), bias=False)],
    ids=["default", "strided", "same_dilated", "full_groups", "anisotropic_no_bias"])
def test_shared_weights_equal_nn_conv2d(kwargs, device):
    # SPEC 1.4: a LocallyConnected2d whose weights and biases are the same at
    # every location is nn.Conv2d; its weight gradient summed over locations is
    # nn.Conv2d's. Likewise TiledConv2d with the kernel repeated in every tile.
    torch.manual_seed(0)
    # torch.nn.Conv2d spells 'full' as d*(k-1) on every side (k = 3).
    padding = kwargs.get("padding", 0)
    torch_padding = 2 * kwargs.get("dilation", 1) if padding == "full" else padding
    conv = torch.nn.Conv2d(4, 6, 3, **{**kwargs, "padding": torch_padding}, device=device,
                           dtype=F64)
    local = cnn.LocallyConnected2d(4, 6, 3, (9, 8), **kwargs, device=device, dtype=F64)
    tiled = cnn.TiledConv2d(4, 6, 3, (2, 3), **kwargs, device=device, dtype=F64)
    P, Q = local.out_size
    with torch.no_grad():
        local.weight.copy_(conv.weight[:, None, None].expand_as(local.weight))
        tiled.weight.copy_(conv.weight[..., None, None].expand_as(tiled.weight))
        if conv.bias is not None:
            local.bias.copy_(conv.bias[:, None, None].expand_as(local.bias))
            tiled.bias.copy_(conv.bias[:, None, None].expand_as(tiled.bias))
    x = make_tensor((2, 4, 9, 8), F64, device)
    y_conv = conv(x)
    g = make_tensor(y_conv.shape, F64, device)
    y_conv.backward(g)
    for layer, sum_dims in ((local, (1, 2)), (tiled, (4, 5))):
        y = layer(x)
        assert_close(y, y_conv, F64)
        y.backward(g)
        assert_close(layer.weight.grad.sum(dim=sum_dims), conv.weight.grad, F64)
        if conv.bias is not None:
            assert_close(layer.bias.grad.sum(dim=(1, 2)), conv.bias.grad, F64)


def test_tiles_of_output_size_equal_locally_connected(device):
    # SPEC 1.4: TiledConv2d with tiles = output size is LocallyConnected2d with
    # the weight permuted from (C_out, C_in/g, kH, kW, OH, OW) to
    # (C_out, OH, OW, C_in/g, kH, kW).
    local = cnn.LocallyConnected2d(4, 6, (3, 2), (7, 6), padding="same", groups=2, device=device,
                                   dtype=F64)
    tiled = cnn.TiledConv2d(4, 6, (3, 2), local.out_size, padding="same", groups=2,
                            device=device, dtype=F64)
    with torch.no_grad():
        local.weight.copy_(tiled.weight.permute(0, 4, 5, 1, 2, 3))
        local.bias.copy_(tiled.bias)
    x = make_tensor((2, 4, 7, 6), F64, device)
    assert_close(tiled(x), local(x), F64)


# --------------------------------------------------------------------------- errors


def test_wrong_input_size():
    layer = cnn.LocallyConnected2d(3, 8, 3, (32, 32))
    message = ("cnnkit.nn.LocallyConnected2d: expected input of spatial size (H, W) = (32, 32), "
               "the in_size it was built for, but got (28, 28)")
    with pytest.raises(RuntimeError, match="^" + re.escape(message) + "$"):
        layer(torch.randn(2, 3, 28, 28))
    with pytest.raises(RuntimeError, match="^" + re.escape(message) + "$"):
        layer(torch.randn(3, 28, 28))
    message = message.replace("(28, 28)", "(32, 31)")
    with pytest.raises(RuntimeError, match="^" + re.escape(message) + "$"):
        layer(torch.randn(1, 3, 32, 31))


@pytest.mark.parametrize("cls,args", [("LocallyConnected2d", (3, 4, 3, 6)),
                                      ("TiledConv2d", (3, 4, 3, 2))])
def test_wrong_input_dims_and_channels(cls, args):
    layer = getattr(cnn, cls)(*args)
    fn = f"cnnkit.nn.{cls}"
    with pytest.raises(RuntimeError, match=re.escape(
            f"{fn}: expected 3D (C_in, H, W) or 4D (N, C_in, H, W) input, but got shape [3, 6]")):
        layer(torch.randn(3, 6))
    with pytest.raises(RuntimeError, match=re.escape(
            f"{fn}: expected 3D (C_in, H, W) or 4D (N, C_in, H, W) input, but got shape "
            "[1, 1, 3, 6, 6]")):
        layer(torch.randn(1, 1, 3, 6, 6))
    with pytest.raises(RuntimeError, match=re.escape(
            f"{fn}: expected input with in_channels = 3 channels, but got shape [2, 4, 6, 6]")):
        layer(torch.randn(2, 4, 6, 6))
    with pytest.raises(TypeError, match=re.escape(
            f"{fn}: expected input to be a torch.Tensor, but got list")):
        layer([[1.0]])


def test_tiled_kernel_larger_than_input_is_the_op_error():
    # TiledConv2d takes any input size; one too small for the kernel is the
    # functional op's error.
    layer = cnn.TiledConv2d(2, 3, 5, 2)
    with pytest.raises(RuntimeError, match=re.escape(
            "cnnkit.tiled_conv2d: expected the kernel (5x5 after dilation) to fit in the padded "
            "input (4x6), but it is larger")):
        layer(torch.randn(1, 2, 4, 6))


LOCAL_FN = "cnnkit.nn.LocallyConnected2d"
TILED_FN = "cnnkit.nn.TiledConv2d"

CONSTRUCTOR_ERRORS = [
    ("in_channels_not_divisible", "LocallyConnected2d", (5, 4, 3, 8), dict(groups=2), ValueError,
     f"{LOCAL_FN}: expected in_channels (5) to be divisible by groups (2)"),
    ("out_channels_not_divisible", "TiledConv2d", (4, 3, 3, 2), dict(groups=2), ValueError,
     f"{TILED_FN}: expected out_channels (3) to be divisible by groups (2)"),
    ("groups_0", "TiledConv2d", (4, 4, 3, 2), dict(groups=0), ValueError,
     f"{TILED_FN}: expected groups to be positive, but got groups=0"),
    ("in_channels_0", "LocallyConnected2d", (0, 4, 3, 8), {}, ValueError,
     f"{LOCAL_FN}: expected in_channels to be positive, but got in_channels=0"),
    ("out_channels_float", "TiledConv2d", (4, 2.0, 3, 2), {}, TypeError,
     f"{TILED_FN}: expected out_channels to be an int, but got out_channels=2.0"),
    ("kernel_0", "LocallyConnected2d", (2, 2, (3, 0), 8), {}, ValueError,
     f"{LOCAL_FN}: expected kernel_size to be positive, but got kernel_size=(3, 0)"),
    ("stride_negative", "TiledConv2d", (2, 2, 3, 2), dict(stride=-1), ValueError,
     f"{TILED_FN}: expected stride to be positive, but got stride=-1"),
    ("dilation_0", "LocallyConnected2d", (2, 2, 3, 8), dict(dilation=(1, 0)), ValueError,
     f"{LOCAL_FN}: expected dilation to be positive, but got dilation=(1, 0)"),
    ("padding_negative", "LocallyConnected2d", (2, 2, 3, 8), dict(padding=(0, -1)), ValueError,
     f"{LOCAL_FN}: expected padding to be non-negative, but got padding=(0, -1)"),
    ("padding_negative_tiled", "TiledConv2d", (2, 2, 3, 2), dict(padding=-2), ValueError,
     f"{TILED_FN}: expected padding to be non-negative, but got padding=-2"),
    ("padding_bad_string", "TiledConv2d", (2, 2, 3, 2), dict(padding="reflect"), ValueError,
     f"{TILED_FN}: expected padding to be an int, a pair of ints, 'valid', 'same' or 'full', "
     "but got padding='reflect'"),
    ("padding_same_strided", "LocallyConnected2d", (2, 2, 3, 8), dict(padding="same", stride=2),
     ValueError, f"{LOCAL_FN}: padding='same' is not supported for strided convolutions, but "
     "got stride=[2, 2]"),
    ("padding_3_entries", "LocallyConnected2d", (2, 2, 3, 8), dict(padding=(1, 1, 1)), TypeError,
     f"{LOCAL_FN}: expected padding to be an int or a pair of ints, but got padding=(1, 1, 1)"),
    ("in_size_0", "LocallyConnected2d", (2, 2, 3, (0, 5)), {}, ValueError,
     f"{LOCAL_FN}: expected in_size to be positive, but got in_size=(0, 5)"),
    ("in_size_3_entries", "LocallyConnected2d", (2, 2, 3, (4, 5, 6)), {}, TypeError,
     f"{LOCAL_FN}: expected in_size to be an int or a pair of ints, but got in_size=(4, 5, 6)"),
    ("tiles_0", "TiledConv2d", (2, 2, 3, (2, 0)), {}, ValueError,
     f"{TILED_FN}: expected tiles to be positive, but got tiles=(2, 0)"),
    ("tiles_float", "TiledConv2d", (2, 2, 3, 1.5), {}, TypeError,
     f"{TILED_FN}: expected tiles to be an int or a pair of ints, but got tiles=1.5"),
    ("kernel_larger_than_input", "LocallyConnected2d", (2, 2, (5, 3), (4, 4)), {}, ValueError,
     f"{LOCAL_FN}: expected the kernel (5x3 after dilation) to fit in the padded input (4x4) of "
     "in_size=(4, 4) and padding=(0, 0), but it is larger"),
    ("kernel_larger_after_dilation", "LocallyConnected2d", (2, 2, 3, (4, 4)),
     dict(dilation=2, padding=(0, 1)), ValueError,
     f"{LOCAL_FN}: expected the kernel (5x5 after dilation) to fit in the padded input (4x6) of "
     "in_size=(4, 4) and padding=(0, 1), but it is larger"),
]


@pytest.mark.parametrize("cls,args,kwargs,error,message",
                         [pytest.param(*c[1:], id=c[0]) for c in CONSTRUCTOR_ERRORS])
def test_constructor_errors(cls, args, kwargs, error, message):
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        getattr(cnn, cls)(*args, **kwargs)


def test_kernel_equal_to_padded_input_is_accepted():
    # The limit case of the fit check: a single output location.
    layer = cnn.LocallyConnected2d(2, 3, (6, 5), (4, 3), padding=1)
    assert layer.out_size == (1, 1)
    assert tuple(layer(torch.randn(2, 2, 4, 3)).shape) == (2, 3, 1, 1)


# --------------------------------------------------------------------------- untied biases


@pytest.mark.parametrize("kwargs,in_size,out_size", [
    (dict(kernel_size=3), (7, 6), (5, 4)),
    (dict(kernel_size=(2, 3), stride=2, padding=1, dilation=(2, 1), groups=2), (9, 8), (5, 4)),
    (dict(kernel_size=2, padding="same"), (5, 4), (5, 4)),
])
def test_untied_bias_conv2d_matches_reference(kwargs, in_size, out_size, device):
    # Shared kernels, one bias per output unit: torch.nn.Conv2d without bias,
    # plus the bias; the bias gradient is grad_output summed over the samples.
    layer = cnn.UntiedBiasConv2d(4, 6, in_size=in_size, device=device, dtype=F64, **kwargs)
    assert layer.out_size == out_size
    assert layer.weight.shape == (6, 4 // layer.groups, *layer.kernel_size)
    assert layer.bias.shape == (6, *out_size)
    x = make_tensor((3, 4, *in_size), F64, device, requires_grad=True)
    y = layer(x)
    torch_layer = torch.nn.Conv2d(4, 6, bias=False, dtype=F64, device=device, **kwargs)
    torch_layer.weight.data.copy_(layer.weight)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = torch_layer(x_ref) + layer.bias.detach()
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x_ref.grad)
    assert_close(layer.weight.grad, torch_layer.weight.grad)
    assert_close(layer.bias.grad, g.sum(0))
    # Unbatched input, and one input size only.
    assert_close(layer(x[0].detach()), y[0])
    with pytest.raises(RuntimeError, match=re.escape(
            f"cnnkit.nn.UntiedBiasConv2d: expected input of spatial size (H, W) = {in_size}, "
            f"the in_size it was built for, but got (11, 11)")):
        layer(torch.randn(1, 4, 11, 11, dtype=F64, device=device))


def test_untied_bias_conv2d_init_and_repr():
    layer = cnn.UntiedBiasConv2d(3, 8, 3, in_size=(10, 12), padding=1)
    bound = 1 / math.sqrt(3 * 9)
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound
    assert repr(layer) == ("UntiedBiasConv2d(3, 8, kernel_size=(3, 3), in_size=(10, 12), "
                           "stride=(1, 1), padding=(1, 1))")
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    with pytest.raises(ValueError, match="cnnkit.nn.UntiedBiasConv2d: expected the kernel"):
        cnn.UntiedBiasConv2d(3, 8, 5, in_size=3)
