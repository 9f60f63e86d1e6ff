"""The three kinds of convolution cnnkit computes, in one table.

Dense, unshared (local) and tiled convolution share their connectivity and
differ only in how many kernels there are: one for all output locations, one
per location, or a ``tH x tW`` tile of kernels the locations cycle through.
This table says where each size sits in their weights, which bias shapes they
take and what output size they give. The functional API, the autograd and
batching rules, the fake kernels and the layers read it; its C++ twin is
``WeightLayout`` in csrc/problem.cpp.
"""
from __future__ import annotations

import dataclasses


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                dilation: int) -> int:
    """Output length along one axis: ``floor((size + pads - d*(k-1) - 1) / s) + 1``."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class ConvKind:
    """Where the sizes of one kind sit in its weight.

    ``layout`` names the weight's dimensions; ``in_channels_dim`` holds
    ``C_in / groups``; ``kernel_dims`` hold ``(kH, kW)``; a local weight holds
    the output size ``(OH, OW)`` at ``output_dims``; a tiled weight its tiles
    ``(tH, tW)`` at ``tile_dims``. The output channels are always dimension 0.
    """

    name: str
    layout: str
    in_channels_dim: int
    kernel_dims: tuple[int, int]
    output_dims: tuple[int, int] | None = None
    tile_dims: tuple[int, int] | None = None

    @property
    def weight_dims(self) -> int:
        return len(self.layout.split(","))

    def kernel_size(self, weight) -> tuple[int, int]:
        return tuple(weight.shape[d] for d in self.kernel_dims)

    def tiles(self, weight) -> tuple[int, int] | None:
        return None if self.tile_dims is None else tuple(weight.shape[d] for d in self.tile_dims)

    def weight_shape(self, out_channels: int, group_in_channels: int, kernel_size, out_size=None,
                     tiles=None) -> tuple[int, ...]:
        shape = [0] * self.weight_dims
        shape[0], shape[self.in_channels_dim] = out_channels, group_in_channels
        for dims, sizes in ((self.kernel_dims, kernel_size), (self.output_dims, out_size),
                            (self.tile_dims, tiles)):
            if dims is not None:
                shape[dims[0]], shape[dims[1]] = sizes
        return tuple(shape)

    def bias_shapes(self, weight, out_size) -> list[list[int]]:
        """The bias shapes this kind accepts for `weight` and output size (OH, OW):
        the kind's own (one per output channel, location or tile), then, where it
        differs, the untied bias (C_out, OH, OW): one per output location."""
        K = weight.shape[0]
        untied = [K, *out_size]
        if self.output_dims is not None:
            own = untied
        elif self.tile_dims is not None:
            own = [K, *self.tiles(weight)]
        else:
            own = [K]
        return [own] if own == untied else [own, untied]


DENSE = ConvKind("conv2d", "(C_out, C_in/groups, kH, kW)", in_channels_dim=1, kernel_dims=(2, 3))
LOCAL = ConvKind("local_conv2d", "(C_out, OH, OW, C_in/groups, kH, kW)", in_channels_dim=3,
                 kernel_dims=(4, 5), output_dims=(1, 2))
TILED = ConvKind("tiled_conv2d", "(C_out, C_in/groups, kH, kW, tH, tW)", in_channels_dim=1,
                 kernel_dims=(2, 3), tile_dims=(4, 5))

KINDS = {kind.name: kind for kind in (DENSE, LOCAL, TILED)}

