"""What only a GPU can show, for every op, beyond the per-op test files (which
already run forward, gradients, gradcheck / gradgradcheck, opcheck and bad
inputs on "cuda" through the `device` fixture):

- the CUDA kernels agree with the CPU kernels in float64, forward and every
  gradient, on the shared problem list (tests/problems.py);
- determinism: forward and backward repeated on problems large enough that a
  GPU kernel would split its reductions give bit-identical results;
- float16 and bfloat16, forward and every gradient, against a float64
  reference of the same rounded inputs;
- 64-bit indexing: tensors of more than 2^31 elements against the same op on
  slices below 2^31 (slow, and skipped where the GPU has too little memory);
- int and complex inputs refused with the clear error by every op, backward
  ops included;
- every kernel runs on the current CUDA stream;
- a converted model compiled with torch.compile(fullgraph=True) on CUDA.

Every test here needs a CUDA device and is skipped without one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

import cnnkit
import cnnkit.functional as CF
import reference as ref
from conftest import HALF_DTYPES, NEEDS_CUDA, exact_message, make_tensor, with_layout
from problems import (ADAPTIVE_POOL_PROBLEMS, CHANNEL_POOL_PROBLEMS, CONV_PROBLEMS,
                      CONV_TRANSPOSE_PROBLEMS, LOCAL_PROBLEMS, OP_ONLY_CONV_PROBLEMS,
                      POOL_PROBLEMS, TILED_PROBLEMS, AdaptivePoolProblem, ChannelPoolProblem,
                      ConvProblem, ConvTransposeProblem, LocalProblem, PoolProblem, TiledProblem,
                      pair)

pytestmark = NEEDS_CUDA

ops = torch.ops.cnnkit
F64 = torch.float64
AGREEMENT_LAYOUTS = ["contiguous", "channels_last"]

# CUDA against CPU, both float64: the kernels differ only in the order in which
# they sum, so each result agrees to a few float64 roundings of the largest
# magnitude involved.
AGREEMENT_TOLERANCE = 1e-12

# float16 / bfloat16 against float64, as max|result - reference| / max|reference|
# (the scale of the whole tensor, since sums that cancel have no relative
# accuracy of their own): the kernels accumulate in float32 and round once, so
# bfloat16's 8-bit significand (relative rounding 2^-9) stays well below this.
HALF_RELATIVE_ERROR = 1e-2


# --------------------------------------------------------------------------- the ops


def op_geometry(pb):
    """(stride, padding, dilation, groups) as the dispatcher convolution ops take them."""
    return (list(pair(pb.stride)), ref.op_padding(pb.padding, pb.kernel, pb.dilation),
            list(pair(pb.dilation)), pb.groups)


def op_only(pb) -> bool:
    """Explicit (top, bottom, left, right) padding, which only the dispatcher ops take."""
    return isinstance(pb.padding, tuple) and len(pb.padding) == 4


def convolution(functional, op):
    """A call of conv2d, local_conv2d or tiled_conv2d on a problem's operands."""
    def call(pb, x, w, b=None):
        if op_only(pb):
            return (op(x, w, b, *op_geometry(pb)),)
        return (functional(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups),)
    return call


def conv_transpose_call(pb, x, w, b=None):
    return (CF.conv_transpose2d(x, w, b, pb.stride, pb.padding, pb.output_padding, pb.groups,
                                pb.dilation),)


def max_pool_call(pb, x):
    return CF.max_pool2d(x, pb.kernel, pb.stride, pb.padding, pb.dilation, pb.ceil_mode,
                         return_indices=True)


def avg_pool_call(pb, x):
    return (CF.avg_pool2d(x, pb.kernel, pb.stride, pb.padding, pb.ceil_mode,
                          pb.count_include_pad, pb.divisor_override),)


def adaptive_max_pool_call(pb, x):
    return CF.adaptive_max_pool2d(x, pb.output_size, return_indices=True)


def adaptive_avg_pool_call(pb, x):
    return (CF.adaptive_avg_pool2d(x, pb.output_size),)


def channel_max_pool_call(pb, x):
    return CF.channel_max_pool(x, pb.pool_size), ops.channel_max_pool(x.detach(), pb.pool_size)[1]


def conv_shapes(pb):
    return [pb.input_shape, pb.weight_shape] + ([pb.bias_shape] if pb.bias else [])


def pool_shapes(pb):
    return [pb.input_shape]


