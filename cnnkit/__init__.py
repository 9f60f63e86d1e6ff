"""cnnkit: hand-written C++ and CUDA kernels for convolutional networks.

    import cnnkit
    import cnnkit.functional as CF

    y = CF.conv2d(x, w, padding="same")
    layer = cnnkit.nn.Conv2d(3, 16, 3)
"""
import torch

from . import _C  # noqa: F401  (loads the kernels and registers torch.ops.cnnkit.*)
from . import _fake  # noqa: F401  (fake kernels for torch.compile)
from . import _autograd  # noqa: F401  (gradients of every order, forward mode, batching rules)
from . import functional, nn  # noqa: E402
from . import _autocast  # noqa: F401,E402  (torch.autocast rules for every forward op)
from . import filters  # noqa: E402
from .convert import ConversionWarning, convert  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """How this cnnkit was built: CUDA kernels compiled or not, CUDA version,
    the CPU instruction set its vectorised loops target."""
    return {
        "with_cuda": bool(_C.with_cuda),
        "cuda_version": _C.cuda_version,
        "cpu_capability": _C.cpu_capability,
        "torch": torch.__version__,
    }


__all__ = ["functional", "nn", "filters", "convert", "ConversionWarning", "build_info"]
