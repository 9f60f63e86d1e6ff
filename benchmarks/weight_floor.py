"""The weight-traffic floor of tiled_conv2d with 4x4 tiles on small images.

With 4x4 tiles a ResNet layer4 conv has 16 weight matrices (151 MB) where
conv2d has one (9.4 MB). Whatever the kernels do, one forward and backward
reads the tile weights twice (forward, input gradient) and writes a fresh
weight-sized gradient. This script times those three passes as plain tensor
operations (two sums over the weights; a new tensor on 2 MiB pages, as
cnnkit's large outputs are, filled once), side by side with cnnkit's
tiled_conv2d and conv2d fwd+bwd on the same shape, and prints the floor as a
multiple of conv2d: the "within 2x of conv2d" target of the tiled suite
cannot be met on a machine where that multiple is near 2.

    .venv/bin/python benchmarks/weight_floor.py
"""
from __future__ import annotations

import ctypes
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cnnkit  # noqa: E402

MADV_HUGEPAGE = 14  # Linux
HUGE_PAGE = 2 << 20
LIBC = ctypes.CDLL(None)

# (N, C, H, K, tiles, stride): the suite's 4x4-tile ResNet layer4 and layer3.1 rows.
SHAPES = [(4, 512, 7, 512, 4, 1), (4, 512, 14, 512, 4, 2), (4, 256, 14, 256, 4, 1)]


def fresh_filled(numel: int) -> torch.Tensor:
    """A new tensor on 2 MiB pages where the kernel grants them, written once."""
    t = torch.empty(numel)
    begin, size = t.data_ptr(), t.numel() * t.element_size()
    first = (begin + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    last = (begin + size) & ~(HUGE_PAGE - 1)
    if last > first:
        LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_HUGEPAGE)
    return t.fill_(1.0)


def median_ms(fn, calls: int = 7) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    torch.manual_seed(0)
    for N, C, H, K, T, S in SHAPES:
        P = (H + 2 - 3) // S + 1
        x = torch.randn(N, C, H, H, requires_grad=True)
        layer = cnnkit.nn.TiledConv2d(C, K, 3, T, stride=S, padding=1, bias=False)
        dense = cnnkit.nn.Conv2d(C, K, 3, stride=S, padding=1, bias=False)
        g = torch.randn(N, K, P, P)
        weights = layer.weight.detach()

        def fwd_bwd(module):
            def step():
                torch.autograd.grad(module(x), [x, module.weight], g)
            return step

        def floor():
            weights.sum()
            weights.sum()
            fresh_filled(weights.numel())

        # Three alternating rounds; the middle value of each.
        rounds = {"tiled": [], "conv2d": [], "floor": []}
        for _ in range(3):
            for name, fn in (("tiled", fwd_bwd(layer)), ("conv2d", fwd_bwd(dense)),
                             ("floor", floor)):
                rounds[name].append(median_ms(fn))
        ms = {name: sorted(v)[1] for name, v in rounds.items()}
        print(f"{N}x{C}x{H}x{H} K={K} s{S} t{T}: tile weights {weights.numel() * 4 / 1e6:.0f} MB; "
              f"tiled_conv2d {ms['tiled']:.1f} ms, conv2d {ms['conv2d']:.1f} ms; weight passes "
              f"(read, read, fresh write) {ms['floor']:.1f} ms = {ms['floor'] / ms['conv2d']:.2f}x "
              f"conv2d; tiled_conv2d at {ms['tiled'] / ms['floor']:.2f}x the floor", flush=True)


if __name__ == "__main__":
    main()
