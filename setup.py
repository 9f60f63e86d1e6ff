"""Build cnnkit._C: the C++ (CPU) kernels always, the CUDA kernels whenever a
CUDA toolkit and a CUDA-enabled torch are present at build time (no GPU needed).

Environment:
  CNNKIT_CPU_ONLY=1        never build the CUDA sources
  CUDA_HOME                toolkit root; found from `nvcc` on the PATH otherwise
  TORCH_CUDA_ARCH_LIST     target architectures (default "8.0;9.0": A100, H100/H200)
  CNNKIT_CXX_ARCH          host code generation flag (default -march=native)
  MAX_JOBS                 parallel compile jobs (ninja)
  CNNKIT_EMULATION         build cnnkit._C_emu instead of cnnkit._C: the CUDA sources
                           compiled as host C++ against csrc/emulation/ (make emulate).
                           "fibers": the test suite's build; "asan" / "tsan": built with
                           AddressSanitizer + UndefinedBehaviorSanitizer / ThreadSanitizer
                           (make emulate-sanitize)
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The CUDA toolkit root, or None.

    `nvcc` on the PATH may be a wrapper script (or a symlink), so its own folder
    says nothing; ask nvcc itself where it runs from: `nvcc -dryrun` prints
    `_HERE_=<toolkit>/bin` before doing anything.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
    for line in (out.stdout + out.stderr).splitlines():
        line = line.lstrip("#$ ").strip()
        if line.startswith("_HERE_="):
            return os.path.dirname(os.path.realpath(line.split("=", 1)[1]))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
cuda_home = None if os.environ.get("CNNKIT_CPU_ONLY") == "1" else find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cpu_capability_flags(arch_flag):
    """-D flags that select ATen's Vectorized<T> implementation matching the
    host code generation flag (AVX512 > AVX2 > scalar DEFAULT)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        macros = subprocess.run([cxx, arch_flag, "-dM", "-E", "-x", "c++", "/dev/null"],
                                capture_output=True, text=True, timeout=60).stdout
    except OSError:
        macros = ""
    has = lambda m: f"#define {m} 1" in macros  # noqa: E731
    if all(has(m) for m in ("__AVX512F__", "__AVX512BW__", "__AVX512DQ__", "__AVX512VL__")):
        return ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"], "AVX512"
    if has("__AVX2__") and has("__FMA__"):
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"], "AVX2"
    return ["-DCPU_CAPABILITY=DEFAULT"], "DEFAULT"


with_cuda = bool(cuda_home) and torch.version.cuda is not None
arch_flag = os.environ.get("CNNKIT_CXX_ARCH", "-march=native")
vec_flags, vec_name = cpu_capability_flags(arch_flag)

sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
cxx_flags = ["-O3", arch_flag, "-fopenmp", *vec_flags]
define_macros = []
extension = CppExtension
extra_compile_args = {"cxx": cxx_flags}
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("CNNKIT_WITH_CUDA", None))
    extension = CUDAExtension
    extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]

print(
    "cnnkit build configuration:\n"
    f"  torch {torch.__version__} (CUDA {torch.version.cuda})\n"
    f"  CUDA toolkit: {cuda_home or 'not found'}\n"
    f"  CUDA kernels: {'yes, archs ' + os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else 'no'}\n"
    f"  host flags: {' '.join(cxx_flags)} (Vectorized: {vec_name})\n"
    f"  sources: {len(sources)} files",
    file=sys.stderr,
)

EMULATION_FLAGS = {
    "fibers": ["-O2"],
    # -fno-wrapv: Python's own flags make signed overflow wrap, which would
    # hide it from UndefinedBehaviorSanitizer.
    "asan": ["-O1", "-g", "-fno-wrapv", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"],
    "tsan": ["-O1", "-g", "-fsanitize=thread"],
}


def emulated_extension(mode):
    """cnnkit._C_emu: csrc/cuda/*.cu compiled unchanged as host C++. Each .cu
    is included by a generated one-line .cpp (the compiler picks the language
    from the file name); csrc/emulation/include stands in for the toolkit's
    headers."""
    if mode not in EMULATION_FLAGS:
        sys.exit(f"CNNKIT_EMULATION={mode!r}: expected one of {', '.join(EMULATION_FLAGS)}")
    wrappers = os.path.join(ROOT, "build", "emulation-sources")
    os.makedirs(wrappers, exist_ok=True)
    units = []
    for cu in sorted(glob.glob("csrc/cuda/*.cu")):
        unit = os.path.join(wrappers, os.path.basename(cu)[:-3] + ".cpp")
        text = f'#include "cuda/{os.path.basename(cu)}"\n'
        if not os.path.exists(unit) or open(unit).read() != text:
            with open(unit, "w") as f:
                f.write(text)
        units.append(os.path.relpath(unit, ROOT))
    flags = EMULATION_FLAGS[mode]
    print(f"cnnkit emulated CUDA build ({mode}): {' '.join(flags)}, {len(units)} kernel files",
          file=sys.stderr)
    return CppExtension(
        "cnnkit._C_emu",
        ["csrc/emulation/module.cpp", "csrc/emulation/runtime.cpp",
         "csrc/emulation/selftest.cpp", "csrc/problem.cpp"] + units,
        include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "emulation", "include")],
        define_macros=[("CNNKIT_EMULATED_CUDA", None)],
        extra_compile_args={"cxx": flags + ["-Wno-unknown-pragmas"]},
        extra_link_args=[f for f in flags if f.startswith("-fsanitize")],
    )


emulation = os.environ.get("CNNKIT_EMULATION")
options = {}
if emulation:
    ext_modules = [emulated_extension(emulation)]
    # Objects apart from cnnkit._C's (problem.cpp is compiled for both); the
    # sanitizer builds' modules apart too (build/emulation-<mode>/lib/cnnkit/),
    # loaded by tools/sanitize_emulation.py only.
    options = {"build_ext": {"build_temp": f"build/emulation-{emulation}/temp",
                             "build_lib": f"build/emulation-{emulation}/lib"}}
else:
    ext_modules = [
        extension(
            "cnnkit._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]

setup(
    ext_modules=ext_modules,
    options=options,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
