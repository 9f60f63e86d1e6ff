"""Every autograd mode and torch.func transform, for every op.

Forward mode (torch.autograd.forward_ad, torch.func.jvp / jacfwd), reverse mode
under torch.func (grad, jacrev, hessian, forward-over-reverse), and vmap over
every argument through the ops' own batching rules: the vmap fallback (a
Python loop over samples) is switched off in this file, so an op without a
batching rule fails here. References: torch.nn.functional for dense,
transposed convolution and pooling, the float64 formulas of
tests/reference.py for local and tiled convolution, finite differences
(torch.autograd.gradcheck) for every op and gradient op, and loops over
samples for vmap.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, stack_module_state, vmap

import cnnkit
import cnnkit.functional as CF
import reference as ref
from conftest import assert_close, make_tensor
from conv_family import F64, FAMILIES, OTHER_OPERAND, VIEWS, shape_of
from problems import GRADCHECK_ADAPTIVE_POOL_PROBLEMS, GRADCHECK_POOL_PROBLEMS

WITH_VIEWS = [fam for fam in FAMILIES if fam.view_references]


@pytest.fixture(autouse=True)
def _batching_rules_only():
    """vmap of an op without a batching rule raises instead of looping."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(True)


def each(problems_of, families=FAMILIES):
    return [pytest.param(fam, pb, id=f"{fam.name}-{pb.id}")
            for fam in families for pb in problems_of(fam)]


def operands(fam, pb, device="cpu"):
    x, w, b = fam.args(pb, F64, device)
    return (x, w) if b is None else (x, w, b)


def view_call(fam, view, pb):
    """The gradient view `view` as a function of its tensor operands, through torch.ops.cnnkit."""
    op = fam.op(view)
    return lambda g, other=None: op(*fam.view_args(view, pb, g, other))


def view_operands(fam, view, pb, device="cpu"):
    g = make_tensor(fam.out_shape(pb), F64, device)
    other = OTHER_OPERAND[view]
    return (g,) if other is None else (g, make_tensor(shape_of(pb, other), F64, device))


def randn_like_all(ts):
    return tuple(torch.randn_like(t) for t in ts)


# --------------------------------------------------------------------------- forward mode


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems))
def test_jvp_matches_reference(fam, pb, device):
    # Tangents in every argument at once and in each alone.
    primals = operands(fam, pb, device)
    tangents = randn_like_all(primals)

    def ours(*a):
        return fam.functional(pb, *a)

    def theirs(*a):
        return fam.reference(*a, **fam.hyper(pb))

    for wanted in [None, *range(len(primals))]:
        t = tuple(tangents[i] if wanted in (None, i) else torch.zeros_like(tangents[i])
                  for i in range(len(primals)))
        y, dy = jvp(ours, primals, t)
        y_ref, dy_ref = jvp(theirs, primals, t)
        assert_close(y, y_ref)
        assert_close(dy, dy_ref)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems[:1]))
def test_forward_ad_dual_numbers(fam, pb, device):
    # torch.autograd.forward_ad, through cnnkit.functional and the dispatcher op alike.
    primals = operands(fam, pb, device)
    tangents = randn_like_all(primals)
    _, expected = jvp(lambda *a: fam.reference(*a, **fam.hyper(pb)), primals, tangents)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        via_functional = fwAD.unpack_dual(fam.functional(pb, *duals)).tangent
        b = duals[2] if len(duals) == 3 else None
        via_op = fwAD.unpack_dual(fam.op()(duals[0], duals[1], b, *fam.op_geometry(pb))).tangent
    assert_close(via_functional, expected)
    assert_close(via_op, expected)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems))
def test_gradcheck_every_mode(fam, pb, device, one_thread):
    # Finite differences against reverse and forward mode, their batched
    # (vmapped) versions, and the second derivatives: reverse-over-reverse and
    # forward-over-reverse, batched too.
    args = tuple(t.requires_grad_() for t in operands(fam, pb, device))

    def f(*a):
        return fam.functional(pb, *a)

    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(f, args, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems[:2], WITH_VIEWS))
def test_gradcheck_every_mode_backward_op(fam, pb, view, device, one_thread):
    args = tuple(t.requires_grad_() for t in view_operands(fam, view, pb, device))
    f = view_call(fam, view, pb)
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(f, args, check_fwd_over_rev=True, check_batched_grad=True)