@dataclass(frozen=True)
class Op:
    """One op as the tests here drive it: the shapes of its differentiable
    operands for a problem, and a call returning its outputs: the first is
    differentiated, a second one is int64 indices (max pools), compared exactly."""
    name: str
    problems: tuple
    shapes: Callable
    call: Callable


OPS = [
    Op("conv2d", tuple(CONV_PROBLEMS + OP_ONLY_CONV_PROBLEMS), conv_shapes,
       convolution(CF.conv2d, ops.conv2d)),
    Op("conv_transpose2d", tuple(CONV_TRANSPOSE_PROBLEMS), conv_shapes, conv_transpose_call),
    Op("local_conv2d", tuple(LOCAL_PROBLEMS), conv_shapes,
       convolution(CF.local_conv2d, ops.local_conv2d)),
    Op("tiled_conv2d", tuple(TILED_PROBLEMS), conv_shapes,
       convolution(CF.tiled_conv2d, ops.tiled_conv2d)),
    Op("max_pool2d", tuple(POOL_PROBLEMS), pool_shapes, max_pool_call),
    # Average pooling has no dilation: the problems without it.
    Op("avg_pool2d", tuple(pb for pb in POOL_PROBLEMS if not pb.dilated), pool_shapes,
       avg_pool_call),
    Op("adaptive_max_pool2d", tuple(ADAPTIVE_POOL_PROBLEMS), pool_shapes, adaptive_max_pool_call),
    Op("adaptive_avg_pool2d", tuple(ADAPTIVE_POOL_PROBLEMS), pool_shapes, adaptive_avg_pool_call),
    Op("channel_max_pool", tuple(CHANNEL_POOL_PROBLEMS), pool_shapes, channel_max_pool_call),
]
OPS_BY_NAME = {op.name: op for op in OPS}

PROBLEM_CASES = [pytest.param(op, pb, id=f"{op.name}-{pb.id}") for op in OPS for pb in op.problems]


def operands(op: Op, pb, dtype, device, layout="contiguous"):
    """The op's operands for pb: standard-normal values drawn in float64 on the
    CPU (the same on every device), rounded to dtype, stored in layout."""
    return [make_tensor(shape, dtype, device, layout) for shape in op.shapes(pb)]


def moved(tensors, device, layout):
    """Copies on `device` in `layout`, each a leaf that requires grad."""
    return [with_layout(t.to(device), layout).requires_grad_() for t in tensors]


def forward_backward(op: Op, pb, leaves, grad_output=None, layout="contiguous"):
    """The op's outputs and the gradients of its first output with respect to
    every leaf, for grad_output (drawn like the operands when None)."""
    outputs = op.call(pb, *leaves)
    if grad_output is None:
        grad_output = make_tensor(outputs[0].shape, outputs[0].dtype, outputs[0].device, layout)
    grads = torch.autograd.grad(outputs[0], leaves, grad_output)
    return list(outputs), list(grads), grad_output


