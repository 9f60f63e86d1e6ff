"""cnnkit's own CPU matrix product (csrc/cpu/gemm*.{h,cpp}), on every
instruction set this processor supports: every edge tile size, every operand
layout, accumulation, blocks deeper than one cache block, determinism across
thread counts, and the choice of instruction set by CNNKIT_CPU_ISA.
"""
import os
import subprocess
import sys

import pytest
import torch

import cnnkit

_cpu = cnnkit._cpu
ISAS = _cpu.cpu_isas()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The largest register tile any variant uses (12 rows, 32 float32 columns):
# sizes up to two tiles and one past cover every edge tile of every variant.
MAX_TILE_ROWS, MAX_TILE_COLUMNS = 12, 32


@pytest.fixture(params=ISAS)
def isa(request):
    _cpu.set_cpu_isa(request.param)
    yield request.param
    _cpu.set_cpu_isa("")


def reference(a, b):
    return a.double() @ b.double()


def tolerance(dtype, depth):
    eps = torch.finfo(dtype).eps
    return 4 * eps * max(depth, 1) ** 0.5 + eps


def assert_product(out, a, b, accumulate_onto=None):
    expected = reference(a, b)
    if accumulate_onto is not None:
        expected = expected + accumulate_onto.double()
    scale = (a.double().abs() @ b.double().abs()).max().item() + 1
    err = (out.double() - expected).abs().max().item() if out.numel() else 0.0
    assert err <= tolerance(out.dtype, a.shape[1]) * scale, err


def test_active_isa_is_the_modules_own():
    assert ISAS[-1] == "generic"
    assert _cpu.cpu_isa() == _cpu.isa == ISAS[0]
    assert _cpu.isa == (os.environ.get("CNNKIT_CPU_ISA") or cnnkit._C.cpu_isas()[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_edge_tile_size(isa, dtype):
    g = torch.Generator().manual_seed(0)
    for depth in (1, 7):
        for M in range(1, 2 * MAX_TILE_ROWS + 2):
            for N in range(1, 2 * MAX_TILE_COLUMNS + 2):
                a = torch.randn(M, depth, dtype=dtype, generator=g)
                b = torch.randn(depth, N, dtype=dtype, generator=g)
                out = torch.full((M, N), float("nan"), dtype=dtype)
                _cpu.matmul(out, a, b)
                assert_product(out, a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 3, 1000), (200, 70, 300), (300, 33, 513),
                                   (3, 4200, 5), (64, 1024, 576)])
def test_layouts_and_accumulation(isa, dtype, shape):
    """A, B and C row- or column-major, C strided in both dimensions; depths
    past one cache block (kc <= 256), rows past one row block, columns past
    one column panel (nc = 4096)."""
    M, N, K = shape
    g = torch.Generator().manual_seed(1)
    a = torch.randn(M, K, dtype=dtype, generator=g)
    b = torch.randn(K, N, dtype=dtype, generator=g)
    for a_op in (a, a.t().contiguous().t()):
        for b_op in (b, b.t().contiguous().t()):
            for out in (torch.empty(M, N, dtype=dtype), torch.empty(N, M, dtype=dtype).t(),
                        torch.empty(2 * M, 3 * N, dtype=dtype)[::2, ::3]):
                _cpu.matmul(out, a_op, b_op)
                assert_product(out, a, b)
                before = out.clone()
                _cpu.matmul(out, a_op, b_op, accumulate=True)
                assert_product(out, a, b, accumulate_onto=before)


def test_empty_and_zero_depth(isa):
    out = torch.full((3, 4), 5.0)
    _cpu.matmul(out, torch.empty(3, 0), torch.empty(0, 4))
    assert torch.equal(out, torch.zeros(3, 4))
    out.fill_(5.0)
    _cpu.matmul(out, torch.empty(3, 0), torch.empty(0, 4), accumulate=True)
    assert torch.equal(out, torch.full((3, 4), 5.0))
    _cpu.matmul(torch.empty(0, 4), torch.empty(0, 2), torch.empty(2, 4))


@pytest.mark.parametrize("shape", [(200, 3000, 300), (3000, 40, 300)])
def test_same_bits_at_any_thread_count(isa, shape):
    """A product split over threads (by columns or by rows) gives every
    element the same sum in the same order as on one thread."""
    M, N, K = shape
    a, b = torch.randn(M, K), torch.randn(K, N)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            out = torch.empty(M, N)
            _cpu.matmul(out, a, b)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_operand_errors():
    with pytest.raises(RuntimeError, match="expected 2-D operands"):
        _cpu.matmul(torch.empty(3, 4), torch.empty(3), torch.empty(3, 4))
    with pytest.raises(RuntimeError, match="shapes do not match"):
        _cpu.matmul(torch.empty(3, 4), torch.empty(3, 5), torch.empty(4, 4))
    with pytest.raises(RuntimeError, match="expected float32 or float64 operands of one dtype"):
        _cpu.matmul(torch.empty(3, 4), torch.empty(3, 5, dtype=torch.float64), torch.empty(5, 4))


def test_set_cpu_isa_errors():
    with pytest.raises(RuntimeError, match="expected one of avx512, avx2 or generic, but got 'sse9'"):
        _cpu.set_cpu_isa("sse9")
    for name in {"avx512", "avx2"} - set(ISAS):
        with pytest.raises(RuntimeError, match=f"this processor does not support {name}|"
                           f"{name} is wider than this CPU kernel module's"):
            _cpu.set_cpu_isa(name)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **env}, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("name", ISAS)
def test_environment_variable_chooses_the_isa(name):
    done = run_python("import cnnkit; print(cnnkit._cpu.isa, cnnkit._cpu.cpu_isa(), "
                      "cnnkit._cpu.kernels.__name__)", CNNKIT_CPU_ISA=name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [name, name, f"cnnkit._C_cpu_{name}"]


def test_environment_variable_error():
    done = run_python("import cnnkit", CNNKIT_CPU_ISA="sse9")
    assert done.returncode != 0
    assert "CNNKIT_CPU_ISA: expected one of avx512, avx2 or generic, but got 'sse9'" in done.stderr
