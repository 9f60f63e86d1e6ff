"""Pooling layers: drop-in twins of torch.nn.MaxPool2d, AvgPool2d,
AdaptiveMaxPool2d and AdaptiveAvgPool2d, computed by cnnkit's kernels, and
Maxout (max over groups of channels), which torch.nn lacks.

Each twin subclasses its torch.nn namesake, so the constructor arguments,
attributes, repr and state_dict (empty: pooling has no parameters) are
PyTorch's own, and `isinstance(layer, torch.nn.MaxPool2d)` holds; only the
computation is replaced.
"""
from __future__ import annotations

import torch

from .. import functional as CF

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "Maxout", "MaxPool2d"]


class MaxPool2d(torch.nn.MaxPool2d):
    r"""2-D max pooling with the constructor of :class:`torch.nn.MaxPool2d`:

        MaxPool2d(kernel_size, stride=None, padding=0, dilation=1,
                  return_indices=False, ceil_mode=False)

    Shapes:
        - input: ``(N, C, H, W)`` or ``(C, H, W)``
        - output: ``(N, C, OH, OW)`` or ``(C, OH, OW)`` with
          ``OH = floor((H + 2*padding[0] - dilation[0]*(kH-1) - 1) / stride[0]) + 1``
          (ceiling with ``ceil_mode``); with ``return_indices`` also the int64
          positions ``h * W + w`` of the maxima, of the same shape.
    """

    def forward(self, input):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    r"""2-D average pooling with the constructor of :class:`torch.nn.AvgPool2d`:

        AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
                  count_include_pad=True, divisor_override=None)

    Shapes:
        - input: ``(N, C, H, W)`` or ``(C, H, W)``
        - output: ``(N, C, OH, OW)`` or ``(C, OH, OW)`` with
          ``OH = floor((H + 2*padding[0] - kH) / stride[0]) + 1`` (ceiling with ``ceil_mode``).
    """

    def forward(self, input):
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    r"""2-D adaptive max pooling with the constructor of
    :class:`torch.nn.AdaptiveMaxPool2d`: ``AdaptiveMaxPool2d(output_size, return_indices=False)``.

    Shapes:
        - input: ``(N, C, H, W)`` or ``(C, H, W)``
        - output: ``(N, C, OH, OW)`` or ``(C, OH, OW)`` for ``output_size=(OH, OW)``
          (a None entry keeps that input size); window ``p`` covers input rows
          ``[floor(p*H/OH), ceil((p+1)*H/OH))``.
    """

    def forward(self, input):
        return CF.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    r"""2-D adaptive average pooling with the constructor of
    :class:`torch.nn.AdaptiveAvgPool2d`: ``AdaptiveAvgPool2d(output_size)``.

    Shapes:
        - input: ``(N, C, H, W)`` or ``(C, H, W)``
        - output: ``(N, C, OH, OW)`` or ``(C, OH, OW)``; windows as in
          :class:`AdaptiveMaxPool2d`.
    """

    def forward(self, input):
        return CF.adaptive_avg_pool2d(input, self.output_size)


class Maxout(torch.nn.Module):
    r"""Maxout: the maximum over groups of ``pool_size`` consecutive channels,
    ``out[n, k] = max_{c < pool_size} input[n, k*pool_size + c]``.

    After a convolution with ``pool_size * K`` output channels, each output
    channel is the best of ``pool_size`` separately parametrised filters, so
    the layer can learn invariances (e.g. to rotation) the filters span.

    Shapes:
        - input: ``(N, C, H, W)`` or ``(C, H, W)``, C divisible by ``pool_size``
        - output: ``(N, C / pool_size, H, W)`` or ``(C / pool_size, H, W)``
    """

    def __init__(self, pool_size: int):
        super().__init__()
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size <= 0:
            raise ValueError(f"Maxout: expected pool_size to be a positive int, but got "
                             f"pool_size={pool_size!r}")
        self.pool_size = pool_size

    def forward(self, input):
        return CF.channel_max_pool(input, self.pool_size)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"
