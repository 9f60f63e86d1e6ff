"""Compile-check CUDA sources one by one, with the flags the real build uses,
without building or loading the extension: `python tools/check_cuda.py
csrc/cuda/pool2d.cu [more.cu]` (default: every csrc/cuda/*.cu).

For working on one kernel file while the rest of the tree is mid-edit; the
real build (`make build`) compiles them all into cnnkit._C.
"""
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile

import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arch_flags() -> list[str]:
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0").replace(" ", ";").split(";")
    flags = []
    for arch in filter(None, archs):
        num = arch.replace(".", "").replace("+PTX", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def main(files: list[str]) -> int:
    files = files or sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu")))
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}",
                                                      f"-I{sysconfig.get_paths()['include']}"]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in files:
            cmd = ["nvcc", "-c", src, "-o", os.path.join(tmp, "check.o"), *includes,
                   *COMMON_NVCC_FLAGS, *arch_flags(), "-std=c++20", "-O3", "-lineinfo",
                   "--compiler-options", "-fPIC", "-DCNNKIT_WITH_CUDA",
                   "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
                   f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
            print("nvcc", os.path.relpath(src, ROOT), flush=True)
            failed += subprocess.run(cmd).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