def memory_format(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return f"strides {t.stride()}"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (max|actual| where the reference
    is all zero; 0 for empty tensors), computed in float64 on the CPU."""
    actual = actual.detach().to("cpu", F64)
    expected = expected.detach().to("cpu", F64)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return 0.0
    difference = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    return difference / scale if scale > 0 else difference


# --------------------------------------------------------------------------- CUDA against CPU


def assert_agree(actual, expected, what: str):
    """A CUDA result against the CPU kernel's, both float64 (indices: equal)."""
    actual = actual.detach().cpu()
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype == torch.int64:
        assert torch.equal(actual, expected), f"{what}: indices differ"
        return
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=AGREEMENT_TOLERANCE,
                               atol=AGREEMENT_TOLERANCE * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("layout", AGREEMENT_LAYOUTS)
@pytest.mark.parametrize("op,pb", PROBLEM_CASES)
def test_cuda_matches_cpu_float64(op, pb, layout, cuda_device):
    # The CPU kernels are the behavioural reference: the CUDA kernels must give
    # the same outputs (max pools: the same indices) and the same gradient of
    # every operand, in the same memory format, for the same float64 inputs.
    cpu = moved(operands(op, pb, F64, "cpu", layout), "cpu", layout)
    gpu = moved(cpu, cuda_device, layout)
    outputs_cpu, grads_cpu, grad_output = forward_backward(op, pb, cpu, layout=layout)
    outputs_gpu, grads_gpu, _ = forward_backward(op, pb, gpu, grad_output.to(cuda_device), layout)
    names = ["output", "indices"][:len(outputs_cpu)] + [
        f"gradient of operand {i}" for i in range(len(grads_cpu))]
    for name, got, want in zip(names, outputs_gpu + grads_gpu, outputs_cpu + grads_cpu):
        assert got.device.type == torch.device(cuda_device).type, f"{name}: device {got.device}"
        assert_agree(got, want, name)
        assert memory_format(got) == memory_format(want), f"{name}: memory format"


# --------------------------------------------------------------------------- determinism

# Problems where a GPU kernel has reason to split a reduction over blocks
# (weight and bias gradients summed over N*OH*OW, pools whose windows overlap,
# global pooling of large planes): any order that depends on scheduling, or a
# floating-point atomic, shows up as a difference between two runs.
DETERMINISM_PROBLEMS = {
    "conv2d": [
        # Weight gradient: 64*64*9 values, each a sum over 16*28*28 = 12544 terms.
        ConvProblem("det_3x3", N=16, C=64, K=64, H=28, W=28, kernel=3, padding=1),
        # Depthwise: 64*9 weight-gradient values, each summing 12544 terms.
        ConvProblem("det_depthwise", N=16, C=64, K=64, H=28, W=28, kernel=3, padding=1,
                    groups=64),
        # Strided 1x1 in two groups: a GEMM per pixel that skips pixels.
        ConvProblem("det_1x1_s2_groups2", N=16, C=64, K=128, H=28, W=28, kernel=1, stride=2,
                    groups=2),
        # ResNet's stem: few input channels, a wide kernel, 7x7 windows overlapping at stride 2.
        ConvProblem("det_stem_7x7_s2", N=16, C=3, K=64, H=56, W=56, kernel=7, stride=2,
                    padding=3),
    ],
    "conv_transpose2d": [
        # 2x upsampling: the input gradient of a strided convolution, run forward.
        ConvTransposeProblem("det_t_s2", N=16, C_in=64, C_out=32, H=14, W=14, kernel=3,
                             stride=2, padding=1, output_padding=1),
    ],
    "local_conv2d": [
        # DeepFace's L6 at batch 32: weight gradient sums over the batch only,
        # input gradient over output channels and taps.
        LocalProblem("det_local_5x5", N=32, C=16, K=16, H=25, W=25, kernel=5),
        LocalProblem("det_local_s2_groups2", N=32, C=16, K=16, H=27, W=27, kernel=3, stride=2,
                     groups=2),
    ],
    "tiled_conv2d": [
        # Weight gradient: each tile sums over 16 * 14 * 14 of the 28x28 locations.
        TiledProblem("det_tiled_2x2", N=16, C=32, K=32, H=28, W=28, kernel=3, padding=1,
                     tiles=2),
        TiledProblem("det_tiled_depthwise", N=16, C=32, K=32, H=28, W=28, kernel=3, padding=1,
                     groups=32, tiles=(2, 3)),
    ],
    "max_pool2d": [
        # ResNet's pool: an input element in up to 4 windows (backward sums them).
        PoolProblem("det_max_3x3_s2", N=16, C=64, H=56, W=56, kernel=3, stride=2, padding=1),
        # Stride 1: an input element in up to 9 windows.
        PoolProblem("det_max_3x3_s1", N=16, C=64, H=28, W=28, kernel=3, stride=1, padding=1),
    ],
    "avg_pool2d": [
        PoolProblem("det_avg_3x3_s1", N=16, C=64, H=56, W=56, kernel=3, stride=1, padding=1,
                    count_include_pad=False),
        PoolProblem("det_avg_ceil", N=16, C=64, H=57, W=57, kernel=3, stride=2, padding=1,
                    ceil_mode=True),
    ],
    "adaptive_max_pool2d": [
        # Overlapping windows of varying size.
        AdaptivePoolProblem("det_amax_5x7", N=16, C=64, H=56, W=56, output_size=(5, 7)),
    ],
    "adaptive_avg_pool2d": [
        # Global pooling: one sum of 3136 values per plane.
        AdaptivePoolProblem("det_global", N=16, C=256, H=56, W=56, output_size=1),
        AdaptivePoolProblem("det_aavg_5x7", N=16, C=64, H=56, W=56, output_size=(5, 7)),
    ],
    "channel_max_pool": [
        ChannelPoolProblem("det_channel", N=16, C=64, H=28, W=28, pool_size=4),
    ],
}
DETERMINISM_CASES = [pytest.param(OPS_BY_NAME[name], pb, id=f"{name}-{pb.id}")
                     for name, problems in DETERMINISM_PROBLEMS.items() for pb in problems]
RUNS = 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", AGREEMENT_LAYOUTS)
@pytest.mark.parametrize("op,pb", DETERMINISM_CASES)
def test_deterministic(op, pb, layout, dtype, cuda_device):
    # SPEC 3: same inputs, same outputs, bit for bit, on every run: forward,
    # indices and every gradient.
    inputs = operands(op, pb, dtype, cuda_device, layout)
    grad_output, runs = None, []
    for _ in range(RUNS):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        outputs, grads, grad_output = forward_backward(op, pb, leaves, grad_output, layout)
        runs.append(outputs + grads)
    for run in runs[1:]:
        for index, (first, again) in enumerate(zip(runs[0], run)):
            assert torch.equal(first, again), f"result {index} differs between runs"


# --------------------------------------------------------------------------- streams

# One problem per op (the id in its problem list).
STREAM_PROBLEMS = {
    "conv2d": "groups3_stride2", "conv_transpose2d": "t_stride2_outpad1",
    "local_conv2d": "stride2_pad1", "tiled_conv2d": "tiles_2x3",
    "max_pool2d": "resnet_3x3_s2_p1", "avg_pool2d": "no_count_pad",
    "adaptive_max_pool2d": "non_divisible", "adaptive_avg_pool2d": "non_divisible",
    "channel_max_pool": "pairs",
}
STREAM_CASES = [pytest.param(OPS_BY_NAME[name], pb, id=f"{name}-{pb.id}")
                for name, problem_id in STREAM_PROBLEMS.items()
                for pb in OPS_BY_NAME[name].problems if pb.id == problem_id]
assert len(STREAM_CASES) == len(STREAM_PROBLEMS), "an id of STREAM_PROBLEMS is not in its list"
GPU_SLEEP_CYCLES = 50_000_000  # tens of milliseconds at any clock rate


@pytest.mark.parametrize("op,pb", STREAM_CASES)
def test_kernels_run_on_the_current_stream(op, pb, cuda_device):
    # Every kernel launches on the current stream. Here that is a side stream
    # which first sleeps, then writes the operands and grad_output: a kernel
    # launched on any other stream (PyTorch's streams do not synchronize with
    # the legacy default one) would run before those writes and read zeros.
    # Forward and backward (autograd runs it on the forward's stream) must give
    # bit for bit what they give on the default stream.
    values = operands(op, pb, torch.float32, cuda_device)
    leaves = [t.clone().requires_grad_() for t in values]
    outputs_default, grads_default, grad_output = forward_backward(op, pb, leaves)
    leaves = [torch.zeros_like(t).requires_grad_() for t in values]
    zeroed_grad_output = torch.zeros_like(grad_output)
    side = torch.cuda.Stream(cuda_device)
    side.wait_stream(torch.cuda.current_stream(cuda_device))
    with torch.cuda.stream(side):
        torch.cuda._sleep(GPU_SLEEP_CYCLES)
        with torch.no_grad():
            for leaf, value in zip(leaves, values):
                leaf.copy_(value)
            zeroed_grad_output.copy_(grad_output)
        outputs, grads, _ = forward_backward(op, pb, leaves, zeroed_grad_output)
    torch.cuda.synchronize(cuda_device)
    for index, (got, want) in enumerate(zip(outputs + grads, outputs_default + grads_default)):
        assert torch.equal(got, want), f"result {index} differs from the default stream's"


# --------------------------------------------------------------------------- float16 / bfloat16


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("layout", AGREEMENT_LAYOUTS)
@pytest.mark.parametrize("op,pb", PROBLEM_CASES)
def test_half_precision(op, pb, layout, dtype, cuda_device):
    # SPEC 3: float16 and bfloat16 on CUDA, accumulated in float32. The
    # reference is float64 (the CPU kernels, which the per-op files test against
    # ATen and the SPEC formulas) of the same rounded inputs and grad_output, so
    # only the kernels' own arithmetic separates the two. Every problem of the
    # shared list runs: groups, depthwise, stride 2, dilation 2, 1x1, odd sizes.
    leaves = moved(operands(op, pb, dtype, "cpu", layout), cuda_device, layout)
    outputs, grads, grad_output = forward_backward(op, pb, leaves, layout=layout)
    leaves64 = [t.detach().to("cpu", F64).requires_grad_() for t in leaves]
    outputs64, grads64, _ = forward_backward(op, pb, leaves64, grad_output.to("cpu", F64))
    assert outputs[0].dtype == dtype and all(g.dtype == dtype for g in grads)
    if len(outputs) == 2:  # ties among rounded values go to the same first maximum
        assert torch.equal(outputs[1].cpu(), outputs64[1]), "indices"
    names = ["output"] + [f"gradient of operand {i}" for i in range(len(grads))]
    for name, got, want in zip(names, [outputs[0]] + grads, [outputs64[0]] + grads64):
        error = relative_error(got, want)
        assert error < HALF_RELATIVE_ERROR, f"{name}: relative error {error:.2e}"


# --------------------------------------------------------------------------- 64-bit indexing

INT32_LIMIT = 2**31
BF16 = torch.bfloat16


def require_free_memory(needed_bytes: int, device) -> None:
    free, total = torch.cuda.mem_get_info(torch.device(device))
    if free < needed_bytes:
        pytest.skip(f"needs about {needed_bytes / 2**30:.0f} GiB of free GPU memory for tensors of "
                    f"more than 2^31 elements, but {free / 2**30:.1f} of {total / 2**30:.1f} GiB "
                    "are free")


def assert_relative_error_below(actual, expected, bound: float, what: str):
    """max|actual - expected| / max|expected| < bound, on the GPU in float32
    (these tensors are too large to copy to the CPU in float64)."""
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = actual.float().sub_(expected.float()).abs_().max().item()
    scale = expected.float().abs().max().item()
    assert scale > 0, f"{what}: the reference is all zero"
    assert difference / scale < bound, f"{what}: relative error {difference / scale:.2e}"


# An activation of 4 samples of 8 x 8200 x 8200: 2,151,680,000 elements in all,
# 537,920,000 per sample. Offsets into the last sample pass 2^31, while every
# per-sample slice, the reference, stays below it.
BIG_N, BIG_C, BIG_HW = 4, 8, 8200
BIG_NUMEL = BIG_N * BIG_C * BIG_HW * BIG_HW
assert BIG_NUMEL > INT32_LIMIT and BIG_NUMEL // BIG_N < INT32_LIMIT


@pytest.mark.slow
def test_conv2d_past_2_31_elements(cuda_device):
    # Input, output and both gradients of 2.15e9 bfloat16 elements, 3x3 padding 1;
    # each sample's forward and input gradient (computed alone, in float32)
    # must match its slice, and the weight and bias gradients the sum of the
    # per-sample ones.
    K = BIG_C
    # x, y, g and gx in bfloat16; per sample, x and g in float32, a reference
    # result and two float32 temporaries of the comparison.
    sample_float32_bytes = BIG_NUMEL // BIG_N * 4
    require_free_memory(4 * BIG_NUMEL * 2 + 5 * sample_float32_bytes + 2 * 2**30, cuda_device)
    geometry = ([1, 1], [1, 1], [1, 1], 1)
    x = torch.randn(BIG_N, BIG_C, BIG_HW, BIG_HW, device=cuda_device, dtype=BF16)
    w = torch.randn(K, BIG_C, 3, 3, device=cuda_device, dtype=BF16)
    b = torch.randn(K, device=cuda_device, dtype=BF16)
    y = ops.conv2d(x, w, b, *geometry)
    g = torch.randn_like(y)
    gx = ops.conv2d_input_backward(g, w, [BIG_HW, BIG_HW], *geometry)
    gw = ops.conv2d_weight_backward(g, x, [3, 3], *geometry)
    gb = ops.conv2d_bias_backward(g)
    assert y.shape == g.shape == gx.shape == x.shape
    w32, b32 = w.float(), b.float()
    gw_sum = torch.zeros(gw.shape, dtype=F64, device=cuda_device)
    gb_sum = torch.zeros(gb.shape, dtype=F64, device=cuda_device)
    for n in range(BIG_N):
        x_n, g_n = x[n:n + 1].float(), g[n:n + 1].float()
        assert_relative_error_below(y[n:n + 1], ops.conv2d(x_n, w32, b32, *geometry),
                                    HALF_RELATIVE_ERROR, f"output of sample {n}")
        assert_relative_error_below(gx[n:n + 1], ops.conv2d_input_backward(
            g_n, w32, [BIG_HW, BIG_HW], *geometry), HALF_RELATIVE_ERROR,
            f"input gradient of sample {n}")
        gw_sum += ops.conv2d_weight_backward(g_n, x_n, [3, 3], *geometry).double()
        gb_sum += ops.conv2d_bias_backward(g_n).double()
        del x_n, g_n
    assert_relative_error_below(gw, gw_sum, HALF_RELATIVE_ERROR, "weight gradient")
    assert_relative_error_below(gb, gb_sum, HALF_RELATIVE_ERROR, "bias gradient")


@dataclass(frozen=True)
class BigPool:
    """A pool through the dispatcher ops: forward(x) -> (output, indices or
    None), backward(grad_output, x, indices) -> grad_input; exact: max-type
    outputs are bit-identical whatever the index width."""
    forward: Callable
    backward: Callable
    exact: bool


BIG_POOLS = {
    "max_pool2d": BigPool(lambda x: ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False),
                          lambda g, x, i: ops.max_pool2d_backward(g, x, i), exact=True),
    "avg_pool2d": BigPool(lambda x: (ops.avg_pool2d(x, [3, 3], [2, 2], [1, 1], False, False,
                                                    None), None),
                          lambda g, x, i: ops.avg_pool2d_backward(g, x, [3, 3], [2, 2], [1, 1],
                                                                  False, False, None),
                          exact=False),
    # 7x7 windows of about 1171 x 1171 elements: large reductions.
    "adaptive_max_pool2d": BigPool(lambda x: ops.adaptive_max_pool2d(x, [7, 7]),
                                   lambda g, x, i: ops.max_pool2d_backward(g, x, i), exact=True),
    "adaptive_avg_pool2d": BigPool(lambda x: (ops.adaptive_avg_pool2d(x, [7, 7]), None),
                                   lambda g, x, i: ops.adaptive_avg_pool2d_backward(g, x),
                                   exact=False),
    "channel_max_pool": BigPool(lambda x: ops.channel_max_pool(x, 2),
                                lambda g, x, i: ops.channel_max_pool_backward(g, x, i, 2),
                                exact=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BIG_POOLS))
