"""cnnkit's functional API: the torch.nn.functional of cnnkit's kernels.

Each function normalises its arguments (ints or pairs, 'valid' / 'same' /
'full' padding, unbatched 3-D inputs) and calls the dispatcher op
`torch.ops.cnnkit.*`, whose rules (cnnkit/_autograd.py: reverse and forward
mode, batching) call cnnkit ops again, so every order of derivative and every
torch.func transform works. Argument checks themselves live in the
C++ problem builders (csrc/problem.cpp) and their twins in cnnkit/_fake.py.
"""
from __future__ import annotations

import torch

from ._kinds import KINDS
from ._utils import _pair, batchify, conv_padding

_ops = torch.ops.cnnkit

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


# --------------------------------------------------------------------------- convolution


def _convolve(name, input, weight, bias, stride, padding, dilation, groups):
    """Normalise the arguments shared by conv2d, local_conv2d and tiled_conv2d
    and call the op `name`."""
    fn = f"cnnkit.{name}"
    kind = KINDS[name]
    x, unbatched = batchify(fn, input)
    stride, dilation = _pair(fn, "stride", stride), _pair(fn, "dilation", dilation)
    # The kernel size matters only to string paddings; a weight of the wrong
    # rank is reported by the op.
    kernel = kind.kernel_size(weight) if weight.dim() == kind.weight_dims else (1, 1)
    pad = conv_padding(fn, padding, kernel, stride, dilation)
    out = getattr(_ops, name)(x, weight, bias, stride, pad, dilation, groups)
    return out.squeeze(0) if unbatched else out


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
    return _convolve("conv2d", input, weight, bias, stride, padding, dilation, groups)


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
    return _convolve("local_conv2d", input, weight, bias, stride, padding, dilation, groups)


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
    return _convolve("tiled_conv2d", input, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- pooling


def _pool_stride(fn, stride, kernel):
    """stride=None (or empty) means the kernel size, as in torch.nn.functional."""
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return kernel
    return _pair(fn, "stride", stride)


def _adaptive_output_size(fn, output_size, x):
    """output_size as a pair of ints; a None entry keeps that input size, as in torch."""
    if isinstance(output_size, (list, tuple, torch.Size)):
        sizes = tuple(output_size) * 2 if len(output_size) == 1 else tuple(output_size)
    else:
        sizes = (output_size, output_size)
    if len(sizes) != 2 or not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                  for v in sizes):
        raise TypeError(f"{fn}: expected output_size to be an int or a pair of ints (None "
                        f"entries keep the input size), but got output_size={output_size!r}")
    return tuple(x.shape[-2 + i] if v is None else v for i, v in enumerate(sizes))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        kernel_size, padding, dilation: int or pair. Padding (by -inf) is at most
            half the kernel size.
        stride: int or pair; None means kernel_size.
        ceil_mode: round the output size up instead of down; a last window that
            would start in the right padding is still dropped.
        return_indices: also return where each maximum was: its flat position
            ``h * W + w`` within its input plane (what ``max_unpool2d`` takes).

    Returns:
        ``(N, C, OH, OW)`` with ``OH = floor((H + 2p - d*(kH - 1) - 1) / s) + 1``
        (ceiling with ceil_mode), and with return_indices the int64 indices of
        that shape too. Ties go to the first maximal element in row-major window
        order; a NaN in a window is its maximum.
    """
    fn = "cnnkit.max_pool2d"
    x, unbatched = batchify(fn, input)
    kernel = _pair(fn, "kernel_size", kernel_size)
    out, indices = _ops.max_pool2d(x, kernel, _pool_stride(fn, stride, kernel),
                                   _pair(fn, "padding", padding), _pair(fn, "dilation", dilation),
                                   bool(ceil_mode))
    if unbatched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        kernel_size, padding: int or pair; padding (by zeros) is at most half the kernel size.
        stride: int or pair; None means kernel_size.
        ceil_mode: round the output size up; a last window that would start in
            the right padding is still dropped.
        count_include_pad: divide by the window size clipped to the padded input
            (True) or by the number of input elements in the window (False).
        divisor_override: if given (non-zero), the divisor of every window.

    Returns:
        ``(N, C, OH, OW)`` with ``OH = floor((H + 2p - kH) / s) + 1`` (ceiling with ceil_mode).
    """
    fn = "cnnkit.avg_pool2d"
    x, unbatched = batchify(fn, input)
    kernel = _pair(fn, "kernel_size", kernel_size)
    out = _ops.avg_pool2d(x, kernel, _pool_stride(fn, stride, kernel),
                          _pair(fn, "padding", padding), bool(ceil_mode), bool(count_include_pad),
                          divisor_override)
    return out.squeeze(0) if unbatched else out


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """2-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool2d``:
    output window ``p`` covers input rows ``[floor(p*H/OH), ceil((p+1)*H/OH))``
    (columns alike), so any input size gives the output size asked for.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        output_size: int or pair ``(OH, OW)``; a None entry keeps that input size.
        return_indices: also return the flat position ``h * W + w`` of each maximum.

    Returns:
        ``(N, C, OH, OW)``, and with return_indices the int64 indices of that shape.
    """
    fn = "cnnkit.adaptive_max_pool2d"
    x, unbatched = batchify(fn, input)
    out, indices = _ops.adaptive_max_pool2d(x, _adaptive_output_size(fn, output_size, x))
    if unbatched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``
    (windows as in :func:`adaptive_max_pool2d`); ``output_size=1`` is global
    average pooling.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        output_size: int or pair ``(OH, OW)``; a None entry keeps that input size.

    Returns:
        ``(N, C, OH, OW)``.
    """
    fn = "cnnkit.adaptive_avg_pool2d"
    x, unbatched = batchify(fn, input)
    out = _ops.adaptive_avg_pool2d(x, _adaptive_output_size(fn, output_size, x))
    return out.squeeze(0) if unbatched else out


def channel_max_pool(input, pool_size):
    """Max over groups of ``pool_size`` consecutive channels (maxout):
    ``out[n, k, h, w] = max_{c < pool_size} input[n, k*pool_size + c, h, w]``.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; C divisible by pool_size.
        pool_size: channels per group (positive int).

    Returns:
        ``(N, C / pool_size, H, W)``. The gradient goes to the first maximal
        channel of each group; a NaN is the maximum.
    """
    fn = "cnnkit.channel_max_pool"
    x, unbatched = batchify(fn, input)
    if not isinstance(pool_size, int) or isinstance(pool_size, bool):
        raise TypeError(f"{fn}: expected pool_size to be an int, but got pool_size={pool_size!r}")
    out, _ = _ops.channel_max_pool(x, pool_size)
    return out.squeeze(0) if unbatched else out
