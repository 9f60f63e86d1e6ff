"""Classic fixed image filters, as weights ready for convolution.

Every function returns a kernel ``K`` shaped ``(1, 1, k, k)`` for one-channel
images, or, with ``channels=C``, ``(C, 1, k, k)``: the same kernel for each
channel, to use with ``groups=C`` (a depthwise convolution that filters every
channel on its own). Build them in the dtype and on the device of the images::

    import cnnkit.functional as CF
    from cnnkit import filters

    img = torch.rand(8, 3, 64, 64)
    blurred = CF.conv2d(img, filters.gaussian(5, 1.0, channels=3), padding="same", groups=3)
    gx = CF.conv2d(gray, filters.sobel_x(), padding=1)           # gray: (N, 1, H, W)

Sign convention. cnnkit, like every deep-learning library, computes
cross-correlation: ``out[y, x] = sum_{m,q} img[y - p + m, x - p + q] * K[m, q]``,
the kernel laid on the image as written, without a flip. The kernels here are
written for that: row index ``m`` grows downwards and column index ``q``
rightwards, so the derivative kernels give positive responses where the image
gets brighter to the right (``*_x``) or downwards (``*_y``). (Textbooks that
define filtering as a true convolution print them mirrored.)
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "mean",
    "gaussian",
    "sobel",
    "sobel_x",
    "sobel_y",
    "scharr",
    "scharr_x",
    "scharr_y",
    "prewitt",
    "prewitt_x",
    "prewitt_y",
    "vertical_edge",
    "horizontal_edge",
]


def _as_weight(kernel_2d: torch.Tensor, channels, dtype, device) -> torch.Tensor:
    """A (k, k) kernel (built in float64) as a (1, 1, k, k) or (C, 1, k, k) weight."""
    if channels is None:
        c = 1
    elif isinstance(channels, int) and not isinstance(channels, bool) and channels > 0:
        c = channels
    else:
        raise ValueError(f"cnnkit.filters: expected channels to be a positive int or None, but "
                         f"got channels={channels!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    weight = kernel_2d.to(dtype=dtype, device=device)
    return weight.expand(c, 1, *kernel_2d.shape).contiguous()


def _check_size(fn, size, odd=True):
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or (odd and size % 2 == 0):
        kind = "a positive odd int" if odd else "a positive int"
        raise ValueError(f"cnnkit.filters.{fn}: expected size to be {kind}, but got size={size!r}")


def mean(size: int = 3, *, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Box (mean) filter: every entry ``1 / size**2``, so the entries sum to 1
    and the filter averages each ``size x size`` neighbourhood.

    Args:
        size: kernel side ``k`` (any positive int; an even one has no centre, so
            ``padding='same'`` shifts its output half a pixel).
        channels: None for ``(1, 1, k, k)``; C for a depthwise ``(C, 1, k, k)``.
        dtype, device: of the returned tensor (default dtype, CPU by default).

    Returns:
        ``(1, 1, k, k)`` or ``(C, 1, k, k)``.
    """
    _check_size("mean", size, odd=False)
    k = torch.full((size, size), 1.0 / (size * size), dtype=torch.float64)
    return _as_weight(k, channels, dtype, device)


def gaussian(size: int = 5, sigma: float = 1.0, *, channels: int | None = None, dtype=None,
             device=None) -> torch.Tensor:
    """Gaussian blur: ``K[m, q] = g(m - c) * g(q - c)`` with ``c = (size - 1) / 2``
    and ``g(t) = exp(-t**2 / (2 * sigma**2))``, normalised so the entries sum
    to 1 (a flat image keeps its value). Symmetric, so orientation does not matter.

    Args:
        size: kernel side ``k``, a positive odd int (about ``6 * sigma + 1``
            keeps the tails).
        sigma: standard deviation in pixels, positive.
        channels: None for ``(1, 1, k, k)``; C for a depthwise ``(C, 1, k, k)``.
        dtype, device: of the returned tensor.

    Returns:
        ``(1, 1, k, k)`` or ``(C, 1, k, k)``.
    """
    _check_size("gaussian", size)
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0
            and math.isfinite(sigma)):
        raise ValueError(f"cnnkit.filters.gaussian: expected sigma to be a positive number, but "
                         f"got sigma={sigma!r}")
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t * t / (2.0 * sigma * sigma))
    g = g / g.sum()
    return _as_weight(torch.outer(g, g), channels, dtype, device)


# Derivative kernels: smoothing across the derivative (a column vector, rows
# m = 0..2 top to bottom) times the central difference along it ([-1, 0, 1],
# left to right), as cross-correlation kernels.
_DIFFERENCE = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
_SMOOTHING = {
    "sobel": torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64),
    "scharr": torch.tensor([3.0, 10.0, 3.0], dtype=torch.float64),
    "prewitt": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
}


def _derivative(name, axis, channels, dtype, device):
    k = torch.outer(_SMOOTHING[name], _DIFFERENCE)  # d/dx: columns go -1, 0, +1
    if axis == "y":
        k = k.t().contiguous()  # d/dy: rows go -1, 0, +1 (top to bottom)
    return _as_weight(k, channels, dtype, device)


