"""Loads cnnkit's CPU kernels: the module built for the widest instruction set
this processor runs (cnnkit._C_cpu_avx512, _avx2 or _generic; see setup.py),
or the one the environment variable CNNKIT_CPU_ISA names. Loading it
registers the CPU kernels of every torch.ops.cnnkit op.

The processor's features are read by cnnkit._C, built for the baseline of the
architecture, before any module built for a wider instruction set is loaded:
such a module's own start-up code may already use its instructions.
"""
import importlib
import os

from . import _C

ISAS = ("avx512", "avx2", "generic")


def _choose() -> str:
    supported = _C.cpu_isas()
    requested = os.environ.get("CNNKIT_CPU_ISA", "")
    if not requested:
        return supported[0]
    if requested not in ISAS:
        raise RuntimeError(f"CNNKIT_CPU_ISA: expected one of avx512, avx2 or generic, "
                           f"but got '{requested}'")
    if requested not in supported:
        raise RuntimeError(f"CNNKIT_CPU_ISA: this processor does not support {requested}; "
                           f"supported: {', '.join(supported)}")
    return requested


kernels = importlib.import_module(f"cnnkit._C_cpu_{_choose()}")

# The CPU kernels' instruction set, and the matrix product's (tests can
# narrow the latter with set_cpu_isa).
isa = kernels.isa
cpu_capability = kernels.cpu_capability
cpu_isa = kernels.cpu_isa
cpu_isas = kernels.cpu_isas
set_cpu_isa = kernels.set_cpu_isa
matmul = kernels.matmul
