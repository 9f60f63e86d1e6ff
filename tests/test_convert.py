"""cnnkit.convert: torch.nn conv/pool layers to their cnnkit twins and back."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit import ConversionWarning
from conftest import NEEDS_CUDA

TWINS = {
    nn.Conv1d: cnnkit.nn.Conv1d,
    nn.Conv2d: cnnkit.nn.Conv2d,
    nn.ConvTranspose2d: cnnkit.nn.ConvTranspose2d,
    nn.MaxPool2d: cnnkit.nn.MaxPool2d,
    nn.AvgPool2d: cnnkit.nn.AvgPool2d,
    nn.AdaptiveMaxPool2d: cnnkit.nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d: cnnkit.nn.AdaptiveAvgPool2d,
}


class Net(nn.Module):
    """Every convertible layer type once, a 2-D trunk and a 1-D branch."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            nn.AvgPool2d(2, count_include_pad=False),
            nn.Conv2d(6, 6, 3, padding="same", groups=6, bias=False),
            nn.AdaptiveMaxPool2d((5, 4)),
            nn.AdaptiveAvgPool2d(2),
        )
        self.branch = nn.Conv1d(3, 4, 5, padding=2, dilation=1, padding_mode="circular")
        self.head = nn.Linear(6 * 2 * 2 + 4, 5)

    def forward(self, x):
        a = self.trunk(x).flatten(1)
        b = self.branch(x.mean(2)).mean(2)
        return self.head(torch.cat([a, b], 1))


def layer_types(model):
    """{path: class} of the convertible layers of `model`, torch.nn or cnnkit."""
    kinds = tuple(TWINS) + tuple(TWINS.values())
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, kinds)}


def forward_backward(model, x):
    """Output and {name: gradient} of a fixed random projection of the output."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = model(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def assert_same_computation(a, b, x, rtol=1e-5, atol=1e-6):
    out_a, gx_a, g_a = forward_backward(a, x)
    out_b, gx_b, g_b = forward_backward(b, x)
    torch.testing.assert_close(out_b, out_a, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx_b, gx_a, rtol=rtol, atol=atol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=rtol, atol=atol, msg=name)


def convert_quietly(model, **kwargs):
    """convert(), failing the test on any ConversionWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConversionWarning)
        return cnnkit.convert(model, **kwargs)