# --------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems[:2]))
def test_jacobians_and_hessian(fam, pb, device):
    primals = operands(fam, pb, device)
    argnums = tuple(range(len(primals)))

    def ours(*a):
        return fam.functional(pb, *a)

    def theirs(*a):
        return fam.reference(*a, **fam.hyper(pb))

    expected = jacrev(theirs, argnums=argnums)(*primals)
    for transform in (jacfwd, jacrev):
        for got, want in zip(transform(ours, argnums=argnums)(*primals), expected):
            assert_close(got, want)

    # The loss is quadratic in the weight: its hessian is exact in both.
    def loss(f):
        return lambda w: f(primals[0], w, *primals[2:]).pow(2).sum()

    assert_close(hessian(loss(ours))(primals[1]), hessian(loss(theirs))(primals[1]))


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems[:1]))
def test_grad_and_hessian_vector_product(fam, pb, device):
    # torch.func.grad, and jvp of grad (forward-over-reverse): the hessian-vector
    # product of a loss that is not quadratic (tanh), in the input and weight.
    x, w, *b = operands(fam, pb, device)
    v = randn_like_all((x, w))

    def loss(f):
        return lambda x, w: f(x, w, *b).tanh().sum()

    ours = loss(lambda *a: fam.functional(pb, *a))
    theirs = loss(lambda *a: fam.reference(*a, **fam.hyper(pb)))
    for got, want in zip(grad(ours, argnums=(0, 1))(x, w), grad(theirs, argnums=(0, 1))(x, w)):
        assert_close(got, want)
    _, hvp = jvp(grad(ours, argnums=(0, 1)), (x, w), v)
    _, hvp_ref = jvp(grad(theirs, argnums=(0, 1)), (x, w), v)
    for got, want in zip(hvp, hvp_ref):
        assert_close(got, want)


def test_dispatcher_op_under_every_transform():
    # torch.ops.cnnkit.* called directly, not through cnnkit.functional: the
    # rules live in the dispatcher, so every transform reaches them.
    x, w = torch.randn(2, 2, 5, 5, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64)

    def ours(x, w):
        return torch.ops.cnnkit.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1).tanh().sum()

    def theirs(x, w):
        return F.conv2d(x, w, padding=1).tanh().sum()

    for transform, args in ((lambda f: grad(f, argnums=(0, 1)), (x, w)),
                            (lambda f: jacfwd(f, argnums=(0, 1)), (x, w)),
                            (lambda f: vmap(grad(f, argnums=1), in_dims=(0, None)),
                             (x.unsqueeze(1), w))):
        got, want = transform(ours)(*args), transform(theirs)(*args)
        for got, want in zip(*((got, want) if isinstance(got, tuple) else ((got,), (want,)))):
            assert_close(got, want)
    assert_close(hessian(ours, argnums=1)(x, w), hessian(theirs, argnums=1)(x, w))


@pytest.mark.slow
def test_compiled_transforms():
    # torch.compile(fullgraph=True) of torch.func transforms over cnnkit ops.
    x, w = torch.randn(4, 2, 6, 6), torch.randn(3, 2, 3, 3)

    def loss(f):
        return lambda w, x: f(x.unsqueeze(0), w).tanh().sum()

    per_sample = vmap(grad(loss(CF.conv2d)), in_dims=(None, 0))
    expected = vmap(grad(loss(F.conv2d)), in_dims=(None, 0))(w, x)
    torch._dynamo.reset()
    assert_close(torch.compile(per_sample, fullgraph=True)(w, x), expected, torch.float32)

    def tangent(f):
        return lambda w, x: jvp(lambda w: f(x, w), (w,), (torch.ones_like(w),))[1]

    torch._dynamo.reset()
    assert_close(torch.compile(tangent(CF.conv2d), fullgraph=True)(w, x),
                 tangent(F.conv2d)(w, x), torch.float32)


# --------------------------------------------------------------------------- vmap


def _vmap_cases(n_tensors):
    """(in_dims) cases: each tensor alone batched at dim 0 and 1, then all at 0."""
    cases = []
    for i in range(n_tensors):
        for dim in (0, 1):
            cases.append(tuple(dim if j == i else None for j in range(n_tensors)))
    cases.append((0,) * n_tensors)
    return cases


