"""cnnkit's functional API: the torch.nn.functional of cnnkit's kernels.

Each function normalises its arguments (ints or pairs, 'valid' / 'same' /
'full' padding, unbatched 3-D inputs) and calls the dispatcher op
`torch.ops.cnnkit.*`, whose autograd formula (cnnkit/_autograd.py) calls cnnkit
ops again, so double backward works. Argument checks themselves live in the
C++ problem builders (csrc/problem.cpp) and their twins in cnnkit/_fake.py.
"""
from __future__ import annotations

import torch

from ._utils import _pair, batchify, conv_padding

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "local_conv2d",
    "tiled_conv2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_max_pool2d",
    "adaptive_avg_pool2d",
    "channel_max_pool",
]

_ops = torch.ops.cnnkit


# --------------------------------------------------------------------------- convolution


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        bias: ``(C_out,)`` or None.
        stride, dilation: int or pair.
        padding: int, pair, ``'valid'``, ``'same'`` (stride 1 only; an odd total
            pads one more at the bottom/right) or ``'full'`` (``d*(k-1)`` on every side).
        groups: input and output channels split into this many independent groups.

    Returns:
        ``(N, C_out, OH, OW)`` with ``OH = floor((H + pad_top + pad_bottom - d*(kH-1) - 1) / s) + 1``.
    """
    fn = "cnnkit.conv2d"
    x, unbatched = batchify(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    kernel = tuple(weight.shape[-2:]) if weight.dim() >= 2 else (1, 1)
    pad = conv_padding(fn, padding, kernel, stride, dilation)
    out = _ops.conv2d(x, weight, bias, stride, pad, dilation, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``: the
    input gradient of :func:`conv2d`.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_in, C_out / groups, kH, kW)``.
        bias: ``(C_out,)`` or None.
        output_padding: extra rows/columns at the bottom/right of the output
            (smaller than stride or dilation), picking one of the input sizes
            of the forward convolution that give the same output size.

    Returns:
        ``(N, C_out, OH, OW)`` with ``OH = (H - 1)*s - 2*p + d*(kH - 1) + output_padding + 1``.
    """
    fn = "cnnkit.conv_transpose2d"
    x, unbatched = batchify(fn, input)
    out = _ops.conv_transpose2d(
        x, weight, bias, _pair(fn, "stride", stride), _pair(fn, "padding", padding),
        _pair(fn, "output_padding", output_padding), groups, _pair(fn, "dilation", dilation))
    return out.squeeze(0) if unbatched else out


def local_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Unshared (locally connected) 2-D convolution: the connectivity of
    :func:`conv2d`, but every output location has its own weights.

    ``Z[n,i,y,x] = b[i,y,x] + sum_{l,m,q} V[n, g(i)*C_in/g + l, y*s - p + m*d, x*s - p + q*d] * W[i,y,x,l,m,q]``

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, OH, OW, C_in / groups, kH, kW)``; ``(OH, OW)`` must be the
            output size that ``input``, the kernel, stride, padding and dilation give.
        bias: ``(C_out, OH, OW)`` (one per output unit) or None.
        stride, padding, dilation, groups: as for :func:`conv2d` (padding strings included).

    Returns:
        ``(N, C_out, OH, OW)``.
    """
    fn = "cnnkit.local_conv2d"
    x, unbatched = batchify(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    kernel = tuple(weight.shape[-2:]) if weight.dim() >= 2 else (1, 1)
    pad = conv_padding(fn, padding, kernel, stride, dilation)
    out = _ops.local_conv2d(x, weight, bias, stride, pad, dilation, groups)
    return out.squeeze(0) if unbatched else out


def tiled_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Tiled 2-D convolution: ``tH x tW`` kernels that the output locations cycle
    through; location ``(y, x)`` uses kernel ``(y % tH, x % tW)``.

    ``Z[n,i,y,x] = b[i, y%tH, x%tW] + sum_{l,m,q} V[n, ., y*s - p + m*d, x*s - p + q*d] * K[i,l,m,q, y%tH, x%tW]``

    Tiles ``(1, 1)`` are :func:`conv2d`; tiles ``(OH, OW)`` are :func:`local_conv2d`.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW, tH, tW)``.
        bias: ``(C_out, tH, tW)`` or None.
        stride, padding, dilation, groups: as for :func:`conv2d` (padding strings included).

    Returns:
        ``(N, C_out, OH, OW)``.
    """
    fn = "cnnkit.tiled_conv2d"
    x, unbatched = batchify(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    kernel = tuple(weight.shape[2:4]) if weight.dim() >= 4 else (1, 1)
    pad = conv_padding(fn, padding, kernel, stride, dilation)
    out = _ops.tiled_conv2d(x, weight, bias, stride, pad, dilation, groups)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- pooling
