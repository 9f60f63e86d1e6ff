"""Train LeNet-5, built from cnnkit layers, on scikit-learn's handwritten digits.

    python examples/train_lenet5_digits.py [--epochs 30] [--out examples/output]

(from a checkout built with ``make build``, or with cnnkit installed; needs
scikit-learn, matplotlib and tqdm, all in requirements-dev.txt.)

The 1,797 8x8 grey-level digits of ``sklearn.datasets.load_digits`` (shipped
with scikit-learn, nothing is downloaded) are scaled to [0, 1], resized to
the 32x32 LeNet-5 expects with bilinear interpolation, and split 75 / 25
(stratified) into training and test sets; training images are randomly
rotated, scaled and shifted a little each epoch. The network is LeNet-5 (LeCun et
al., 1998) with ReLU and max pooling in place of its scaled tanh and
trainable subsampling:

    input (N, 1, 32, 32)
    C1  cnnkit.nn.Conv2d(1, 6, 5)        -> (N, 6, 28, 28), ReLU
    S2  cnnkit.nn.MaxPool2d(2)           -> (N, 6, 14, 14)
    C3  cnnkit.nn.Conv2d(6, 16, 5)       -> (N, 16, 10, 10), ReLU
    S4  cnnkit.nn.MaxPool2d(2)           -> (N, 16, 5, 5)
    C5  cnnkit.nn.Conv2d(16, 120, 5)     -> (N, 120, 1, 1), ReLU
    F6  Linear(120, 84), ReLU
    out Linear(84, 10)                   -> (N, 10) class scores

It prints the test accuracy and saves, under ``--out``, the training curves
(``lenet5_digits_curves.png``) and the learned C1 filters
(``lenet5_digits_filters.png``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

try:
    import cnnkit
except ImportError:  # run from a checkout, built in place (make build) but not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import cnnkit

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "output")


def load_digits_32(seed: int = 0, test_size: float = 0.25):
    """sklearn's digits as float32 tensors: images ``(N, 1, 32, 32)`` in [0, 1]
    (8x8 resized bilinearly) and int64 labels ``(N,)``, split stratified into
    ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_size,
                                           stratify=labels.numpy(), random_state=seed)
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


