"""The CPU engine gives the same bits on any number of threads: forward,
input, weight and bias gradients of dense, strided, pointwise, grouped and
tiled convolutions, on each of the engine's paths (patch matrices, tap
products of large tiled images, Winograd)."""
import pytest
import torch

import cnnkit.functional as CF

CASES = {
    "3x3": dict(N=8, C=32, H=14, K=48, kernel=3, stride=1, groups=1),
    "3x3 stride 2": dict(N=8, C=32, H=14, K=48, kernel=3, stride=2, groups=1),
    "1x1 blocks of samples": dict(N=5, C=64, H=9, K=64, kernel=1, stride=1, groups=1),
    "grouped": dict(N=4, C=16, H=12, K=16, kernel=3, stride=1, groups=4),
    "winograd": dict(N=3, C=64, H=14, K=64, kernel=3, stride=1, groups=1),
    "many blocks": dict(N=40, C=8, H=10, K=8, kernel=3, stride=1, groups=1),
    "tiled 2x2": dict(N=4, C=16, H=12, K=16, kernel=3, stride=1, groups=1, tiles=(2, 2)),
    "tiled 2x2 tap products": dict(N=3, C=64, H=56, K=64, kernel=3, stride=1, groups=1,
                                   tiles=(2, 2)),
    "tiled 4x4 phase chunks": dict(N=2, C=8, H=7, K=8, kernel=3, stride=1, groups=1,
                                   tiles=(4, 4)),
}


def run(case, threads, x, w, b):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
        if "tiles" in case:
            y = CF.tiled_conv2d(x, w, b, padding=1)
        else:
            y = CF.conv2d(x, w, b, stride=case["stride"], padding=case["kernel"] // 2,
                          groups=case["groups"])
        grad = (torch.arange(y.numel(), dtype=y.dtype).view_as(y) % 7 - 3) / 3
        y.backward(grad)
        return y.detach(), x.grad, w.grad, b.grad
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list(CASES))
def test_same_bits_on_any_thread_count(name):
    case = CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case["N"], case["C"], case["H"], case["H"], generator=g)
    tiles = case.get("tiles", ())
    w = torch.randn(case["K"], case["C"] // case["groups"], case["kernel"], case["kernel"],
                    *tiles, generator=g)
    b = torch.randn(case["K"], *tiles, generator=g)
    one = run(case, 1, x, w, b)
    for threads in (2, 3):
        other = run(case, threads, x, w, b)
        for what, u, v in zip(("output", "input grad", "weight grad", "bias grad"), one, other):
            assert torch.equal(u, v), f"{what} differs between 1 and {threads} threads"
