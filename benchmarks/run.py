"""Time cnnkit's ops against PyTorch's own (ATen; cuDNN for convolution on CUDA).

    .venv/bin/python benchmarks/run.py                       # the quick suite (make bench)
    .venv/bin/python benchmarks/run.py --suite resnet50 vgg16 --modes fwdbwd
    .venv/bin/python benchmarks/run.py --suite all --ops conv2d --batch 4
    .venv/bin/python benchmarks/run.py --suite local tiled   # issue 3: unshared and tiled conv
    .venv/bin/python benchmarks/run.py --suite per_sample    # per-sample gradients, 1 and 2 threads
    .venv/bin/python benchmarks/run.py --device cuda --dtype bfloat16
    python3 benchmarks/run.py --device cuda --suite resnet50-b32 --ops conv2d --dtype float16
    .venv/bin/python benchmarks/run.py --list

Every row (one layer of a suite at one batch size, one mode) is first checked:
cnnkit's outputs, and its gradients in fwd+bwd mode, are compared with the
baseline's, and a row that disagrees is flagged and not timed. Then cnnkit and
the baseline are timed in turns (torch.utils.benchmark's blocked_autorange, or
single calls for suites of slow layers, a few rounds each, alternating), so
that drift in clock speed or machine load affects both.

The machine's ceilings are measured in the same run: on the CPU the FMA peak
(cnnkit._C.fma_peak: independent chains of fused multiply-adds in registers on
every thread, the best instruction set the CPU has), with the same large
matmul on cnnkit's own matrix product and on ATen's BLAS reported beside it
and not as the ceiling, since a vendor BLAS may run far below the machine; on CUDA a large matmul; and a large copy (GB/s,
read + write bytes; on CUDA a device-to-device copy). A convolution row
reports its GFLOP/s and the fraction of the compute ceiling, a pooling row its
GB/s of minimal traffic and the fraction of the copy ceiling.

On CUDA every timing synchronizes the device before reading the clock, and the
untimed first call of each op (the correctness check) is also its warmup:
cuDNN's autotuning (cudnn.benchmark), lazy module loading and the caching
allocator's first allocations all happen there, outside the timings; peak
memory is measured on a second untimed call, after autotuning's workspace is
gone.

Some ops report more (their OPS entry says which): the peak extra memory of
one call against the baseline's (local and tiled convolution, whose plain
PyTorch baselines materialise patches or per-phase copies), the time against a
reference op of cnnkit's on the same shape (tiled convolution against conv2d),
and the minimal memory traffic against the copy ceiling (local convolution,
which streams a weight per output location).

The per_sample suite times whole networks: the per-sample gradients
(torch.func.vmap(grad) of each sample's cross-entropy) of a small CNN built
from cnnkit.nn layers, against its torch.nn twin with the same weights, or,
for a network with a locally connected layer (no torch.nn twin), against a
loop over the samples; at each of the suite's thread counts in one run.

Results go to benchmarks/results/ (or --out): <device>-<suites>[-<dtype>]-<date>.json
(every row, the ceilings, machine info), .md (the printed tables) and .png
(the per-layer time ratio, log scale; skipped without matplotlib). On CUDA the
device part names the GPU too: cuda-h100-80gb-hbm3-resnet50-b32-bfloat16-<date>.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # cnnkit is built in place, not installed
# The CPU memory meter runs torch.profiler, whose tracing library (kineto) logs
# a few lines to stderr per session; keep the progress bar readable.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

try:
    from tqdm import tqdm  # noqa: E402
except ImportError:  # optional: plain progress lines without it
    tqdm = None

import cnnkit  # noqa: E402
import cnnkit.functional as CF  # noqa: E402
from suites import SUITES, TARGETS, Conv2d, LocalConv2d, PerSampleNet, Pool2d, Timing  # noqa: E402

# option value -> table label; per_sample: the per-sample gradients of a network
MODES = {"fwd": "fwd", "fwdbwd": "fwd+bwd", "per_sample": "per-sample grad"}
PASSES = {"fwd": 1, "fwdbwd": 3}  # conv passes: forward; + input grad + weight grad
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest accepted max|cnnkit - baseline| / max|baseline|, over outputs and gradients.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
INDEX_BYTES = 8  # max pools store int64 indices
CEILING_MIN_RUN_TIME = 1.0  # seconds for each ceiling measurement
NOISY_SPREAD = 0.1  # interquartile range / median above which a timing is flagged
BUSY_LOAD = 0.1  # share of the CPUs taken by other processes above which a row is flagged


# --------------------------------------------------------------------------- op registry
# One entry per op: how to make its operands from a suite layer, how to call it
# through cnnkit and through the baseline, how much work one call does, and
# what else the op's rows report (peak memory, a reference op).


@dataclass(frozen=True)
class Work:
    amount: float  # FLOPs or bytes per call
    unit: str  # "flop" (compared with the matmul ceiling) or "byte" (the copy ceiling)
    # Minimal memory traffic of a FLOP-counted op that is bound by memory
    # (local_conv2d): its bytes per time are compared with the copy ceiling too.
    min_bytes: float | None = None


@dataclass(frozen=True)
class Reference:
    """An op of cnnkit's own that a row is also timed against, on the same shape."""

    name: str
    operands: Callable  # the row's operands -> the reference's operands (new tensors)
    call: Callable  # layer -> f(*reference operands) -> output of the row's output shape


@dataclass(frozen=True)
class OpBench:
    baseline_name: str
    make_operands: Callable  # (layer, batch, device, dtype) -> [tensors]; all get gradients in fwd+bwd
    cnnkit: Callable  # layer -> f(*operands) -> output
    baseline: Callable  # layer -> f(*operands) -> output
    work: Callable  # (layer, operands, output, mode) -> Work
    measure_memory: bool = False  # report the peak extra memory of one call, cnnkit's and the baseline's
    reference: Reference | None = None
    modes: tuple[str, ...] = ("fwd", "fwdbwd")


def conv_operands(layer, batch, device, dtype):
    """Input, weight and optional bias of a conv layer (dense, local or tiled:
    the layer knows its weight and bias shapes); weights scaled by 1/sqrt(fan-in)."""
    operands = [torch.randn(batch, layer.C, layer.H, layer.W, device=device, dtype=dtype),
                torch.randn(layer.weight_shape(), device=device, dtype=dtype) / math.sqrt(layer.patch_size())]
    if layer.bias:
        operands.append(torch.randn(layer.bias_shape(), device=device, dtype=dtype))
    return operands


def tiled_operands(layer, batch, device, dtype):
    """conv_operands with the weight stored phase-major, (tH, tW, K, C/g, kH,
    kW) in memory, as cnnkit.nn.TiledConv2d stores its parameter. The baseline
    gets the same tensor: its per-phase kernels weight[..., a, b] are then
    contiguous."""
    operands = conv_operands(layer, batch, device, dtype)
    weight = operands[1]
    operands[1] = weight.permute(4, 5, 0, 1, 2, 3).contiguous().permute(2, 3, 4, 5, 0, 1)
    return operands


