"""Shared test fixtures and helpers.

Every test that runs a kernel takes the `device` fixture: "cpu" always, "cuda"
where a GPU is present (skipped otherwise), so the CUDA suite is the same tests.
Test modules import the helpers below with `from conftest import ...` (pytest
puts tests/ on sys.path and registers this file as the module `conftest`).
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

CUDA_AVAILABLE = torch.cuda.is_available()

# tools/sanitize_emulation.py runs the emulated suite on a sanitizer build of
# cnnkit._C_emu: that module, loaded under its name before any test imports it.
if os.environ.get("CNNKIT_EMULATION_MODULE"):
    _spec = importlib.util.spec_from_file_location("cnnkit._C_emu",
                                                   os.environ["CNNKIT_EMULATION_MODULE"])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["cnnkit._C_emu"] = _module
    _spec.loader.exec_module(_module)
    import cnnkit
    cnnkit._C_emu = _module

# Marks of every CUDA test: selectable with -m cuda, skipped without a GPU.
NEEDS_CUDA = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA device")]

# For pytest.mark.parametrize("device", DEVICES) where a fixture cannot be used
# (hypothesis tests).
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes several seconds (torch.compile); "
                            "deselect with -m 'not slow'")
    config.addinivalue_line("markers", "sanitize: the part of the emulated CUDA suite that "
                            "tools/sanitize_emulation.py runs under the sanitizers")
    # ATen's note that its own 'same' convolution with an even kernel copies the
    # input: the references use it on purpose.
    config.addinivalue_line("filterwarnings",
                            "ignore:Using padding='same' with even kernel lengths:UserWarning")


def pytest_terminal_summary(terminalreporter):
    # What the emulated CUDA backend ran, when a test loaded it.
    emulation = sys.modules.get("cnnkit._C_emu")
    if emulation is None:
        return
    statistics = emulation.launch_statistics()
    launches = sum(count for count, _ in statistics.values())
    blocks = sum(count for _, count in statistics.values())
    terminalreporter.write_line(
        f"emulated CUDA: {launches} kernel launches of {len(statistics)} kernel "
        f"instantiations, {blocks} blocks")


@pytest.fixture(params=DEVICES)
def device(request):
    """"cpu", and "cuda" where a GPU is present."""
    return request.param


@pytest.fixture(params=[pytest.param("cuda", marks=NEEDS_CUDA)])
def cuda_device(request):
    """"cuda" only: for what only a GPU can show (half precision, device mismatch)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    # Same random tensors on every run of a test, whatever ran before it.
    torch.manual_seed(0)


@pytest.fixture
def no_tf32():
    """TF32 off (cuDNN's convolutions and cuBLAS's matmuls round to 10 mantissa
    bits with it): float32 comparisons mean float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def one_thread():
    """gradcheck / gradgradcheck call the ops thousands of times on tensors of a
    few dozen elements, where intra-op threads only add a thread wake-up per
    call (milliseconds each when the machine is loaded). The threaded paths
    are exercised by every other test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- tensors

FLOAT_DTYPES = [torch.float32, torch.float64]
HALF_DTYPES = [torch.float16, torch.bfloat16]

# Memory layouts every op must read correctly (SPEC 3: non-contiguous and
# channels_last inputs give correct results).
#   contiguous     row-major NCHW
#   sliced         every other element of a wider buffer, starting at offset 1:
#                  gaps between elements and a non-zero storage offset
#   transposed     H and W swapped in memory (dense, but permuted strides)
#   channels_last  NHWC in memory (4-D tensors only; others stay contiguous)
LAYOUTS = ["contiguous", "sliced", "transposed", "channels_last"]


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `t`, stored in `layout`; a new leaf (no graph to `t`)."""
    t = t.detach()
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "sliced":
        if t.dim() == 0:
            return t.clone()
        big = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1] + 1)
        big[..., 1::2] = t
        out = big[..., 1::2]
    elif layout == "transposed":
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t.clone()
    elif layout == "channels_last":
        out = t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.contiguous()
    else:
        raise ValueError(layout)
    return out.detach()


def make_tensor(shape, dtype=torch.float64, device="cpu", layout="contiguous",
                requires_grad=False) -> torch.Tensor:
    """Standard-normal values drawn in float64 on the CPU (the same values on
    every device), rounded to `dtype`, stored in `layout`."""
    t = torch.randn(*shape, dtype=torch.float64).to(dtype).to(device)
    return with_layout(t, layout).requires_grad_(requires_grad)


# --------------------------------------------------------------------------- comparisons

# Relative tolerances against a float64 reference computed from the same
# (rounded) inputs: float32 sums of a few hundred products keep ~1e-6 relative
# accuracy; 16-bit outputs are rounded once after float32 accumulation.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None):
    """`actual` (any dtype / device) against a float64 reference: relative
    tolerance of `dtype`, absolute tolerance of the same size relative to the
    largest reference magnitude (outputs near zero are sums that cancelled)."""
    dtype = dtype or actual.dtype
    tol = TOLERANCES[dtype]
    expected = expected.detach().to("cpu", torch.float64)
    actual = actual.detach().to("cpu", torch.float64)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def exact_message(message: str) -> str:
    """A pytest.raises `match` pattern that accepts exactly `message`."""
    return "^" + re.escape(message) + "$"


# --------------------------------------------------------------------------- bad inputs

@dataclass(frozen=True)
class BadCase:
    """One invalid call and the exact error it must raise, before any kernel runs.

    `call(t)` makes the call; `t(*shape, dtype=torch.float32)` makes tensors on
    the device under test. Run on "meta" the call reaches the fake kernel
    (cnnkit/_fake.py), which must raise the same message as the C++ checks.
    `{device}` in `message` stands for the device under test as torch prints it.
    """
    id: str
    call: Callable
    error: type
    message: str
    devices: tuple = ("cpu", "meta", "cuda")


_DEVICE_NAMES = {"cpu": "cpu", "meta": "meta", "cuda": "cuda:0"}


def bad_case_params(cases):
    """(case, device) parameters, one per device the case applies to."""
    params = []
    for case in cases:
        for dev in case.devices:
            params.append(pytest.param(case, dev, id=f"{case.id}-{dev}",
                                       marks=NEEDS_CUDA if dev == "cuda" else ()))
    return params


def check_bad_case(case: BadCase, dev: str):
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, dev)

    message = case.message.replace("{device}", _DEVICE_NAMES[dev])
    with pytest.raises(case.error, match=exact_message(message)):
        case.call(t)