def check_vmap(f, args, B=3):
    """vmap(f) over each case of in_dims against a loop over the batch."""
    for in_dims in _vmap_cases(len(args)):
        batched = [a if d is None else torch.stack([torch.randn_like(a) for _ in range(B)], d)
                   for a, d in zip(args, in_dims)]
        got = vmap(f, in_dims=in_dims)(*batched)
        for i in range(B):
            sample = [a if d is None else a.select(d, i) for a, d in zip(batched, in_dims)]
            want = f(*sample)
            for g, w_ in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
                assert_close(g[i], w_)


@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems))
def test_vmap_forward(fam, pb, device):
    check_vmap(lambda *a: fam.functional(pb, *a), operands(fam, pb, device))


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fam,pb", each(lambda fam: fam.gradcheck_problems, WITH_VIEWS))
def test_vmap_backward_op(fam, pb, view, device):
    check_vmap(view_call(fam, view, pb), view_operands(fam, view, pb, device))


# --------------------------------------------------------------------------- pooling


def _distinct(shape, device):
    """Values without ties (so max pooling's derivative exists everywhere)."""
    n = torch.Size(shape).numel()
    return (torch.randperm(n, dtype=F64) / n + 0.5).view(shape).to(device)


def _pools():
    """(name, cnnkit call, torch call or None, input shape): every pool."""
    pools = []
    for pb in GRADCHECK_POOL_PROBLEMS:
        kw = dict(kernel_size=pb.kernel, stride=pb.stride, padding=pb.padding,
                  ceil_mode=pb.ceil_mode)
        pools.append((f"max_pool2d-{pb.id}",
                      lambda x, kw=kw, d=pb.dilation: CF.max_pool2d(x, dilation=d, **kw),
                      lambda x, kw=kw, d=pb.dilation: F.max_pool2d(x, dilation=d, **kw),
                      pb.input_shape))
        pools.append((f"avg_pool2d-{pb.id}",
                      lambda x, kw=kw, pb=pb: CF.avg_pool2d(
                          x, count_include_pad=pb.count_include_pad,
                          divisor_override=pb.divisor_override, **kw),
                      lambda x, kw=kw, pb=pb: F.avg_pool2d(
                          x, count_include_pad=pb.count_include_pad,
                          divisor_override=pb.divisor_override, **kw),
                      pb.input_shape))
    for pb in GRADCHECK_ADAPTIVE_POOL_PROBLEMS:
        for name in ("adaptive_max_pool2d", "adaptive_avg_pool2d"):
            pools.append((f"{name}-{pb.id}",
                          lambda x, name=name, s=pb.output_size: getattr(CF, name)(x, s),
                          lambda x, name=name, s=pb.output_size: getattr(F, name)(x, s),
                          pb.input_shape))
    for pool_size in (2, 3):
        pools.append((f"channel_max_pool-{pool_size}",
                      lambda x, p=pool_size: CF.channel_max_pool(x, p),
                      lambda x, p=pool_size: x.unflatten(1, (-1, p)).amax(2),
                      (2, 6, 3, 4)))
    return [pytest.param(call, ref, shape, id=name) for name, call, ref, shape in pools]


POOLS = _pools()


@pytest.mark.parametrize("call,ref,shape", POOLS)
def test_pool_jvp_and_jacobians(call, ref, shape, device):
    x = _distinct(shape, device)
    t = torch.randn_like(x)
    y, dy = jvp(call, (x,), (t,))
    y_ref, dy_ref = jvp(ref, (x,), (t,))
    assert_close(y, y_ref)
    assert_close(dy, dy_ref)
    expected = jacrev(ref)(x)
    assert_close(jacfwd(call)(x), expected)
    assert_close(jacrev(call)(x), expected)
    # The pools are piecewise linear: the hessian of a quadratic loss is exact.
    assert_close(hessian(lambda x: call(x).pow(2).sum())(x),
                 hessian(lambda x: ref(x).pow(2).sum())(x))


