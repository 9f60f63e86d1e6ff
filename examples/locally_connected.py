"""LeNet-5 on sklearn's digits with weight sharing relaxed in its second convolution.

    python examples/locally_connected.py [--epochs 30] [--variants conv,tiled,local]

The network of examples/train_lenet5_digits.py, trained the same way, with
its second convolution C3 (``(N, 6, 14, 14) -> (N, 16, 10, 10)``, 5x5 kernels)
built three ways:

- ``conv``:  ``cnnkit.nn.Conv2d(6, 16, 5)``: one kernel per output channel,
  shared by all 10x10 output locations (2,416 parameters);
- ``tiled``: ``cnnkit.nn.TiledConv2d(6, 16, 5, tiles=2)``: 2x2 kernels per
  output channel that neighbouring locations take in turn (location
  ``(y, x)`` uses kernel ``(y % 2, x % 2)``; 9,664 parameters);
- ``local``: ``cnnkit.nn.LocallyConnected2d(6, 16, 5, in_size=14)``: no
  sharing, every output location its own kernel and bias (241,600 parameters).

It prints each variant's test accuracy, parameter count and training time,
and saves the three training curves side by side under ``--out``
(``locally_connected_curves.png``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_lenet5_digits as lenet  # noqa: E402  (the network, data and training loop)

cnnkit = lenet.cnnkit

VARIANTS = {
    "conv": lambda: cnnkit.nn.Conv2d(6, 16, 5),
    "tiled": lambda: cnnkit.nn.TiledConv2d(6, 16, 5, tiles=2),
    "local": lambda: cnnkit.nn.LocallyConnected2d(6, 16, 5, in_size=(14, 14)),
}


def build(variant: str) -> torch.nn.Module:
    """LeNet-5 with C3 of the given variant (``conv``, ``tiled`` or ``local``);
    input ``(N, 1, 32, 32)``, output ``(N, 10)``."""
    return lenet.LeNet5(c3=VARIANTS[variant])


def compare(epochs: int = 30, variants=("conv", "tiled", "local"), seed: int = 0,
            progress: bool = True) -> dict:
    """Train one LeNet-5 per variant on the same data split, initialisation seed
    and batch order.

    Returns:
        ``{variant: {"test_accuracy", "parameters", "c3_parameters", "seconds", "history"}}``.
    """
    data = lenet.load_digits_32(seed)
    results = {}
    for name in variants:
        torch.manual_seed(seed)
        model = build(name)
        out = lenet.train(epochs, model=model, seed=seed, data=data, progress=progress,
                          desc=f"C3 {name:5s}")
        results[name] = {
            "test_accuracy": out["test_accuracy"],
            "parameters": lenet.count_parameters(model),
            "c3_parameters": lenet.count_parameters(model.features[3]),
            "seconds": out["seconds"],
            "history": out["history"],
        }
    return results


def save_curves(results: dict, path: str) -> None:
    """PNG: training loss and test accuracy per epoch, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        epochs = range(1, len(r["history"]["loss"]) + 1)
        label = f"{name} ({r['c3_parameters']:,} C3 parameters)"
        ax_loss.plot(epochs, r["history"]["loss"], marker=".", label=label)
        ax_acc.plot(epochs, r["history"]["test_accuracy"], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="mean training cross-entropy", yscale="log",
                title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax_acc.set_ylim(0.8, 1.005)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle("LeNet-5 on sklearn digits: C3 shared, tiled or unshared")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """Command line: train the variants, print their table, save the PNG;
    returns :func:`compare`'s result. ``argv``: the arguments (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--variants", default="conv,tiled,local",
                        help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--out", default=lenet.DEFAULT_OUT, help="folder for the PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    results = compare(args.epochs, variants, args.seed)
    print(f"\n{'C3':6s} {'test accuracy':>13s} {'parameters':>11s} {'of which C3':>12s} "
          f"{'time':>7s}")
    for name, r in results.items():
        print(f"{name:6s} {r['test_accuracy']:13.4f} {r['parameters']:11,d} "
              f"{r['c3_parameters']:12,d} {r['seconds']:6.1f}s")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "locally_connected_curves.png")
    save_curves(results, path)
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
