"""Real models converted with cnnkit.convert compute what the torch.nn originals do.

torchvision architectures with random weights (nothing is downloaded), in
eval mode (BatchNorm uses its running statistics, Dropout is off), on small
inputs; every layer's output, the model's output and every parameter's
gradient are compared in float64. (In float32 the converted model rounds
differently from ATen's kernels -- Winograd transforms, other summation
orders -- and where a max pool's candidates or a ReLU's input are equal to
within rounding, the two models route the gradient differently: vgg11_bn's
input gradient then differs by 4% at 1,262 of 24,576 pixels, while in float64
it agrees to 1e-14.) Also: torch.compile of a converted model,
and the memory format (channels_last) of the converted layers' outputs.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import cnnkit

torchvision = pytest.importorskip("torchvision")

TORCH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
CNNKIT_LAYERS = (cnnkit.nn.Conv1d, cnnkit.nn.Conv2d, cnnkit.nn.ConvTranspose2d,
                 cnnkit.nn.MaxPool2d, cnnkit.nn.AvgPool2d, cnnkit.nn.AdaptiveMaxPool2d,
                 cnnkit.nn.AdaptiveAvgPool2d)

# name: (constructor arguments, input size, the layers convert must replace).
MODELS = {
    # Residual blocks, strided 1x1 downsampling convolutions.
    "resnet18": ({}, 64, {"Conv2d": 20, "MaxPool2d": 1, "AdaptiveAvgPool2d": 1}),
    # Plain 3x3 stacks with BatchNorm; the adaptive pool upsamples 2x2 to 7x7.
    "vgg11_bn": ({}, 64, {"Conv2d": 8, "MaxPool2d": 5, "AdaptiveAvgPool2d": 1}),
    # 11x11 stride-4 convolution; 64 is about the smallest input it takes.
    "alexnet": ({}, 64, {"Conv2d": 5, "MaxPool2d": 3, "AdaptiveAvgPool2d": 1}),
    # 17 depthwise convolutions (groups = channels).
    "mobilenet_v2": ({}, 64, {"Conv2d": 52}),
    # Four-branch inception blocks, 13 ceil_mode max pools (some with padding).
    "googlenet": ({"aux_logits": False, "init_weights": True}, 64,
                  {"Conv2d": 57, "MaxPool2d": 13, "AdaptiveAvgPool2d": 1}),
    # Fire modules, ceil_mode max pools.
    "squeezenet1_1": ({}, 64, {"Conv2d": 26, "MaxPool2d": 3, "AdaptiveAvgPool2d": 1}),
}

RTOL = 1e-10  # float64, relative to the largest magnitude of the reference tensor


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these many small ops: on a loaded 2-core machine
    the thread pool's barriers cost more than the work (10-100x here)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff


def record_layer_outputs(model, kinds):
    """{path: output} of every layer of `kinds`, filled by forward hooks."""
    outputs = {}
    for path, m in model.named_modules():
        if isinstance(m, kinds):
            def hook(mod, inputs, out, path=path):
                outputs[path] = out[0] if isinstance(out, tuple) else out
            m.register_forward_hook(hook)
    return outputs


def run(model, x, grad_seed):
    """Output, input gradient and {name: gradient} for a random projection of the output."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = model(x)
    g = torch.Generator().manual_seed(grad_seed)
    out.backward(torch.randn(out.shape, generator=g).to(out.device, out.dtype))
    return out, x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.filterwarnings("error::cnnkit.ConversionWarning")
@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_matches_torch(name, device, no_tf32):
    kwargs, size, expected_counts = MODELS[name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).to(device, torch.float64)
    model.eval()
    converted = cnnkit.convert(model)

    # Every conv and pool layer was replaced, none is left.
    counts = collections.Counter(type(m).__name__ for m in converted.modules()
                                 if isinstance(m, CNNKIT_LAYERS))
    assert counts == expected_counts
    assert all(type(m) not in TORCH_LAYERS for m in converted.modules())
    assert all(type(m) in CNNKIT_LAYERS
               for m in converted.modules() if isinstance(m, TORCH_LAYERS))
    if name == "mobilenet_v2":
        assert sum(m.groups > 1 for m in converted.modules() if isinstance(m, nn.Conv2d)) == 17

    ref_layers = record_layer_outputs(model, TORCH_LAYERS)
    new_layers = record_layer_outputs(converted, CNNKIT_LAYERS)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64).to(device)
    ref_out, ref_gx, ref_grads = run(model, x, grad_seed=2)
    out, gx, grads = run(converted, x, grad_seed=2)

    assert ref_layers.keys() == new_layers.keys() and len(new_layers) == sum(counts.values())
    for path in ref_layers:
        assert relative_error(new_layers[path], ref_layers[path]) < RTOL, f"layer {path}"
    assert relative_error(out, ref_out) < RTOL
    assert relative_error(gx, ref_gx) < RTOL
    assert ref_grads.keys() == grads.keys()
    for pname, ref in ref_grads.items():
        assert relative_error(grads[pname], ref) < RTOL, f"gradient of {pname}"


