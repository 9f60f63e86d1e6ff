"""Differentiation and batching of every cnnkit op, in every autograd mode.

Each op ``torch.ops.cnnkit.<name>`` has three rules, all written with cnnkit
ops (which have these rules in turn, so the rules compose to any order):

* ``backward`` -- reverse mode: ``Tensor.backward``, ``torch.autograd.grad``,
  ``torch.func.grad`` / ``jacrev`` / ``vjp``;
* ``jvp`` -- forward mode: ``torch.autograd.forward_ad``, ``torch.func.jvp`` /
  ``jacfwd``, and with backward, ``hessian``;
* ``vmap`` -- the batching rule: ``torch.func.vmap`` runs one batched call of
  the op instead of a loop over samples.

backward and jvp belong to a single-level ``autograd.Function`` applied by the
op's Autograd kernel, whose forward redispatches below autograd, as an op's
C++ autograd kernel would: functorch reaches it once per transform level,
through the dispatcher, so no wrapper is generated per call and the ops work
the same called directly, through :mod:`cnnkit.functional`, or traced by
``torch.compile`` / ``torch.export``. The batching rule is the op's
FuncTorchBatched kernel.

Convolution -- dense, local or tiled alike -- is bilinear in (input, weight),
and its three views close under differentiation:

    Z  = conv(V, K)                     forward
    dV = input_backward(G, K)           (for dense: conv_transpose2d(G, K))
    dK = weight_backward(G, V)

<conv(V, K), G> = <V, input_backward(G, K)> = <K, weight_backward(G, V)>, so
the derivative of each view with respect to either argument is one of the
other two views, and the tangent of a bilinear view is the view of the
tangents, one argument at a time: d conv(V, K) = conv(dV, K) + conv(V, dK).

Batching: a vmapped input (or output gradient) folds into the batch
dimension; a vmapped weight folds into the groups -- B independent
convolutions of C channels are one convolution of B*C channels in B*groups
groups -- with the input's batched copies side by side in the channels.
"""
from __future__ import annotations

import collections

import torch
import torch.autograd.forward_ad as fwAD
from torch import _C
from torch._functorch.utils import enable_single_level_autograd_function
from torch._guards import TracingContext

from ._kinds import DENSE, KINDS

_library = torch.library.Library("cnnkit", "IMPL")
_ops = torch.ops.cnnkit


def _has_tangents(args):
    """Whether forward AD may see these arguments: a dual level is open (eager
    forward AD and torch.func.jvp keep fwAD's level; a compiled graph opens
    its level below Python, so while compiling the tensors are asked)."""
    if not _C._is_fwd_grad_enabled():
        return False
    if fwAD._current_level >= 0:
        return True
    return TracingContext.try_get() is not None and any(
        isinstance(a, torch.Tensor) and torch._VF._unpack_dual(a, 0)[1] is not None
        for a in args)


def _op(name):
    return getattr(_ops, name).default


