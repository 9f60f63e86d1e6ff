"""torch.autocast with cnnkit ops (cnnkit/_autocast.py).

CPU: the kernels run in float32 and return the autocast dtype. CUDA: the
inputs are cast to the autocast dtype ("lower_precision_fp", as PyTorch's
convolutions). The CUDA rule is exercised here without a GPU on fake CUDA
tensors (FakeTensorMode runs the fake kernels), and on a real GPU where there is one.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import cnnkit
import cnnkit.functional as CF
from conftest import NEEDS_CUDA, TOLERANCES

_ops = torch.ops.cnnkit

# Each forward op with arguments for a (2, 4, 8, 8) input: (floating tensor
# shapes, other arguments). Weight shapes follow SPEC 1.
OP_CASES = {
    "conv2d": ([(2, 4, 8, 8), (6, 2, 3, 3), (6,)], [[1, 1], [1, 1], [1, 1], 2]),
    "conv_transpose2d": ([(2, 4, 8, 8), (4, 3, 3, 3), (3,)], [[2, 2], [1, 1], [1, 1], 1, [1, 1]]),
    "local_conv2d": ([(2, 4, 8, 8), (3, 6, 6, 4, 3, 3), (3, 6, 6)], [[1, 1], [0, 0], [1, 1], 1]),
    "tiled_conv2d": ([(2, 4, 8, 8), (3, 4, 3, 3, 2, 2), (3, 2, 2)], [[1, 1], [0, 0], [1, 1], 1]),
    "max_pool2d": ([(2, 4, 8, 8)], [[3, 3], [2, 2], [1, 1], [1, 1], True]),
    "avg_pool2d": ([(2, 4, 8, 8)], [[2, 2], [2, 2], [0, 0], False, True, None]),
    "adaptive_max_pool2d": ([(2, 4, 8, 8)], [[3, 5]]),
    "adaptive_avg_pool2d": ([(2, 4, 8, 8)], [[3, 5]]),
    "channel_max_pool": ([(2, 4, 8, 8)], [2]),
}


def registry_forward_ops():
    names = [n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("cnnkit::")]
    return sorted(n for n in names if "backward" not in n)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def test_every_forward_op_has_autocast_rules():
    forward = registry_forward_ops()
    assert set(OP_CASES) <= set(forward)  # the named ops are in the registry ...
    assert set(forward) <= set(OP_CASES)  # ... and every one has a test case here
    assert list(cnnkit._autocast.AUTOCAST_OPS) == forward
    for name in torch._C._dispatch_get_all_op_names():
        if not name.startswith("cnnkit::"):
            continue
        for key in ("AutocastCPU", "AutocastCUDA"):
            has = torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
            assert has == ("backward" not in name), (name, key)


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", list(OP_CASES))
def test_cpu_runs_float32_and_returns_autocast_dtype(op, autocast_dtype, input_dtype):
    shapes, args = OP_CASES[op]
    # The input may come in lower precision from an earlier layer; weights are float32.
    tensors = [torch.randn(s).to(input_dtype if i == 0 else torch.float32)
               for i, s in enumerate(shapes)]
    with torch.autocast("cpu", dtype=autocast_dtype):
        out = as_tuple(getattr(_ops, op)(*tensors, *args))
    expected = as_tuple(getattr(_ops, op)(*(t.float() for t in tensors), *args))
    assert len(out) == len(expected)
    for o, e in zip(out, expected):
        if e.is_floating_point():
            # Computed in float32 from the same values, rounded once at the end.
            assert o.dtype == autocast_dtype
            assert torch.equal(o, e.to(autocast_dtype))
        else:
            assert o.dtype == e.dtype and torch.equal(o, e)  # indices untouched


def test_cpu_keeps_float64():
    """Autocast never lowers float64 (ATen's rule), and cnnkit leaves it too."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = CF.conv2d(x, w)
        p = CF.max_pool2d(x, 2)
    assert y.dtype == p.dtype == torch.float64
    assert torch.equal(y, CF.conv2d(x, w)) and torch.equal(p, CF.max_pool2d(x, 2))


def test_cpu_disabled_autocast_changes_nothing():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert CF.conv2d(x, w).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            assert CF.conv2d(x, w).dtype == torch.float32
    # A bfloat16 tensor outside autocast still reaches the CPU kernel, which refuses it.
    with pytest.raises(RuntimeError, match="^cnnkit.conv2d: expected input of dtype torch.float32 "
                                           "or torch.float64, but got torch.bfloat16$"):
        CF.conv2d(x.bfloat16(), w.bfloat16())


class SmallNet(nn.Module):
    """Every kind of cnnkit layer between torch.nn layers that autocast runs
    in bfloat16 (Linear) or float32 (BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            cnnkit.nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            cnnkit.nn.MaxPool2d(2),                                          # 16 -> 8
            cnnkit.nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ReLU(),        # 8 -> 16
            cnnkit.nn.AvgPool2d(2),                                          # 16 -> 8
            cnnkit.nn.TiledConv2d(8, 8, 3, tiles=2, padding=1), nn.ReLU(),
            cnnkit.nn.Maxout(2),                                             # 8 -> 4 channels
            cnnkit.nn.LocallyConnected2d(4, 6, 3, in_size=(8, 8)), nn.ReLU(),  # 8 -> 6
            cnnkit.nn.AdaptiveMaxPool2d(4), cnnkit.nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


class SmoothNet(nn.Module):
    """The cnnkit layers whose gradients are smooth in the activations (no max):
    bfloat16 rounding of activations moves the gradients by little. (A max
    whose two largest entries lie within rounding of each other sends its
    gradient elsewhere; a deep net of them moves as much under autocast with
    torch.nn's own layers.)"""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            cnnkit.nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(),
            cnnkit.nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Tanh(),           # 16 -> 32
            cnnkit.nn.AvgPool2d(4),                                             # 32 -> 8
            cnnkit.nn.TiledConv2d(8, 8, 3, tiles=2, padding=1), nn.Tanh(),
            cnnkit.nn.LocallyConnected2d(8, 6, 3, in_size=(8, 8)), nn.Tanh(),  # 8 -> 6
            cnnkit.nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def relative_error(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", list(OP_CASES))
def test_cpu_backward_of_each_op(op, autocast_dtype):
    """Gradients of every floating input through one op under autocast: the
    op's backward runs in float32; only the incoming gradient was rounded to
    the autocast dtype on its way through the output cast."""
    shapes, args = OP_CASES[op]
    tensors = [torch.randn(s) for s in shapes]
    weights = None

    def grads(autocast):
        nonlocal weights
        leaves = [t.clone().requires_grad_() for t in tensors]
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            out = as_tuple(getattr(_ops, op)(*leaves, *args))[0]
        if weights is None:
            weights = torch.randn(out.shape)
        (out.float() * weights).sum().backward()
        return [t.grad for t in leaves]

    expected, actual = grads(False), grads(True)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float32
        assert relative_error(a, e) < TOLERANCES[autocast_dtype]


def test_cpu_forward_backward_matches_float32():
    torch.manual_seed(0)
    net = SmoothNet()
    x = torch.randn(4, 3, 16, 16)
    target = torch.randint(0, 5, (4,))

    def step(autocast):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
            loss = nn.functional.cross_entropy(out, target)
        loss.backward()
        return out, {n: p.grad.clone() for n, p in net.named_parameters()}

    ref_out, ref_grads = step(autocast=False)
    out, grads = step(autocast=True)
    assert out.dtype == torch.bfloat16 and ref_out.dtype == torch.float32
    tol = 2 * TOLERANCES[torch.bfloat16]  # several bfloat16 roundings in a row
    assert relative_error(out, ref_out) < tol
    assert ref_grads.keys() == grads.keys() and len(grads) == 10
    for name, ref in ref_grads.items():
        assert grads[name].dtype == torch.float32, name  # parameters keep float32 gradients
        assert relative_error(grads[name], ref) < tol, name


def test_cpu_matches_torch_nn_under_autocast():
    """A converted model under autocast returns what the torch.nn original
    does there: the same dtype, values within bfloat16 rounding."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3),
                        nn.AdaptiveAvgPool2d(1))
    conv = cnnkit.convert(ref)
    x = torch.randn(2, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = ref(x), conv(x)
    assert expected.dtype == actual.dtype == torch.bfloat16
    assert relative_error(actual, expected) < 2 * TOLERANCES[torch.bfloat16]


@pytest.mark.slow
def test_cpu_autocast_under_torch_compile():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x)
        actual = compiled(x)
    assert actual.dtype == torch.bfloat16
    assert torch.equal(actual, expected)


# --------------------------------------------------------------------------- CUDA


@contextlib.contextmanager
def cuda_autocast_flags(dtype):
    """Turn CUDA autocast on as torch.autocast("cuda") does, without its check
    that a GPU exists: the dispatcher then routes fake CUDA tensors through
    the AutocastCUDA kernels."""
    saved = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", saved[0])
        torch.set_autocast_dtype("cuda", saved[1])


@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(OP_CASES))
def test_cuda_rule_casts_inputs_to_autocast_dtype(op, autocast_dtype):
    shapes, args = OP_CASES[op]
    mode = FakeTensorMode()

    def fake_cuda(shape, dtype):
        return FakeTensor(mode, torch.empty(shape, dtype=dtype, device="meta"),
                          torch.device("cuda", 0))

    with mode:
        for dtypes in ([torch.float32] * len(shapes),
                       [torch.bfloat16] + [torch.float32] * (len(shapes) - 1)):
            tensors = [fake_cuda(s, dt) for s, dt in zip(shapes, dtypes)]
            with cuda_autocast_flags(autocast_dtype):
                out = as_tuple(getattr(_ops, op)(*tensors, *args))
            values = [o for o in out if o.is_floating_point()]
            assert values and all(o.dtype == autocast_dtype and o.device.type == "cuda"
                                  for o in values)
            assert all(o.dtype == torch.int64 for o in out if not o.is_floating_point())
        # float64 stays float64 (and then every tensor must be float64).
        doubles = [fake_cuda(s, torch.float64) for s in shapes]
        with cuda_autocast_flags(autocast_dtype):
            out = as_tuple(getattr(_ops, op)(*doubles, *args))
        assert all(o.dtype == torch.float64 for o in out if o.is_floating_point())


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
def test_cuda_forward_backward(device, autocast_dtype):
    torch.manual_seed(0)
    net = SmallNet().to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    with torch.autocast("cuda", dtype=autocast_dtype):
        out = net(x)
        conv_out = net.body[0](x)
    assert out.dtype == conv_out.dtype == autocast_dtype
    expected = CF.conv2d(x.to(autocast_dtype), net.body[0].weight.to(autocast_dtype),
                         net.body[0].bias.to(autocast_dtype), padding=1)
    assert torch.equal(conv_out, expected)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