def test_pool_past_2_31_elements(name, cuda_device):
    # A bfloat16 input of 2.15e9 elements; forward (and indices) and the input
    # gradient against the same op on each sample alone (below 2^31).
    pool = BIG_POOLS[name]
    # Bytes per input element: input and input gradient (2 + 2), output and
    # grad_output of at most half the input's elements (1 + 1: channel_max_pool)
    # and their int64 indices (4); per sample: its output, indices and input
    # gradient (1 + 4 + 2) and two float32 temporaries of the comparison (8).
    require_free_memory(BIG_NUMEL * (2 + 2 + 1 + 1 + 4) + BIG_NUMEL // BIG_N * 15 + 2 * 2**30,
                        cuda_device)
    x = torch.randn(BIG_N, BIG_C, BIG_HW, BIG_HW, device=cuda_device, dtype=BF16)
    y, indices = pool.forward(x)
    g = torch.randn_like(y)
    gx = pool.backward(g, x, indices)
    assert gx.shape == x.shape
    for n in range(BIG_N):
        sample = slice(n, n + 1)
        y_n, indices_n = pool.forward(x[sample])
        if pool.exact:
            assert torch.equal(y[sample], y_n), f"output of sample {n}"
        else:
            assert_relative_error_below(y[sample], y_n, HALF_RELATIVE_ERROR,
                                        f"output of sample {n}")
        if indices is not None:
            assert torch.equal(indices[sample], indices_n), f"indices of sample {n}"
        gx_n = pool.backward(g[sample], x[sample], indices_n)
        assert_relative_error_below(gx[sample], gx_n, HALF_RELATIVE_ERROR,
                                    f"input gradient of sample {n}")
        del y_n, indices_n, gx_n


