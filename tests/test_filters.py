"""cnnkit.filters: the classic fixed kernels, and what they do to images."""
from __future__ import annotations

import math

import pytest
import torch

import cnnkit.functional as CF
from cnnkit import filters

DERIVATIVES = {  # name: (x kernel, smoothing weights across the derivative)
    "sobel": (filters.sobel_x, filters.sobel_y, [1, 2, 1]),
    "scharr": (filters.scharr_x, filters.scharr_y, [3, 10, 3]),
    "prewitt": (filters.prewitt_x, filters.prewitt_y, [1, 1, 1]),
}


def plane(k):
    """The (k, k) kernel of a (1, 1, k, k) weight."""
    assert k.dim() == 4 and k.shape[:2] == (1, 1)
    return k[0, 0]


# --------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_mean_is_a_normalised_box(size):
    k = plane(filters.mean(size, dtype=torch.float64))
    assert k.shape == (size, size)
    assert torch.allclose(k, torch.full((size, size), 1.0 / size**2, dtype=torch.float64))
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("size,sigma", [(3, 0.5), (5, 1.0), (7, 1.5), (9, 3.0)])
def test_gaussian_is_normalised_symmetric_and_peaked(size, sigma):
    k = plane(filters.gaussian(size, sigma, dtype=torch.float64))
    assert k.shape == (size, size)
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-12)
    assert torch.equal(k, k.t()) and torch.equal(k, k.flip(0)) and torch.equal(k, k.flip(1))
    c = size // 2
    assert k[c, c] == k.max() and (k > 0).all()
    # Separable with the 1-D Gaussian of that sigma: ratio of neighbours.
    assert math.isclose((k[c, c + 1] / k[c, c]).item(), math.exp(-1 / (2 * sigma**2)),
                        rel_tol=1e-12)
    # Values strictly decrease away from the centre along the middle row.
    assert (k[c, c:].diff() < 0).all()


@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_derivative_kernels(name):
    fx, fy, smoothing = DERIVATIVES[name]
    kx, ky = plane(fx(dtype=torch.float64)), plane(fy(dtype=torch.float64))
    s = torch.tensor(smoothing, dtype=torch.float64)
    # d/dx: columns -1, 0, +1 left to right, weighted by the smoothing down the rows.
    assert torch.equal(kx, torch.outer(s, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)))
    assert torch.equal(ky, kx.t())
    # Zero sum (flat regions give 0); antisymmetric along the derivative,
    # symmetric across it.
    assert kx.sum() == 0 and ky.sum() == 0
    assert torch.equal(kx.flip(1), -kx) and torch.equal(kx.flip(0), kx)
    assert torch.equal(ky.flip(0), -ky) and torch.equal(ky.flip(1), ky)
    # Both together, interleaved per channel.
    both = getattr(filters, name)(dtype=torch.float64)
    assert both.shape == (2, 1, 3, 3)
    assert torch.equal(both[0, 0], kx) and torch.equal(both[1, 0], ky)


def test_edge_kernels():
    v, h = plane(filters.vertical_edge()), plane(filters.horizontal_edge())
    assert torch.equal(v, torch.tensor([[1.0, 0, -1]] * 3))
    assert torch.equal(h, v.t())
    assert v.sum() == 0 and h.sum() == 0


@pytest.mark.parametrize("fn", [filters.sobel_x, filters.sobel_y, filters.scharr_x,
                                filters.prewitt_y, filters.vertical_edge,
                                filters.horizontal_edge])
def test_ramps_give_the_documented_sign_and_size(fn):
    """Cross-correlation, no flip: an image brightening to the right (x) or
    downwards (y) gives the response the docstring states."""
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    per_pixel = {filters.sobel_x: ("x", 8), filters.sobel_y: ("y", 8),
                 filters.scharr_x: ("x", 32), filters.prewitt_y: ("y", 6),
                 filters.vertical_edge: ("x", -6), filters.horizontal_edge: ("y", -6)}[fn]
    axis, expected = per_pixel
    ramp = (xx if axis == "x" else yy).view(1, 1, 7, 7)
    across = (yy if axis == "x" else xx).view(1, 1, 7, 7)
    out = CF.conv2d(ramp, fn())
    assert torch.allclose(out, torch.full_like(out, float(expected)))
    assert torch.equal(CF.conv2d(across, fn()), torch.zeros_like(out))  # blind across