def conversion_warnings(fn):
    """Run fn(); return (its result, the ConversionWarning messages it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, ConversionWarning)]


# --------------------------------------------------------------------------- basics


def test_converts_every_layer_type_to_a_copy():
    torch.manual_seed(0)
    net = Net()
    before = layer_types(net)
    assert set(before.values()) == set(TWINS)
    conv = convert_quietly(net)
    assert conv is not net
    # The original is untouched; the copy has every layer replaced by its twin.
    assert layer_types(net) == before
    assert layer_types(conv) == {name: TWINS[cls] for name, cls in before.items()}
    # Same values in new Parameter objects, same state_dict keys.
    for (na, pa), (nb, pb) in zip(net.named_parameters(), conv.named_parameters()):
        assert na == nb and pa is not pb and torch.equal(pa, pb)
    assert list(net.state_dict()) == list(conv.state_dict())
    assert_same_computation(net, conv, torch.randn(2, 3, 15, 13))


def test_inplace_keeps_modules_and_parameters():
    torch.manual_seed(0)
    net = Net()
    params = list(net.parameters())
    conv_layer = net.trunk[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out = convert_quietly(net, inplace=True)
    assert out is net
    assert list(net.parameters()) == params and all(
        a is b for a, b in zip(net.parameters(), params))
    # The same module object, now of the cnnkit class.
    assert net.trunk[0] is conv_layer and type(conv_layer) is cnnkit.nn.Conv2d
    # The optimizer built before the conversion trains the converted model.
    before = conv_layer.weight.detach().clone()
    net(torch.randn(2, 3, 12, 12)).square().mean().backward()
    opt.step()
    assert not torch.equal(conv_layer.weight, before)


def test_the_model_itself_may_be_a_layer():
    layer = nn.Conv2d(2, 3, 3)
    conv = convert_quietly(layer)
    assert type(conv) is cnnkit.nn.Conv2d and type(layer) is nn.Conv2d
    assert_same_computation(layer, conv, torch.randn(1, 2, 6, 6))
    pool = nn.MaxPool2d(2)
    assert convert_quietly(pool, inplace=True) is pool and type(pool) is cnnkit.nn.MaxPool2d


def test_keeps_training_mode_and_hooks():
    torch.manual_seed(0)
    net = Net()
    net.train()
    net.trunk[1].eval()
    net.branch.eval()
    calls = []
    h1 = net.trunk[0].register_forward_hook(lambda m, i, o: calls.append(("fwd", type(m))))
    net.trunk[3].register_forward_pre_hook(lambda m, i: calls.append(("pre", type(m))))
    net.trunk[4].register_full_backward_hook(lambda m, gi, go: calls.append(("bwd", type(m))))
    modes = {n: m.training for n, m in net.named_modules()}
    for inplace in (False, True):
        conv = convert_quietly(net, inplace=inplace)
        assert {n: m.training for n, m in conv.named_modules()} == modes
        calls.clear()
        conv(torch.randn(2, 3, 12, 12)).sum().backward()
        assert sorted(calls, key=str) == sorted(
            [("fwd", cnnkit.nn.Conv2d), ("pre", cnnkit.nn.MaxPool2d),
             ("bwd", cnnkit.nn.ConvTranspose2d)], key=str)
    # A handle taken before an in-place conversion still removes its hook.
    h1.remove()
    calls.clear()
    net(torch.randn(2, 3, 12, 12))
    assert ("fwd", cnnkit.nn.Conv2d) not in calls and ("pre", cnnkit.nn.MaxPool2d) in calls


def test_keeps_buffers_and_float64():
    torch.manual_seed(0)
    net = Net().double()
    net.trunk[1].running_mean.fill_(0.25)
    conv = convert_quietly(net)
    assert all(p.dtype == torch.float64 for p in conv.parameters())
    assert torch.equal(conv.trunk[1].running_mean, net.trunk[1].running_mean)
    assert conv.trunk[1].running_mean is not net.trunk[1].running_mean
    assert_same_computation(net.eval(), conv.eval(), torch.randn(2, 3, 14, 14, dtype=torch.float64),
                            rtol=1e-12, atol=1e-12)


def test_shared_layer_stays_shared():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    out = convert_quietly(net)
    assert out[0] is out[2] and type(out[0]) is cnnkit.nn.Conv2d
    assert_same_computation(net, out, torch.randn(1, 3, 8, 8))


def test_layer_options_survive():
    """Options that change the forward: output_size of a transposed convolution,
    return_indices feeding MaxUnpool2d, unbatched input."""
    torch.manual_seed(0)
    tconv = nn.ConvTranspose2d(4, 2, 3, stride=3, padding=1)
    x = torch.randn(2, 4, 5, 6)
    ctconv = convert_quietly(tconv)
    for size in ([13, 16], [15, 18]):
        torch.testing.assert_close(ctconv(x, output_size=size), tconv(x, output_size=size))
    pool, unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
    cpool = convert_quietly(pool)
    values, indices = cpool(x)
    ref_values, ref_indices = pool(x)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
    assert torch.equal(unpool(values, indices), unpool(ref_values, ref_indices))
    conv = nn.Conv2d(4, 3, 3)
    torch.testing.assert_close(convert_quietly(conv)(x[0]), conv(x[0]))


# --------------------------------------------------------------------------- what stays torch.nn


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_left_and_reported_once(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Sequential(nn.AdaptiveAvgPool2d(1)))
    full = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2))
    model = nn.ModuleDict({"low": net.to(dtype), "f32": full})
    out, messages = conversion_warnings(lambda: cnnkit.convert(model))
    assert len(messages) == 1
    message = messages[0]
    # The float32 part is converted, the half part (its pools judged by the
    # dtype of the module around them) is left and listed, each with why.
    assert type(out["f32"][0]) is cnnkit.nn.Conv2d and type(out["f32"][1]) is cnnkit.nn.AvgPool2d
    assert [type(m) for m in out["low"].modules()][1:] == [
        nn.Conv2d, nn.MaxPool2d, nn.Sequential, nn.AdaptiveAvgPool2d]
    assert "left 3 layer(s)" in message
    for path, name, op in [("low.0", "Conv2d", "conv2d"), ("low.1", "MaxPool2d", "max_pool2d"),
                           ("low.2.0", "AdaptiveAvgPool2d", "adaptive_avg_pool2d")]:
        line = next(line for line in message.splitlines() if line.strip().startswith(path + " "))
        assert f"({name})" in line and f"cnnkit.{op}" in line and str(dtype) in line


def test_probe_ignores_an_enclosing_autocast_region():
    """Inside torch.autocast the CPU rules would take bfloat16 (running the
    kernels in float32); a bfloat16 layer still cannot run outside it."""
    layer = nn.Conv2d(2, 2, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        out, messages = conversion_warnings(lambda: cnnkit.convert(layer))
    assert type(out) is nn.Conv2d and len(messages) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(convert_quietly(nn.Conv2d(2, 2, 3))) is cnnkit.nn.Conv2d


def test_subclasses_and_lazy_layers_are_left_and_reported():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyConv(3, 3, 3), nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 1))
    out, messages = conversion_warnings(lambda: cnnkit.convert(model))
    assert [type(m) for m in out] == [MyConv, nn.LazyConv2d, cnnkit.nn.Conv2d]
    assert len(messages) == 1
    assert "0 (MyConv): a subclass of torch.nn.modules.conv.Conv2d" in messages[0]
    assert "1 (LazyConv2d): lazy layer not yet initialised" in messages[0]
    # Once initialised, the lazy layer is a plain Conv2d and converts.
    model[1](torch.randn(1, 3, 6, 6))
    assert type(convert_quietly(model[1])) is cnnkit.nn.Conv2d


def test_transposed_conv_padding_mode_is_left():
    layer = nn.ConvTranspose2d(2, 2, 3)
    layer.padding_mode = "reflect"  # torch.nn refuses it in the constructor and the forward
    out, messages = conversion_warnings(lambda: cnnkit.convert(layer))
    assert type(out) is nn.ConvTranspose2d
    assert len(messages) == 1 and "(the model itself) (ConvTranspose2d): padding_mode='reflect'" \
        in messages[0]


def test_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="^cnnkit.convert: expected model to be a torch.nn.Module, "
                                        "but got Tensor$"):
        cnnkit.convert(torch.zeros(1))


# --------------------------------------------------------------------------- parametrized layers


def test_parametrized_layer_converts_with_its_parametrization():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2, stride=2))
    torch.nn.utils.parametrizations.weight_norm(net[0])
    torch.nn.utils.parametrize.register_parametrization(net[2], "weight", nn.Tanh())
    conv = convert_quietly(net)
    for i, base in [(0, cnnkit.nn.Conv2d), (2, cnnkit.nn.ConvTranspose2d)]:
        assert isinstance(conv[i], base) and type(conv[i]).__bases__ == (base,)
        assert torch.nn.utils.parametrize.is_parametrized(conv[i], "weight")
    assert sorted(n for n, _ in conv.named_parameters()) == sorted(
        n for n, _ in net.named_parameters())
    assert_same_computation(net, conv, torch.randn(2, 3, 9, 9))
    back = convert_quietly(conv, reverse=True)
    assert type(back[0]).__bases__ == (nn.Conv2d,) and type(back[2]).__bases__ == (
        nn.ConvTranspose2d,)
    assert_same_computation(net, back, torch.randn(2, 3, 9, 9))


# --------------------------------------------------------------------------- reverse


def test_reverse_round_trip():
    torch.manual_seed(0)
    net = Net()
    conv = convert_quietly(net)
    back = convert_quietly(conv, reverse=True)
    assert layer_types(back) == layer_types(net)
    assert_same_computation(net, back, torch.randn(2, 3, 13, 13))
    # Converting what is already converted changes nothing.
    assert layer_types(convert_quietly(conv)) == layer_types(conv)
    assert layer_types(convert_quietly(net, reverse=True)) == layer_types(net)


def test_reverse_makes_full_padding_explicit_and_reports_cnnkit_only_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        cnnkit.nn.Conv2d(2, 4, (3, 2), padding="full", dilation=(1, 2)),
        cnnkit.nn.TiledConv2d(4, 4, 3, tiles=2),
        cnnkit.nn.Maxout(2),
        cnnkit.nn.LocallyConnected2d(2, 2, 3, in_size=(6, 5)),
    )
    conv1d = cnnkit.nn.Conv1d(2, 2, 3, padding="full")
    x = torch.randn(2, 2, 6, 5)
    expected = model(x)
    back, messages = conversion_warnings(lambda: cnnkit.convert(model, reverse=True))
    assert type(back[0]) is nn.Conv2d and back[0].padding == (2, 2)
    torch.testing.assert_close(back(x), expected)
    assert len(messages) == 1
    for line in ["1 (TiledConv2d): torch.nn has no such layer", "2 (Maxout)",
                 "3 (LocallyConnected2d)"]:
        assert line in messages[0]
    back1d = convert_quietly(conv1d, reverse=True)
    assert type(back1d) is nn.Conv1d and back1d.padding == (2,)
    y = torch.randn(3, 2, 7)
    torch.testing.assert_close(back1d(y), conv1d(y))


# --------------------------------------------------------------------------- devices


def test_meta_model_converts():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, device="meta"), nn.MaxPool2d(2))
    conv = convert_quietly(net)
    assert [type(m) for m in conv] == [cnnkit.nn.Conv2d, cnnkit.nn.MaxPool2d]
    assert conv(torch.empty(2, 3, 10, 10, device="meta")).shape == (2, 8, 4, 4)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_model(device, dtype, no_tf32):
    torch.manual_seed(0)
    net = Net().to(device, dtype).eval()
    conv, messages = conversion_warnings(lambda: cnnkit.convert(net))
    left = [name for name, cls in layer_types(conv).items() if cls in TWINS]
    if left:
        # Only an op this build has no CUDA kernel for may leave a layer
        # behind, and the one warning must list each such layer.
        assert len(messages) == 1
        lines = messages[0].splitlines()[1:]
        assert [line.split()[0] for line in lines] == left
        assert all("not built for CUDA" in line for line in lines)
    else:
        assert messages == []
    x = torch.randn(2, 3, 14, 14, device=device, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_same_computation(net, conv, x, rtol=tol, atol=tol)


def test_deepcopy_of_model_is_independent():
    torch.manual_seed(0)
    net = Net()
    conv = cnnkit.convert(net)
    with torch.no_grad():
        conv.trunk[0].weight.add_(1.0)
    assert not torch.equal(conv.trunk[0].weight, net.trunk[0].weight)
    assert copy.deepcopy(conv).trunk[0].__class__ is cnnkit.nn.Conv2d
