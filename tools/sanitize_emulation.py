"""Run cnnkit's CUDA kernels, emulated on the CPU, under a sanitizer:
`python tools/sanitize_emulation.py asan|tsan` (`make emulate-sanitize` builds
both modules first and runs both).

- asan: AddressSanitizer + UndefinedBehaviorSanitizer: out-of-bounds reads and
  writes of global and shared memory, use after free, signed overflow, bad
  shifts, misaligned accesses;
- tsan: ThreadSanitizer. Each CUDA thread of a block is a fiber that the
  sanitizer knows as a thread of its own, synchronised only by barriers and
  warp collectives, so two threads of a block touching the same shared (or
  global) memory without a barrier between them is reported as a data race,
  with both stacks.

The module is the one `CNNKIT_EMULATION=<mode> python setup.py build_ext`
leaves in build/emulation-<mode>/lib/cnnkit/. The script runs the part of the
emulated test suite marked "sanitize" (tests/test_emulated_cuda.py: float32
and float16 on problems that take every kernel and tile shape, forward and
every backward op, 64-bit index paths, channels_last; tests/test_emulation.py:
the emulator's own tests) in a Python whose process has the sanitizer's
runtime preloaded (Python itself is not instrumented) and that module loaded
as cnnkit._C_emu. Exit status 0: every test passed and the sanitizer reported
nothing.
"""
from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNTIMES = {"asan": "libasan.so", "tsan": "libtsan.so"}
OPTIONS = {
    "asan": {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:detect_odr_violation=0",
             "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    "tsan": {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0"},
}
TESTS = ["tests/test_emulated_cuda.py", "tests/test_emulation.py"]


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in RUNTIMES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(RUNTIMES)}")
    mode = sys.argv[1]
    modules = glob.glob(os.path.join(ROOT, "build", f"emulation-{mode}", "lib", "cnnkit",
                                     "_C_emu*.so"))
    if not modules:
        sys.exit(f"no {mode} build of cnnkit._C_emu: run CNNKIT_EMULATION={mode} "
                 "python setup.py build_ext (make emulate-sanitize does)")
    compiler = os.environ.get("CC", "gcc")

    def library(name):
        return subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                              text=True, check=True).stdout.strip()

    # The sanitizer's runtime first; the C++ runtime right after it, so that its
    # interceptors of C++ functions (exceptions thrown in kernels) find them.
    preload = f"{library(RUNTIMES[mode])} {library('libstdc++.so.6')}"
    env = dict(os.environ, LD_PRELOAD=preload, CNNKIT_EMULATION_MODULE=modules[0],
               # One OS thread: the sanitizers see the CUDA threads as its fibers,
               # and ATen's thread pool would only add threads they cannot see into.
               OMP_NUM_THREADS="1", **OPTIONS[mode])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys",
               "-m", "sanitize", "--durations=15",
               *TESTS]
    if mode == "tsan":
        # ThreadSanitizer's shadow memory needs the fixed address-space layout
        # that address-space randomisation may break.
        command = ["setarch", platform.machine(), "-R"] + command
    status = subprocess.call(command, env=env, cwd=ROOT)
    print(f"{mode}: {'clean' if status == 0 else f'FAILED (exit status {status})'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
