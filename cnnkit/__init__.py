"""cnnkit: hand-written C++ and CUDA kernels for convolutional networks.

    import cnnkit
    import cnnkit.functional as CF

    y = CF.conv2d(x, w, padding="same")
    layer = cnnkit.nn.Conv2d(3, 16, 3)
"""
import torch

from . import _C  # noqa: F401  (defines torch.ops.cnnkit.*; the CUDA kernels)
from . import _cpu  # noqa: F401  (the CPU kernels for this processor's instruction set)
from . import _fake  # noqa: F401  (fake kernels for torch.compile)
from . import _autograd  # noqa: F401  (gradients of every order, forward mode, batching rules)
from . import functional, nn  # noqa: E402
from . import _autocast  # noqa: F401,E402  (torch.autocast rules for every forward op)
from . import filters  # noqa: E402
from .convert import ConversionWarning, convert  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """How this cnnkit was built and what it runs on: CUDA kernels compiled or
    not, CUDA version, the instruction set of the CPU kernels loaded for this
    processor (cpu_isa: avx512, avx2 or generic) and the matching ATen
    Vectorized implementation (cpu_capability)."""
    return {
        "with_cuda": bool(_C.with_cuda),
        "cuda_version": _C.cuda_version,
        "cpu_isa": _cpu.isa,
        "cpu_capability": _cpu.cpu_capability,
        "torch": torch.__version__,
    }


__all__ = ["functional", "nn", "filters", "convert", "ConversionWarning", "build_info"]
