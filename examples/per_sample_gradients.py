"""Per-sample gradients of a cnnkit CNN with torch.func, and DP-SGD training on sklearn's digits.

    python examples/per_sample_gradients.py [--epochs 15] [--clip 1.0] [--noise-multiplier 1.0]

(from a checkout built with ``make build``, or with cnnkit installed; needs
scikit-learn, in requirements-dev.txt. Writes no files.)

``torch.func.vmap(torch.func.grad(loss))`` gives the gradient of every
sample's loss separately, in one pass over the batch: under ``vmap`` each cnnkit
op runs once per batch: a vmapped input folds into the op's batch dimension,
and the weight gradient, whose operands (the input and the gradient of the
output) are both vmapped, into its groups. The network, on the 1,797 8x8 digits of ``sklearn.datasets.load_digits``
(scaled to [0, 1], split 75 / 25 stratified; nothing is downloaded), has a
locally connected layer, whose per-sample weight gradient is a separate
weight for every output location and every sample:

    input (N, 1, 8, 8)
    cnnkit.nn.Conv2d(1, 8, 3, padding=1)                   -> (N, 8, 8, 8), tanh
    cnnkit.nn.MaxPool2d(2)                                 -> (N, 8, 4, 4)
    cnnkit.nn.LocallyConnected2d(8, 16, 3, in_size=(4, 4)) -> (N, 16, 2, 2), tanh
    Linear(64, 10)                                         -> (N, 10) class scores

(5,402 parameters, 4,672 of them in the locally connected layer; tanh rather
than ReLU, since DP-SGD trains bounded activations better: Papernot et al.,
"Tempered Sigmoid Activations for Deep Learning with Differential Privacy",
AAAI 2021.)

The script

1. checks the per-sample gradients of ``vmap(grad)`` against a loop over the
   samples (plain autograd on one sample at a time), in float64, and prints the
   largest difference;
2. trains with DP-SGD (Abadi et al., "Deep Learning with Differential
   Privacy", CCS 2016): each sample's gradient, over all parameters jointly,
   is scaled to L2 norm at most C (``g / max(1, |g| / C)``), the clipped
   gradients are summed, Gaussian noise ``N(0, sigma^2 C^2)`` is added to
   every coordinate, the sum is divided by the batch size, and plain SGD takes
   the step. Each epoch cuts a fresh random permutation of the training set
   into batches, dropping the incomplete last one (its few samples would each
   get a larger share of the noise, and of the step). It prints per-epoch statistics of the per-sample gradient norms
   (before clipping) and the test accuracy. No privacy accounting (epsilon) is
   done here; sigma and C are the mechanism's parameters, not a guarantee;
3. times ``vmap(grad)`` against the loop over samples on one float32 batch.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

try:
    import cnnkit
except ImportError:  # run from a checkout, built in place (make build) but not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import cnnkit


def load_digits_8x8(seed: int = 0, test_size: float = 0.25):
    """sklearn's digits as float32 tensors: images ``(N, 1, 8, 8)`` in [0, 1] and
    int64 labels ``(N,)``, split stratified into ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_size,
                                           stratify=labels.numpy(), random_state=seed)
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def build_model() -> nn.Module:
    """The CNN of the module docstring: input ``(N, 1, 8, 8)``, output ``(N, 10)``."""
    return nn.Sequential(
        cnnkit.nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(),                   # 8x8
        cnnkit.nn.MaxPool2d(2),                                            # 8 -> 4
        cnnkit.nn.LocallyConnected2d(8, 16, 3, in_size=(4, 4)), nn.Tanh(),  # 4 -> 2
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def per_sample_gradient_function(model: nn.Module):
    """``f(params, x, y) -> {name: (N, *param.shape)}``: the gradient of each
    sample's cross-entropy with respect to ``params`` (a dict name -> tensor,
    as ``model.named_parameters()``), by ``vmap(grad)`` over the batch of ``x``
    ``(N, 1, 8, 8)`` and ``y`` ``(N,)``."""
    def sample_loss(params, x, y):
        logits = functional_call(model, params, (x.unsqueeze(0),))  # one sample as a batch of 1
        return F.cross_entropy(logits, y.unsqueeze(0))

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))


