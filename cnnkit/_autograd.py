"""Autograd for the cnnkit ops.

Each op gets its backward through ``torch.library.register_autograd``, which
wraps it in a ``torch.autograd.Function``: ``setup_context`` saves what the
backward needs, and every backward is written with cnnkit ops that are
themselves differentiable, so gradients of gradients (double backward) work.

Convolution is bilinear in (input, weight), and its three views close under
differentiation:

    Z  = conv2d(V, K)                     forward
    dV = conv2d_input_backward(G, K)      = conv_transpose2d(G, K)
    dK = conv2d_weight_backward(G, V)

<conv2d(V, K), G> = <V, conv2d_input_backward(G, K)> = <K, conv2d_weight_backward(G, V)>,
so the derivative of each view with respect to either argument is one of the
other two views.
"""
from __future__ import annotations

import torch

_ops = torch.ops.cnnkit


def _needs(ctx, i):
    return ctx.needs_input_grad[i]


# --------------------------------------------------------------------------- convolution


def _conv_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.geometry = inputs[3:]  # (stride, padding, dilation, groups)


def _conv2d_backward(ctx, grad):
    x, w = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    gx = gw = gb = None
    if _needs(ctx, 0):
        gx = _ops.conv2d_input_backward(grad, w, x.shape[2:], stride, padding, dilation, groups)
    if _needs(ctx, 1):
        gw = _ops.conv2d_weight_backward(grad, x, w.shape[2:], stride, padding, dilation, groups)
    if _needs(ctx, 2):
        gb = _ops.conv2d_bias_backward(grad)
    return gx, gw, gb, None, None, None, None


def _input_backward_setup(ctx, inputs, output):
    grad_output, weight, input_size = inputs[:3]
    ctx.save_for_backward(grad_output, weight)
    ctx.geometry = inputs[3:]


def _conv2d_input_backward_backward(ctx, gg):
    # dV = T(G, K) with T linear in each: d/dG <- conv2d(gg, K); d/dK <- weight_backward(G, gg).
    g, w = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    d_g = d_w = None
    if _needs(ctx, 0):
        d_g = _ops.conv2d(gg, w, None, stride, padding, dilation, groups)
    if _needs(ctx, 1):
        d_w = _ops.conv2d_weight_backward(g, gg, w.shape[2:], stride, padding, dilation, groups)
    return d_g, d_w, None, None, None, None, None


def _weight_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.geometry = inputs[3:]


def _conv2d_weight_backward_backward(ctx, gg):
    # dK = U(G, V): d/dG <- conv2d(V, gg); d/dV <- input_backward(G, gg).
    g, x = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    d_g = d_x = None
    if _needs(ctx, 0):
        d_g = _ops.conv2d(x, gg, None, stride, padding, dilation, groups)
    if _needs(ctx, 1):
        d_x = _ops.conv2d_input_backward(g, gg, x.shape[2:], stride, padding, dilation, groups)
    return d_g, d_x, None, None, None, None, None


def _bias_backward_setup(ctx, inputs, output):
    ctx.grad_shape = inputs[0].shape


def _conv2d_bias_backward_backward(ctx, gg):
    # db[k] = sum_{n,p,q} G[n,k,p,q]: its adjoint broadcasts gg back over (n, p, q).
    return gg.view(1, -1, 1, 1).expand(ctx.grad_shape)


def _conv_transpose_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    stride, padding, output_padding, groups, dilation = inputs[3:]
    ctx.geometry = (stride, padding, dilation, groups)


def _conv_transpose2d_backward(ctx, grad):
    # Y = T(X, K) + b, with T = conv2d_input_backward: X plays the role of G.
    x, w = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    gx = gw = gb = None
    if _needs(ctx, 0):
        gx = _ops.conv2d(grad, w, None, stride, padding, dilation, groups)
    if _needs(ctx, 1):
        gw = _ops.conv2d_weight_backward(x, grad, w.shape[2:], stride, padding, dilation, groups)
    if _needs(ctx, 2):
        gb = _ops.conv2d_bias_backward(grad)
    return gx, gw, gb, None, None, None, None, None


torch.library.register_autograd("cnnkit::conv2d", _conv2d_backward, setup_context=_conv_setup)
torch.library.register_autograd("cnnkit::conv2d_input_backward", _conv2d_input_backward_backward,
                                setup_context=_input_backward_setup)
torch.library.register_autograd("cnnkit::conv2d_weight_backward", _conv2d_weight_backward_backward,
                                setup_context=_weight_backward_setup)
torch.library.register_autograd("cnnkit::conv2d_bias_backward", _conv2d_bias_backward_backward,
                                setup_context=_bias_backward_setup)
torch.library.register_autograd("cnnkit::conv_transpose2d", _conv_transpose2d_backward,
                                setup_context=_conv_transpose_setup)


# --------------------------------------------------------------------------- pooling
