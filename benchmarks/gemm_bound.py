"""The time of tiled_conv2d's matrix products alone, with 2x2 tiles.

A tiled convolution does the multiply-adds of a dense convolution of the
same shape, only with a different kernel per output phase. On the CPU those
multiply-adds are three matrix products per forward and backward: for M =
N*OH*OW output locations and a patch size C*kH*kW,

    forward          (K, C*kH*kW) @ (C*kH*kW, M)
    input gradient   (C*kH*kW, K) @ (K, M)
    weight gradient  (K, M)       @ (M, C*kH*kW)

This script times those three products as bare ATen matmuls (MKL on x86:
no unfolding, no folding back, nothing else) side by side with cnnkit's
tiled_conv2d fwd+bwd and the tiled suite's baseline (one oneDNN convolution
per tile phase, the same code as in run.py), on the suite's 2x2-tiled rows at
its batch, and prints the products' time over the baseline's. An engine that
unfolds patches and multiplies them with MKL (cnnkit's patch matrices, and on
large images its products of shifted input components, which split each
product into kH*kW shallower ones) spends at least about that long, so where
the products alone take near 0.667 of the baseline's time, the suite's
"1.5x faster than one conv per phase" needs a faster product than MKL's.
On the largest images (VGG conv1_2, conv2_2) the shifted-component products
run faster than the one deep product, so there the figure is no floor.

    .venv/bin/python benchmarks/gemm_bound.py            # stride-1 2x2 rows
    .venv/bin/python benchmarks/gemm_bound.py --all      # every 2x2 row
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from run import conv_call, make_step, tiled_conv2d_per_phase, tiled_operands  # noqa: E402
from suites import SUITES  # noqa: E402

import cnnkit.functional as CF  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fwd_bwd(call, operands, grad):
    """run.py's timed fwd+bwd statement on leaf copies of the operands."""
    return make_step(call, [t.detach().requires_grad_() for t in operands], grad)


def products(layer, batch):
    """The three matrix products of a dense convolution of the layer's shape."""
    locations = batch * layer.output_size()[0] * layer.output_size()[1]
    weight = torch.randn(layer.K, layer.patch_size())
    patches = torch.randn(layer.patch_size(), locations)
    grad = torch.randn(layer.K, locations)

    def step():
        weight @ patches
        weight.t() @ grad
        grad @ patches.t()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="strided 2x2 rows too")
    parser.add_argument("--rounds", type=int, default=7, help="alternating single calls per op")
    args = parser.parse_args()
    torch.manual_seed(0)
    suite = SUITES["tiled"]
    (batch,) = suite.batches
    layers = [layer for layer in suite.layers
              if layer.tiles == 2 and (args.all or layer.stride == 1)]
    for layer in layers:
        operands = tiled_operands(layer, batch, "cpu", torch.float32)
        grad = torch.randn(batch, layer.K, *layer.output_size())
        steps = {"tiled": fwd_bwd(conv_call(CF.tiled_conv2d, layer), operands, grad),
                 "per phase": fwd_bwd(tiled_conv2d_per_phase(layer), operands, grad),
                 "products": products(layer, batch)}
        for step in steps.values():
            step()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):  # alternating single calls
            for name, step in steps.items():
                times[name].append(seconds(step))
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        # Ratios of calls made next to each other, so that slow spells of a
        # shared machine touch both sides.
        bound = statistics.median(p / b for p, b in zip(times["products"], times["per phase"]))
        reached = statistics.median(t / b for t, b in zip(times["tiled"], times["per phase"]))
        print(f"{layer.name:36s} {layer.shape(batch):30s} tiled {ms['tiled']:7.1f} ms, per phase "
              f"{ms['per phase']:7.1f} ms, products {ms['products']:7.1f} ms; "
              f"products/per phase {bound:.3f}, tiled/per phase {reached:.3f}, "
              f"tiled/products {ms['tiled'] / ms['products']:.2f}", flush=True)


if __name__ == "__main__":
    main()