def conv_call(conv, layer):
    """conv(input, weight, bias, stride, padding, dilation, groups) with the layer's arguments:
    conv2d, local_conv2d and tiled_conv2d of cnnkit, and F.conv2d."""
    def call(input, weight, bias=None):
        return conv(input, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return call


def conv_work(layer, operands, output, mode):
    """2*N*K*P*Q*(C/groups)*R*S FLOPs per pass, for every kind of convolution."""
    return Work(2 * output.numel() * layer.patch_size() * PASSES[mode], "flop")


def many_weights_conv_work(layer, operands, output, mode):
    """conv_work, and the minimal traffic: every tensor read or written once per
    pass that needs it. Forward: read input V, weight W and bias b, write output
    Z. Backward: read grad_output (Z-sized), V (for dW) and W (for dV), write dV,
    dW and db. For local convolution (one weight per output location) and tiled
    convolution with many tiles on a small image, W and dW dominate: the
    layer's speed is bounded by memory bandwidth, not arithmetic."""
    item = operands[0].element_size()
    operand_bytes = sum(tensor.numel() for tensor in operands) * item
    input_and_weight_bytes = (operands[0].numel() + operands[1].numel()) * item
    forward = operand_bytes + output.numel() * item
    backward = output.numel() * item + input_and_weight_bytes + operand_bytes
    min_bytes = forward if mode == "fwd" else forward + backward
    return dataclasses.replace(conv_work(layer, operands, output, mode), min_bytes=min_bytes)


def local_conv2d_unfold_einsum(layer):
    """Baseline for local_conv2d, written straightforwardly in PyTorch: unfold the
    input's patches to (N, C*R*S, L) for the L = OH*OW output locations, contract
    each location's patches with its own weights (the weight viewed as
    (K, L, C*R*S)) in one einsum, add the bias (K, OH, OW). groups=1."""
    if layer.groups != 1:
        raise NotImplementedError("the unfold + einsum baseline covers groups=1 only")

    def call(input, weight, bias=None):
        k, out_h, out_w = weight.shape[:3]
        patches = F.unfold(input, layer.kernel, layer.dilation, layer.padding, layer.stride)
        output = torch.einsum("ncl,klc->nkl", patches, weight.view(k, out_h * out_w, -1))
        output = output.view(input.shape[0], k, out_h, out_w)
        return output if bias is None else output + bias
    return call


def tiled_conv2d_per_phase(layer):
    """Baseline for tiled_conv2d, written straightforwardly in PyTorch: the
    output locations of tile phase (a, b), rows a::tH and columns b::tW, are a
    dense convolution with kernel weight[..., a, b] (and bias[:, a, b]) of the
    zero-padded input shifted by (a*s, b*s), at stride (s*tH, s*tW): one
    F.conv2d per phase, written into its slice of a new output tensor (slice
    assignment is differentiable, so fwd+bwd works)."""
    stride, padding = layer.stride, layer.padding

    def call(input, weight, bias=None):
        tile_h, tile_w = weight.shape[-2:]
        padded = F.pad(input, (padding, padding, padding, padding))
        # every output location belongs to exactly one phase: no need to zero it
        output = input.new_empty(input.shape[0], weight.shape[0], *layer.output_size())
        for a in range(tile_h):
            for b in range(tile_w):
                output[:, :, a::tile_h, b::tile_w] = F.conv2d(
                    padded[:, :, a * stride:, b * stride:], weight[..., a, b],
                    None if bias is None else bias[:, a, b], (stride * tile_h, stride * tile_w),
                    0, layer.dilation, layer.groups)
        return output
    return call


def first_tile_operands(operands):
    """conv2d's operands on a tiled layer's shape: the input, and copies of the
    first tile's kernel weight[..., 0, 0] and bias[:, 0, 0]."""
    input, weight, *bias = operands
    first_tile = [weight[..., 0, 0], *(b[:, 0, 0] for b in bias)]
    return [input, *(tensor.clone(memory_format=torch.contiguous_format) for tensor in first_tile)]


def pool_operands(layer, batch, device, dtype):
    return [torch.randn(batch, layer.C, layer.H, layer.W, device=device, dtype=dtype)]


def pool2d_call(functional, layer):
    pool = getattr(functional, layer.op)
    return lambda input: pool(input, layer.kernel, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)


def adaptive_pool2d_call(functional, layer):
    pool = getattr(functional, layer.op)
    return lambda input: pool(input, layer.output)


def pool_work(layer, operands, output, mode, stores_indices):
    """Minimal traffic: forward reads the input and writes the output; fwd+bwd
    also writes the indices (max pools), then reads grad_output (and the
    indices) and writes grad_input."""
    input = operands[0]
    item = input.element_size()
    forward = (input.numel() + output.numel()) * item
    if mode == "fwd":
        return Work(forward, "byte")
    indices = output.numel() * INDEX_BYTES if stores_indices else 0
    backward = (output.numel() + input.numel()) * item + indices
    return Work(forward + indices + backward, "byte")


def _pool_bench(call, stores_indices):
    return OpBench("ATen", pool_operands, partial(call, CF), partial(call, F),
                   partial(pool_work, stores_indices=stores_indices))


@dataclass(frozen=True)
class NetBench:
    """A network op (a suite layer that is a PerSampleNet): its step is the
    per-sample gradients of a network of cnnkit.nn layers by vmap(grad); the
    baseline makes the same per-sample gradients another way."""

    baseline_name: str
    baseline: Callable  # (cnnkit model, net, x, y) -> step() -> per-sample gradients, in parameter order
    modes: tuple[str, ...] = ("per_sample",)
    measure_memory: bool = False
    reference: Reference | None = None


def build_network(net: PerSampleNet, layers, device, dtype) -> nn.Module:
    """net's layers from `layers`, cnnkit.nn or torch.nn (which has no
    LocallyConnected2d): Conv2d and LocallyConnected2d each followed by a
    ReLU, MaxPool2d, then Flatten and a torch.nn.Linear to net.classes."""
    modules = []
    for layer in net.layers:
        if isinstance(layer, Pool2d):
            modules.append(layers.MaxPool2d(layer.kernel, layer.stride, layer.padding,
                                            ceil_mode=layer.ceil_mode))
            continue
        conv_args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                         groups=layer.groups, bias=layer.bias, device=device, dtype=dtype)
        if isinstance(layer, LocalConv2d):
            if not hasattr(layers, "LocallyConnected2d"):
                raise NotImplementedError(f"{layers.__name__} has no LocallyConnected2d")
            modules.append(layers.LocallyConnected2d(layer.C, layer.K, layer.kernel,
                                                     in_size=(layer.H, layer.W), **conv_args))
        else:
            modules.append(layers.Conv2d(layer.C, layer.K, layer.kernel, **conv_args))
        modules.append(nn.ReLU())
    modules += [nn.Flatten(), nn.Linear(net.features(), net.classes, device=device, dtype=dtype)]
    return nn.Sequential(*modules)


