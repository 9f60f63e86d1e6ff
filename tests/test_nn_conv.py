"""cnnkit.nn.Conv2d, ConvTranspose2d and Conv1d against their torch.nn
namesakes: same repr, state_dict keys and initialisation, state_dicts that
move either way, and then the same outputs and parameter gradients."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cnnkit
import cnnkit.nn as cnn
from conftest import assert_close, make_tensor

F64 = torch.float64


@dataclass
class LayerCase:
    """A layer configuration: class name in both torch.nn and cnnkit.nn,
    constructor arguments, an input shape and forward keyword arguments."""
    id: str
    cls: str
    args: tuple
    kwargs: dict
    input_shape: tuple
    forward_kwargs: dict = field(default_factory=dict)

    def __str__(self):
        return self.id

    def make(self, module, seed, device, dtype=F64):
        torch.manual_seed(seed)
        return getattr(module, self.cls)(*self.args, **self.kwargs, device=device, dtype=dtype)


CASES = [
    # Defaults: stride 1, no padding, bias.
    LayerCase("conv2d_default", "Conv2d", (3, 8, 3), {}, (2, 3, 7, 6)),
    # Everything per axis, groups, no bias.
    LayerCase("conv2d_anisotropic_groups", "Conv2d", (4, 6, (3, 5)),
              dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False),
              (2, 4, 9, 11)),
    # Depthwise with channel multiplier 2.
    LayerCase("conv2d_depthwise", "Conv2d", (3, 6, 3), dict(padding=1, groups=3), (2, 3, 6, 5)),
    # 'same' with an even kernel (one more padding at the bottom/right), 'valid'.
    LayerCase("conv2d_same_even", "Conv2d", (2, 3, 4), dict(padding="same"), (2, 2, 7, 6)),
    LayerCase("conv2d_valid", "Conv2d", (2, 3, (2, 3)), dict(padding="valid"), (1, 2, 5, 6)),
    # Every padding_mode: non-zero modes pad with F.pad, then convolve unpadded.
    *[LayerCase(f"conv2d_{mode}", "Conv2d", (3, 4, 3), dict(padding=(1, 2), padding_mode=mode),
                (2, 3, 6, 7)) for mode in ("zeros", "reflect", "replicate", "circular")],
    # A padding mode with 'same' and an even kernel: asymmetric F.pad.
    LayerCase("conv2d_same_reflect", "Conv2d", (2, 2, (2, 4)),
              dict(padding="same", padding_mode="reflect", dilation=(2, 1)), (2, 2, 6, 7)),
    # Strided, padding mode, groups.
    LayerCase("conv2d_circular_stride_groups", "Conv2d", (4, 2, 3),
              dict(stride=2, padding=1, padding_mode="circular", groups=2), (2, 4, 7, 8)),
    # Unbatched (C, H, W) input.
    LayerCase("conv2d_unbatched", "Conv2d", (3, 4, 3), dict(padding=1), (3, 5, 5)),
    # Conv1d: defaults, strided with padding, groups without bias.
    LayerCase("conv1d_default", "Conv1d", (3, 5, 3), {}, (2, 3, 10)),
    LayerCase("conv1d_stride_pad_dilation", "Conv1d", (3, 4, 3),
              dict(stride=2, padding=2, dilation=2), (2, 3, 13)),
    LayerCase("conv1d_groups_no_bias", "Conv1d", (6, 3, 2), dict(groups=3, bias=False), (2, 6, 9)),
    # Conv1d 'same' with an even dilated kernel, and 'valid'.
    LayerCase("conv1d_same_even", "Conv1d", (2, 3, 4), dict(padding="same", dilation=3),
              (2, 2, 12)),
    LayerCase("conv1d_valid", "Conv1d", (2, 3, 5), dict(padding="valid"), (2, 2, 8)),
    # Conv1d with every padding_mode.
    *[LayerCase(f"conv1d_{mode}", "Conv1d", (2, 3, 3), dict(padding=2, padding_mode=mode),
                (2, 2, 9)) for mode in ("zeros", "reflect", "replicate", "circular")],
    # Conv1d 'same' with a padding mode (asymmetric F.pad).
    LayerCase("conv1d_same_replicate", "Conv1d", (2, 2, 4),
              dict(padding="same", padding_mode="replicate"), (2, 2, 8)),
    # Conv1d on an unbatched (C, L) input.
    LayerCase("conv1d_unbatched", "Conv1d", (3, 2, 3), dict(padding=1), (3, 8)),
    # ConvTranspose2d: the 2x upsampling layer, with and without output_size.
    LayerCase("convT_stride2", "ConvTranspose2d", (4, 3, 3),
              dict(stride=2, padding=1, output_padding=1), (2, 4, 5, 4)),
    LayerCase("convT_groups_dilation_no_bias", "ConvTranspose2d", (4, 6, (2, 3)),
              dict(stride=(1, 2), padding=(1, 0), groups=2, dilation=(2, 1), bias=False),
              (2, 4, 4, 5)),
    # output_size picks the output_padding (stride 3: three sizes per axis).
    *[LayerCase(f"convT_output_size_{h}x{w}", "ConvTranspose2d", (2, 3, 3),
                dict(stride=3, padding=1), (2, 2, 4, 3), dict(output_size=size))
      for (h, w), size in [((10, 7), [10, 7]), ((11, 8), [11, 8]), ((12, 9), [2, 3, 12, 9])]],
    # Unbatched input with output_size.
    LayerCase("convT_unbatched_output_size", "ConvTranspose2d", (2, 3, 3), dict(stride=2),
              (2, 4, 4), dict(output_size=[10, 9])),
]


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("case", CASES, ids=str)
def test_is_a_torch_layer_with_torchs_repr(case):
    ours, theirs = case.make(cnn, 0, "cpu"), case.make(torch.nn, 0, "cpu")
    assert isinstance(ours, getattr(torch.nn, case.cls))
    assert repr(ours) == repr(theirs)
    assert [(k, v.shape, v.dtype) for k, v in ours.state_dict().items()] == \
        [(k, v.shape, v.dtype) for k, v in theirs.state_dict().items()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_initialisation_under_same_seed(case):
    for dtype in (torch.float32, F64):
        ours, theirs = case.make(cnn, 7, "cpu", dtype), case.make(torch.nn, 7, "cpu", dtype)
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert a.dtype == dtype, name
            assert torch.equal(a, b), name


# --------------------------------------------------------------------------- numerics


class _OpLog(TorchDispatchMode):
    """Records the name of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(f"{func.namespace}.{func._opname}")
        return func(*args, **(kwargs or {}))


