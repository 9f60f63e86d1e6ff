"""Layers without full weight sharing, which torch.nn lacks: the locally
connected (unshared) convolution, the tiled convolution, and the convolution
with untied biases (shared kernels, one bias per output location), computed
by cnnkit's kernels.

They keep nn.Conv2d's conventions where they carry over: constructor
arguments, parameter names ``weight`` and ``bias``, initialisation from the
fan-in of one output unit, and a repr in the style of torch.nn.
"""
from __future__ import annotations

import math

import torch
from torch.nn import init

from .. import functional as CF
from .._kinds import DENSE, LOCAL, TILED, output_size
from .._utils import _pair, conv_padding

__all__ = ["LocallyConnected2d", "TiledConv2d", "UntiedBiasConv2d"]


def _positive_int(fn, name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{fn}: expected {name} to be an int, but got {name}={value!r}")
    if value <= 0:
        raise ValueError(f"{fn}: expected {name} to be positive, but got {name}={value}")
    return value


def _positive_pair(fn, name, value):
    pair = _pair(fn, name, value)
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{fn}: expected {name} to be positive, but got {name}={value!r}")
    return pair


class _UnsharedConvBase(torch.nn.Module):
    """Constructor checks, initialisation and repr shared by the two layers."""

    _fn: str

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups):
        fn = self._fn
        self.in_channels = _positive_int(fn, "in_channels", in_channels)
        self.out_channels = _positive_int(fn, "out_channels", out_channels)
        self.groups = _positive_int(fn, "groups", groups)
        if in_channels % groups != 0:
            raise ValueError(f"{fn}: expected in_channels ({in_channels}) to be divisible by "
                             f"groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"{fn}: expected out_channels ({out_channels}) to be divisible by "
                             f"groups ({groups})")
        self.kernel_size = _positive_pair(fn, "kernel_size", kernel_size)
        self.stride = _positive_pair(fn, "stride", stride)
        self.dilation = _positive_pair(fn, "dilation", dilation)
        # conv_padding rejects unknown strings and 'same' with a stride, and
        # gives 'same' its asymmetric split: [h, w] or [top, bottom, left, right].
        explicit = conv_padding(fn, padding, self.kernel_size, self.stride, self.dilation)
        if any(p < 0 for p in explicit):
            raise ValueError(f"{fn}: expected padding to be non-negative, but got "
                             f"padding={padding!r}")
        if len(explicit) == 2:
            explicit = [explicit[0], explicit[0], explicit[1], explicit[1]]
        self._explicit_padding = tuple(explicit)  # (top, bottom, left, right)
        self.padding = padding if isinstance(padding, str) else _pair(fn, "padding", padding)

    # The weight's memory order, as a permutation of its dimensions (outermost
    # first); None = row-major.
    _weight_storage_order = None

    def _make_parameters(self, weight_shape, bias_shape, bias, factory_kwargs):
        order = self._weight_storage_order or tuple(range(len(weight_shape)))
        stored = torch.empty([weight_shape[d] for d in order], **factory_kwargs)
        inverse = sorted(range(len(order)), key=order.__getitem__)
        self.weight = torch.nn.Parameter(stored.permute(inverse))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(bias_shape, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)) and
        # bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in), weight and bias alike.
        # fan_in is what one output unit sums over, (C_in / groups) * kH * kW;
        # torch.nn.init would read it off the weight's shape, which here also
        # holds output locations or tiles, so the bound is applied directly.
        fan_in = (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def _setup_in_size(self, in_size):
        """For layers built for one input size: checks it against the kernel and
        sets in_size and out_size."""
        fn = self._fn
        self.in_size = _positive_pair(fn, "in_size", in_size)
        top, bottom, left, right = self._explicit_padding
        padded = (self.in_size[0] + top + bottom, self.in_size[1] + left + right)
        reach = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
        if reach[0] > padded[0] or reach[1] > padded[1]:
            raise ValueError(f"{fn}: expected the kernel ({reach[0]}x{reach[1]} after dilation) "
                             f"to fit in the padded input ({padded[0]}x{padded[1]}) of "
                             f"in_size={self.in_size} and padding={self.padding}, but it is "
                             "larger")
        self.out_size = tuple(
            output_size(n, k, s, before, after, d) for n, k, s, (before, after), d in
            zip(self.in_size, self.kernel_size, self.stride, ((top, bottom), (left, right)),
                self.dilation))

    def _check_in_size(self, input):
        got = tuple(input.shape[-2:])
        if got != self.in_size:
            raise RuntimeError(f"{self._fn}: expected input of spatial size (H, W) = "
                               f"{self.in_size}, the in_size it was built for, but got {got}")

    def _check_input(self, input):
        fn = self._fn
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{fn}: expected input to be a torch.Tensor, but got "
                            f"{type(input).__name__}")
        if input.dim() not in (3, 4):
            raise RuntimeError(f"{fn}: expected 3D (C_in, H, W) or 4D (N, C_in, H, W) input, but "
                               f"got shape {list(input.shape)}")
        if input.shape[-3] != self.in_channels:
            raise RuntimeError(f"{fn}: expected input with in_channels = {self.in_channels} "
                               f"channels, but got shape {list(input.shape)}")

    def _repr_geometry(self, extra) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {extra}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LocallyConnected2d(_UnsharedConvBase):
    r"""Locally connected (unshared) 2-D convolution, SPEC 1.3: the connectivity of
    :class:`torch.nn.Conv2d`, but every output location has its own kernel and bias.

        LocallyConnected2d(in_channels, out_channels, kernel_size, in_size, stride=1,
                           padding=0, dilation=1, groups=1, bias=True, device=None,
                           dtype=None)

    ``Z[n,i,y,x] = b[i,y,x] + sum_{l,m,q} V[n, g(i)*C_in/g + l, y*s - p + m*d, x*s - p + q*d] * W[i,y,x,l,m,q]``

    The weight's shape depends on the output size, so the layer is built for one
    input size ``in_size = (H, W)`` and rejects inputs of any other size.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size, stride, dilation: int or pair, positive.
        in_size: ``(H, W)`` of the inputs the layer will see (int or pair).
        padding: int or pair (non-negative), ``'valid'``, ``'same'`` (stride 1 only;
            an odd total pads one more at the bottom/right) or ``'full'``
            (``dilation * (kernel_size - 1)`` on every side).
        groups: input and output channels split into this many independent groups.
        bias: whether to learn one bias per output unit.

    Attributes:
        out_size: ``(OH, OW)``, with
            ``OH = floor((H + pad_top + pad_bottom - dilation[0]*(kH-1) - 1) / stride[0]) + 1``
            (likewise for ``OW``).
        weight: ``(out_channels, OH, OW, in_channels / groups, kH, kW)``, drawn from
            ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_channels / groups * kH * kW``
            (the distribution :class:`torch.nn.Conv2d` uses).
        bias: ``(out_channels, OH, OW)``, from the same distribution, or None.

    Shapes:
        - input: ``(N, in_channels, H, W)`` or ``(in_channels, H, W)``, with ``(H, W) = in_size``
        - output: ``(N, out_channels, OH, OW)`` or ``(out_channels, OH, OW)``
    """

    _fn = "cnnkit.nn.LocallyConnected2d"

    def __init__(self, in_channels, out_channels, kernel_size, in_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._setup_in_size(in_size)
        self._make_parameters(
            LOCAL.weight_shape(out_channels, in_channels // groups, self.kernel_size,
                               out_size=self.out_size),
            (out_channels, *self.out_size), bias, {"device": device, "dtype": dtype})

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        self._check_in_size(input)
        return CF.local_conv2d(input, self.weight, self.bias, self.stride, self.padding,
                               self.dilation, self.groups)

    def extra_repr(self) -> str:
        return self._repr_geometry(f"in_size={self.in_size}")


class TiledConv2d(_UnsharedConvBase):
    r"""Tiled 2-D convolution, SPEC 1.4: ``tH x tW`` kernels (and biases) that the
    output locations cycle through; location ``(y, x)`` uses tile ``(y % tH, x % tW)``.

        TiledConv2d(in_channels, out_channels, kernel_size, tiles, stride=1,
                    padding=0, dilation=1, groups=1, bias=True, device=None,
                    dtype=None)

    ``Z[n,i,y,x] = b[i, y%tH, x%tW] + sum_{l,m,q} V[n, ., y*s - p + m*d, x*s - p + q*d] * K[i,l,m,q, y%tH, x%tW]``

    Tiles ``(1, 1)`` are :class:`torch.nn.Conv2d`; tiles equal to the output size
    are :class:`LocallyConnected2d`. Unlike the latter, any input size is accepted.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size, stride, dilation: int or pair, positive.
        tiles: ``(tH, tW)``, int or pair, positive.
        padding: int or pair (non-negative), ``'valid'``, ``'same'`` (stride 1 only;
            an odd total pads one more at the bottom/right) or ``'full'``
            (``dilation * (kernel_size - 1)`` on every side).
        groups: input and output channels split into this many independent groups.
        bias: whether to learn one bias per output channel and tile.

    Attributes:
        weight: ``(out_channels, in_channels / groups, kH, kW, tH, tW)``, drawn from
            ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_channels / groups * kH * kW``
            (the distribution :class:`torch.nn.Conv2d` uses).
        bias: ``(out_channels, tH, tW)``, from the same distribution, or None.

    Shapes:
        - input: ``(N, in_channels, H, W)`` or ``(in_channels, H, W)``
        - output: ``(N, out_channels, OH, OW)`` or ``(out_channels, OH, OW)`` with
          ``OH = floor((H + pad_top + pad_bottom - dilation[0]*(kH-1) - 1) / stride[0]) + 1``
          (likewise for ``OW``).
    """

    _fn = "cnnkit.nn.TiledConv2d"
    # Phase-major: (tH, tW, out, in/groups, kH, kW) in memory, so that each
    # tile's kernel set is one contiguous matrix, which the kernels read in
    # place, and the weight gradient comes out in the same layout (no
    # transposing copy of the weight in any pass).
    _weight_storage_order = (4, 5, 0, 1, 2, 3)

    def __init__(self, in_channels, out_channels, kernel_size, tiles, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.tiles = _positive_pair(self._fn, "tiles", tiles)
        self._make_parameters(
            TILED.weight_shape(out_channels, in_channels // groups, self.kernel_size,
                               tiles=self.tiles),
            (out_channels, *self.tiles), bias, {"device": device, "dtype": dtype})

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        return CF.tiled_conv2d(input, self.weight, self.bias, self.stride, self.padding,
                               self.dilation, self.groups)

    def extra_repr(self) -> str:
        return self._repr_geometry(f"tiles={self.tiles}")


class UntiedBiasConv2d(_UnsharedConvBase):
    r"""2-D convolution with untied biases: the kernels of :class:`torch.nn.Conv2d`,
    shared by all output locations, but a bias of its own at every output unit.

        UntiedBiasConv2d(in_channels, out_channels, kernel_size, in_size, stride=1,
                         padding=0, dilation=1, groups=1, device=None, dtype=None)

    ``Z[n,i,y,x] = b[i,y,x] + sum_{l,m,q} V[n, g(i)*C_in/g + l, y*s - p + m*d, x*s - p + q*d] * K[i,l,m,q]``

    With a fixed input size, a location-dependent bias lets the layer learn
    what differs between locations (image borders, a centred object) at the
    cost of ``out_channels * OH * OW`` parameters instead of ``out_channels``.
    The bias is added in the convolution kernels' epilogue. The layer is built
    for one input size ``in_size = (H, W)`` and rejects inputs of any other size.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size, stride, dilation: int or pair, positive.
        in_size: ``(H, W)`` of the inputs the layer will see (int or pair).
        padding: int or pair (non-negative), ``'valid'``, ``'same'`` (stride 1 only)
            or ``'full'``.
        groups: input and output channels split into this many independent groups.

    Attributes:
        out_size: ``(OH, OW)``, as for :class:`LocallyConnected2d`.
        weight: ``(out_channels, in_channels / groups, kH, kW)``, initialised as
            :class:`torch.nn.Conv2d`'s.
        bias: ``(out_channels, OH, OW)``, from the same distribution.

    Shapes:
        - input: ``(N, in_channels, H, W)`` or ``(in_channels, H, W)``, with ``(H, W) = in_size``
        - output: ``(N, out_channels, OH, OW)`` or ``(out_channels, OH, OW)``
    """

    _fn = "cnnkit.nn.UntiedBiasConv2d"

    def __init__(self, in_channels, out_channels, kernel_size, in_size, stride=1, padding=0,
                 dilation=1, groups=1, device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._setup_in_size(in_size)
        self._make_parameters(
            DENSE.weight_shape(out_channels, in_channels // groups, self.kernel_size),
            (out_channels, *self.out_size), True, {"device": device, "dtype": dtype})

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        self._check_in_size(input)
        return CF.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups)

    def extra_repr(self) -> str:
        return self._repr_geometry(f"in_size={self.in_size}")