# A locally connected layer (N, C, K, input size, kernel size): 16 -> 16
# channels, a 23x23 kernel on 150x150, so 128x128 output locations and a weight
# of 16 x 128 x 128 x 16 x 23 x 23 = 2,218,786,816 elements.
BIG_LOCAL = (2, 16, 16, 150, 23)


@pytest.mark.slow
def test_local_conv2d_weight_past_2_31_elements(cuda_device):
    # The weight and weight gradient pass 2^31 elements (bfloat16); each half
    # of the output channels, computed alone in float32, stays below it.
    N, C, K, HW, R = BIG_LOCAL
    P = HW - R + 1
    weight_numel = K * P * P * C * R * R
    assert weight_numel > INT32_LIMIT and weight_numel // 2 < INT32_LIMIT
    # The weight and its gradient in bfloat16; per half: its float32 weight,
    # then its float32 weight gradient and two float32 temporaries of the comparison.
    require_free_memory(weight_numel * (2 + 2) + weight_numel // 2 * 4 * 3 + 2 * 2**30,
                        cuda_device)
    geometry = ([1, 1], [0, 0], [1, 1], 1)
    x = torch.randn(N, C, HW, HW, device=cuda_device, dtype=BF16)
    w = torch.randn(K, P, P, C, R, R, device=cuda_device, dtype=BF16)
    b = torch.randn(K, P, P, device=cuda_device, dtype=BF16)
    y = ops.local_conv2d(x, w, b, *geometry)
    g = torch.randn_like(y)
    gx = ops.local_conv2d_input_backward(g, w, [HW, HW], *geometry)
    gw = ops.local_conv2d_weight_backward(g, x, [R, R], *geometry)
    gb = ops.local_conv2d_bias_backward(g)
    x32 = x.float()
    gx_sum = torch.zeros(gx.shape, dtype=F64, device=cuda_device)
    for half in (slice(0, K // 2), slice(K // 2, K)):
        w_half, g_half = w[half].float(), g[:, half].float()
        assert_relative_error_below(y[:, half], ops.local_conv2d(x32, w_half, b[half].float(),
                                                                 *geometry),
                                    HALF_RELATIVE_ERROR, f"output channels {half}")
        gx_sum += ops.local_conv2d_input_backward(g_half, w_half, [HW, HW], *geometry).double()
        del w_half
        assert_relative_error_below(gw[half], ops.local_conv2d_weight_backward(
            g_half, x32, [R, R], *geometry), HALF_RELATIVE_ERROR, f"weight gradient {half}")
    assert_relative_error_below(gx, gx_sum, HALF_RELATIVE_ERROR, "input gradient")
    assert_relative_error_below(gb, g.float().sum(0), HALF_RELATIVE_ERROR, "bias gradient")


# --------------------------------------------------------------------------- dtype errors

CUDA_DTYPES = "torch.float32, torch.float64, torch.float16 or torch.bfloat16"
G1 = ([1, 1], [0, 0], [1, 1], 1)  # stride, padding, dilation, groups


class Maker:
    """Tensors on the device under test: t(*shape) of the dtype under test
    (integers: small values; complex: normal), t.indices(*shape) int64 zeros."""

    def __init__(self, dtype, device):
        self.dtype, self.device = dtype, device

    def __call__(self, *shape):
        if self.dtype.is_complex:
            return torch.randn(*shape, dtype=self.dtype, device=self.device)
        return torch.randint(-3, 4, shape, dtype=self.dtype, device=self.device)

    def indices(self, *shape):
        return torch.zeros(*shape, dtype=torch.int64, device=self.device)


# (op as its message names it, the argument checked first, the call). The
# per-op files check int inputs of the forward ops on CUDA already; complex
# inputs, and the backward ops, are checked here.
FORWARD_DTYPE_CASES = [
    ("conv2d", "input", lambda t: CF.conv2d(t(1, 2, 5, 5), t(2, 2, 3, 3))),
    ("conv_transpose2d", "input", lambda t: CF.conv_transpose2d(t(1, 4, 5, 5), t(4, 2, 3, 3))),
    ("local_conv2d", "input", lambda t: CF.local_conv2d(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3))),
    ("tiled_conv2d", "input", lambda t: CF.tiled_conv2d(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2))),
    ("max_pool2d", "input", lambda t: CF.max_pool2d(t(1, 2, 6, 6), 2)),
    ("avg_pool2d", "input", lambda t: CF.avg_pool2d(t(1, 2, 6, 6), 2)),
    ("adaptive_max_pool2d", "input", lambda t: CF.adaptive_max_pool2d(t(1, 2, 6, 6), 2)),
    ("adaptive_avg_pool2d", "input", lambda t: CF.adaptive_avg_pool2d(t(1, 2, 6, 6), 2)),
    ("channel_max_pool", "input", lambda t: CF.channel_max_pool(t(1, 4, 6, 6), 2)),
]
BACKWARD_DTYPE_CASES = [
    ("conv2d_input_backward", "grad_output",
     lambda t: ops.conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3), [5, 5], *G1)),
    ("conv2d_weight_backward", "input",
     lambda t: ops.conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], *G1)),
    ("conv2d_bias_backward", "grad_output", lambda t: ops.conv2d_bias_backward(t(1, 2, 3, 3))),
    ("local_conv2d_input_backward", "grad_output",
     lambda t: ops.local_conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3, 3, 3), [5, 5], *G1)),
    ("local_conv2d_weight_backward", "input",
     lambda t: ops.local_conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], *G1)),
    ("local_conv2d_bias_backward", "grad_output",
     lambda t: ops.local_conv2d_bias_backward(t(1, 2, 3, 3))),
    ("tiled_conv2d_input_backward", "grad_output",
     lambda t: ops.tiled_conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 5], *G1)),
    ("tiled_conv2d_weight_backward", "input",
     lambda t: ops.tiled_conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], [2, 2],
                                                *G1)),
    ("tiled_conv2d_bias_backward", "grad_output",
     lambda t: ops.tiled_conv2d_bias_backward(t(1, 2, 3, 3), [2, 2])),
    ("max_pool2d_backward", "input",
     lambda t: ops.max_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6), t.indices(1, 2, 3, 3))),
    ("avg_pool2d_backward", "input",
     lambda t: ops.avg_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6), [2, 2], [2, 2], [0, 0],
                                       False, True, None)),
    ("adaptive_avg_pool2d_backward", "input",
     lambda t: ops.adaptive_avg_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6))),
    ("channel_max_pool_backward", "input",
     lambda t: ops.channel_max_pool_backward(t(1, 2, 6, 6), t(1, 4, 6, 6),
                                             t.indices(1, 2, 6, 6), 2)),
]
DTYPE_CASES = (
    [pytest.param(*case, torch.complex64, id=f"{case[0]}-complex64")
     for case in FORWARD_DTYPE_CASES]
    + [pytest.param(*case, dtype, id=f"{case[0]}-{str(dtype).removeprefix('torch.')}")
       for case in BACKWARD_DTYPE_CASES for dtype in (torch.complex64, torch.int32)])