def per_sample_grad_step(model: nn.Module, x, y):
    """step() -> the gradient of each sample's cross-entropy with respect to
    every parameter of model, (N, *parameter shape) each, by vmap(grad): one
    batched call of each op (a vmapped input folds into the batch, the per-sample
    cotangents of a weight gradient into cnnkit's groups)."""
    params = {name: parameter.detach() for name, parameter in model.named_parameters()}

    def sample_loss(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    return lambda: tuple(per_sample(params, x, y).values())


def torch_twin_step(model: nn.Module, net: PerSampleNet, x, y):
    """per_sample_grad_step on net built from torch.nn layers, with model's weights."""
    twin = build_network(net, nn, x.device, x.dtype)
    twin.load_state_dict(model.state_dict())
    return per_sample_grad_step(twin, x, y)


def loop_step(model: nn.Module, net: PerSampleNet, x, y):
    """The per-sample gradients of model one sample at a time: a forward and an
    autograd backward per sample, the gradients stacked into (N, *shape)."""
    params = list(model.parameters())

    def step():
        grads = [torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
                 for i in range(x.shape[0])]
        return tuple(torch.stack(per_parameter) for per_parameter in zip(*grads))
    return step


def per_sample_work(net: PerSampleNet, batch: int) -> Work:
    """FLOPs of the conv, locally connected and linear layers: 2*N*K*OH*OW*C*R*S
    (2*N*in*out for the linear) per pass; passes: forward, weight gradient and,
    past the first layer, input gradient (the input needs none). Pools, ReLUs
    and biases are left out."""
    flops, first = 0, True
    for layer in net.layers:
        if isinstance(layer, Conv2d):
            out_h, out_w = layer.output_size()
            flops += 2 * batch * layer.K * out_h * out_w * layer.patch_size() * (2 if first else 3)
            first = False
    flops += 2 * batch * net.features() * net.classes * (2 if first else 3)
    return Work(flops, "flop")


OPS = {
    "conv2d": OpBench("ATen", conv_operands, partial(conv_call, CF.conv2d), partial(conv_call, F.conv2d),
                      conv_work),
    "max_pool2d": _pool_bench(pool2d_call, stores_indices=True),
    "avg_pool2d": _pool_bench(pool2d_call, stores_indices=False),
    "adaptive_max_pool2d": _pool_bench(adaptive_pool2d_call, stores_indices=True),
    "adaptive_avg_pool2d": _pool_bench(adaptive_pool2d_call, stores_indices=False),
    "local_conv2d": OpBench("unfold+einsum", conv_operands, partial(conv_call, CF.local_conv2d),
                            local_conv2d_unfold_einsum, many_weights_conv_work, measure_memory=True),
    "tiled_conv2d": OpBench("conv per phase", tiled_operands, partial(conv_call, CF.tiled_conv2d),
                            tiled_conv2d_per_phase, many_weights_conv_work, measure_memory=True,
                            reference=Reference("conv2d", first_tile_operands,
                                                partial(conv_call, CF.conv2d))),
    "per_sample_grad": NetBench("torch.nn", torch_twin_step),
    "per_sample_grad_local": NetBench("loop over samples", loop_step),
}


# --------------------------------------------------------------------------- measuring


def make_step(fn, operands, grad_output):
    """The timed statement: forward only, or forward and the gradients of every
    operand for a fixed grad_output. Returns the output and gradients."""
    if grad_output is None:
        return lambda: (fn(*operands),)

    def forward_backward():
        output = fn(*operands)
        return (output, *torch.autograd.grad(output, operands, grad_output))
    return forward_backward


def relative_error(results, references) -> float:
    """max |result - reference| / max |reference|, the worst over all tensors;
    infinite when shapes differ or a value is NaN."""
    worst = 0.0
    for result, reference in zip(results, references, strict=True):
        if result.shape != reference.shape:
            return math.inf
        if reference.numel() == 0:
            continue
        reference = reference.double()
        difference = (result.double() - reference).abs().max().item()
        error = difference / max(reference.abs().max().item(), 1e-30)
        worst = max(worst, error if math.isfinite(error) else math.inf)
    return worst


class OtherLoad:
    """Share of the machine's CPU time that other processes (and the
    hypervisor, as steal time) took since this object was made: a benchmark
    sharing its cores with a compiler measures the compiler too. Linux only;
    None elsewhere."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
        busy_seconds = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        return busy_seconds, time.process_time(), time.perf_counter()

    def fraction(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_timer(device) -> Callable[[], float]:
    """The clock of every Timer here: on CUDA it first waits for the work queued
    on the device, so that a timed block ends when its kernels have finished,
    not when they were launched (explicit, whatever Timer's default does)."""
    if device.type != "cuda":
        return timeit.default_timer

    def clock() -> float:
        synchronize(device)
        return timeit.default_timer()
    return clock


def time_calls(step, seconds: float, device) -> list[float]:
    """Times of single calls of step, until they add up to `seconds` (at least one call)."""
    times, total = [], 0.0
    while not times or total < seconds:
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        total += times[-1]
    return times


def time_alternating(steps: dict, timing: Timing, threads: int, device) -> dict:
    """Per-call times in seconds of each step, measured in `timing.rounds` turns
    that alternate between the steps (and flip their order every round); each
    turn is a blocked_autorange, or single calls with timing.per_call."""
    timers = {name: Timer(stmt="step()", globals={"step": step}, num_threads=threads,
                          timer=device_timer(device))
              for name, step in steps.items()}
    times = {name: [] for name in steps}
    order = list(steps)
    seconds = timing.min_run_time / timing.rounds
    for round_index in range(timing.rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            if timing.per_call:
                times[name].extend(time_calls(steps[name], seconds, device))
            else:
                times[name].extend(timers[name].blocked_autorange(min_run_time=seconds).times)
    return times


def peak_memory(call, device) -> tuple:
    """Calls call() once; returns its result and the peak memory, in bytes, that
    was allocated during the call beyond what was allocated before it.

    CUDA: the caching allocator's peak statistic. CPU: torch.profiler's memory
    events, one per allocation (+bytes) and per free (-bytes), summed in time
    order; the peak of that running sum. Both see what goes through PyTorch's
    allocator, in any thread (at::parallel_for's workers included), but not
    scratch that a kernel takes from malloc (std::vector) itself.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    # The raw event list: prof.events() folds allocations made inside an op into the op.
    events = sorted((event for event in prof.profiler.kineto_results.events()
                     if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda event: event.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return result, peak


def check_memory_meter(device) -> None:
    """peak_memory on a call whose peak is known, before trusting it with rows:
    4 MiB, then 8 MiB (12 MiB live), the 4 MiB freed, then 2 MiB: 12 MiB."""
    def known_peak():
        first = torch.ones(2**20, device=device)
        second = torch.ones(2 * 2**20, device=device)
        del first
        return second, torch.ones(2**19, device=device)

    _, peak = peak_memory(known_peak, device)
    if peak != 12 * 2**20:
        raise RuntimeError(f"the memory meter is off on {device.type}: it measured a peak of "
                           f"{peak} bytes for a call that peaks at {12 * 2**20}")


def first_call(step, device, measure_memory: bool) -> tuple:
    """The untimed first call of a step (the check, and a warmup): its result,
    and its peak extra memory when asked for (else None).

    On CUDA the first call also autotunes cuDNN (cudnn.benchmark), whose trial
    workspaces would count as the baseline's memory: there the peak is taken
    on a second call. On the CPU nothing is tuned and the first call is measured.
    """
    if not measure_memory:
        return step(), None
    if device.type != "cuda":
        return peak_memory(step, device)
    result = step()
    _, peak = peak_memory(step, device)
    return result, peak


def tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def summarize_times(times: list[float]) -> dict:
    """Median (what the table shows), interquartile range and minimum, in ms."""
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"ms": quartiles[1] * 1e3, "iqr_ms": (quartiles[2] - quartiles[0]) * 1e3,
            "min_ms": min(times) * 1e3, "samples": len(times)}


def capture_graphs(steps: dict, device) -> tuple[dict, str | None]:
    """Each step captured in a CUDA graph, as the graph's replay: one replay
    runs the step's kernels back to back, so its time is the GPU's, without the
    Python, dispatcher and launch overhead between kernels (which dominates
    layers of a few microseconds). Each step runs once on a side stream before
    its capture, as capture requires. Returns (replays, None), or the steps
    unchanged and the reason when one of them cannot be captured (a host
    synchronisation inside an op, say): then every step is timed eagerly, so
    that cnnkit and the baseline are always timed alike."""
    graphs = {}
    try:
        for name, step in steps.items():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            graphs[name] = graph
    except Exception as exc:  # noqa: BLE001 (any failure means: time eagerly)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return steps, f"{type(exc).__name__}: {message}"[:120]
    synchronize(device)
    return {name: graph.replay for name, graph in graphs.items()}, None


def error_row(row: dict, exc: Exception) -> dict:
    """The row of an op that failed (a missing kernel, a bad shape): the exception, shortened."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    row.update(status="error", message=f"{type(exc).__name__}: {message}"[:160])
    return row


def checked(row: dict, error: float, dtype) -> bool:
    """Records the row's max relative error; False (and the row marked wrong)
    when it exceeds the dtype's tolerance."""
    row["max_rel_error"] = error if math.isfinite(error) else None  # None: shapes differ or NaN
    if not error <= TOLERANCE[dtype]:
        row.update(status="wrong", message=f"max rel error {error:.1e} > {TOLERANCE[dtype]:.0e}")
        return False  # a wrong kernel has no speed
    return True


def time_row(row: dict, steps: dict, work: Work, timing, threads, device, ceilings,
             cuda_graph: bool) -> dict:
    """Times the row's steps (cnnkit, baseline and any others) in alternating
    rounds and records the times, their ratio and the rates; returns every
    step's times."""
    if cuda_graph:
        steps, capture_failure = capture_graphs(steps, device)
        row["timed"] = "eager" if capture_failure else "cuda graph"
        if capture_failure:
            row["capture_failure"] = capture_failure
    other_load = OtherLoad()
    times = time_alternating(steps, timing, threads, device)
    row["other_load"] = other_load.fraction()
    cnnkit_time, baseline_time = summarize_times(times["cnnkit"]), summarize_times(times["baseline"])
    ceiling = ceilings["compute_gflops" if work.unit == "flop" else "copy_gbs"]
    cnnkit_rate = work.amount / cnnkit_time["ms"] / 1e6  # G<unit>/s
    baseline_rate = work.amount / baseline_time["ms"] / 1e6
    row.update(
        status="ok",
        **{f"cnnkit_{key}": value for key, value in cnnkit_time.items()},
        **{f"baseline_{key}": value for key, value in baseline_time.items()},
        ratio=cnnkit_time["ms"] / baseline_time["ms"],
        work=work.amount, work_unit=work.unit,
        rate_unit="GFLOP/s" if work.unit == "flop" else "GB/s",
        cnnkit_rate=cnnkit_rate, baseline_rate=baseline_rate,
        cnnkit_ceiling_fraction=cnnkit_rate / ceiling,
        baseline_ceiling_fraction=baseline_rate / ceiling,
    )
    return times


def bench_row(suite, layer, batch, mode, device, dtype, timing, threads, ceilings,
              cuda_graph: bool = False) -> dict:
    op = OPS[layer.op]
    row = {"suite": suite.name, "op": layer.op, "layer": layer.name, "shape": layer.shape(batch),
           "mode": mode, "batch": batch, "threads": threads, "baseline_name": op.baseline_name}
    if isinstance(op, NetBench):
        return bench_network_row(row, op, layer, batch, device, dtype, timing, threads, ceilings,
                                 cuda_graph)
    torch.manual_seed(0)
    try:
        operands = op.make_operands(layer, batch, device, dtype)
        reference_operands = op.reference.operands(operands) if op.reference else []
        if mode == "fwdbwd":
            for tensor in operands + reference_operands:
                tensor.requires_grad_(True)
        baseline = op.baseline(layer)
        # The output's shape, for grad_output and the work model, without a call: on the meta device.
        output = baseline(*(tensor.detach().to("meta") for tensor in operands))
        grad_output = torch.randn(output.shape, device=device, dtype=dtype) if mode == "fwdbwd" else None
        steps = {"baseline": make_step(baseline, operands, grad_output)}
        steps["cnnkit"] = make_step(op.cnnkit(layer), operands, grad_output)
        if op.reference:
            steps["reference"] = make_step(op.reference.call(layer), reference_operands, grad_output)
        results, peaks = {}, {}
        for name in ("cnnkit", "baseline", "reference"):
            if name in steps:
                results[name], peaks[name] = first_call(steps[name], device, op.measure_memory)
        error = relative_error(results["cnnkit"], results["baseline"])
        result_bytes = tensor_bytes(results["baseline"])
        del results
    except Exception as exc:  # a missing kernel, a bad shape: report it, go on
        return error_row(row, exc)
    if not checked(row, error, dtype):
        return row

    work = op.work(layer, operands, output, mode)
    times = time_row(row, steps, work, timing, threads, device, ceilings, cuda_graph)
    if op.measure_memory:
        # Scratch: the peak beyond the call's outputs and gradients, which both
        # sides must allocate (at batch 1 a locally connected layer's weight
        # gradient is most of either peak).
        scratch = {name: max(0, peaks[name] - result_bytes) for name in ("cnnkit", "baseline")}
        row.update(cnnkit_peak_bytes=peaks["cnnkit"], baseline_peak_bytes=peaks["baseline"],
                   result_bytes=result_bytes,
                   memory_ratio=peaks["cnnkit"] / peaks["baseline"] if peaks["baseline"] else None,
                   cnnkit_scratch_bytes=scratch["cnnkit"], baseline_scratch_bytes=scratch["baseline"],
                   scratch_ratio=scratch["cnnkit"] / scratch["baseline"] if scratch["baseline"] else None)
    if op.reference:
        reference_time = summarize_times(times["reference"])
        row.update(reference_name=op.reference.name,
                   **{f"reference_{key}": value for key, value in reference_time.items()},
                   reference_ratio=row["cnnkit_ms"] / reference_time["ms"])
        if op.measure_memory:
            row["reference_peak_bytes"] = peaks["reference"]
    if work.min_bytes is not None:
        copy_bytes_per_ms = ceilings["copy_gbs"] * 1e6
        row.update(min_bytes=work.min_bytes,
                   cnnkit_bandwidth_fraction=work.min_bytes / row["cnnkit_ms"] / copy_bytes_per_ms,
                   baseline_bandwidth_fraction=work.min_bytes / row["baseline_ms"] / copy_bytes_per_ms)
    return row


def bench_network_row(row, op: NetBench, net: PerSampleNet, batch, device, dtype, timing, threads,
                      ceilings, cuda_graph: bool) -> dict:
    """A network op's row: net of cnnkit.nn layers (seed 0), a batch of
    random images and labels, its per-sample gradients by vmap(grad) against
    the op's baseline, checked on every parameter's gradients, then timed."""
    torch.manual_seed(0)
    try:
        model = build_network(net, cnnkit.nn, device, dtype)
        x = torch.randn(batch, *net.input_shape(), device=device, dtype=dtype)
        y = torch.randint(0, net.classes, (batch,), device=device)
        steps = {"baseline": op.baseline(model, net, x, y), "cnnkit": per_sample_grad_step(model, x, y)}
        results = {name: step() for name, step in steps.items()}  # the check, and a warmup
        error = relative_error(results["cnnkit"], results["baseline"])
        del results
    except Exception as exc:  # a missing kernel, a refused transform: report it, go on
        return error_row(row, exc)
    if not checked(row, error, dtype):
        return row
    time_row(row, steps, per_sample_work(net, batch), timing, threads, device, ceilings, cuda_graph)
    return row


def measure_ceilings(device, dtype, threads) -> dict:
    """The machine's reachable peaks in this process: a large matmul in the
    benchmark dtype (GFLOP/s; on CUDA with TF32 off, as main sets it) and a
    256 MiB copy (GB/s, read + write; on CUDA from device memory to device
    memory, several times the GPU's L2 cache). Each is warmed up by Timer's
    first block (cuBLAS's handle and heuristics) and timed with device_timer."""
    size = 2048 if device.type == "cpu" else 8192
    clock = device_timer(device)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    matmul = Timer("torch.mm(a, b, out=c)", globals={"torch": torch, "a": a, "b": b, "c": c},
                   num_threads=threads, timer=clock).blocked_autorange(min_run_time=CEILING_MIN_RUN_TIME)
    del a, b, c
    src = torch.ones(64 * 2**20, device=device, dtype=torch.float32)  # 256 MiB
    dst = torch.zeros_like(src)
    copy = Timer("dst.copy_(src)", globals={"src": src, "dst": dst},
                 num_threads=threads, timer=clock).blocked_autorange(min_run_time=CEILING_MIN_RUN_TIME)
    copy_bytes = 2 * src.numel() * src.element_size()
    ceilings = {"matmul_size": size, "matmul_dtype": str(dtype).removeprefix("torch."),
                "matmul_gflops": 2 * size**3 / matmul.median / 1e9,
                "copy_bytes": copy_bytes, "copy_gbs": copy_bytes / copy.median / 1e9}
    ceilings["compute_gflops"] = ceilings["matmul_gflops"]
    if device.type == "cpu":
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gflops, isa, _ = cnnkit._C.fma_peak(dtype == torch.float64, CEILING_MIN_RUN_TIME)
        finally:
            torch.set_num_threads(previous)
        ceilings.update(fma_gflops=gflops, fma_isa=isa, compute_gflops=gflops)
        a, b = (torch.randn(size, size, dtype=dtype) for _ in range(2))
        c = torch.empty_like(a)
        own = Timer("matmul(c, a, b)", globals={"matmul": cnnkit._cpu.matmul, "a": a, "b": b, "c": c},
                    num_threads=threads, timer=clock).blocked_autorange(min_run_time=CEILING_MIN_RUN_TIME)
        ceilings.update(cnnkit_matmul_gflops=2 * size**3 / own.median / 1e9,
                        cnnkit_matmul_isa=cnnkit._cpu.cpu_isa())
    return ceilings


def source_revision() -> str | None:
    """The checkout's commit, "+ changes" when its tracked files differ from it
    (the in-place build may then hold code that no commit has); None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" + changes" if changed else "")


# The instruction sets that matter to convolution kernels, as /proc/cpuinfo names them.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_instruction_sets() -> list | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line.split(":", 1)[1].split() for line in cpuinfo
                         if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return [flag for flag in _ISA_FLAGS if flag in flags]


def cpu_family_model() -> str | None:
    """"family/model" of /proc/cpuinfo: which generation a bare "AMD EPYC" is
    (family 25 is Zen 3 and Zen 4, 26 is Zen 5)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo.read().split("\n\n")[0].splitlines()
                          if ":" in line)
    except OSError:
        return None
    family, model = fields.get("cpu family\t"), fields.get("model\t\t")
    return f"{family.strip()}/{model.strip()}" if family and model else None


def machine_info(device) -> dict:
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                             if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_isa": cpu_instruction_sets(),
        "cpu_family_model": cpu_family_model(),
        "host": platform.node(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cnnkit": cnnkit.__version__,
        "cnnkit_build": cnnkit.build_info(),
        "source": source_revision(),
        "device": device.type,
        "device_name": cpu_model,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device),
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    multiprocessors=properties.multi_processor_count,
                    compute_capability=f"{properties.major}.{properties.minor}",
                    torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# --------------------------------------------------------------------------- reporting


def geomean(values) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def layer_label(row, with_batch: bool, with_threads: bool = False) -> str:
    """The row's layer name, with its batch size where rows of several batches
    mix, and its thread count where rows of several thread counts mix."""
    label = f"{row['layer']} N={row['batch']}" if with_batch else row["layer"]
    return f"{label} {row['threads']}T" if with_threads else label


def several(rows, key: str) -> bool:
    """Whether the rows differ in key (batch, threads)."""
    return len({row.get(key) for row in rows}) > 1


def summarize(rows) -> list[dict]:
    """Geometric-mean ratio and worst layer per (suite, op, mode); for ops that
    report them, also the worst memory ratio, the ratios to the reference op
    and the lowest fraction of the copy ceiling reached by the minimal traffic."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["suite"], row["op"], row["mode"]), []).append(row)
    suite_order, op_order, mode_order = list(SUITES), list(OPS), list(MODES)
    summary = []
    for (suite, op, mode), group in sorted(groups.items(), key=lambda item: (
            suite_order.index(item[0][0]), op_order.index(item[0][1]), mode_order.index(item[0][2]))):
        measured = [row for row in group if row["status"] == "ok"]
        entry = {"suite": suite, "op": op, "mode": mode, "layers": len(group),
                 "not_measured": len(group) - len(measured)}
        label = partial(layer_label, with_batch=several(group, "batch"),
                        with_threads=several(group, "threads"))
        if measured:
            worst = max(measured, key=lambda row: row["ratio"])
            lowest = min(measured, key=lambda row: row["cnnkit_ceiling_fraction"])
            entry.update(geomean_ratio=geomean(row["ratio"] for row in measured),
                         worst_ratio=worst["ratio"], worst_layer=label(worst),
                         min_ceiling_fraction=lowest["cnnkit_ceiling_fraction"],
                         min_ceiling_layer=label(lowest))
        if with_memory := [row for row in measured if row.get("memory_ratio") is not None]:
            worst = max(with_memory, key=lambda row: row["memory_ratio"])
            entry.update(worst_memory_ratio=worst["memory_ratio"], worst_memory_layer=label(worst),
                         **{f"worst_memory_{key}": worst[key]
                            for key in ("cnnkit_peak_bytes", "baseline_peak_bytes", "result_bytes")})
        if with_scratch := [row for row in measured if row.get("scratch_ratio") is not None]:
            worst = max(with_scratch, key=lambda row: row["scratch_ratio"])
            entry.update(worst_scratch_ratio=worst["scratch_ratio"], worst_scratch_layer=label(worst),
                         worst_scratch_cnnkit_bytes=worst["cnnkit_scratch_bytes"],
                         worst_scratch_baseline_bytes=worst["baseline_scratch_bytes"])
        if with_reference := [row for row in measured if "reference_ratio" in row]:
            worst = max(with_reference, key=lambda row: row["reference_ratio"])
            entry.update(reference_name=worst["reference_name"],
                         geomean_reference_ratio=geomean(row["reference_ratio"] for row in with_reference),
                         worst_reference_ratio=worst["reference_ratio"], worst_reference_layer=label(worst))
        if with_traffic := [row for row in measured if "cnnkit_bandwidth_fraction" in row]:
            lowest = min(with_traffic, key=lambda row: row["cnnkit_bandwidth_fraction"])
            entry.update(min_bandwidth_fraction=lowest["cnnkit_bandwidth_fraction"],
                         min_bandwidth_layer=label(lowest))
        summary.append(entry)
    return summary


def check_targets(summary, device, dtype: str) -> list[dict]:
    """The TARGETS of suites.py that this run covers (suite, op and mode on this
    device, in the target's dtype if it names one): met or not, and why not."""
    results = []
    for target in TARGETS:
        entry = next((e for e in summary if (e["suite"], e["op"], e["mode"]) ==
                      (target.suite, target.op, target.mode)), None)
        if target.device != device.type or entry is None or target.dtype not in (None, dtype):
            continue
        goals, failures = [], []
        if entry["not_measured"]:
            failures.append(f"{entry['not_measured']} layer(s) wrong or failing")
        measured = "geomean_ratio" in entry
        if target.max_geomean_ratio is not None:
            goals.append(f"geomean <= {target.max_geomean_ratio}")
            if measured and entry["geomean_ratio"] > target.max_geomean_ratio:
                failures.append(f"geomean {entry['geomean_ratio']:.2f}")
        if target.max_ratio is not None:
            goals.append(f"every layer <= {target.max_ratio}")
            if measured and entry["worst_ratio"] > target.max_ratio:
                failures.append(f"{entry['worst_layer']} at {entry['worst_ratio']:.2f}")
        if target.min_speedup is not None:
            goals.append(f"every layer >= {target.min_speedup:g}x faster")
            if measured and entry["worst_ratio"] > 1 / target.min_speedup:
                failures.append(f"{entry['worst_layer']} {1 / entry['worst_ratio']:.2f}x faster "
                                f"(ratio {entry['worst_ratio']:.2f})")
        if target.min_ceiling_fraction is not None:
            goals.append(f"every layer >= {target.min_ceiling_fraction:.0%} of ceiling")
            if measured and entry["min_ceiling_fraction"] < target.min_ceiling_fraction:
                failures.append(f"{entry['min_ceiling_layer']} at {entry['min_ceiling_fraction']:.0%} of ceiling")
        if target.max_scratch_ratio is not None:
            goals.append(f"every layer's scratch memory (peak beyond outputs and gradients) <= "
                         f"{target.max_scratch_ratio:g}x the baseline's")
            if measured and "worst_scratch_ratio" not in entry:
                failures.append("scratch memory not measured")
            elif measured and entry["worst_scratch_ratio"] > target.max_scratch_ratio:
                failures.append(f"{entry['worst_scratch_layer']} at {entry['worst_scratch_ratio']:.2f}x "
                                f"the baseline's scratch ({mib(entry['worst_scratch_cnnkit_bytes'])} "
                                f"vs {mib(entry['worst_scratch_baseline_bytes'])} MiB)")
        if target.max_reference_ratio is not None:
            reference = entry.get("reference_name", "the reference op")
            goals.append(f"every layer <= {target.max_reference_ratio:g}x the time of cnnkit's {reference}")
            if measured and "worst_reference_ratio" not in entry:
                failures.append("reference op not timed")
            elif measured and entry["worst_reference_ratio"] > target.max_reference_ratio:
                failures.append(f"{entry['worst_reference_layer']} at {entry['worst_reference_ratio']:.2f}x "
                                f"{reference}")
        if target.min_bandwidth_fraction is not None:
            goals.append(f"every layer's minimal traffic >= {target.min_bandwidth_fraction:.0%} of the copy ceiling")
            if measured and "min_bandwidth_fraction" not in entry:
                failures.append("minimal traffic not measured")
            elif measured and entry["min_bandwidth_fraction"] < target.min_bandwidth_fraction:
                failures.append(f"{entry['min_bandwidth_layer']} at {entry['min_bandwidth_fraction']:.0%} "
                                "of the copy ceiling")
        results.append({"suite": target.suite, "op": target.op, "mode": target.mode, "dtype": dtype,
                        "goal": ", ".join(goals), "met": not failures, "failures": failures})
    return results


def markdown_table(header: list[str], lines: list[list[str]], right_aligned: set[int]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]

    def format_line(cells):
        return "| " + " | ".join(str(cell).rjust(width) if i in right_aligned else str(cell).ljust(width)
                                 for i, (cell, width) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (width + 1) + ":" if i in right_aligned else "-" * (width + 2)
                          for i, width in enumerate(widths)) + "|"
    return "\n".join([format_line(header), rule, *map(format_line, lines)])


def timing_warnings(row) -> str:
    """' noisy' when the spread of any timing is large, ' busy N%' when
    other processes took a share of the machine while the row was timed."""
    warnings = ""
    spread = max(row[f"{name}_iqr_ms"] / row[f"{name}_ms"] for name in ("cnnkit", "baseline", "reference")
                 if f"{name}_ms" in row)
    if spread > NOISY_SPREAD:
        warnings += " noisy"
    if row["other_load"] is not None and row["other_load"] > BUSY_LOAD:
        warnings += f" busy {row['other_load']:.0%}"
    if "capture_failure" in row:
        warnings += f" eager (no graph: {row['capture_failure']})"
    return warnings


def single_name(names, fallback: str) -> str:
    names = set(names)
    return names.pop() if len(names) == 1 else fallback


def mib(size: float) -> str:
    return f"{size / 2**20:.0f}" if size >= 2**20 else f"{size / 2**20:.2f}"


def rows_table(rows) -> str:
    """One line per row; the columns of the optional measurements (peak memory,
    reference op, minimal traffic) only when some row of the run has them."""
    baseline = single_name((row["baseline_name"] for row in rows), "baseline")
    measured = [row for row in rows if row["status"] == "ok"]
    extras = []  # (header, cell of a measured row or None)
    if any("memory_ratio" in row for row in measured):
        extras.append((f"peak mem cnnkit/{baseline}", lambda row: (
            f"{row['memory_ratio']:.2f} ({mib(row['cnnkit_peak_bytes'])}/{mib(row['baseline_peak_bytes'])} MiB)"
            if row.get("memory_ratio") is not None else None)))
    if any("scratch_ratio" in row for row in measured):
        extras.append((f"scratch cnnkit/{baseline}", lambda row: (
            f"{row['scratch_ratio']:.2f} ({mib(row['cnnkit_scratch_bytes'])}/{mib(row['baseline_scratch_bytes'])} MiB)"
            if row.get("scratch_ratio") is not None else None)))
    if references := [row["reference_name"] for row in measured if "reference_name" in row]:
        reference = single_name(references, "reference")
        extras.append((f"{reference} ms", lambda row: f"{row['reference_ms']:.3f}" if "reference_ms" in row else None))
        extras.append((f"cnnkit/{reference}", lambda row: (
            f"{row['reference_ratio']:.2f}" if "reference_ratio" in row else None)))
    if any("cnnkit_bandwidth_fraction" in row for row in measured):
        extras.append(("min bytes % copy", lambda row: (
            f"{row['cnnkit_bandwidth_fraction']:.0%}" if "cnnkit_bandwidth_fraction" in row else None)))
    threads = several(rows, "threads")  # a column of its own only where rows differ in it
    header = ["suite", "op", "layer", "shape", *(["threads"] if threads else []), "mode", "cnnkit ms",
              f"{baseline} ms", f"cnnkit/{baseline}", "cnnkit rate", "cnnkit % ceil", f"{baseline} % ceil",
              *(name for name, _ in extras), "check"]
    lines = []
    for row in rows:
        start = [row["suite"], row["op"], row["layer"], row["shape"],
                 *([row["threads"]] if threads else []), MODES[row["mode"]]]
        if row["status"] != "ok":
            lines.append(start + ["-"] * (6 + len(extras)) + [f"{row['status'].upper()}: {row['message']}"])
            continue
        lines.append(start + [
            f"{row['cnnkit_ms']:.3f}", f"{row['baseline_ms']:.3f}", f"{row['ratio']:.2f}",
            f"{row['cnnkit_rate']:.1f} {row['rate_unit']}",
            f"{row['cnnkit_ceiling_fraction']:.0%}", f"{row['baseline_ceiling_fraction']:.0%}",
            *(cell(row) or "-" for _, cell in extras),
            f"ok ({row['max_rel_error']:.0e}){timing_warnings(row)}"])
    first_number = 6 if threads else 5
    return markdown_table(header, lines, right_aligned={*range(first_number, first_number + 6 + len(extras)),
                                                        *([4] if threads else [])})


def summary_table(summary) -> str:
    """Per (suite, op, mode); optional columns as in rows_table."""
    extras = []  # (header, cell of an entry or None)
    if any("worst_memory_ratio" in entry for entry in summary):
        extras.append(("worst peak mem", lambda entry: (
            f"{entry['worst_memory_ratio']:.2f}" if "worst_memory_ratio" in entry else None)))
    if any("worst_scratch_ratio" in entry for entry in summary):
        extras.append(("worst scratch", lambda entry: (
            f"{entry['worst_scratch_ratio']:.2f}" if "worst_scratch_ratio" in entry else None)))
    if references := [entry["reference_name"] for entry in summary if "reference_name" in entry]:
        reference = single_name(references, "reference")
        extras.append((f"geomean cnnkit/{reference}", lambda entry: (
            f"{entry['geomean_reference_ratio']:.2f}" if "geomean_reference_ratio" in entry else None)))
        extras.append((f"worst cnnkit/{reference}", lambda entry: (
            f"{entry['worst_reference_ratio']:.2f}" if "worst_reference_ratio" in entry else None)))
    if any("min_bandwidth_fraction" in entry for entry in summary):
        extras.append(("min bytes min % copy", lambda entry: (
            f"{entry['min_bandwidth_fraction']:.0%}" if "min_bandwidth_fraction" in entry else None)))
    header = ["suite", "op", "mode", "layers", "geomean cnnkit/base", "worst", "worst layer",
              "min % ceil", *(name for name, _ in extras)]
    lines = []
    for entry in summary:
        counted = f"{entry['layers'] - entry['not_measured']}/{entry['layers']}"
        start = [entry["suite"], entry["op"], MODES[entry["mode"]], counted]
        if "geomean_ratio" not in entry:
            lines.append(start + ["-"] * (4 + len(extras)))
            continue
        lines.append(start + [f"{entry['geomean_ratio']:.2f}", f"{entry['worst_ratio']:.2f}", entry["worst_layer"],
                              f"{entry['min_ceiling_fraction']:.0%}", *(cell(entry) or "-" for _, cell in extras)])
    return markdown_table(header, lines, right_aligned={3, 4, 5, *range(7, 8 + len(extras))})


def other_load_note(load) -> str:
    if load is None:
        return "- CPU time taken by other processes: unknown (no /proc/stat)"
    note = f"- other processes took {load:.0%} of the CPUs during the run"
    if load > BUSY_LOAD:
        note += ": the machine was shared, timings are unreliable; rerun on a quiet machine"
    return note


def timing_text(timing: dict) -> str:
    return (f"min run time {timing['min_run_time']} s per op and row in {timing['rounds']} alternating rounds"
            + (" of single calls" if timing["per_call"] else ""))


def ceilings_text(ceilings: dict, device: str) -> str:
    matmul = (f"matmul {ceilings['matmul_size']}^2 {ceilings['matmul_dtype']} "
              f"{ceilings['matmul_gflops']:.1f} GFLOP/s")
    if "fma_gflops" in ceilings:
        compute = (f"FMA peak {ceilings['fma_gflops']:.1f} GFLOP/s ({ceilings['fma_isa']}; "
                   f"conv % ceil), cnnkit matmul {ceilings['matmul_size']}^2 "
                   f"{ceilings['cnnkit_matmul_gflops']:.1f} GFLOP/s "
                   f"({ceilings['cnnkit_matmul_isa']}), ATen {matmul}")
    else:
        compute = f"{matmul} (conv % ceil)"
    return (f"{compute}; "
            f"copy 256 MiB {'device to device ' if device == 'cuda' else ''}"
            f"{ceilings['copy_gbs']:.1f} GB/s read+write (pooling % ceil)")


def report_text(info, settings, ceilings_by_threads, rows, summary, targets) -> str:
    """The Markdown report; ceilings_by_threads: measure_ceilings's result per
    thread count of the run's rows."""
    tf32 = ""
    if info["device"] == "cuda":
        tf32 = f", cudnn.allow_tf32={info['cudnn_allow_tf32']}, cudnn.benchmark={info['cudnn_benchmark']}"
    timings = settings["timing"]
    if len({timing_text(timing) for timing in timings.values()}) == 1:
        timing = timing_text(next(iter(timings.values())))
    else:
        timing = "; ".join(f"{suite}: {timing_text(timing)}" for suite, timing in timings.items())
    measured = [row for row in rows if row["status"] == "ok"]
    notes = []
    if any("memory_ratio" in row for row in measured):
        notes.append("- peak mem: the most memory allocated during one call (fwd, or fwd+bwd) beyond what "
                     "was allocated before it, outputs and gradients included; cnnkit's over the baseline's "
                     + ("(CUDA caching allocator statistics)" if info["device"] == "cuda" else
                        "(torch.profiler's allocation events; scratch a kernel takes from malloc is not seen)"))
        notes.append("- scratch: peak mem minus the call's outputs and gradients (memory both sides must "
                     "allocate), cnnkit's over the baseline's")
    if any("reference_ratio" in row for row in measured):
        notes.append("- reference: cnnkit's own op on the same shape (tiled_conv2d: conv2d with weight[..., 0, 0]); "
                     "cnnkit/reference is the time ratio")
    if settings.get("cuda_graph"):
        notes.append("- timed as CUDA graph replays: GPU time of each call's kernels, without Python and "
                     "launch overhead; rows marked 'eager' could not be captured and were timed as plain calls")
    if any("cnnkit_bandwidth_fraction" in row for row in measured):
        notes.append("- min bytes % copy: the minimal traffic (every tensor read or written once per pass "
                     "that needs it) per cnnkit time, over the copy ceiling")
    if any(row["mode"] == "per_sample" for row in rows):
        notes.append("- per-sample grad: the gradient of each sample's cross-entropy with respect to every "
                     "parameter of the network in the shape column (ReLU after each conv), by "
                     "torch.func.vmap(grad) through cnnkit.nn layers; baseline torch.nn: the same network "
                     "of torch.nn layers with the same weights, also by vmap(grad); loop over samples: "
                     "cnnkit.nn layers, one autograd backward per sample, gradients stacked. Rate: FLOPs "
                     "of the conv, local and linear layers (forward, weight gradient, and input gradient "
                     "past the first layer) over the matmul ceiling at the row's thread count")
    if len(ceilings_by_threads) == 1:
        threads, = ceilings_by_threads
        ceiling_lines = [f"- ceilings: {ceilings_text(ceilings_by_threads[threads], info['device'])}"]
    else:
        ceiling_lines = [f"- ceilings at {threads} thread{'s' if threads > 1 else ''}: "
                         f"{ceilings_text(ceilings, info['device'])}"
                         for threads, ceilings in sorted(ceilings_by_threads.items())]
    thread_counts = ", ".join(map(str, sorted(ceilings_by_threads)))
    parts = [
        f"# cnnkit benchmark: {', '.join(settings['suites'])} on {info['device']}, {info['date']}",
        "",
        f"- device: {info['device_name']}; {info['cpu_count']} CPUs, torch threads: {thread_counts}"
        + (" (the threads column)" if len(ceilings_by_threads) > 1 else "") + tf32,
        f"- CPU: {info['cpu_model']} (family/model {info.get('cpu_family_model')}), instruction "
        f"sets: {', '.join(info.get('cpu_isa') or ['?'])}",
        f"- torch {info['torch']}, cnnkit {info['cnnkit']} {info['cnnkit_build']}"
        + (f", source {info['source']}" if info.get("source") else ""),
        f"- dtype {settings['dtype']}, {timing}; times are medians",
        *ceiling_lines,
        "- ratio = cnnkit time / baseline time: below 1 is cnnkit faster",
        *notes,
        other_load_note(info["other_load"]),
        "",
        rows_table(rows),
        "",
        "## Geometric-mean ratio per suite, op and mode (correct rows only)",
        "",
        summary_table(summary),
    ]
    if targets:
        parts += ["", "## Targets", ""]
        for target in targets:
            verdict = "met" if target["met"] else "NOT met: " + "; ".join(target["failures"])
            parts.append(f"- {target['suite']} {target['op']} {MODES[target['mode']]} {target['dtype']} "
                         f"({target['goal']}): {verdict}")
    return "\n".join(parts) + "\n"


def plot_ratios(rows, info, settings, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patches, ticker

    measured = [row for row in rows if row["status"] == "ok"]
    colors = {"fwd": "tab:blue", "fwdbwd": "tab:orange", "per_sample": "tab:green"}
    several_suites = several(measured, "suite")
    labels = [(f"{row['suite']} | " if several_suites else "") +
              f"{row['op']} | {layer_label(row, several(measured, 'batch'), several(measured, 'threads'))}"
              f" | {MODES[row['mode']]}" for row in measured]
    ratios = [row["ratio"] for row in measured]
    figure, axes = plt.subplots(figsize=(11, 1.6 + 0.24 * len(measured)))
    positions = range(len(measured))
    # bars grow from the 1.0 line: right = cnnkit slower, left = cnnkit faster
    axes.barh(positions, [ratio - 1 for ratio in ratios], left=1,
              color=[colors[row["mode"]] for row in measured])
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    low, high = min(ratios + [1.0]) / 1.5, max(ratios + [1.0]) * 1.5
    axes.set_xlim(low, high)
    axes.set_xticks([tick for tick in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16) if low <= tick <= high])
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.set_ylim(len(measured) - 0.5, -0.5)  # first row on top, no margins
    for position, ratio in zip(positions, ratios):
        axes.text(ratio, position, f" {ratio:.2f} ", va="center", fontsize=6,
                  ha="left" if ratio >= 1 else "right")
    axes.set_xlabel("cnnkit time / baseline time (log scale; below 1 = cnnkit faster)")
    baselines = " / ".join(sorted({row["baseline_name"] for row in measured}))
    not_measured = len(rows) - len(measured)
    missing = f"; {not_measured} rows wrong or failing, not shown" if not_measured else ""
    if info.get("other_load") is not None and info["other_load"] > BUSY_LOAD:
        missing += f"; machine shared: other processes took {info['other_load']:.0%} of the CPUs"
    threads = "/".join(map(str, sorted({row["threads"] for row in measured})))
    axes.set_title(f"cnnkit vs {baselines}: {', '.join(settings['suites'])} on {info['device_name']}\n"
                   f"{settings['dtype']}, {threads} threads, {info['date']}{missing}", fontsize=9)
    axes.legend(handles=[patches.Patch(color=color, label=MODES[mode])
                         for mode, color in colors.items() if any(row["mode"] == mode for row in measured)],
                loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=7)
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------- main


class PlainProgress:
    """The part of tqdm's interface main uses, as one printed line per row:
    without tqdm, or when stderr is a log file rather than a terminal."""

    def __init__(self, items):
        self.items = list(items)
        self.position = 0

    def __iter__(self):
        for position, item in enumerate(self.items, start=1):
            self.position = position
            yield item

    def set_postfix_str(self, text: str) -> None:
        print(f"[{self.position}/{len(self.items)}] {text}", flush=True)

    def close(self) -> None:
        pass


def device_label(device, info) -> str:
    """The device part of the results' file names: "cpu", or "cuda-" and the
    GPU's name ("cuda-h100-80gb-hbm3"), so that runs on different GPUs differ."""
    if device.type != "cuda":
        return device.type
    name = info["device_name"].lower().removeprefix("nvidia").strip()
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def split_list(values: list[str]) -> list[str]:
    """Options take several values either way: `a,b` or `a b`."""
    return [item for value in values for item in value.split(",") if item]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Suites: " + ", ".join(
                                         f"{s.name} ({s.description}, {s.batches_label()})"
                                         for s in SUITES.values()))
    parser.add_argument("--suite", nargs="+", default=["quick"],
                        help="suite names, or 'all': " + ", ".join(
                            name for name, suite in SUITES.items() if suite.in_all) + " (default: quick)")
    parser.add_argument("--ops", nargs="+", help=f"only these ops: {', '.join(OPS)}")
    parser.add_argument("--batch", type=int, help="batch size for every suite (default: the suite's batches)")
    parser.add_argument("--modes", nargs="+", default=[",".join(MODES)],
                        help="fwd, fwdbwd and/or per_sample; each op runs those of its modes that are "
                             "named (default: all: fwd and fwdbwd for the layer ops, per_sample for the "
                             "networks of the per_sample suite)")
    parser.add_argument("--threads", nargs="+",
                        help="intra-op thread counts every row runs at (default: the suite's; torch's "
                             "default for suites that name none)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--min-run-time", type=float,
                        help="seconds of timing per op and row, for cnnkit and the baseline each "
                             f"(default: the suite's; {Timing().min_run_time} s unless it says otherwise)")
    parser.add_argument("--rounds", type=int,
                        help="alternations between cnnkit and the baseline per row "
                             f"(default: the suite's; {Timing().rounds} unless it says otherwise)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="CUDA: time replays of each op captured in a CUDA graph (the GPU time of its "
                             "kernels, without Python and launch overhead); a row whose ops cannot be "
                             "captured is timed eagerly and says so")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for the .json, .md and .png results")
    parser.add_argument("--no-plot", action="store_true", help="skip the .png plot")
    parser.add_argument("--list", action="store_true", help="list the suites and their layers, then exit")
    options = parser.parse_args(argv)

    options.suite = split_list(options.suite)
    if "all" in options.suite:
        options.suite = [name for name, suite in SUITES.items() if suite.in_all]
    if unknown := [name for name in options.suite if name not in SUITES]:
        parser.error(f"unknown suite(s) {unknown}; choose from {list(SUITES)} or 'all'")
    options.ops = split_list(options.ops) if options.ops else list(OPS)
    if unknown := [name for name in options.ops if name not in OPS]:
        parser.error(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    options.modes = split_list(options.modes)
    if unknown := [mode for mode in options.modes if mode not in MODES]:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if options.cuda_graph and options.device != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    if options.device == "cpu" and options.dtype in ("float16", "bfloat16"):
        parser.error(f"--dtype {options.dtype}: cnnkit runs float16 and bfloat16 on CUDA only")
    if options.batch is not None and options.batch < 1:
        parser.error("--batch must be positive")
    if options.threads is not None:
        try:
            options.threads = [int(count) for count in split_list(options.threads)]
        except ValueError:
            options.threads = [0]
        if min(options.threads) < 1:
            parser.error("--threads takes positive integers")
    options.thread_counts = options.threads  # None: each suite's
    if (options.min_run_time is not None and options.min_run_time <= 0) or (
            options.rounds is not None and options.rounds < 1):
        parser.error("--min-run-time must be positive and --rounds at least 1")
    options.threads = torch.get_num_threads()
    return options


def suite_timing(suite, options) -> Timing:
    """The suite's timing, with --min-run-time and --rounds where given."""
    overrides = {name: getattr(options, name) for name in ("min_run_time", "rounds")
                 if getattr(options, name) is not None}
    return dataclasses.replace(suite.timing, **overrides)


def list_suites():
    for suite in SUITES.values():
        print(f"{suite.name}: {suite.description} ({suite.batches_label()}, {len(suite.layers)} "
              f"{'networks' if isinstance(suite.layers[0], PerSampleNet) else 'layers'})")
        for layer in suite.layers:
            print(f"    {layer.op:<21} {layer.name:<36} {layer.shape(suite.batches[0])}")


def main(argv=None) -> int:
    options = parse_args(argv)
    if options.list:
        list_suites()
        return 0
    started, run_load = time.perf_counter(), OtherLoad()
    device, dtype = torch.device(options.device), DTYPES[options.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # float32 means float32 (TF32 would be a separate run)
        torch.backends.cuda.matmul.allow_tf32 = False

    suites = [SUITES[name] for name in options.suite]
    timings = {suite.name: suite_timing(suite, options) for suite in suites}
    work_items = [(suite, layer, batch, threads, mode)
                  for suite in suites
                  for layer in suite.layers if layer.op in options.ops
                  for batch in ([options.batch] if options.batch else suite.batches)
                  for threads in options.thread_counts or suite.threads or [options.threads]
                  for mode in options.modes if mode in OPS[layer.op].modes]
    if not work_items:
        print("nothing to run: no layer of the chosen suites uses the chosen ops in the chosen modes",
              file=sys.stderr)
        return 1
    thread_counts = sorted({threads for _, _, _, threads, _ in work_items})

    info = machine_info(device)
    settings = {"suites": options.suite, "ops": options.ops, "modes": options.modes,
                "batch": options.batch, "device": device.type, "dtype": options.dtype,
                "min_run_time": options.min_run_time, "rounds": options.rounds,
                "timing": {name: dataclasses.asdict(timing) for name, timing in timings.items()},
                "threads": options.threads, "thread_counts": thread_counts, "tolerance": TOLERANCE[dtype],
                "cuda_graph": options.cuda_graph}
    print(f"cnnkit benchmark on {info['device_name']}, torch threads: "
          f"{', '.join(map(str, thread_counts))}; "
          f"{len(work_items)} rows", flush=True)
    if any(OPS[layer.op].measure_memory for _, layer, *_ in work_items):
        check_memory_meter(device)
    print("measuring the machine's ceilings (FMA peak, matmul, copy) ...", flush=True)
    ceilings = {threads: measure_ceilings(device, dtype, threads) for threads in thread_counts}

    rows = []
    progress = (tqdm(work_items, unit="row", dynamic_ncols=True) if tqdm and sys.stderr.isatty()
                else PlainProgress(work_items))
    for suite, layer, batch, threads, mode in progress:
        progress.set_postfix_str(f"{suite.name} {layer.op} {layer.name} N={batch} "
                                 f"{f'{threads}T ' if len(thread_counts) > 1 else ''}{MODES[mode]}")
        rows.append(bench_row(suite, layer, batch, mode, device, dtype, timings[suite.name],
                              threads, ceilings[threads], options.cuda_graph))
    progress.close()

    info["other_load"] = run_load.fraction()
    summary = summarize(rows)
    targets = check_targets(summary, device, options.dtype)
    text = report_text(info, settings, ceilings, rows, summary, targets)
    runtime = time.perf_counter() - started
    print()
    print(text)

    options.out.mkdir(parents=True, exist_ok=True)
    suite_label = "+".join(options.suite) if len(options.suite) <= 3 else "all"
    dtype_label = ("" if options.dtype == "float32" else f"-{options.dtype}") + (
        "-graph" if options.cuda_graph else "")
    stem = f"{device_label(device, info)}-{suite_label}{dtype_label}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, md_path, png_path = (options.out / f"{stem}.{suffix}" for suffix in ("json", "md", "png"))
    md_path.write_text(text + f"\nruntime: {runtime:.0f} s\n")
    with open(json_path, "w") as out:
        # "ceilings": those at the most threads (a run of one thread count: its ceilings)
        json.dump({"machine": info, "settings": settings, "ceilings": ceilings[thread_counts[-1]],
                   "ceilings_by_threads": {str(threads): value for threads, value in ceilings.items()},
                   "rows": rows,
                   "summary": summary, "targets": targets, "runtime_s": runtime}, out, indent=1)
    written = [json_path, md_path]
    if not options.no_plot and any(row["status"] == "ok" for row in rows):
        try:
            plot_ratios(rows, info, settings, png_path)
            written.append(png_path)
        except ImportError as exc:  # matplotlib is optional
            print(f"no plot: {exc}")
    print("wrote " + ", ".join(str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
                               for path in written))
    print(f"runtime: {runtime:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
