"""The examples keep working: short runs of their training functions and scripts."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(name):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # locally_connected imports train_lenet5_digits
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    # The scripts set the thread count for their process; give it back.
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_SIGNATURE and os.path.getsize(path) > 5000, path


def test_lenet5_is_built_from_cnnkit_layers():
    lenet = load_example("train_lenet5_digits")
    import cnnkit

    model = lenet.LeNet5()
    kinds = [type(m) for m in model.features if not isinstance(m, torch.nn.ReLU)]
    assert kinds == [cnnkit.nn.Conv2d, cnnkit.nn.MaxPool2d, cnnkit.nn.Conv2d,
                     cnnkit.nn.MaxPool2d, cnnkit.nn.Conv2d]
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert lenet.count_parameters(model) == 61706


def test_lenet5_digits_short_training(tmp_path, capsys):
    lenet = load_example("train_lenet5_digits")
    x_train, y_train, x_test, y_test = lenet.load_digits_32()
    assert x_train.shape == (1347, 1, 32, 32) and x_test.shape == (450, 1, 32, 32)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert sorted(y_test.unique().tolist()) == list(range(10))

    result = lenet.main(["--epochs", "3", "--out", str(tmp_path)])
    history = result["history"]
    assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0]
    # Chance is 0.1; three epochs reach about 0.9.
    assert result["test_accuracy"] > 0.75
    assert result["test_accuracy"] == history["test_accuracy"][-1]
    assert f"test accuracy: {result['test_accuracy']:.4f}" in capsys.readouterr().out
    assert_png(tmp_path / "lenet5_digits_curves.png")
    assert_png(tmp_path / "lenet5_digits_filters.png")


def test_locally_connected_short_training(tmp_path, capsys):
    example = load_example("locally_connected")
    import cnnkit

    assert type(example.build("local").features[3]) is cnnkit.nn.LocallyConnected2d
    assert type(example.build("tiled").features[3]) is cnnkit.nn.TiledConv2d
    results = example.main(["--epochs", "2", "--out", str(tmp_path)])
    assert {k: v["c3_parameters"] for k, v in results.items()} == {
        "conv": 2416, "tiled": 9664, "local": 241600}
    for name, r in results.items():
        assert r["test_accuracy"] > 0.5, name
    out = capsys.readouterr().out
    for name in ("conv", "tiled", "local"):
        assert f"{name} " in out and f"{results[name]['test_accuracy']:.4f}" in out
    assert_png(tmp_path / "locally_connected_curves.png")


def test_per_sample_gradients_short_training(capsys):
    example = load_example("per_sample_gradients")
    import cnnkit

    model = example.build_model()
    kinds = [type(m) for m in model if not isinstance(m, (torch.nn.Tanh, torch.nn.Flatten))]
    assert kinds == [cnnkit.nn.Conv2d, cnnkit.nn.MaxPool2d, cnnkit.nn.LocallyConnected2d,
                     torch.nn.Linear]
    result = example.main(["--epochs", "2", "--check-samples", "8", "--time", "0.05"])
    assert result["parameters"] == 5402
    # float64, vmap(grad) against one backward pass per sample
    assert result["check"]["samples"] == 8 and result["check"]["max_abs_diff"] < 1e-12
    history = result["history"]
    assert len(history["loss"]) == 2 and history["loss"][-1] < history["loss"][0]
    assert all(0 < s["median"] <= s["max"] and 0 <= s["clipped"] <= 1 for s in history["norms"])
    # Chance is 0.1; two epochs of DP-SGD reach about 0.8.
    assert result["test_accuracy"] > 0.5
    timing = result["timing"]
    assert timing["batch"] == 64 and timing["vmap_ms"] > 0 and timing["loop_ms"] > 0
    assert timing["float32_max_abs_diff"] < 1e-4
    out = capsys.readouterr().out
    assert f"test accuracy: {result['test_accuracy']:.4f}" in out
    assert "max abs difference" in out and "loop over samples" in out


def test_per_sample_gradients_dp_sgd_step_clips_each_sample():
    example = load_example("per_sample_gradients")
    torch.manual_seed(0)
    model = example.build_model().double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6)
    by_loop = example.per_sample_gradients_by_loop(model, x, y)
    norms = example.gradient_norms(by_loop)
    clip = norms.median().item()  # half of the samples get clipped
    factors = (clip / norms).clamp(max=1.0)
    expected = {name: (factors.view(-1, *[1] * (g.dim() - 1)) * g).sum(0) / 6
                for name, g in by_loop.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the parameters
    got = example.dp_sgd_step(model, optimizer, example.per_sample_gradient_function(model), x, y,
                              clip=clip, noise_multiplier=0.0, generator=torch.Generator())
    torch.testing.assert_close(got, norms)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name])