@pytest.mark.parametrize("name,argument,call,dtype", DTYPE_CASES)
def test_unsupported_dtype(name, argument, call, dtype, cuda_device):
    # SPEC 3: any dtype but float32, float64, float16 and bfloat16 is a clear
    # error on CUDA, raised by the checks before any kernel runs.
    message = f"cnnkit.{name}: expected {argument} of dtype {CUDA_DTYPES}, but got {dtype}"
    with pytest.raises(RuntimeError, match=exact_message(message)):
        call(Maker(dtype, cuda_device))


# --------------------------------------------------------------------------- torch.compile


class SmallNet(nn.Module):
    """torch.nn convolution and pooling layers for cnnkit.convert to replace
    (a depthwise conv, a transposed conv, 'same' padding, every pool), and
    cnnkit's own unshared layers, over (N, 3, 16, 16) inputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
            cnnkit.nn.TiledConv2d(8, 8, 3, tiles=2, padding=1), nn.ReLU(),
            nn.AvgPool2d(2, ceil_mode=True),  # 8 -> 4
            nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ReLU(),  # 4 -> 8
            cnnkit.nn.LocallyConnected2d(8, 8, 3, in_size=(8, 8)), nn.ReLU(),  # 8 -> 6
            nn.AdaptiveMaxPool2d(4), nn.Conv2d(8, 16, 3, padding="same"), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


TORCH_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d,
                nn.AdaptiveAvgPool2d)


def outputs_and_gradients(model, x, grad_seed):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = model(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.device)
    out.backward(g)
    return out, x.grad, {name.removeprefix("_orig_mod."): p.grad
                         for name, p in model.named_parameters()}


@pytest.mark.slow
def test_torch_compile_converted_model(cuda_device, no_tf32):
    # A converted model on CUDA traced without graph breaks (the fake kernels
    # give the shapes), forward and backward equal to eager, twice (the second
    # call reuses the compiled graph).
    eager = cnnkit.convert(SmallNet()).to(cuda_device)
    left = [type(m).__name__ for m in eager.modules() if type(m) in TORCH_LAYERS]
    assert not left, f"layers convert left as torch.nn on CUDA: {left}"
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    try:
        for step in range(2):
            x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(step))
            x = x.to(cuda_device)
            want = outputs_and_gradients(eager, x, grad_seed=10 + step)
            got = outputs_and_gradients(compiled, x, grad_seed=10 + step)
            for name, a, b in [("output", got[0], want[0]), ("input gradient", got[1], want[1])]:
                assert relative_error(a, b) < 1e-5, name
            assert got[2].keys() == want[2].keys()
            for name, grad in want[2].items():
                assert relative_error(got[2][name], grad) < 1e-5, f"gradient of {name}"
    finally:
        torch._dynamo.reset()