@pytest.mark.parametrize("call,ref,shape", POOLS)
def test_pool_gradcheck_every_mode(call, ref, shape, device, one_thread):
    x = _distinct(shape, device).requires_grad_()
    assert torch.autograd.gradcheck(call, (x,), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(call, (x,), check_fwd_over_rev=True,
                                        check_batched_grad=True)


@pytest.mark.parametrize("call,ref,shape", POOLS)
def test_pool_vmap(call, ref, shape, device):
    for dim in (0, 1):
        xs = torch.stack([_distinct(shape, device) for _ in range(3)], dim)
        got = vmap(call, in_dims=dim)(xs)
        for i in range(3):
            assert_close(got[i], call(xs.select(dim, i)))


def test_pool_backward_ops_vmap_and_jvp(device):
    # The pooling gradient ops: batched over each operand,
    # and their tangents (linear in grad_output; the input and the indices
    # enter through shape and position only).
    x = _distinct((2, 3, 5, 6), device)
    out, idx = torch.ops.cnnkit.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    cout, cidx = torch.ops.cnnkit.channel_max_pool(x, 3)
    cases = [
        (lambda g, x: torch.ops.cnnkit.max_pool2d_backward(g, x, idx), (out, x)),
        (lambda g, x: torch.ops.cnnkit.avg_pool2d_backward(g, x, [3, 3], [2, 2], [1, 1], False, False,
                                                     None),
         (torch.randn(2, 3, 3, 3, dtype=F64), x)),
        (lambda g, x: torch.ops.cnnkit.adaptive_avg_pool2d_backward(g, x),
         (torch.randn(2, 3, 4, 4, dtype=F64), x)),
        (lambda g, x: torch.ops.cnnkit.channel_max_pool_backward(g, x, cidx, 3), (cout, x)),
    ]
    for f, args in cases:
        check_vmap(f, args)
        g, x_ = args
        t = torch.randn_like(g)
        _, tangent = jvp(f, (g, x_), (t, torch.randn_like(x_)))
        assert_close(tangent, f(t, x_))


# --------------------------------------------------------------------------- models


class SmallCNN(torch.nn.Module):
    """Every cnnkit layer kind in one network on 1x12x12 images."""

    def __init__(self):
        super().__init__()
        self.conv = cnnkit.nn.Conv2d(1, 4, 3, padding=1)
        self.pool = cnnkit.nn.MaxPool2d(2)
        self.local = cnnkit.nn.LocallyConnected2d(4, 4, 3, in_size=6, groups=2)
        self.tiled = cnnkit.nn.TiledConv2d(4, 6, 2, tiles=2, padding=1)
        self.maxout = cnnkit.nn.Maxout(2)
        self.up = cnnkit.nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.avg = cnnkit.nn.AvgPool2d(3, stride=2, padding=1)
        self.gap = cnnkit.nn.AdaptiveAvgPool2d(1)
        self.gmp = cnnkit.nn.AdaptiveMaxPool2d((2, 1))
        self.fc = torch.nn.Linear(2 + 4, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        x = torch.tanh(self.local(x))
        x = self.maxout(self.tiled(x))
        x = self.avg(torch.tanh(self.up(x)))
        return self.fc(torch.cat([self.gap(x).flatten(1), self.gmp(x).flatten(1)], 1))


def _loss(model, params, x, y):
    logits = functional_call(model, params, (x.unsqueeze(0),))
    return F.cross_entropy(logits, y.unsqueeze(0))


def test_per_sample_gradients(device):
    model = SmallCNN().to(device=device, dtype=F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(5, 1, 12, 12, dtype=F64, device=device)
    y = torch.randint(0, 3, (5,), device=device)
    per_sample = vmap(grad(lambda p, x, y: _loss(model, p, x, y)), in_dims=(None, 0, 0))(
        params, x, y)
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            assert_close(per_sample[name][i], p.grad)


def test_ensemble_of_models(device):
    # stack_module_state: one vmapped call evaluates four models on the same batch.
    models = [SmallCNN().to(device=device, dtype=F64) for _ in range(4)]
    params, buffers = stack_module_state(models)
    base = SmallCNN().to(device="meta", dtype=F64)
    x = torch.randn(3, 1, 12, 12, dtype=F64, device=device)

    def run(p, b, x):
        return functional_call(base, (p, b), (x,))

    got = vmap(run, in_dims=(0, 0, None))(params, buffers, x)
    for i, m in enumerate(models):
        assert_close(got[i], m(x))


# --------------------------------------------------------------------------- property


@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_jvp_random_configurations(fam):
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fam.random_problems)
    def check(pb):
        pb = dataclasses.replace(pb, N=min(pb.N, 2))
        primals = operands(fam, pb)
        tangents = randn_like_all(primals)
        _, dy = jvp(lambda *a: fam.functional(pb, *a), primals, tangents)
        _, dy_ref = jvp(lambda *a: fam.reference(*a, **fam.hyper(pb)), primals, tangents)
        assert_close(dy, dy_ref)

    check()


# --------------------------------------------------------------------------- untied biases


def _untied_cases():
    """(name, cnnkit call, reference without bias, input, weight, untied bias shape)."""
    x = torch.randn(2, 2, 5, 4, dtype=F64)
    return [
        ("conv2d", lambda x, w, b: CF.conv2d(x, w, b, stride=2, padding=1),
         lambda x, w: F.conv2d(x, w, stride=2, padding=1), x,
         torch.randn(3, 2, 2, 2, dtype=F64), (3, 3, 3)),
        ("conv_transpose2d", lambda x, w, b: CF.conv_transpose2d(x, w, b, stride=2, groups=2),
         lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=2), x,
         torch.randn(2, 2, 3, 2, dtype=F64), (4, 11, 8)),
        ("tiled_conv2d", lambda x, w, b: CF.tiled_conv2d(x, w, b, padding=1),
         lambda x, w: ref.tiled_conv2d(x, w, padding=1), x,
         torch.randn(3, 2, 2, 2, 2, 3, dtype=F64), (3, 6, 5)),
    ]


@pytest.mark.parametrize("name,call,reference,x,w,bias_shape",
                         [pytest.param(*c, id=c[0]) for c in _untied_cases()])
def test_untied_bias_every_mode(name, call, reference, x, w, bias_shape, one_thread):
    # A bias of shape (C_out, OH, OW): gradient, forward mode, their batched
    # versions and second derivatives, jvp against the reference, and vmap
    # over the bias alone and over everything.
    b = torch.randn(bias_shape, dtype=F64)
    assert_close(call(x, w, b), reference(x, w) + b)
    args = tuple(t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(call, args, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(call, args, check_fwd_over_rev=True,
                                        check_batched_grad=True)
    tangents = randn_like_all((x, w, b))
    _, dy = jvp(call, (x, w, b), tangents)
    _, dy_ref = jvp(lambda x, w, b: reference(x, w) + b, (x, w, b), tangents)
    assert_close(dy, dy_ref)
    check_vmap(call, (x, w, b))


def test_empty_batch_tangents_and_batching():
    # Batch 0: forward-mode tangents and batched calls of every kind of rule.
    x = torch.randn(0, 2, 6, 6, dtype=F64)
    w = torch.randn(3, 2, 3, 3, dtype=F64)
    for f in (lambda x: CF.conv2d(x, w), lambda x: CF.max_pool2d(x, 2),
              lambda x: CF.avg_pool2d(x, 3, 2, 1), lambda x: CF.channel_max_pool(x, 2)):
        y, dy = jvp(f, (x,), (x,))
        assert dy.shape == y.shape and y.shape[0] == 0
        assert vmap(f)(x.unsqueeze(0).expand(3, *x.shape)).shape == (3, *y.shape)


class _RecordCalls(torch.utils._python_dispatch.TorchDispatchMode):
    """The cnnkit ops that reach the kernels, with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "cnnkit":
            self.calls.append((func.__name__.split(".")[0], args))
        return func(*args, **(kwargs or {}))


def test_vmapped_input_folds_into_batch_vmapped_weight_into_groups():
    x = torch.randn(5, 2, 2, 6, 6, dtype=F64)
    w = torch.randn(5, 3, 2, 3, 3, dtype=F64)
    with _RecordCalls() as record:
        vmap(lambda x: CF.conv2d(x, w[0]))(x)
    [(name, args)] = record.calls
    assert name == "conv2d" and args[0].shape == (10, 2, 6, 6) and args[-1] == 1
    with _RecordCalls() as record:
        vmap(lambda w: CF.conv2d(x[0], w))(w)
    [(name, args)] = record.calls
    assert args[0].shape == (2, 10, 6, 6) and args[1].shape == (15, 2, 3, 3) and args[-1] == 5
    # Per-sample gradients: one call of each gradient op for the whole batch.
    with _RecordCalls() as record:
        vmap(grad(lambda w, x: CF.conv2d(x.unsqueeze(0), w).pow(2).sum()), in_dims=(None, 0))(
            w[0], x[:, 0])
    assert sorted(name for name, _ in record.calls) == ["conv2d", "conv2d_weight_backward"]