def test_channels_dtype_device():
    k = filters.gaussian(5, 1.0, channels=3, dtype=torch.float64, device="cpu")
    assert k.shape == (3, 1, 5, 5) and k.dtype == torch.float64 and k.device.type == "cpu"
    assert all(torch.equal(k[c], k[0]) for c in range(3)) and k.is_contiguous()
    assert filters.mean().dtype == torch.get_default_dtype()
    pair = filters.sobel(channels=2)
    assert pair.shape == (4, 1, 3, 3)
    assert torch.equal(pair[0], filters.sobel_x()[0]) and torch.equal(pair[1], filters.sobel_y()[0])
    assert torch.equal(pair[2], pair[0]) and torch.equal(pair[3], pair[1])
    meta = filters.scharr_y(device="meta")
    assert meta.device.type == "meta" and meta.shape == (1, 1, 3, 3)


def test_depthwise_blur_keeps_flat_images_and_filters_each_channel_alone():
    img = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    img[:, 1] = 0.5  # one flat channel
    k = filters.gaussian(5, 1.2, channels=3, dtype=torch.float64)
    out = CF.conv2d(img, k, padding="valid", groups=3)
    assert out.shape == (2, 3, 12, 12)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 0.5))
    alone = CF.conv2d(img[:, 2:3], k[2:3], padding="valid")
    assert torch.allclose(out[:, 2:3], alone)
    # A blur smooths: less variation between neighbours than the input had.
    assert out[:, 0].diff(dim=-1).abs().mean() < img[:, 0].diff(dim=-1).abs().mean()


@pytest.mark.parametrize("call,message", [
    (lambda: filters.gaussian(4, 1.0), "expected size to be a positive odd int, but got size=4"),
    (lambda: filters.gaussian(5, 0.0), "expected sigma to be a positive number, but got sigma=0.0"),
    (lambda: filters.mean(0), "expected size to be a positive int, but got size=0"),
    (lambda: filters.sobel_x(channels=0), "expected channels to be a positive int or None, but "
                                          "got channels=0"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# --------------------------------------------------------------------------- Sobel finds a square


def test_sobel_finds_the_edges_of_a_square():
    """A bright square on a dark background: the Sobel gradient magnitude is
    large exactly on the pixels next to the square's border (either side)
    and zero everywhere else, inside and outside."""
    H = W = 32
    top, bottom, left, right = 10, 22, 8, 20  # the square is rows 10..21, columns 8..19
    img = torch.zeros(1, 1, H, W, dtype=torch.float64)
    img[..., top:bottom, left:right] = 1.0
    g = CF.conv2d(img, filters.sobel(dtype=torch.float64), padding=1)  # (1, 2, H, W): d/dx, d/dy
    magnitude = g.square().sum(1).sqrt()[0]

    # A pixel's 3x3 window sees both sides of the border iff it lies within one
    # pixel of it: the pixels within Chebyshev distance 1 of the square, not
    # counting the square's interior more than one pixel from its edge.
    rows, cols = torch.arange(H).view(-1, 1), torch.arange(W).view(1, -1)
    near = (rows >= top - 1) & (rows <= bottom) & (cols >= left - 1) & (cols <= right)
    deep_inside = (rows >= top + 1) & (rows < bottom - 1) & (cols >= left + 1) & (cols < right - 1)
    border = near & ~deep_inside
    assert border.sum() == (14 * 14 - 10 * 10)

    assert (magnitude[~border] == 0).all()
    # On straight stretches of the border the response is 4 (a unit step seen
    # through the [1, 2, 1] smoothing); the outer corner pixels, whose window
    # holds one square pixel, get the least: sqrt(1 + 1).
    assert (magnitude[border] >= math.sqrt(2) - 1e-12).all()
    assert magnitude[top - 1, left - 1] == pytest.approx(math.sqrt(2), rel=1e-12)
    mid = (top + bottom) // 2
    assert magnitude[mid, left - 1] == 4 and magnitude[mid, left] == 4   # left edge, both sides
    assert magnitude[mid, right - 1] == 4 and magnitude[mid, right] == 4  # right edge
    # Signs: brighter to the right at the left edge, darker at the right edge.
    assert g[0, 0, mid, left] > 0 and g[0, 0, mid, right - 1] < 0 and g[0, 1, mid, left] == 0
    assert g[0, 1, top, (left + right) // 2] > 0 and g[0, 1, bottom - 1, (left + right) // 2] < 0