def per_sample_gradients_by_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The same as :func:`per_sample_gradient_function`, one backward pass per
    sample with plain autograd: ``{name: (N, *param.shape)}``."""
    names, params = zip(*model.named_parameters())
    grads = [torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
             for i in range(len(x))]
    return {name: torch.stack(per_param) for name, per_param in zip(names, zip(*grads))}


def gradient_norms(grads: dict) -> torch.Tensor:
    """L2 norm of each sample's gradient over all parameters jointly: ``(N,)``."""
    return torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()


def check_against_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-sample gradients of ``vmap(grad)`` and of the loop over samples, both
    in float64 on a float64 copy of ``model``: the largest absolute difference
    over all parameters and samples, the largest gradient entry (for scale) and
    the largest difference of the per-sample norms."""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    params = {name: p.detach() for name, p in model64.named_parameters()}
    by_vmap = per_sample_gradient_function(model64)(params, x64, y)
    by_loop = per_sample_gradients_by_loop(model64, x64, y)
    return {
        "samples": len(x),
        "max_abs_diff": max((by_vmap[n] - by_loop[n]).abs().max().item() for n in params),
        "max_abs_grad": max(g.abs().max().item() for g in by_loop.values()),
        "max_norm_diff": (gradient_norms(by_vmap) - gradient_norms(by_loop)).abs().max().item(),
    }


def dp_sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, per_sample, x, y, *,
                clip: float, noise_multiplier: float, generator: torch.Generator) -> torch.Tensor:
    """One DP-SGD step on the batch ``(x, y)``; returns the per-sample gradient
    norms before clipping, ``(N,)``."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    grads = per_sample(params, x, y)
    norms = gradient_norms(grads)
    factors = 1.0 / torch.clamp(norms / clip, min=1.0)  # g / max(1, |g| / C)
    for name, p in model.named_parameters():
        summed = torch.tensordot(factors, grads[name], dims=1)  # sum of the clipped gradients
        noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype)
        p.grad = (summed + noise_multiplier * clip * noise.to(summed.device)) / len(x)
    optimizer.step()
    return norms


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def norm_summary(norms: torch.Tensor, clip: float) -> dict:
    """Statistics of per-sample gradient norms ``(N,)``."""
    q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9], dtype=norms.dtype))
    return {"mean": norms.mean().item(), "p10": q[0].item(), "median": q[1].item(),
            "p90": q[2].item(), "max": norms.max().item(),
            "clipped": (norms > clip).float().mean().item()}


def train_dp_sgd(model: nn.Module, data, *, epochs: int, batch_size: int, lr: float, clip: float,
                 noise_multiplier: float, seed: int = 0, verbose: bool = True) -> dict:
    """DP-SGD (see the module docstring) for ``epochs`` passes over the training
    set. Returns ``history``: per epoch ``norms`` (:func:`norm_summary` of all
    per-sample norms of the epoch), ``loss`` (mean training cross-entropy,
    without noise) and ``test_accuracy``; and ``seconds``."""
    x_train, y_train, x_test, y_test = data
    per_sample = per_sample_gradient_function(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = {"norms": [], "loss": [], "test_accuracy": []}
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(y_train), generator=generator)
        norms = []
        for i in range(0, len(perm) - batch_size + 1, batch_size):  # full batches only
            batch = perm[i:i + batch_size]
            norms.append(dp_sgd_step(model, optimizer, per_sample, x_train[batch], y_train[batch],
                                     clip=clip, noise_multiplier=noise_multiplier,
                                     generator=generator))
        with torch.no_grad():
            loss = F.cross_entropy(model(x_train), y_train).item()
        stats = norm_summary(torch.cat(norms), clip)
        history["norms"].append(stats)
        history["loss"].append(loss)
        history["test_accuracy"].append(accuracy(model, x_test, y_test))
        if verbose:
            print(f"epoch {epoch:3d}  loss {loss:.4f}  test accuracy "
                  f"{history['test_accuracy'][-1]:.4f}  per-sample norm: mean {stats['mean']:.3f} "
                  f"median {stats['median']:.3f} [p10 {stats['p10']:.3f}, p90 {stats['p90']:.3f}] "
                  f"max {stats['max']:.3f}, {stats['clipped']:.0%} clipped", flush=True)
    return {"history": history, "seconds": time.perf_counter() - start}


