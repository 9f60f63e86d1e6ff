"""The CPU engine's Winograd path for 3x3 stride-1 convolutions (csrc/cpu/winograd.cpp):
forward and every gradient against torch.nn.functional.conv2d in float64, its
float32 rounding error against the direct engine's, and determinism across
thread counts. CNNKIT_CONV_ENGINE is read on every call, so each test picks
the engine with monkeypatch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnkit.functional as CF


def run_both(x, w, b, padding, groups):
    """Forward and input / weight / bias gradients of cnnkit and of ATen, the
    same output gradient for both."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    bias, bias_ref = (leaves[2], refs[2]) if b is not None else (None, None)
    y = CF.conv2d(leaves[0], leaves[1], bias, 1, padding, 1, groups)
    if b is not None and b.dim() == 3:  # untied: ATen's conv2d adds it by hand
        y_ref = F.conv2d(refs[0], refs[1], None, 1, padding, 1, groups) + bias_ref
    else:
        y_ref = F.conv2d(refs[0], refs[1], bias_ref, 1, padding, 1, groups)
    g = torch.randn_like(y_ref)
    grads = (torch.autograd.grad(y, leaves, g) if y.numel()
             else [torch.zeros_like(t) for t in leaves])
    grads_ref = (torch.autograd.grad(y_ref, refs, g) if y_ref.numel()
                 else [torch.zeros_like(t) for t in refs])
    return [y, *grads], [y_ref, *grads_ref]


def assert_tight(got, want):
    assert got.shape == want.shape
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= 1e-10 * max(scale, 1e-30) or err == 0.0, (err, scale)


# (N, C, K, H, W, padding, groups): odd sizes, images smaller than a tile,
# partial tiles, every padding, groups and depthwise, batch 0 and 1.
CASES = [
    (2, 3, 4, 7, 9, 1, 1),
    (2, 3, 5, 13, 5, 0, 1),
    (1, 2, 3, 1, 1, 1, 1),
    (1, 2, 3, 2, 2, 1, 1),
    (2, 4, 4, 2, 2, 2, 1),
    (1, 5, 6, 9, 11, 2, 1),
    (2, 3, 4, 10, 6, "same", 1),
    (2, 6, 3, 5, 8, (0, 2), 1),
    (1, 4, 6, 9, 7, 1, 2),
    (2, 6, 6, 11, 6, 1, 6),
    (0, 3, 4, 7, 7, 1, 1),
    (1, 16, 8, 17, 15, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_aten_float64(case, bias, monkeypatch):
    monkeypatch.setenv("CNNKIT_CONV_ENGINE", "winograd")
    N, C, K, H, W, padding, groups = case
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    w = torch.randn(K, C // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(K, dtype=torch.float64) if bias else None
    got, want = run_both(x, w, b, padding, groups)
    for g, r in zip(got, want):
        assert_tight(g, r)


def test_untied_bias(monkeypatch):
    monkeypatch.setenv("CNNKIT_CONV_ENGINE", "winograd")
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(5, 9, 7, dtype=torch.float64)
    got, want = run_both(x, w, b, 1, 1)
    for g, r in zip(got, want):
        assert_tight(g, r)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_input_layouts(layout, monkeypatch):
    monkeypatch.setenv("CNNKIT_CONV_ENGINE", "winograd")
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64)
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 6, 11, 20, dtype=torch.float64)[..., ::2]
    got, want = run_both(x, w, b, 1, 1)
    for g, r in zip(got, want):
        assert_tight(g, r)


def test_unknown_engine_name_is_an_error(monkeypatch):
    monkeypatch.setenv("CNNKIT_CONV_ENGINE", "fastest")
    with pytest.raises(RuntimeError, match="CNNKIT_CONV_ENGINE"):
        CF.conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3), padding=1)


# ResNet-like layers, (N, channels, size).
LAYERS = [(2, 64, 56), (4, 256, 14)]


def max_relative_error(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("layer", LAYERS, ids=str)
def test_float32_error_within_10x_of_direct(layer, monkeypatch):
    N, C, size = layer
    x = torch.randn(N, C, size, size)
    w = torch.randn(C, C, 3, 3) / (3 * C ** 0.5)
    g = torch.randn(N, C, size, size)
    x64, w64, g64 = (t.double().requires_grad_() for t in (x, w, g))
    y64 = F.conv2d(x64, w64, None, 1, 1)
    dx64, dw64 = torch.autograd.grad(y64, [x64, w64], g64)
    errors = {}
    for engine in ("direct", "winograd"):
        monkeypatch.setenv("CNNKIT_CONV_ENGINE", engine)
        xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = CF.conv2d(xe, we, None, 1, 1)
        dx, dw = torch.autograd.grad(y, [xe, we], g)
        errors[engine] = [max_relative_error(t, ref) for t, ref in
                          ((y, y64), (dx, dx64), (dw, dw64))]
    for i, name in enumerate(("forward", "input gradient", "weight gradient")):
        ratio = errors["winograd"][i] / errors["direct"][i]
        print(f"\n{N}x{C}x{size}x{size} {name}: float32 max relative error direct "
              f"{errors['direct'][i]:.2e}, winograd {errors['winograd'][i]:.2e}, ratio {ratio:.2f}")
        assert ratio <= 10.0


def test_same_result_at_any_thread_count(monkeypatch):
    monkeypatch.setenv("CNNKIT_CONV_ENGINE", "winograd")
    # Enough tiles for several blocks and partial weight-gradient sums.
    x = torch.randn(4, 32, 40, 40)
    w = torch.randn(32, 32, 3, 3)
    b = torch.randn(32)
    g = torch.randn(4, 32, 40, 40)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            y = CF.conv2d(*leaves, 1, 1)
            results.append([y.detach(), *torch.autograd.grad(y, leaves, g)])
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)
