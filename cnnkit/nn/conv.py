"""Convolution layers: drop-in twins of torch.nn.Conv2d, ConvTranspose2d and
Conv1d, computed by cnnkit's kernels.

Each subclasses its torch.nn namesake, so the constructor arguments, parameter
names, shapes, initialisation (the same random draws under the same seed),
state_dict keys and repr are PyTorch's own; only the computation is replaced.
A state_dict therefore moves either way, and `isinstance(layer, torch.nn.Conv2d)`
holds, so code that inspects models keeps working.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional as CF

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d"]


def _full_padding(kernel_size, dilation) -> list:
    """'full' padding d*(k-1) on both sides of every axis, in the order F.pad
    takes it (last axis first: left, right, top, bottom)."""
    pads = []
    for k, d in zip(reversed(kernel_size), reversed(dilation)):
        pads += [d * (k - 1), d * (k - 1)]
    return pads


class _FullPadding:
    """The constructor of torch.nn.Conv1d / Conv2d, which also takes
    padding='full': d*(k-1) on every side (torch.nn has no such string, so the
    base class is built unpadded and the padding set afterwards)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        full = isinstance(padding, str) and padding == "full"
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if full else padding,
                         dilation, groups, bias, padding_mode, device, dtype)
        if full:
            self.padding = "full"
            self._reversed_padding_repeated_twice = _full_padding(self.kernel_size, self.dilation)


class Conv2d(_FullPadding, torch.nn.Conv2d):
    r"""2-D convolution over an input of shape ``(N, C_in, H, W)`` or ``(C_in, H, W)``,
    with the constructor of :class:`torch.nn.Conv2d`:

        Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
               dilation=1, groups=1, bias=True, padding_mode='zeros',
               device=None, dtype=None)

    Besides ints, pairs, ``'valid'`` and ``'same'``, ``padding='full'`` pads
    ``dilation * (kernel_size - 1)`` on every side (output ``H + d*(kH-1)`` at
    stride 1). ``padding_mode`` other than ``'zeros'`` pads the input with
    :func:`torch.nn.functional.pad` in that mode, then convolves without padding.

    Shapes:
        - weight: ``(out_channels, in_channels / groups, kH, kW)``
        - bias: ``(out_channels,)``
        - input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``
        - output: ``(N, C_out, OH, OW)`` or ``(C_out, OH, OW)`` with
          ``OH = floor((H + pad_top + pad_bottom - dilation[0]*(kH-1) - 1) / stride[0]) + 1``
          (likewise for ``OW``).
    """

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return CF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return CF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation,
                         self.groups)


class Conv1d(_FullPadding, torch.nn.Conv1d):
    r"""1-D convolution over an input of shape ``(N, C_in, L)`` or ``(C_in, L)``,
    with the constructor of :class:`torch.nn.Conv1d`:

        Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0,
               dilation=1, groups=1, bias=True, padding_mode='zeros',
               device=None, dtype=None)

    It runs through the 2-D kernels as a convolution over inputs of height 1:
    input ``(N, C_in, 1, L)``, weight ``(C_out, C_in / groups, 1, k)``, stride
    ``(1, s)``, dilation ``(1, d)``, padding ``(0, p)``. ``padding`` also takes
    ``'valid'``, ``'same'`` and ``'full'`` (``d*(k-1)`` on both sides).

    Shapes:
        - weight: ``(out_channels, in_channels / groups, kernel_size)``
        - bias: ``(out_channels,)``
        - input: ``(N, C_in, L)`` or ``(C_in, L)``
        - output: ``(N, C_out, L_out)`` or ``(C_out, L_out)`` with
          ``L_out = floor((L + pad_left + pad_right - dilation*(k-1) - 1) / stride) + 1``.
    """

    def _conv_forward(self, input, weight, bias):
        if input.dim() not in (2, 3):
            raise RuntimeError("cnnkit.nn.Conv1d: expected 2D (C_in, L) or 3D (N, C_in, L) input, "
                               f"but got shape {list(input.shape)}")
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        elif isinstance(self.padding, str):
            # A kernel of height 1 needs no padding in height, whatever the string.
            padding = self.padding
        else:
            padding = (0, self.padding[0])
        out = CF.conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, self.stride[0]),
                        padding, (1, self.dilation[0]), self.groups)
        return out.squeeze(-2)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    r"""2-D transposed convolution (the input gradient of :class:`Conv2d`), with the
    constructor of :class:`torch.nn.ConvTranspose2d`:

        ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1,
                        padding=0, output_padding=0, groups=1, bias=True,
                        dilation=1, padding_mode='zeros', device=None, dtype=None)

    ``forward(input, output_size=None)``: several input sizes of a strided
    convolution give the same output size; ``output_size`` (``(OH, OW)``, or the
    full output shape) picks one, overriding ``output_padding`` as in PyTorch.

    Shapes:
        - weight: ``(in_channels, out_channels / groups, kH, kW)``
        - bias: ``(out_channels,)``
        - input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``
        - output: ``(N, C_out, OH, OW)`` or ``(C_out, OH, OW)`` with
          ``OH = (H - 1)*stride[0] - 2*padding[0] + dilation[0]*(kH - 1) + output_padding[0] + 1``
          (likewise for ``OW``).
    """

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        # The output_padding that yields output_size: its excess over the
        # smallest output size, (H-1)*s - 2p + d*(k-1) + 1.
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return CF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                   output_padding, self.groups, self.dilation)
