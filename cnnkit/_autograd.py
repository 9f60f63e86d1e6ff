"""Autograd for the cnnkit ops.

Each op gets its backward through ``torch.library.register_autograd``, which
wraps it in a ``torch.autograd.Function``: ``setup_context`` saves what the
backward needs, and every backward is written with cnnkit ops that are
themselves differentiable, so gradients of gradients (double backward) work.

Convolution -- dense, unshared (local) or tiled alike -- is bilinear in
(input, weight), and its three views close under differentiation:

    Z  = conv(V, K)                     forward
    dV = input_backward(G, K)           (for dense: conv_transpose2d(G, K))
    dK = weight_backward(G, V)

<conv(V, K), G> = <V, input_backward(G, K)> = <K, weight_backward(G, V)>,
so the derivative of each view with respect to either argument is one of the
other two views. The bias gradient is a sum of G; its adjoint spreads a
gradient back over the summed positions.
"""
from __future__ import annotations

import torch

_ops = torch.ops.cnnkit


def _needs(ctx, i):
    return ctx.needs_input_grad[i]


# --------------------------------------------------------------------------- convolution


class _ConvFamily:
    """What differs between dense, local and tiled convolution for autograd:
    where the kernel size sits in the weight, and the shape of the bias."""

    def __init__(self, name, kernel_dims, tile_dims=None):
        self.name = name
        self.forward = getattr(_ops, name)
        self.input_backward = getattr(_ops, f"{name}_input_backward")
        self.weight_backward_op = getattr(_ops, f"{name}_weight_backward")
        self.bias_backward_op = getattr(_ops, f"{name}_bias_backward")
        self.kernel_dims = kernel_dims
        self.tile_dims = tile_dims

    def weight_backward(self, grad, x, w, stride, padding, dilation, groups):
        kernel = [w.shape[d] for d in self.kernel_dims]
        if self.tile_dims is None:
            return self.weight_backward_op(grad, x, kernel, stride, padding, dilation, groups)
        tiles = [w.shape[d] for d in self.tile_dims]
        return self.weight_backward_op(grad, x, kernel, tiles, stride, padding, dilation, groups)

    def bias_backward(self, grad, w):
        if self.tile_dims is None:
            return self.bias_backward_op(grad)
        return self.bias_backward_op(grad, [w.shape[d] for d in self.tile_dims])

    def register(self):
        family = self

        def setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])
            ctx.geometry = inputs[3:]  # (stride, padding, dilation, groups)

        def forward_backward(ctx, grad):
            x, w = ctx.saved_tensors
            geometry = ctx.geometry
            gx = gw = gb = None
            if _needs(ctx, 0):
                gx = family.input_backward(grad, w, x.shape[2:], *geometry)
            if _needs(ctx, 1):
                gw = family.weight_backward(grad, x, w, *geometry)
            if _needs(ctx, 2):
                gb = family.bias_backward(grad, w)
            return gx, gw, gb, None, None, None, None

        def input_backward_backward(ctx, gg):
            # dV = T(G, K), linear in each: d/dG <- conv(gg, K); d/dK <- weight_backward(G, gg).
            g, w = ctx.saved_tensors
            d_g = d_w = None
            if _needs(ctx, 0):
                d_g = family.forward(gg, w, None, *ctx.geometry)
            if _needs(ctx, 1):
                d_w = family.weight_backward(g, gg, w, *ctx.geometry)
            return d_g, d_w, None, None, None, None, None

        def weight_backward_setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])
            ctx.geometry = inputs[-4:]  # (stride, padding, dilation, groups)

        def weight_backward_backward(ctx, gg):
            # dK = U(G, V): d/dG <- conv(V, gg); d/dV <- input_backward(G, gg).
            g, x = ctx.saved_tensors
            d_g = d_x = None
            if _needs(ctx, 0):
                d_g = family.forward(x, gg, None, *ctx.geometry)
            if _needs(ctx, 1):
                d_x = family.input_backward(g, gg, x.shape[2:], *ctx.geometry)
            return (d_g, d_x) + (None,) * (len(ctx.needs_input_grad) - 2)

        def bias_backward_setup(ctx, inputs, output):
            ctx.grad_shape = inputs[0].shape

        def bias_backward_backward(ctx, gg):
            return (_spread_bias(gg, ctx.grad_shape),) + (None,) * (len(ctx.needs_input_grad) - 1)

        name = f"cnnkit::{self.name}"
        torch.library.register_autograd(name, forward_backward, setup_context=setup)
        torch.library.register_autograd(f"{name}_input_backward", input_backward_backward,
                                        setup_context=setup)
        torch.library.register_autograd(f"{name}_weight_backward", weight_backward_backward,
                                        setup_context=weight_backward_setup)
        torch.library.register_autograd(f"{name}_bias_backward", bias_backward_backward,
                                        setup_context=bias_backward_setup)