def _compare(ours, theirs, case, device):
    x = make_tensor(case.input_shape, F64, device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    with _OpLog() as log:
        y = ours(x, **case.forward_kwargs)
    # The layer computes with cnnkit's kernels, never ATen's convolutions.
    assert any(n.startswith("cnnkit.conv") for n in log.names), log.names
    assert not any(re.match(r"aten\.(_?convolution|conv|cudnn|mkldnn)", n) for n in log.names), \
        log.names
    y_ref = theirs(x_ref, **case.forward_kwargs)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, F64)
    g = make_tensor(y.shape, F64, device)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x_ref.grad, F64)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, q.grad, F64)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_state_dict_into_cnnkit(case, device):
    theirs = case.make(torch.nn, 1, device)
    ours = case.make(cnn, 2, device)  # different weights until loaded
    ours.load_state_dict(theirs.state_dict())
    _compare(ours, theirs, case, device)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cnnkit_state_dict_into_torch(case, device):
    ours = case.make(cnn, 3, device)
    theirs = case.make(torch.nn, 4, device)
    theirs.load_state_dict(ours.state_dict())
    _compare(ours, theirs, case, device)


@pytest.mark.parametrize("cls,shape", [("Conv2d", (2, 3, 6, 7)), ("Conv1d", (2, 3, 9))])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_full_padding(cls, shape, mode, device):
    # padding='full' (an extension over torch.nn) equals torch's layer with the
    # symmetric padding dilation*(kernel-1) on every side, in any padding mode.
    kernel, dilation = (3, 2) if cls == "Conv2d" else (3,), (1, 2) if cls == "Conv2d" else (2,)
    torch.manual_seed(0)
    ours = getattr(cnn, cls)(3, 4, kernel, padding="full", dilation=dilation, padding_mode=mode,
                             device=device, dtype=F64)
    full = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
    theirs = getattr(torch.nn, cls)(3, 4, kernel, padding=full, dilation=dilation,
                                    padding_mode=mode, device=device, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    assert "padding=full" in repr(ours)
    case = LayerCase("full", cls, (), {}, shape)
    _compare(ours, theirs, case, device)


# --------------------------------------------------------------------------- errors


def test_conv_transpose_bad_output_size_as_torch():
    ours = cnn.ConvTranspose2d(2, 3, 3, stride=3, padding=1)
    theirs = torch.nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1)
    x = torch.randn(1, 2, 4, 3)
    for size in ([9, 7], [13, 7], [10]):
        with pytest.raises(ValueError) as want:
            theirs(x, output_size=size)
        with pytest.raises(ValueError, match=re.escape(str(want.value))):
            ours(x, output_size=size)


def test_conv_transpose_padding_mode_rejected_as_torch():
    with pytest.raises(ValueError) as want:
        torch.nn.ConvTranspose2d(2, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        cnn.ConvTranspose2d(2, 3, 3, padding_mode="reflect")


@pytest.mark.parametrize("kwargs", [dict(padding="same", stride=2), dict(padding="sideways"),
                                    dict(groups=2), dict(padding_mode="mirror")],
                         ids=["same_strided", "bad_string", "groups", "bad_mode"])
@pytest.mark.parametrize("cls", ["Conv1d", "Conv2d"])
def test_constructor_errors_as_torch(cls, kwargs):
    with pytest.raises(ValueError) as want:
        getattr(torch.nn, cls)(3, 4, 3, **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        getattr(cnn, cls)(3, 4, 3, **kwargs)


def test_conv1d_wrong_input_dims():
    layer = cnn.Conv1d(3, 4, 3)
    with pytest.raises(RuntimeError, match=re.escape(
            "cnnkit.nn.Conv1d: expected 2D (C_in, L) or 3D (N, C_in, L) input, but got shape "
            "[1, 3, 5, 5]")):
        layer(torch.randn(1, 3, 5, 5))


def test_conv2d_wrong_input_dims():
    with pytest.raises(RuntimeError, match=re.escape(
            "cnnkit.conv2d: expected 4D input (N, C, H, W), but got shape [3, 5]")):
        cnn.Conv2d(3, 4, 3)(torch.randn(3, 5))


def test_exported_from_cnnkit_nn():
    assert cnnkit.nn.Conv2d is cnn.Conv2d
    for name in ("Conv1d", "Conv2d", "ConvTranspose2d"):
        assert name in cnnkit.nn.__all__
