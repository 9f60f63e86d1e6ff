"""Layers: drop-in twins of their torch.nn namesakes, computed by cnnkit's kernels."""
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .local import LocallyConnected2d, TiledConv2d, UntiedBiasConv2d
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, Maxout, MaxPool2d

__all__ = [
    "Conv1d", "Conv2d", "ConvTranspose2d", "LocallyConnected2d", "TiledConv2d", "UntiedBiasConv2d",
    "MaxPool2d", "AvgPool2d", "AdaptiveMaxPool2d", "AdaptiveAvgPool2d", "Maxout",
]