class LeNet5(nn.Module):
    """LeNet-5 from cnnkit layers (see the module docstring for the shapes).

    Args:
        c3: a function making the second convolution, ``(N, 6, 14, 14) ->
            (N, 16, 10, 10)``; by default ``cnnkit.nn.Conv2d(6, 16, 5)``. Any layer
            with those shapes fits (examples/locally_connected.py makes a
            LocallyConnected2d). It is called between C1 and C5, so the layers
            draw their initial weights in order.

    Shapes:
        input ``(N, 1, 32, 32)``, output ``(N, 10)`` class scores (logits).
    """

    def __init__(self, c3=None):
        super().__init__()
        self.features = nn.Sequential(
            cnnkit.nn.Conv2d(1, 6, 5), nn.ReLU(),             # C1: 32 -> 28
            cnnkit.nn.MaxPool2d(2),                           # S2: 28 -> 14
            (c3 or (lambda: cnnkit.nn.Conv2d(6, 16, 5)))(), nn.ReLU(),  # C3: 14 -> 10
            cnnkit.nn.MaxPool2d(2),                           # S4: 10 -> 5
            cnnkit.nn.Conv2d(16, 120, 5), nn.ReLU(),          # C5: 5 -> 1
        )
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine distortions of a batch ``(N, 1, 32, 32)``, one per
    image: rotation up to 10 degrees, scaling by 0.9 to 1.1, shifts up to 2
    pixels. Handwriting varies this way, so the net learns not to care."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * (10 * torch.pi / 180)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    # 2 pixels of 32, in affine_grid units (the image spans [-1, 1]).
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 16)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` (``(N, 1, 32, 32)``) that ``model`` labels as ``y`` (``(N,)``)."""
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    model.train(was_training)
    return correct / len(y)


def train(epochs: int = 30, *, model: nn.Module | None = None, batch_size: int = 32,
          lr: float = 2e-3, seed: int = 0, data=None, distort: bool = True,
          progress: bool = True, desc: str = "LeNet-5") -> dict:
    """Train ``model`` (default: a new :class:`LeNet5`) on the digits with Adam
    and a one-cycle learning-rate schedule (15% warm-up, then cosine decay).

    Args:
        epochs: passes over the 1,347 training images.
        model: any network mapping ``(N, 1, 32, 32)`` to ``(N, 10)``.
        batch_size, lr, seed: mini-batch size, peak learning rate, and the seed of
            the initialisation (when ``model`` is None) and the batch order.
        data: ``(x_train, y_train, x_test, y_test)``, default :func:`load_digits_32`.
        distort: train on randomly distorted images (:func:`augment`).
        progress: show a tqdm progress bar over the epochs.
        desc: the progress bar's label.

    Returns:
        dict with ``model``, ``test_accuracy`` (float), ``seconds`` (training
        wall time) and ``history``: per-epoch lists ``loss`` (mean training
        loss), ``train_accuracy`` and ``test_accuracy``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = data if data is not None else load_digits_32(seed)
    model = model if model is not None else LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(y_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, pct_start=0.15,
                                                total_steps=epochs * steps_per_epoch)
    history = {"loss": [], "train_accuracy": [], "test_accuracy": []}
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(y_train), generator=order)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            batch = perm[i:i + batch_size]
            images = augment(x_train[batch], order) if distort else x_train[batch]
            loss = F.cross_entropy(model(images), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        history["loss"].append(total / len(y_train))
        history["train_accuracy"].append(accuracy(model, x_train, y_train))
        history["test_accuracy"].append(accuracy(model, x_test, y_test))
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}",
                        test_acc=f"{history['test_accuracy'][-1]:.4f}")
    seconds = time.perf_counter() - start
    return {"model": model, "test_accuracy": history["test_accuracy"][-1], "seconds": seconds,
            "history": history}


def save_curves(history: dict, path: str, title: str = "LeNet-5 on sklearn digits") -> None:
    """PNG of the training loss and the training / test accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="mean training cross-entropy", yscale="log",
                title="training loss")
    ax_acc.plot(epochs, history["train_accuracy"], marker=".", label="train")
    ax_acc.plot(epochs, history["test_accuracy"], marker=".", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    final = history["test_accuracy"][-1]
    ax_acc.axhline(final, color="gray", linestyle="--", linewidth=0.8)
    ax_acc.annotate(f"final test accuracy {final:.2%}", (len(epochs), final), xytext=(0, -14),
                    textcoords="offset points", ha="right", fontsize=9)
    ax_acc.set_ylim(max(0.0, min(history["test_accuracy"]) - 0.05), 1.005)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_filters(weight: torch.Tensor, path: str, title: str = "learned C1 filters") -> None:
    """PNG of first-layer filters ``(C_out, 1, k, k)``, one panel each, on a
    shared colour scale centred at 0 (red positive, blue negative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weight.detach().cpu()[:, 0]
    limit = w.abs().max().item()
    fig, axes = plt.subplots(1, len(w), figsize=(1.5 * len(w) + 1.2, 2.2), layout="constrained")
    for i, (ax, f) in enumerate(zip(axes, w)):
        im = ax.imshow(f.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        ax.set_title(f"filter {i}", fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(f"{title} ({w.shape[-2]}x{w.shape[-1]}, red > 0 > blue)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """Command line: train, print the test accuracy, save the two PNGs; returns
    :func:`train`'s result. ``argv``: the arguments (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: LeNet's ops are too small to "
                             "gain from more, and a busy machine makes them wait on each other)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    result = train(args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    curves = os.path.join(args.out, "lenet5_digits_curves.png")
    filters = os.path.join(args.out, "lenet5_digits_filters.png")
    save_curves(result["history"], curves)
    save_filters(result["model"].features[0].weight, filters)
    print(f"test accuracy: {result['test_accuracy']:.4f} "
          f"({count_parameters(result['model'])} parameters, {args.epochs} epochs, "
          f"{result['seconds']:.1f} s)")
    print(f"saved {curves}\nsaved {filters}")
    return result


if __name__ == "__main__":
    main()