def _spread_bias(gg, grad_shape):
    """Adjoint of the bias gradient: gg of the bias's shape, (K,), (K, P, Q) or
    (K, tH, tW), spread over the (N, K, P, Q) positions each bias entry serves."""
    N, K, P, Q = grad_shape
    if gg.dim() == 1:
        return gg.view(1, K, 1, 1).expand(grad_shape)
    tH, tW = gg.shape[1:]
    if (tH, tW) != (P, Q):  # tiled: location (p, q) gets entry (p % tH, q % tW)
        gg = gg.repeat(1, -(-P // tH), -(-Q // tW))[:, :P, :Q]
    return gg.unsqueeze(0).expand(grad_shape)


_ConvFamily("conv2d", kernel_dims=(2, 3)).register()
_ConvFamily("local_conv2d", kernel_dims=(4, 5)).register()
_ConvFamily("tiled_conv2d", kernel_dims=(2, 3), tile_dims=(4, 5)).register()


def _conv_transpose_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    stride, padding, output_padding, groups, dilation = inputs[3:]
    ctx.geometry = (stride, padding, dilation, groups)


def _conv_transpose2d_backward(ctx, grad):
    # Y = T(X, K) + b, with T = conv2d_input_backward: X plays the role of G.
    # When output_padding is not below the stride, conv2d(Y) has more rows or
    # columns (P, Q) than X (H, W) and T is the adjoint of conv2d cut to the
    # first H x W outputs: the extra outputs are dropped from dX, and X is
    # zero-extended to (P, Q) for dK.
    x, w = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    H, W = x.shape[2:]
    gx = gw = gb = None
    if _needs(ctx, 0) or _needs(ctx, 1):
        full = _ops.conv2d(grad, w, None, stride, padding, dilation, groups)
        P, Q = full.shape[2:]
        if _needs(ctx, 0):
            gx = full[:, :, :H, :W] if (P, Q) != (H, W) else full
        if _needs(ctx, 1):
            x_ext = torch.nn.functional.pad(x, (0, Q - W, 0, P - H)) if (P, Q) != (H, W) else x
            gw = _ops.conv2d_weight_backward(x_ext, grad, w.shape[2:], stride, padding, dilation,
                                             groups)
    if _needs(ctx, 2):
        gb = _ops.conv2d_bias_backward(grad)
    return gx, gw, gb, None, None, None, None, None


torch.library.register_autograd("cnnkit::conv_transpose2d", _conv_transpose2d_backward,
                                setup_context=_conv_transpose_setup)


# --------------------------------------------------------------------------- pooling
#
# Every pooling gradient is linear in grad_output G, and the ops close under
# differentiation through their adjoints:
#   max:      dX = max_pool2d_backward(G, indices), a scatter of G to the maxima;
#             its adjoint gathers at the same indices.
#   average:  dX = avg_pool2d_backward(G); its adjoint is avg_pool2d.
#   adaptive: dX = adaptive_avg_pool2d_backward(G); its adjoint is adaptive_avg_pool2d.
#   channel:  dX = channel_max_pool_backward(G, indices); its adjoint gathers channels.
# The input enters the backward ops only through its shape (and, for max, through
# the indices, which are piecewise constant): their gradient with respect to it is
# zero. Indices are integers and not differentiable.


def _max_pool_setup(ctx, inputs, output):
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(inputs[0], indices)
    ctx.num_args = len(inputs)


def _max_pool_backward(ctx, grad, _grad_indices):
    x, indices = ctx.saved_tensors
    gx = _ops.max_pool2d_backward(grad, x, indices) if _needs(ctx, 0) else None
    return (gx,) + (None,) * (ctx.num_args - 1)


def _max_pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _max_pool2d_backward_backward(ctx, gg):
    # dX[n, c, indices[n, c, p, q]] += G[n, c, p, q]: the adjoint reads gg there,
    # a torch.gather (differentiable in turn: its adjoint is the scatter again).
    (indices,) = ctx.saved_tensors
    d_g = None
    if _needs(ctx, 0):
        d_g = gg.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return d_g, None, None


def _avg_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    # (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    ctx.geometry = inputs[1:]


def _avg_pool2d_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    gx = _ops.avg_pool2d_backward(grad, x, *ctx.geometry) if _needs(ctx, 0) else None
    return (gx,) + (None,) * 6


def _avg_pool_backward_setup(ctx, inputs, output):
    ctx.geometry = inputs[2:]


def _avg_pool2d_backward_backward(ctx, gg):
    d_g = _ops.avg_pool2d(gg, *ctx.geometry) if _needs(ctx, 0) else None
    return (d_g,) + (None,) * 7


def _adaptive_avg_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _adaptive_avg_pool2d_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    gx = _ops.adaptive_avg_pool2d_backward(grad, x) if _needs(ctx, 0) else None
    return gx, None


def _adaptive_avg_pool_backward_setup(ctx, inputs, output):
    ctx.output_size = list(inputs[0].shape[2:])


def _adaptive_avg_pool2d_backward_backward(ctx, gg):
    d_g = _ops.adaptive_avg_pool2d(gg, ctx.output_size) if _needs(ctx, 0) else None
    return d_g, None


def _channel_max_pool_setup(ctx, inputs, output):
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(inputs[0], indices)
    ctx.pool_size = inputs[1]


def _channel_max_pool_backward(ctx, grad, _grad_indices):
    x, indices = ctx.saved_tensors
    gx = None
    if _needs(ctx, 0):
        gx = _ops.channel_max_pool_backward(grad, x, indices, ctx.pool_size)
    return gx, None


def _channel_max_pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _channel_max_pool_backward_backward(ctx, gg):
    # dX[n, indices[n, k, h, w], h, w] = G[n, k, h, w]: the adjoint reads gg there.
    (indices,) = ctx.saved_tensors
    d_g = gg.gather(1, indices) if _needs(ctx, 0) else None
    return d_g, None, None, None


torch.library.register_autograd("cnnkit::max_pool2d", _max_pool_backward,
                                setup_context=_max_pool_setup)
torch.library.register_autograd("cnnkit::adaptive_max_pool2d", _max_pool_backward,
                                setup_context=_max_pool_setup)
torch.library.register_autograd("cnnkit::max_pool2d_backward", _max_pool2d_backward_backward,
                                setup_context=_max_pool_backward_setup)
torch.library.register_autograd("cnnkit::avg_pool2d", _avg_pool2d_backward,
                                setup_context=_avg_pool_setup)
torch.library.register_autograd("cnnkit::avg_pool2d_backward", _avg_pool2d_backward_backward,
                                setup_context=_avg_pool_backward_setup)
torch.library.register_autograd("cnnkit::adaptive_avg_pool2d", _adaptive_avg_pool2d_backward,
                                setup_context=_adaptive_avg_pool_setup)
torch.library.register_autograd("cnnkit::adaptive_avg_pool2d_backward",
                                _adaptive_avg_pool2d_backward_backward,
                                setup_context=_adaptive_avg_pool_backward_setup)
torch.library.register_autograd("cnnkit::channel_max_pool", _channel_max_pool_backward,
                                setup_context=_channel_max_pool_setup)
torch.library.register_autograd("cnnkit::channel_max_pool_backward",
                                _channel_max_pool_backward_backward,
                                setup_context=_channel_max_pool_backward_setup)