def _sum(terms):
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _register(name, *, backward, jvp, vmap):
    """Installs the rules of op `name`. Each rule sees the op's arguments by
    name (a namedtuple of the schema's argument names):

        backward(needs, args, saved_outputs, *grads) -> {argument name: gradient}
        jvp(args, tangents, saved_outputs, output_shapes) -> output tangent(s);
            None is a zero tangent
        vmap(batch_size, in_dims, args) -> (output(s), out_dims)

    saved_outputs are the op's integer outputs (the indices of a max pool)."""
    op = _op(name)
    arguments = op._schema.arguments
    Args = collections.namedtuple(f"{name}_arguments", [a.name for a in arguments])
    tensor_positions = [i for i, a in enumerate(arguments) if str(a.type) in ("Tensor", "Tensor?")]

    # The Function's first argument is the dispatch keyset its forward
    # redispatches with (below autograd: the backend kernel, or the next
    # functorch level); it has no gradient and no tangent.
    def forward(keyset, *args):
        # apply() turns grad and forward grad off for the forward; functorch's
        # lower levels (a jvp under this grad, a grad under this one) need them on.
        with torch.enable_grad(), fwAD._set_fwd_grad_enabled(True), \
                _C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _C._after_autograd_keyset, *args)

    def setup_context(ctx, inputs, output):
        inputs = inputs[1:]
        outputs = output if isinstance(output, tuple) else (output,)
        integer_outputs = [o for o in outputs if not o.is_floating_point()]
        ctx.mark_non_differentiable(*integer_outputs)
        tensors = [inputs[i] for i in tensor_positions] + integer_outputs
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.arguments = [None if i in tensor_positions else v for i, v in enumerate(inputs)]
        ctx.output_shapes = [o.shape for o in outputs]

    def saved(ctx):
        tensors = ctx.saved_tensors
        values = list(ctx.arguments)
        for j, i in enumerate(tensor_positions):
            values[i] = tensors[j]
        return Args(*values), tensors[len(tensor_positions):]

    def backward_rule(ctx, *grads):
        args, outputs = saved(ctx)
        grads_by_name = backward(Args(*ctx.needs_input_grad[1:]), args, outputs, *grads)
        return (None, *(grads_by_name.get(n) for n in Args._fields))

    def jvp_rule(ctx, _keyset_tangent, *tangents):
        args, outputs = saved(ctx)
        result = jvp(args, Args(*tangents), outputs, ctx.output_shapes)
        if len(ctx.output_shapes) == 1:
            return _zero_if_none(result, args, ctx.output_shapes[0])
        first, *rest = result  # the integer outputs have no tangent
        return (_zero_if_none(first, args, ctx.output_shapes[0]), *rest)

    function = type(f"{name}_function", (torch.autograd.function._SingleLevelFunction,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward_rule),
        "jvp": staticmethod(jvp_rule),
    })

    def autograd_kernel(keyset, *args):
        if (_C.is_grad_enabled() and _C._any_requires_grad(*args)) or _has_tangents(args):
            if _C._are_functorch_transforms_active():
                # Reached through the dispatcher, at one functorch level at a
                # time: the Function records this level's graph (or tangent),
                # as an op's C++ autograd kernel would.
                with enable_single_level_autograd_function():
                    return function.apply(keyset, *args)
            return function.apply(keyset, *args)
        with _C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _C._after_autograd_keyset, *args)

    _library.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(
        f"cnnkit::{name}",
        lambda info, in_dims, *args: vmap(info.batch_size, Args(*in_dims), Args(*args)),
        lib=_library)