def sobel_x(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Sobel horizontal-derivative kernel (responds to vertical edges)::

        [[-1, 0, 1],
         [-2, 0, 2],
         [-1, 0, 1]]

    As a cross-correlation, ``out = sum K * img``: positive where the image gets
    brighter from left to right, negative where it gets darker. Entries sum to 0
    (zero on flat regions); on a ramp ``img = x`` the response is 8 per pixel.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("sobel", "x", channels, dtype, device)


def sobel_y(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Sobel vertical-derivative kernel (responds to horizontal edges), the
    transpose of :func:`sobel_x`::

        [[-1, -2, -1],
         [ 0,  0,  0],
         [ 1,  2,  1]]

    Positive where the image gets brighter from top to bottom (row index grows
    downwards). Entries sum to 0.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("sobel", "y", channels, dtype, device)


def scharr_x(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Scharr horizontal-derivative kernel, more rotation-invariant than Sobel::

        [[ -3, 0,  3],
         [-10, 0, 10],
         [ -3, 0,  3]]

    Positive where the image gets brighter from left to right. Entries sum to 0;
    on a ramp ``img = x`` the response is 32 per pixel.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("scharr", "x", channels, dtype, device)


def scharr_y(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Scharr vertical-derivative kernel, the transpose of :func:`scharr_x`::

        [[-3, -10, -3],
         [ 0,   0,  0],
         [ 3,  10,  3]]

    Positive where the image gets brighter from top to bottom. Entries sum to 0.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("scharr", "y", channels, dtype, device)


def prewitt_x(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Prewitt horizontal-derivative kernel (unweighted smoothing)::

        [[-1, 0, 1],
         [-1, 0, 1],
         [-1, 0, 1]]

    Positive where the image gets brighter from left to right. Entries sum to 0;
    on a ramp ``img = x`` the response is 6 per pixel.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("prewitt", "x", channels, dtype, device)


def prewitt_y(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Prewitt vertical-derivative kernel, the transpose of :func:`prewitt_x`::

        [[-1, -1, -1],
         [ 0,  0,  0],
         [ 1,  1,  1]]

    Positive where the image gets brighter from top to bottom. Entries sum to 0.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return _derivative("prewitt", "y", channels, dtype, device)


def _pair_of(name, channels, dtype, device):
    x = _derivative(name, "x", channels, dtype, device)
    y = _derivative(name, "y", channels, dtype, device)
    # Interleaved per channel: [c0_x, c0_y, c1_x, c1_y, ...], what groups=C needs.
    return torch.stack((x, y), dim=1).flatten(0, 1)


def sobel(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Both Sobel kernels, :func:`sobel_x` and :func:`sobel_y`, as the two output
    channels of one convolution, for the gradient ``(d/dx, d/dy)`` in one pass::

        g = CF.conv2d(gray, filters.sobel(), padding=1)        # (N, 2, H, W)
        magnitude = g.square().sum(1).sqrt()

    Returns:
        ``(2, 1, 3, 3)`` (x then y), or with ``channels=C`` ``(2C, 1, 3, 3)``
        ordered ``[c0_x, c0_y, c1_x, c1_y, ...]`` for ``groups=C``, which gives
        output channels ``2c`` (d/dx) and ``2c + 1`` (d/dy) for input channel ``c``.
    """
    return _pair_of("sobel", channels, dtype, device)


def scharr(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Both Scharr kernels, :func:`scharr_x` and :func:`scharr_y`, stacked as in :func:`sobel`.

    Returns:
        ``(2, 1, 3, 3)``, or ``(2C, 1, 3, 3)`` with ``channels=C``.
    """
    return _pair_of("scharr", channels, dtype, device)


def prewitt(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """Both Prewitt kernels, :func:`prewitt_x` and :func:`prewitt_y`, stacked as in :func:`sobel`.

    Returns:
        ``(2, 1, 3, 3)``, or ``(2C, 1, 3, 3)`` with ``channels=C``.
    """
    return _pair_of("prewitt", channels, dtype, device)


def vertical_edge(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """The simplest vertical-edge detector, a left-minus-right difference::

        [[1, 0, -1],
         [1, 0, -1],
         [1, 0, -1]]

    As a cross-correlation: positive where the left side is brighter than the
    right (a bright-to-dark vertical edge), negative for dark-to-bright; zero on
    flat regions and on horizontal edges. It is ``-prewitt_x()``.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return -prewitt_x(channels=channels, dtype=dtype, device=device)


def horizontal_edge(*, channels: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """The simplest horizontal-edge detector, a top-minus-bottom difference, the
    transpose of :func:`vertical_edge`::

        [[ 1,  1,  1],
         [ 0,  0,  0],
         [-1, -1, -1]]

    Positive where the top is brighter than the bottom (bright above dark);
    zero on flat regions and on vertical edges. It is ``-prewitt_y()``.

    Returns:
        ``(1, 1, 3, 3)``, or ``(C, 1, 3, 3)`` with ``channels=C``.
    """
    return -prewitt_y(channels=channels, dtype=dtype, device=device)
