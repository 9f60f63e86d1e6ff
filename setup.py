"""Build cnnkit._C: the C++ (CPU) kernels always, the CUDA kernels whenever a
CUDA toolkit and a CUDA-enabled torch are present at build time (no GPU needed).

Environment:
  CNNKIT_CPU_ONLY=1        never build the CUDA sources
  CUDA_HOME                toolkit root; found from `nvcc` on the PATH otherwise
  TORCH_CUDA_ARCH_LIST     target architectures (default "8.0;9.0": A100, H100/H200)
  CNNKIT_CXX_FLAGS         extra host compiler flags for every module (default none; the
                           build never uses -march=native: see CPU kernel modules below)
  MAX_JOBS                 parallel compile jobs (ninja)
  CNNKIT_EMULATION         build cnnkit._C_emu instead of cnnkit._C: the CUDA sources
                           compiled as host C++ against csrc/emulation/ (make emulate).
                           "fibers": the test suite's build; "asan" / "tsan": built with
                           AddressSanitizer + UndefinedBehaviorSanitizer / ThreadSanitizer
                           (make emulate-sanitize)

CPU kernel modules: the CPU kernels (csrc/cpu/) are compiled once per x86-64
instruction set into cnnkit._C_cpu_avx512, cnnkit._C_cpu_avx2 and
cnnkit._C_cpu_generic (only the last on other architectures), each with its
own flags and ATen's Vectorized<T> for that instruction set. cnnkit._C, built
for the baseline of the architecture, holds the op definitions, the CUDA
kernels and the processor's feature detection; at import cnnkit loads the
best CPU kernel module the processor runs (or the one CNNKIT_CPU_ISA names),
so one built extension runs on any x86-64 processor. Each module is a
separate shared library: code compiled for a wider instruction set is never
linked with, nor chosen by the loader for, code that runs everywhere.
"""
import glob
import platform
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


# Per instruction set: its name, the compiler flags of its CPU kernel module
# and ATen's CPU_CAPABILITY (which Vectorized<T> implementation it compiles).
X86_ISAS = [
    ("avx512", ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma",
                "-mf16c", "-mbmi2"], "AVX512"),
    ("avx2", ["-mavx2", "-mfma", "-mf16c", "-mbmi2"], "AVX2"),
    ("generic", [], "DEFAULT"),
]
cpu_isas = X86_ISAS if platform.machine() in ("x86_64", "AMD64") else [("generic", [], "DEFAULT")]

with_cuda = bool(cuda_home) and torch.version.cuda is not None
extra_flags = os.environ.get("CNNKIT_CXX_FLAGS", "").split()
common_flags = ["-O3", "-fopenmp", *extra_flags]

# cnnkit._C: op definitions, bindings, CUDA kernels; the processor's features
# (isa.cpp) and its FMA peak (fma_peak.cpp, per-function target attributes).
sources = sorted(glob.glob("csrc/*.cpp")) + ["csrc/cpu/isa.cpp", "csrc/cpu/fma_peak.cpp"]
cxx_flags = [*common_flags, "-DCPU_CAPABILITY=DEFAULT"]
define_macros = []
extension = CppExtension
extra_compile_args = {"cxx": cxx_flags}
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("CNNKIT_WITH_CUDA", None))
    extension = CUDAExtension
    extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]

# Each CPU kernel module: every CPU source but the two above, plus the problem
# checks (csrc/problem.cpp) it shares with cnnkit._C.
cpu_sources = sorted(set(glob.glob("csrc/cpu/*.cpp")) - {"csrc/cpu/fma_peak.cpp"}) + \
    ["csrc/problem.cpp"]


def wrapper_sources(folder, files):
    """One-line .cpp files that #include each of `files` (paths under csrc/),
    so that each module compiles its own objects of shared sources (setuptools
    puts every module's objects in one build folder, named after the source)."""
    wrappers = os.path.join(ROOT, "build", folder)
    os.makedirs(wrappers, exist_ok=True)
    units = []
    for path in files:
        unit = os.path.join(wrappers, os.path.basename(path).rsplit(".", 1)[0] + ".cpp")
        text = f'#include "{os.path.join(ROOT, path)}"\n'
        if not os.path.exists(unit) or open(unit).read() != text:
            with open(unit, "w") as f:
                f.write(text)
        units.append(os.path.relpath(unit, ROOT))
    return units


def cpu_module(isa, flags, capability):
    macros = [("CPU_CAPABILITY", capability), (f"CPU_CAPABILITY_{capability}", None),
              ("CNNKIT_MODULE_ISA", isa)]
    return CppExtension(
        f"cnnkit._C_cpu_{isa}",
        wrapper_sources(f"cpu-{isa}-sources", cpu_sources),
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": [*common_flags, *flags]},
        extra_link_args=["-fopenmp"],
    )


print(
    "cnnkit build configuration:\n"
    f"  torch {torch.__version__} (CUDA {torch.version.cuda})\n"
    f"  CUDA toolkit: {cuda_home or 'not found'}\n"
    f"  CUDA kernels: {'yes, archs ' + os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else 'no'}\n"
    f"  host flags: {' '.join(cxx_flags)}\n"
    f"  CPU kernel modules: {', '.join(isa for isa, _, _ in cpu_isas)}\n"
    f"  sources: {len(sources)} + {len(cpu_sources)} per CPU kernel module",
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
    units = wrapper_sources("emulation-sources", sorted(glob.glob("csrc/cuda/*.cu")))
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
    ] + [cpu_module(*isa) for isa in cpu_isas]

setup(
    ext_modules=ext_modules,
    options=options,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