def _zero_if_none(tangent, args, shape):
    if tangent is not None:
        return tangent
    primal = next(a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    return primal.new_zeros(shape)


def bias_gradient(grad_output, bias_shape):
    """The gradient of a bias of `bias_shape` added to an output whose gradient
    is grad_output (N, K, P, Q): summed over the positions each entry serves.
    (K,) -- over samples and locations; (K, P, Q) (local, or untied) -- over
    samples; (K, tH, tW) -- over samples and the locations of each tile."""
    if len(bias_shape) == 1:
        return _ops.conv2d_bias_backward(grad_output)
    if list(bias_shape[1:]) == list(grad_output.shape[2:]):
        return _ops.local_conv2d_bias_backward(grad_output)
    return _ops.tiled_conv2d_bias_backward(grad_output, list(bias_shape[1:]))


def spread_bias(bias, output_shape):
    """The bias term of an output of `output_shape` (N, K, P, Q) as a broadcast
    view: bias (K,), (K, P, Q) or tiled (K, tH, tW), where location (p, q) gets
    entry (p % tH, q % tW). Also the adjoint of :func:`bias_gradient`."""
    N, K, P, Q = output_shape
    if bias.dim() == 1:
        return bias.view(1, K, 1, 1).expand(output_shape)
    tH, tW = bias.shape[1:]
    if (tH, tW) != (P, Q):
        rows = torch.arange(P, device=bias.device) % tH
        cols = torch.arange(Q, device=bias.device) % tW
        bias = bias.index_select(1, rows).index_select(2, cols)
    return bias.unsqueeze(0).expand(output_shape)


# --------------------------------------------------------------------------- batching helpers


def _batched(t, dim, batch_size):
    """`t` with its vmapped dimension first; an unbatched `t` repeated."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(batch_size, *t.shape)
    return t.movedim(dim, 0)


def _into_channels(t):
    """(B, N, C, H, W) -> (N, B*C, H, W): the B copies side by side in the channels."""
    return t.transpose(0, 1).flatten(1, 2)


def _out_of_channels(t, batch_size):
    """(N, B*C, H, W) -> (N, B, C, H, W): undoes _into_channels, vmapped dim 1."""
    return t.unflatten(1, (batch_size, t.shape[1] // batch_size))


def _into_batch(t):
    """(B, N, ...) -> (B*N, ...)."""
    return t.flatten(0, 1)


def _out_of_batch(t, batch_size):
    return t.unflatten(0, (batch_size, t.shape[0] // batch_size)) if batch_size else t


def _unbatched_except(dims, name):
    """Whether no tensor but `name` is vmapped. (The in_dims of a list argument
    -- stride, padding -- is a list of Nones.)"""
    return not any(isinstance(d, int) for n, d in zip(dims._fields, dims) if n != name)


def _bilinear_tangent(op, operands, a, t, output_shape):
    """The tangent of an op bilinear in its two `operands` (plus its bias, when
    it has one): the op of each operand's tangent with the other operand,
    d B(u, v) = B(du, v) + B(u, dv), and the bias tangent added by the first
    of those that runs (or spread alone)."""
    has_bias = "bias" in a._fields
    bias_term, terms = getattr(t, "bias", None), []
    for operand in operands:
        tangent = getattr(t, operand)
        if tangent is not None:
            changes = {operand: tangent}
            if has_bias:
                changes["bias"], bias_term = bias_term, None
            terms.append(op(*a._replace(**changes)))
    if bias_term is not None:
        terms.append(spread_bias(bias_term, output_shape))
    return _sum(terms)


def _fold_vmap(op, data):
    """The batching rule of a convolution op whose operands are `data` (input
    or grad_output: samples first), a weight, maybe a bias, and `groups`: a
    vmapped `data` alone folds into the batch; otherwise every operand's B
    copies go side by side in the channels, as B*groups groups."""
    def vmap(B, dims, a):
        if _unbatched_except(dims, data):
            samples = getattr(a, data).movedim(getattr(dims, data), 0)
            return _out_of_batch(op(*a._replace(**{data: _into_batch(samples)})), B), 0
        folded = {data: _into_channels(_batched(getattr(a, data), getattr(dims, data), B)),
                  "weight": _into_batch(_batched(a.weight, dims.weight, B)),
                  "groups": a.groups * B}
        if getattr(a, "bias", None) is not None:
            folded["bias"] = _into_batch(_batched(a.bias, dims.bias, B))
        return _out_of_channels(op(*a._replace(**folded)), B), 1
    return vmap


# --------------------------------------------------------------------------- convolution


def _geometry(a):
    return a.stride, a.padding, a.dilation, a.groups


def _register_conv_kind(kind):
    forward, input_backward = _op(kind.name), _op(f"{kind.name}_input_backward")
    weight_backward_op = _op(f"{kind.name}_weight_backward")
    bias_backward_op = _op(f"{kind.name}_bias_backward")

    def weight_backward(grad, x, like_weight, geometry):
        """The weight gradient for a weight of `like_weight`'s kernel size (and tiles)."""
        tiles = kind.tiles(like_weight)
        sizes = [list(kind.kernel_size(like_weight))] + ([] if tiles is None else [list(tiles)])
        return weight_backward_op(grad, x, *sizes, *geometry)

    # ---- forward: Z = conv(V, K) + b

    def forward_backward(needs, a, _, grad):
        geometry = _geometry(a)
        return {
            "input": input_backward(grad, a.weight, a.input.shape[2:], *geometry)
            if needs.input else None,
            "weight": weight_backward(grad, a.input, a.weight, geometry) if needs.weight else None,
            "bias": bias_gradient(grad, a.bias.shape) if needs.bias else None,
        }

    # ---- input gradient: dV = T(G, K), linear in each

    def input_backward_backward(needs, a, _, gg):
        geometry = _geometry(a)
        return {
            "grad_output": forward(gg, a.weight, None, *geometry) if needs.grad_output else None,
            "weight": weight_backward(a.grad_output, gg, a.weight, geometry)
            if needs.weight else None,
        }

    # ---- weight gradient: dK = U(G, V), linear in each

    def weight_backward_backward(needs, a, _, gg):
        geometry = _geometry(a)
        return {
            "grad_output": forward(a.input, gg, None, *geometry) if needs.grad_output else None,
            "input": input_backward(a.grad_output, gg, a.input.shape[2:], *geometry)
            if needs.input else None,
        }

    def weight_backward_vmap(B, dims, a):
        g = _into_channels(_batched(a.grad_output, dims.grad_output, B))
        x = _into_channels(_batched(a.input, dims.input, B))
        out = weight_backward_op(*a._replace(grad_output=g, input=x, groups=a.groups * B))
        return _out_of_batch(out, B), 0

    # ---- bias gradient: a sum of G; its adjoint spreads back over the summed positions

    def bias_backward_backward(needs, a, _, gg):
        return {"grad_output": spread_bias(gg, a.grad_output.shape) if needs.grad_output else None}

    def bias_backward_jvp(a, t, _, __):
        return bias_backward_op(*a._replace(grad_output=t.grad_output))

    def bias_backward_vmap(B, dims, a):
        g = _into_channels(a.grad_output.movedim(dims.grad_output, 0))
        return _out_of_batch(bias_backward_op(*a._replace(grad_output=g)), B), 0

    _register(kind.name, backward=forward_backward,
              jvp=lambda a, t, _, shapes: _bilinear_tangent(forward, ("input", "weight"), a, t,
                                                            shapes[0]),
              vmap=_fold_vmap(forward, "input"))
    _register(f"{kind.name}_input_backward", backward=input_backward_backward,
              jvp=lambda a, t, _, shapes: _bilinear_tangent(input_backward,
                                                            ("grad_output", "weight"), a, t,
                                                            shapes[0]),
              vmap=_fold_vmap(input_backward, "grad_output"))
    _register(f"{kind.name}_weight_backward", backward=weight_backward_backward,
              jvp=lambda a, t, _, shapes: _bilinear_tangent(weight_backward_op,
                                                            ("grad_output", "input"), a, t,
                                                            shapes[0]),
              vmap=weight_backward_vmap)
    _register(f"{kind.name}_bias_backward", backward=bias_backward_backward,
              jvp=bias_backward_jvp, vmap=bias_backward_vmap)


for _kind in KINDS.values():
    _register_conv_kind(_kind)


# ---- transposed convolution: Y = T(X, K) + b with T = conv2d_input_backward (X plays G)


def _conv_transpose2d_backward(needs, a, _, grad):
    # When output_padding is not below the stride, conv2d(Y) has more rows or
    # columns (P, Q) than X (H, W) and T is the adjoint of conv2d cut to the
    # first H x W outputs: the extra outputs are dropped from dX, and X is
    # zero-extended to (P, Q) for dK.
    x, w = a.input, a.weight
    geometry = (a.stride, a.padding, a.dilation, a.groups)
    H, W = x.shape[2:]
    grads = {}
    if needs.input or needs.weight:
        full = _ops.conv2d(grad, w, None, *geometry)
        P, Q = full.shape[2:]
        if needs.input:
            grads["input"] = full[:, :, :H, :W] if (P, Q) != (H, W) else full
        if needs.weight:
            x_ext = torch.nn.functional.pad(x, (0, Q - W, 0, P - H)) if (P, Q) != (H, W) else x
            grads["weight"] = _ops.conv2d_weight_backward(x_ext, grad, DENSE.kernel_size(w),
                                                          *geometry)
    if needs.bias:
        grads["bias"] = bias_gradient(grad, a.bias.shape)
    return grads


_register("conv_transpose2d", backward=_conv_transpose2d_backward,
          jvp=lambda a, t, _, shapes: _bilinear_tangent(_op("conv_transpose2d"),
                                                        ("input", "weight"), a, t, shapes[0]),
          vmap=_fold_vmap(_op("conv_transpose2d"), "input"))


# --------------------------------------------------------------------------- pooling
#
# Every pooling gradient is linear in grad_output G, and the ops close under
# differentiation through their adjoints:
#   max:      dX = max_pool2d_backward(G, indices), a scatter of G to the maxima;
#             its adjoint -- and the tangent of the pool -- gathers at the indices.
#   average:  dX = avg_pool2d_backward(G); its adjoint is avg_pool2d, which is
#             linear: its tangent is the pooled tangent.
#   adaptive: as average, with adaptive_avg_pool2d(_backward).
#   channel:  dX = channel_max_pool_backward(G, indices); its adjoint gathers channels.
# The input enters the backward ops only through its shape (and, for max, through
# the indices, which are piecewise constant): their derivative with respect to
# it is zero. Indices are integers and not differentiable.
#
# Batching: every pooling op works plane by plane, so vmapped dimensions of all
# its tensors fold into the batch.


def _pool_vmap(name):
    op = _op(name)

    def vmap(B, dims, a):
        tensors = {n: _into_batch(_batched(getattr(a, n), d, B))
                   for n, d in zip(a._fields, dims) if isinstance(getattr(a, n), torch.Tensor)}
        out = op(*a._replace(**tensors))
        if isinstance(out, tuple):
            return tuple(_out_of_batch(o, B) for o in out), (0,) * len(out)
        return _out_of_batch(out, B), 0
    return vmap


def _gather_planes(t, indices):
    """t[n, c, indices[n, c, p, q]] over flat positions within each plane."""
    N, C, P, Q = indices.shape
    planes = t.reshape(N, C, t.shape[2] * t.shape[3])
    return planes.gather(2, indices.reshape(N, C, P * Q)).view(indices.shape)


def _max_pool_backward(needs, a, saved, grad, _grad_indices):
    (indices,) = saved
    return {"input": _ops.max_pool2d_backward(grad, a.input, indices) if needs.input else None}


def _max_pool_jvp(a, t, saved, _):
    (indices,) = saved
    return _gather_planes(t.input, indices), None


for _name in ("max_pool2d", "adaptive_max_pool2d"):
    _register(_name, backward=_max_pool_backward, jvp=_max_pool_jvp,
              vmap=_pool_vmap(_name))

_register(
    "max_pool2d_backward",
    backward=lambda needs, a, _, gg: {
        "grad_output": _gather_planes(gg, a.indices) if needs.grad_output else None},
    jvp=lambda a, t, _, __: None if t.grad_output is None else
    _ops.max_pool2d_backward(t.grad_output, a.input, a.indices),
    vmap=_pool_vmap("max_pool2d_backward"))


def _avg_geometry(a):
    return (a.kernel_size, a.stride, a.padding, a.ceil_mode, a.count_include_pad,
            a.divisor_override)


_register(
    "avg_pool2d",
    backward=lambda needs, a, _, grad: {
        "input": _ops.avg_pool2d_backward(grad, a.input, *_avg_geometry(a))
        if needs.input else None},
    jvp=lambda a, t, _, __: _ops.avg_pool2d(t.input, *_avg_geometry(a)),
    vmap=_pool_vmap("avg_pool2d"))
_register(
    "avg_pool2d_backward",
    backward=lambda needs, a, _, gg: {
        "grad_output": _ops.avg_pool2d(gg, *_avg_geometry(a)) if needs.grad_output else None},
    jvp=lambda a, t, _, __: None if t.grad_output is None else
    _ops.avg_pool2d_backward(t.grad_output, a.input, *_avg_geometry(a)),
    vmap=_pool_vmap("avg_pool2d_backward"))
_register(
    "adaptive_avg_pool2d",
    backward=lambda needs, a, _, grad: {
        "input": _ops.adaptive_avg_pool2d_backward(grad, a.input) if needs.input else None},
    jvp=lambda a, t, _, __: _ops.adaptive_avg_pool2d(t.input, a.output_size),
    vmap=_pool_vmap("adaptive_avg_pool2d"))
_register(
    "adaptive_avg_pool2d_backward",
    backward=lambda needs, a, _, gg: {
        "grad_output": _ops.adaptive_avg_pool2d(gg, list(a.grad_output.shape[2:]))
        if needs.grad_output else None},
    jvp=lambda a, t, _, __: None if t.grad_output is None else
    _ops.adaptive_avg_pool2d_backward(t.grad_output, a.input),
    vmap=_pool_vmap("adaptive_avg_pool2d_backward"))


def _channel_max_pool_backward(needs, a, saved, grad, _grad_indices):
    (indices,) = saved
    return {"input": _ops.channel_max_pool_backward(grad, a.input, indices, a.pool_size)
            if needs.input else None}


_register(
    "channel_max_pool",
    backward=_channel_max_pool_backward,
    # out[n, k, h, w] = x[n, indices[n, k, h, w], h, w]: the tangent is gathered there.
    jvp=lambda a, t, saved, _: (t.input.gather(1, saved[0]), None),
    vmap=_pool_vmap("channel_max_pool"))
_register(
    "channel_max_pool_backward",
    backward=lambda needs, a, _, gg: {
        "grad_output": gg.gather(1, a.indices) if needs.grad_output else None},
    jvp=lambda a, t, _, __: None if t.grad_output is None else
    _ops.channel_max_pool_backward(t.grad_output, a.input, a.indices, a.pool_size),
    vmap=_pool_vmap("channel_max_pool_backward"))
