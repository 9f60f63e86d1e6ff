"""The CPU kernel tests on every instruction set this processor supports.

The rest of the suite runs the CPU kernel module of the widest instruction
set (or the one CNNKIT_CPU_ISA names); here each other supported module
(AVX2, baseline) runs the convolution, pooling and local convolution test
files in a fresh process forced through CNNKIT_CPU_ISA, so every variant of
the matrix product and of the vectorised loops is checked on the whole shared
problem list.
"""
import os
import subprocess
import sys

import pytest

import cnnkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_TESTS = ["tests/test_conv2d.py", "tests/test_conv_transpose2d.py",
             "tests/test_tiled_conv2d.py", "tests/test_conv_families.py",
             "tests/test_winograd.py", "tests/test_cpu_determinism.py", "tests/test_pool.py",
             "tests/test_local_conv2d.py"]

DEFAULT_ISA = cnnkit._cpu.isa
OTHER_ISAS = [isa for isa in cnnkit._C.cpu_isas() if isa != DEFAULT_ISA]


@pytest.mark.skipif(not OTHER_ISAS, reason="the processor supports one instruction set only")
@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_cpu_kernel_suite_on(isa):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m",
         "not slow and not cuda", *CPU_TESTS],
        capture_output=True, text=True, cwd=ROOT, timeout=1200,
        env={**os.environ, "CNNKIT_CPU_ISA": isa, "PYTHONPATH": ROOT})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{isa}: {summary}\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in summary and " failed" not in summary, summary
