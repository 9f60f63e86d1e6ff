"""float64 references the kernels are tested against.

Convolution and transposed convolution: torch.nn.functional (ATen's own
kernels) on float64 copies of the inputs. The padding rules of SPEC 1 are
spelled out here on their own, independent of cnnkit/_utils.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from problems import pair


def explicit_padding(padding, kernel, dilation) -> tuple:
    """(top, bottom, left, right) for any conv padding argument.

    'same' pads d*(k-1) in total per axis, the odd one at the bottom/right;
    'full' pads d*(k-1) on every side; 'valid' pads nothing.
    """
    (kh, kw), (dh, dw) = pair(kernel), pair(dilation)
    if isinstance(padding, str):
        th, tw = dh * (kh - 1), dw * (kw - 1)
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        if padding == "full":
            return (th, th, tw, tw)
        raise ValueError(padding)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(padding)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


def op_padding(padding, kernel, dilation) -> list:
    """Padding as the dispatcher ops take it: 2 entries when symmetric, else 4."""
    t, b, l, r = explicit_padding(padding, kernel, dilation)
    return [t, l] if (t, l) == (b, r) else [t, b, l, r]


def conv2d_out_size(H, W, kernel, stride, padding, dilation) -> tuple:
    t, b, l, r = explicit_padding(padding, kernel, dilation)
    (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride), pair(dilation)
    return ((H + t + b - dh * (kh - 1) - 1) // sh + 1, (W + l + r - dw * (kw - 1) - 1) // sw + 1)


def _f64(t):
    return None if t is None else t.detach().to(torch.float64)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """float64 conv2d through ATen; explicit zero padding (F.pad) so that any
    (top, bottom, left, right) is allowed. Differentiable in its float64 inputs."""
    t, bt, l, r = explicit_padding(padding, tuple(w.shape[-2:]), dilation)
    x = F.pad(x, (l, r, t, bt))
    return F.conv2d(x, w, b, pair(stride), 0, pair(dilation), groups)


def conv2d_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d of float64 copies of the inputs (no graph)."""
    return conv2d(_f64(x), _f64(w), _f64(b), stride, padding, dilation, groups)


def conv2d_input_backward_ref(g, w, input_size, stride, padding, dilation, groups):
    """dL/dV for dL/dZ = g: the adjoint of V -> conv2d(V, K). The convolution is
    linear in V, so its vector-Jacobian product does not depend on V: take V = 0."""
    g, w = _f64(g), _f64(w)
    x = torch.zeros(g.shape[0], w.shape[1] * groups, *input_size, dtype=torch.float64,
                    device=g.device, requires_grad=True)
    z = conv2d(x, w, None, stride, padding, dilation, groups)
    (gx,) = torch.autograd.grad(z, x, g, allow_unused=True)
    return torch.zeros_like(x) if gx is None else gx


def conv2d_weight_backward_ref(g, x, kernel_size, stride, padding, dilation, groups):
    """dL/dK for dL/dZ = g: the adjoint of K -> conv2d(V, K), again taken at K = 0."""
    g, x = _f64(g), _f64(x)
    w = torch.zeros(g.shape[1], x.shape[1] // groups, *kernel_size, dtype=torch.float64,
                    device=g.device, requires_grad=True)
    z = conv2d(x, w, None, stride, padding, dilation, groups)
    (gw,) = torch.autograd.grad(z, w, g, allow_unused=True)
    return torch.zeros_like(w) if gw is None else gw


