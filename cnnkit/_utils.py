"""Argument normalisation shared by the functional API and the layers."""
from __future__ import annotations

import collections.abc

import torch


def _pair(fn: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints as a pair, like torch.nn.modules.utils._pair,
    with a message naming the function and argument for anything else."""
    given = value
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, (str, torch.Tensor)):
        value = tuple(value)
        if len(value) == 1:
            value = value * 2
    else:
        value = (value, value)
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{fn}: expected {name} to be an int or a pair of ints, but got {name}={given!r}")
    return value


def conv_padding(fn: str, padding, kernel_size, stride, dilation) -> list[int]:
    """Convolution padding as the ops take it: [pad_h, pad_w] when symmetric,
    [top, bottom, left, right] when 'same' needs one more at the bottom/right.

    'valid' is no padding; 'same' keeps the input size at stride 1 (an odd total
    pads one more at the bottom/right); 'full' pads d*(k-1) on every side so
    every input pixel meets every kernel tap.
    """
    if isinstance(padding, str):
        (kh, kw), (dh, dw) = kernel_size, dilation
        if padding == "valid":
            return [0, 0]
        if padding == "full":
            return [dh * (kh - 1), dw * (kw - 1)]
        if padding == "same":
            if tuple(stride) != (1, 1):
                raise ValueError(f"{fn}: padding='same' is not supported for strided convolutions, "
                                 f"but got stride={list(stride)}")
            th, tw = dh * (kh - 1), dw * (kw - 1)
            if th % 2 == 0 and tw % 2 == 0:
                return [th // 2, tw // 2]
            return [th // 2, th - th // 2, tw // 2, tw - tw // 2]
        raise ValueError(f"{fn}: expected padding to be an int, a pair of ints, 'valid', 'same' or "
                         f"'full', but got padding={padding!r}")
    return list(_pair(fn, "padding", padding))


def batchify(fn: str, input: torch.Tensor, name: str = "input"):
    """A 3-D (C, H, W) input is one unbatched sample, as in PyTorch: returns the
    4-D view and whether the batch dimension must be dropped from the result."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{fn}: expected {name} to be a torch.Tensor, but got {type(input).__name__}")
    if input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False