def time_vmap_and_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       min_run_time: float) -> dict:
    """Median time in ms of the per-sample gradients of the batch ``(x, y)`` by
    ``vmap(grad)`` and by the loop over samples (torch.utils.benchmark, each
    warmed up by a first call), and the largest difference of their results."""
    from torch.utils.benchmark import Timer

    params = {name: p.detach() for name, p in model.named_parameters()}
    per_sample = per_sample_gradient_function(model)
    steps = {"vmap": lambda: per_sample(params, x, y),
             "loop": lambda: per_sample_gradients_by_loop(model, x, y)}
    results = {name: step() for name, step in steps.items()}
    times = {name: Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
             .blocked_autorange(min_run_time=min_run_time).median * 1e3
             for name, step in steps.items()}
    difference = max((results["vmap"][n] - results["loop"][n]).abs().max().item() for n in params)
    return {"batch": len(x), "vmap_ms": times["vmap"], "loop_ms": times["loop"],
            "speedup": times["loop"] / times["vmap"], "float32_max_abs_diff": difference}


def main(argv=None) -> dict:
    """Command line: check, train, time, print; returns a dict with ``check``
    (:func:`check_against_loop`), ``history``, ``test_accuracy``, ``timing``
    (:func:`time_vmap_and_loop`) and ``parameters``. ``argv``: the arguments
    (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.0, help="SGD learning rate")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="C: largest L2 norm of a sample's gradient after clipping")
    parser.add_argument("--noise-multiplier", type=float, default=1.0,
                        help="sigma: the noise's standard deviation is sigma * C")
    parser.add_argument("--check-samples", type=int, default=32,
                        help="samples of the float64 check against the loop")
    parser.add_argument("--time", type=float, default=1.0,
                        help="seconds of timing for vmap(grad) and for the loop each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: the network's ops are small)")
    args = parser.parse_args(argv)
    if args.clip <= 0 or args.noise_multiplier < 0 or args.batch_size < 1:
        parser.error("--clip must be positive, --noise-multiplier non-negative, "
                     "--batch-size at least 1")
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    data = load_digits_8x8(args.seed)
    x_train, y_train, x_test, y_test = data
    model = build_model()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters:,} parameters ({model[3].weight.numel() + model[3].bias.numel():,} in the "
          f"locally connected layer); {len(y_train)} training and {len(y_test)} test images")

    check = check_against_loop(model, x_train[:args.check_samples], y_train[:args.check_samples])
    print(f"check, float64, {check['samples']} samples: vmap(grad) vs loop over samples, "
          f"max abs difference {check['max_abs_diff']:.1e} (largest gradient entry "
          f"{check['max_abs_grad']:.2f}), of the norms {check['max_norm_diff']:.1e}")
    assert check["max_abs_diff"] <= 1e-10 * max(1.0, check["max_abs_grad"]), check

    print(f"DP-SGD: C = {args.clip}, sigma = {args.noise_multiplier}, batch {args.batch_size}, "
          f"lr {args.lr}, {args.epochs} epochs")
    result = train_dp_sgd(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          clip=args.clip, noise_multiplier=args.noise_multiplier, seed=args.seed)
    test_accuracy = accuracy(model, x_test, y_test)

    timing = time_vmap_and_loop(model, x_train[:args.batch_size], y_train[:args.batch_size],
                                args.time)
    print(f"test accuracy: {test_accuracy:.4f} ({args.epochs} epochs of DP-SGD, "
          f"{result['seconds']:.1f} s)")
    print(f"per-sample gradients of a batch of {timing['batch']} (float32, {args.threads} "
          f"thread{'s' if args.threads > 1 else ''}): vmap(grad) {timing['vmap_ms']:.2f} ms, "
          f"loop over samples {timing['loop_ms']:.2f} ms ({timing['speedup']:.1f}x; max abs "
          f"difference {timing['float32_max_abs_diff']:.1e})")
    return {"check": check, "history": result["history"], "test_accuracy": test_accuracy,
            "timing": timing, "parameters": parameters}


if __name__ == "__main__":
    main()