def conv2d_bias_backward_ref(g):
    """dL/db[k] = sum over n, y, x of g[n, k, y, x]."""
    return _f64(g).sum(dim=(0, 2, 3))


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution through ATen; differentiable in its inputs."""
    return F.conv_transpose2d(x, w, b, pair(stride), pair(padding), pair(output_padding), groups,
                              pair(dilation))


def conv_transpose2d_ref(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                         dilation=1):
    """conv_transpose2d of float64 copies of the inputs (no graph)."""
    return conv_transpose2d(_f64(x), _f64(w), _f64(b), stride, padding, output_padding, groups,
                            dilation)


def conv_transpose2d_out_size(H, W, kernel, stride, padding, output_padding, dilation) -> tuple:
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    (oph, opw), (dh, dw) = pair(output_padding), pair(dilation)
    return ((H - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
            (W - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1)


# ---- unshared (local) and tiled convolution: the SPEC 1.3 / 1.4 formulas
#
# Both read the same patches as conv2d: patch (y, x) of channel c holds
# V[n, c, y*s - p_top + m*d, x*s - p_left + q*d] for the kernel taps (m, q),
# zero outside the input. F.unfold collects them after explicit zero padding
# (F.pad, so top/bottom and left/right may differ); the weight applied to a
# patch is then chosen per output location, and einsum sums over (l, m, q).


def _patches(x, kernel, stride, padding, dilation, groups):
    """Patches of a float64 input x (N, C, H, W) as (N, g, C/g, kH, kW, OH, OW)."""
    kh, kw = pair(kernel)
    t, bt, l, r = explicit_padding(padding, (kh, kw), dilation)
    N, C, H, W = x.shape
    OH, OW = conv2d_out_size(H, W, (kh, kw), stride, (t, bt, l, r), dilation)
    cols = F.unfold(F.pad(x, (l, r, t, bt)), (kh, kw), dilation=pair(dilation), padding=0,
                    stride=pair(stride))
    # unfold's rows are (c, m, q) with c slowest; its columns are (y, x) row-major.
    return cols.view(N, groups, C // groups, kh, kw, OH, OW)


def local_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """SPEC 1.3, differentiable in its float64 inputs:
    Z[n,i,y,x] = b[i,y,x] + sum_{l,m,q} V[n, g(i)*C/g + l, y*s - p + m*d, x*s - p + q*d] * W[i,y,x,l,m,q]
    with W of shape (C_out, OH, OW, C_in/g, kH, kW) and b of shape (C_out, OH, OW)."""
    K, OH, OW, Cg, kh, kw = w.shape
    cols = _patches(x, (kh, kw), stride, padding, dilation, groups)
    assert cols.shape[-2:] == (OH, OW), "weight (OH, OW) is not the output size"
    wg = w.reshape(groups, K // groups, OH, OW, Cg, kh, kw)
    # g: group, o: output channel within it, l: input channel within it, (m, q): tap.
    z = torch.einsum("nglmqyx,goyxlmq->ngoyx", cols, wg).reshape(x.shape[0], K, OH, OW)
    return z if b is None else z + b


def local_conv2d_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """local_conv2d of float64 copies of the inputs (no graph)."""
    return local_conv2d(_f64(x), _f64(w), _f64(b), stride, padding, dilation, groups)


def tiled_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """SPEC 1.4, differentiable in its float64 inputs:
    Z[n,i,y,x] = b[i, y%tH, x%tW] + sum_{l,m,q} V[n, ., y*s - p + m*d, x*s - p + q*d] * K[i,l,m,q, y%tH, x%tW]
    with K of shape (C_out, C_in/g, kH, kW, tH, tW) and b of shape (C_out, tH, tW)."""
    K, Cg, kh, kw, th, tw = w.shape
    cols = _patches(x, (kh, kw), stride, padding, dilation, groups)
    OH, OW = cols.shape[-2:]
    rows = torch.arange(OH, device=w.device) % th
    cols_idx = torch.arange(OW, device=w.device) % tw
    # The kernel of every output location: tile (y % tH, x % tW), gathered, so
    # its gradient sums over all the locations that share a tile.
    w_loc = w[:, :, :, :, rows][..., cols_idx]  # (K, C/g, kH, kW, OH, OW)
    wg = w_loc.reshape(groups, K // groups, Cg, kh, kw, OH, OW)
    z = torch.einsum("nglmqyx,golmqyx->ngoyx", cols, wg).reshape(x.shape[0], K, OH, OW)
    return z if b is None else z + b[:, rows][:, :, cols_idx]


def tiled_conv2d_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """tiled_conv2d of float64 copies of the inputs (no graph)."""
    return tiled_conv2d(_f64(x), _f64(w), _f64(b), stride, padding, dilation, groups)


def _vjp_at_zero(forward, g, shape):
    """dL/dA for dL/dZ = g, where Z = forward(A) is linear in A (a convolution
    with the other argument fixed): its vector-Jacobian product does not depend
    on where it is taken, so take A = 0 of `shape` (on the device of g)."""
    leaf = torch.zeros(shape, dtype=torch.float64, device=g.device, requires_grad=True)
    z = forward(leaf)
    (grad,) = torch.autograd.grad(z, leaf, _f64(g), allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def local_conv2d_input_backward_ref(g, w, input_size, stride, padding, dilation, groups):
    w = _f64(w)
    shape = (g.shape[0], w.shape[3] * groups, *input_size)
    return _vjp_at_zero(lambda x: local_conv2d(x, w, None, stride, padding, dilation, groups), g,
                        shape)


def local_conv2d_weight_backward_ref(g, x, kernel_size, stride, padding, dilation, groups):
    x = _f64(x)
    OH, OW = g.shape[2:]
    shape = (g.shape[1], OH, OW, x.shape[1] // groups, *pair(kernel_size))
    return _vjp_at_zero(lambda w: local_conv2d(x, w, None, stride, padding, dilation, groups), g,
                        shape)


def local_conv2d_bias_backward_ref(g):
    """dL/db[k, y, x] = sum over n of g[n, k, y, x]."""
    return _f64(g).sum(dim=0)


def tiled_conv2d_input_backward_ref(g, w, input_size, stride, padding, dilation, groups):
    w = _f64(w)
    shape = (g.shape[0], w.shape[1] * groups, *input_size)
    return _vjp_at_zero(lambda x: tiled_conv2d(x, w, None, stride, padding, dilation, groups), g,
                        shape)


def tiled_conv2d_weight_backward_ref(g, x, kernel_size, tiles, stride, padding, dilation, groups):
    x = _f64(x)
    shape = (g.shape[1], x.shape[1] // groups, *pair(kernel_size), *pair(tiles))
    return _vjp_at_zero(lambda w: tiled_conv2d(x, w, None, stride, padding, dilation, groups), g,
                        shape)


def tiled_conv2d_bias_backward_ref(g, tiles):
    """dL/db[k, a, c] = sum of g[n, k, y, x] over n and the (y, x) with
    y % tH = a and x % tW = c."""
    g = _f64(g)
    th, tw = pair(tiles)
    N, K, OH, OW = g.shape
    out = g.new_zeros(K, th, tw)
    for a in range(min(th, OH)):
        for c in range(min(tw, OW)):
            out[:, a, c] = g[:, :, a::th, c::tw].sum(dim=(0, 2, 3))
    return out