# --------------------------------------------------------------------------- torch.compile


class LeNet(nn.Module):
    """A LeNet-5-like network over (N, 1, 28, 28) inputs, torch.nn layers only."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
            nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU(), nn.AdaptiveMaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding="same"), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    eager = cnnkit.convert(LeNet())
    assert sum(isinstance(m, CNNKIT_LAYERS) for m in eager.modules()) == 8
    compiled_model = cnnkit.convert(LeNet())
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True)
    for step in range(2):  # the second call reuses the compiled graph
        x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(step))
        ref_out, ref_gx, ref_grads = run(eager, x, grad_seed=10 + step)
        out, gx, grads = run(compiled, x, grad_seed=10 + step)
        grads = {n.removeprefix("_orig_mod."): g for n, g in grads.items()}
        assert ref_grads.keys() == grads.keys()
        assert relative_error(out, ref_out) < 1e-5
        assert relative_error(gx, ref_gx) < 1e-5
        for pname, ref in ref_grads.items():
            assert relative_error(grads[pname], ref) < 1e-5, pname


# --------------------------------------------------------------------------- memory format

LAYERS = {
    "conv2d": lambda: nn.Conv2d(4, 8, 3, padding=1),
    "conv2d_strided_grouped": lambda: nn.Conv2d(4, 8, 3, stride=2, groups=4),
    "conv_transpose2d": lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    "max_pool2d": lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    "max_pool2d_indices": lambda: nn.MaxPool2d(2, return_indices=True),
    "avg_pool2d": lambda: nn.AvgPool2d(2),
    "adaptive_max_pool2d": lambda: nn.AdaptiveMaxPool2d((3, 4)),
    "adaptive_avg_pool2d": lambda: nn.AdaptiveAvgPool2d(3),
    "global_avg_pool": lambda: nn.AdaptiveAvgPool2d(1),
}

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def memory_formats(t):
    """The 4-D memory formats `t` is dense in (both for shapes where they coincide)."""
    return tuple(name for name, fmt in FORMATS.items() if t.is_contiguous(memory_format=fmt))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_outputs_keep_the_input_memory_format(layer, fmt, device):
    torch.manual_seed(0)
    ref = LAYERS[layer]().to(device)
    new = cnnkit.convert(ref)
    assert type(new) in CNNKIT_LAYERS
    results = []
    for m in (ref, new):
        x = torch.randn(2, 4, 9, 10, device=device).contiguous(
            memory_format=FORMATS[fmt]).requires_grad_()
        out = m(x)
        values = out[0] if isinstance(out, tuple) else out
        values.backward(torch.ones_like(values))
        results.append([memory_formats(values), memory_formats(x.grad)]
                       + ([memory_formats(out[1])] if isinstance(out, tuple) else []))
    assert results[1] == results[0]
    assert fmt in results[0][0]  # the output is in the input's format, as torch.nn gives it


def test_channels_last_model_keeps_channels_last(device):
    """A whole converted resnet18 in channels_last (weights and input) gives
    every layer's output in the format torch.nn's does: channels_last."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    converted = cnnkit.convert(model)
    ref_layers = record_layer_outputs(model, TORCH_LAYERS)
    new_layers = record_layer_outputs(converted, CNNKIT_LAYERS)
    x = torch.randn(2, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(x), converted(x)
    assert len(new_layers) == 22
    for path, ref in ref_layers.items():
        assert memory_formats(new_layers[path]) == memory_formats(ref), path
        assert "channels_last" in memory_formats(ref)

