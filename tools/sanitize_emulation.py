"""Run every CUDA kernel of cnnkit, emulated on the CPU, under a sanitizer:
`python tools/sanitize_emulation.py asan|tsan` (`make emulate-sanitize` builds
both modules first and runs both).

- asan: AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds reads and
  writes of global and shared memory, use after free, integer overflow, bad
  shifts, misaligned accesses);
- tsan: ThreadSanitizer. The sanitizer builds run each CUDA thread of a block
  as an OS thread, so two threads of a block touching the same shared (or
  global) memory without a barrier between them is a data race between OS
  threads, reported with both stacks.

The module is the one `CNNKIT_EMULATION=<mode> python setup.py build_ext`
left in build/emulation-<mode>/lib/cnnkit/. The script starts itself again
with the sanitizer's runtime preloaded (Python itself is not instrumented),
loads that module as cnnkit._C_emu, runs a short workload that launches every
kernel (forward and every backward op of every op, float32 and float16, the
code paths the problem shapes select: GEMM tile shapes, tensor-core tiles,
depthwise, local convolution's tiled and direct kernels, every pool layout),
checks each result against cnnkit's CPU kernels in float64, and prints the
launch statistics. Exit status 0: no sanitizer report, every result right.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = "CNNKIT_SANITIZER_CHILD"

RUNTIMES = {"asan": "libasan.so", "tsan": "libtsan.so"}
OPTIONS = {
    "asan": {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:detect_odr_violation=0",
             "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    # exitcode: the status of a run with reports (the default, 66, as well).
    "tsan": {"TSAN_OPTIONS": "halt_on_error=0:exitcode=66:report_signal_unsafe=0"},
}


def relaunch(mode: str) -> int:
    compiler = os.environ.get("CC", "gcc")
    runtime = subprocess.run([compiler, f"-print-file-name={RUNTIMES[mode]}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=runtime, OMP_NUM_THREADS="1", **{CHILD: mode},
               **OPTIONS[mode])
    command = [sys.executable, os.path.abspath(__file__), mode]
    if mode == "tsan":
        # ThreadSanitizer's shadow memory needs the fixed address-space layout
        # that address-space randomisation may break.
        command = ["setarch", platform.machine(), "-R"] + command
    return subprocess.call(command, env=env)


def load_module(mode: str):
    matches = glob.glob(os.path.join(ROOT, "build", f"emulation-{mode}", "lib", "cnnkit",
                                     "_C_emu*.so"))
    if not matches:
        sys.exit(f"no {mode} build of cnnkit._C_emu: run CNNKIT_EMULATION={mode} "
                 "python setup.py build_ext (make emulate-sanitize does)")
    spec = importlib.util.spec_from_file_location("cnnkit._C_emu", matches[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cnnkit._C_emu"] = module
    spec.loader.exec_module(module)
    return module


def workload():
    """(name, emulated call, reference call) triples; each call takes a dtype
    and returns a tuple of tensors. Shapes are small: the sanitizer builds run
    one OS thread per CUDA thread and blocks one after another."""
    import torch

    emu, cpu = torch.ops.cnnkit_emu, torch.ops.cnnkit
    cases = []

    def data(*shape, layout=None):
        t = torch.randn(*shape, dtype=torch.float64)
        return t.contiguous(memory_format=layout) if layout is not None else t

    def add(name, fn, *tensors):
        def run(ops, dtype):
            return fn(ops, *[t.to(dtype) for t in tensors])
        cases.append((name, run))

    def conv(name, N, C, K, HW, R, stride=1, pad=0, dil=1, groups=1, tiles=None):
        geometry = ([stride] * 2, [pad] * 2, [dil] * 2, groups)
        P = (HW + 2 * pad - dil * (R - 1) - 1) // stride + 1
        family = "tiled_conv2d" if tiles else "conv2d"
        w_shape = (K, C // groups, R, R) + ((tiles, tiles) if tiles else ())
        b_shape = (K,) if not tiles else (K, tiles, tiles)

        def fn(ops, x, w, b, g):
            weight_args = ([R, R], [tiles, tiles]) if tiles else ([R, R],)
            bias_args = ([tiles, tiles],) if tiles else ()
            return (getattr(ops, family)(x, w, b, *geometry),
                    getattr(ops, f"{family}_input_backward")(g, w, [HW, HW], *geometry),
                    getattr(ops, f"{family}_weight_backward")(g, x, *weight_args, *geometry),
                    getattr(ops, f"{family}_bias_backward")(g, *bias_args))
        add(name, fn, data(N, C, HW, HW), data(*w_shape), data(*b_shape), data(N, K, P, P))

    conv("conv 3x3", 2, 8, 16, 7, 3, pad=1)
    conv("conv wide (160 outputs per group)", 1, 16, 160, 5, 3, pad=1)
    conv("conv 1x1 stride 2, groups 2", 2, 32, 192, 6, 1, stride=2, groups=2)
    conv("conv dilation 2", 1, 8, 8, 9, 3, pad=2, dil=2)
    conv("conv depthwise", 2, 8, 8, 7, 3, pad=1, groups=8)
    conv("conv depthwise stride 2", 1, 8, 8, 9, 5, stride=2, pad=2, groups=8)
    conv("tiled 2x2", 2, 8, 8, 6, 3, pad=1, tiles=2)
    conv("tiled depthwise 2x2", 1, 4, 4, 6, 3, pad=1, groups=4, tiles=2)

    def transpose(ops, x, w, b):
        return (ops.conv_transpose2d(x, w, b, [2, 2], [1, 1], [1, 1], 1, [1, 1]),)
    add("conv_transpose2d stride 2", transpose, data(2, 8, 4, 4), data(8, 4, 3, 3), data(4))

    def local(name, N, C, K, HW, R, stride=1):
        P = (HW - R) // stride + 1
        geometry = ([stride] * 2, [0, 0], [1, 1], 1)

        def fn(ops, x, w, b, g):
            return (ops.local_conv2d(x, w, b, *geometry),
                    ops.local_conv2d_input_backward(g, w, [HW, HW], *geometry),
                    ops.local_conv2d_weight_backward(g, x, [R, R], *geometry),
                    ops.local_conv2d_bias_backward(g))
        add(name, fn, data(N, C, HW, HW), data(K, P, P, C, R, R), data(K, P, P), data(N, K, P, P))

    local("local 3x3", 2, 4, 4, 6, 3)
    local("local 3x3 stride 2", 1, 4, 8, 7, 3, stride=2)
    # A kernel row too wide for a shared-memory stage: the direct kernels.
    local("local 1x1 channels, 41x41 kernel", 1, 1, 1, 42, 41)

    for layout_name, layout in [("NCHW", None), ("NHWC", torch.channels_last)]:
        x = data(2, 8, 9, 9, layout=layout)
        for kernel, stride, pad, dil in [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2)]:
            def max_pool(ops, x, k=kernel, s=stride, p=pad, d=dil):
                y, i = ops.max_pool2d(x, [k, k], [s, s], [p, p], [d, d], False)
                return y, i, ops.max_pool2d_backward(torch.ones_like(y), x, i)
            add(f"max_pool2d {kernel}x{kernel} s{stride} d{dil} {layout_name}", max_pool, x)

        def avg_pool(ops, x):
            args = ([3, 3], [2, 2], [1, 1], True, False, None)
            y = ops.avg_pool2d(x, *args)
            return y, ops.avg_pool2d_backward(torch.ones_like(y), x, *args)
        add(f"avg_pool2d {layout_name}", avg_pool, x)
        for size in ([5, 7], [1, 1]):
            def adaptive(ops, x, size=size):
                y, i = ops.adaptive_max_pool2d(x, size)
                a = ops.adaptive_avg_pool2d(x, size)
                return (y, i, ops.max_pool2d_backward(torch.ones_like(y), x, i), a,
                        ops.adaptive_avg_pool2d_backward(torch.ones_like(a), x))
            add(f"adaptive pools {size} {layout_name}", adaptive, x)

        def channel(ops, x):
            y, i = ops.channel_max_pool(x, 2)
            return y, i, ops.channel_max_pool_backward(torch.ones_like(y), x, i, 2)
        add(f"channel_max_pool {layout_name}", channel, x)
    return cases


def run(mode: str) -> int:
    import torch

    import cnnkit  # noqa: F401  (the CPU kernels: the reference)

    module = load_module(mode)
    assert module.threads == "os", f"{mode} build runs threads as {module.threads}"
    torch.manual_seed(0)
    failures = 0
    start = time.time()
    for name, call in workload():
        for dtype in (torch.float32, torch.float16):
            got = call(torch.ops.cnnkit_emu, dtype)
            want = call(torch.ops.cnnkit, torch.float64)
            for index, (a, b) in enumerate(zip(got, want)):
                if b.dtype == torch.int64:
                    ok = dtype != torch.float32 or torch.equal(a, b)
                else:
                    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
                    error = (a.double() - b).abs().max().item() / scale if b.numel() else 0.0
                    ok = error < (1e-5 if dtype == torch.float32 else 1e-2)
                if not ok:
                    failures += 1
                    print(f"WRONG: {name}, {dtype}, result {index}", flush=True)
    statistics = module.launch_statistics()
    launches = sum(count for count, _ in statistics.values())
    blocks = sum(b for _, b in statistics.values())
    print(f"{mode}: {launches} launches of {len(statistics)} kernel instantiations, {blocks} "
          f"blocks, {time.time() - start:.0f} s, {failures} wrong results", flush=True)
    return 1 if failures else 0


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in RUNTIMES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(RUNTIMES)}")
    mode = sys.argv[1]
    if os.environ.get(CHILD) != mode:
        status = relaunch(mode)
        verdict = "clean" if status == 0 else f"FAILED (exit status {status})"
        print(f"{mode}: {verdict}")
        return status
    return run(mode)


if __name__ == "__main__":
    sys.exit(main())
