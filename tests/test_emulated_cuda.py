"""The emulated CUDA backend: cnnkit's CUDA kernels, run on the CPU.

`cnnkit._C_emu` is a second extension built from the CUDA kernels
(csrc/cuda/*.cu) for the CPU. Importing it registers an op
`torch.ops.cnnkit_emu.<op>` for every op `torch.ops.cnnkit.<op>`, with the same
schema, that runs the CUDA kernel on CPU tensors, in float32, float64, float16
and bfloat16. So the arithmetic of the CUDA kernels (their tiles, phases,
split reductions and the tensor-core paths of the 16-bit types) is tested on
any machine, a GPU or not; tests/test_cuda.py covers what needs the device
itself.

The ops are driven directly through the dispatcher (no autograd, no
cnnkit.functional): every forward op and every backward op its gradients go
through, called as cnnkit/_autograd.py calls them. The reference is the CPU op
`torch.ops.cnnkit.<op>` (tested against ATen and the SPEC formulas by the
other test files) run in float64 on the same rounded values. Checked here:

- every problem of the shared lists (tests/problems.py), the wide-channel ones
  included, in float64, float32, float16 and bfloat16: outputs, max-pool
  indices and every gradient against the float64 reference, with their dtype
  and shape; the forward of conv2d, conv_transpose2d and tiled_conv2d with an
  untied bias (C_out, OH, OW) likewise;
- channels_last and strided (sliced) operands give what contiguous ones give,
  in the memory format the CPU ops give;
- determinism: forward and every backward op run twice give bit-identical
  results, on problems large enough that the weight- and bias-gradient
  reductions are split into slices;
- the 64-bit index paths of the kernels (taken on a GPU for tensors of 2^31
  elements or more) give the same results, switched on for small problems;
- the emulated ops have the names and schemas of the cnnkit ops;
- int and complex inputs are refused with the message of the CUDA build.

This module imports `cnnkit._C_emu` unconditionally: a build without the
emulated backend fails here, it is never skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

import cnnkit  # noqa: F401  (torch.ops.cnnkit: the references)
import cnnkit._C_emu  # noqa: F401  (registers torch.ops.cnnkit_emu.*)
from conftest import exact_message, make_tensor, with_layout
from conv_family import conv_out_shape, transpose_op_geometry, transpose_out_shape
from problems import (ADAPTIVE_POOL_PROBLEMS, CHANNEL_POOL_PROBLEMS, CONV_PROBLEMS,
                      CONV_TRANSPOSE_PROBLEMS, FULL_WAVE_CONV_PROBLEMS, LOCAL_PROBLEMS,
                      OP_ONLY_CONV_PROBLEMS, POOL_PROBLEMS, TILED_PROBLEMS, WIDE_CONV_PROBLEMS,
                      WIDE_CONV_TRANSPOSE_PROBLEMS, WIDE_TILED_PROBLEMS, AdaptivePoolProblem,
                      ChannelPoolProblem, ConvProblem, ConvTransposeProblem, LocalProblem,
                      PoolProblem, TiledProblem, pair)
from test_cuda import (CUDA_DTYPES, G1, HALF_RELATIVE_ERROR, Maker, memory_format, op_geometry,
                       relative_error)
from test_pool import AVG_PROBLEMS, avg_geometry, max_geometry

ops = torch.ops.cnnkit  # the references (CPU kernels, float32 / float64)
emu = torch.ops.cnnkit_emu  # under test
F64 = torch.float64
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- the op families


@dataclass(frozen=True)
class Family:
    """A forward op and the backward ops of its gradients, called through the
    ops of a namespace `lib` (torch.ops.cnnkit_emu under test, torch.ops.cnnkit
    for the references):

    shapes(pb)                   the shapes of the forward op's operands, data first;
    forward(lib, pb, *operands)  its outputs: values, then int64 indices (max pools);
    backward(lib, pb, operands, outputs, grad_output)
                                 every backward op's result, by name, called as
                                 cnnkit/_autograd.py calls it for grad_output of
                                 the first output.
    """
    name: str
    problems: tuple
    shapes: Callable
    forward: Callable
    backward: Callable


def conv_shapes(pb):
    return [pb.input_shape, pb.weight_shape] + ([pb.bias_shape] if pb.bias else [])


def pool_shapes(pb):
    return [pb.input_shape]


def convolution(name: str, tiled: bool = False):
    """(forward, backward) of conv2d, local_conv2d or tiled_conv2d."""
    def forward(lib, pb, x, w, b=None):
        return (getattr(lib, name)(x, w, b, *op_geometry(pb)),)

    def backward(lib, pb, operands, outputs, g):
        x, w = operands[:2]
        geometry = op_geometry(pb)
        # The tiled weight and bias gradients take the tiles (the forward reads
        # them off the weight's shape).
        tiles = [list(pair(pb.tiles))] if tiled else []
        # The bias gradient depends on grad_output alone: it runs for the
        # problems without a bias too.
        return {
            f"{name}_input_backward": getattr(lib, f"{name}_input_backward")(
                g, w, list(x.shape[2:]), *geometry),
            f"{name}_weight_backward": getattr(lib, f"{name}_weight_backward")(
                g, x, list(pair(pb.kernel)), *tiles, *geometry),
            f"{name}_bias_backward": getattr(lib, f"{name}_bias_backward")(g, *tiles),
        }

    return forward, backward


def conv_transpose_forward(lib, pb, x, w, b=None):
    return (lib.conv_transpose2d(x, w, b, *transpose_op_geometry(pb)),)


def conv_transpose_backward(lib, pb, operands, outputs, g):
    # Y = conv2d_input_backward(X, K) + b, so (cnnkit/_autograd.py) dX is
    # conv2d(G, K) and dK is conv2d_weight_backward with X as its grad_output.
    # Where output_padding reaches the stride, conv2d(G) has more rows or
    # columns (P, Q) than X (H, W): dX is its first H x W, and X is
    # zero-extended to (P, Q) for dK.
    x, w = operands[:2]
    stride, padding, _, groups, dilation = transpose_op_geometry(pb)
    geometry = (stride, padding, dilation, groups)
    full = lib.conv2d(g, w, None, *geometry)
    (H, W), (P, Q) = x.shape[2:], full.shape[2:]
    x_ext = F.pad(x, (0, Q - W, 0, P - H)) if (P, Q) != (H, W) else x
    return {
        "conv2d (input gradient)": full[:, :, :H, :W],
        "conv2d_weight_backward (weight gradient)": lib.conv2d_weight_backward(
            x_ext, g, list(pair(pb.kernel)), *geometry),
        "conv2d_bias_backward": lib.conv2d_bias_backward(g),
    }


def max_pool_forward(lib, pb, x):
    return tuple(lib.max_pool2d(x, *max_geometry(pb)))


def max_pool_backward(lib, pb, operands, outputs, g):
    # max_pool2d and adaptive_max_pool2d share it: a scatter to the indices.
    return {"max_pool2d_backward": lib.max_pool2d_backward(g, operands[0], outputs[1])}


def avg_pool_forward(lib, pb, x):
    return (lib.avg_pool2d(x, *avg_geometry(pb)),)


def avg_pool_backward(lib, pb, operands, outputs, g):
    return {"avg_pool2d_backward": lib.avg_pool2d_backward(g, operands[0], *avg_geometry(pb))}


def adaptive_max_pool_forward(lib, pb, x):
    return tuple(lib.adaptive_max_pool2d(x, list(pb.out_hw)))


def adaptive_avg_pool_forward(lib, pb, x):
    return (lib.adaptive_avg_pool2d(x, list(pb.out_hw)),)


def adaptive_avg_pool_backward(lib, pb, operands, outputs, g):
    return {"adaptive_avg_pool2d_backward": lib.adaptive_avg_pool2d_backward(g, operands[0])}


def channel_max_pool_forward(lib, pb, x):
    return tuple(lib.channel_max_pool(x, pb.pool_size))


def channel_max_pool_backward(lib, pb, operands, outputs, g):
    return {"channel_max_pool_backward": lib.channel_max_pool_backward(g, operands[0], outputs[1],
                                                                       pb.pool_size)}


# Untied biases: conv2d, conv_transpose2d and tiled_conv2d with a bias per
# output location (C_out, OH, OW), forward only (the op adds it: the GEMM and
# tensor-core epilogues, the depthwise kernel; conv_transpose2d after its
# input-gradient engine). Problems with a bias, chosen to reach every forward
# kernel: the CUDA-core GEMM with vector and scalar stores, several and wide
# column tiles and the 128x128 tile (float32), ragged tiles, several tile
# phases of unequal extent; the depthwise kernels; the tensor-core kernels in
# float16 and bfloat16; an empty batch and a 1x1 output.
def untied_bias_shapes(out_shape):
    def shapes(pb):
        return [pb.input_shape, pb.weight_shape, tuple(out_shape(pb)[1:])]
    return shapes


def forward_only(lib, pb, operands, outputs, g):
    return {}


def _by_id(problems, *ids):
    table = {pb.id: pb for pb in problems}
    return tuple(table[i] for i in ids)


UNTIED_CONV_PROBLEMS = _by_id(
    CONV_PROBLEMS + OP_ONLY_CONV_PROBLEMS + WIDE_CONV_PROBLEMS + FULL_WAVE_CONV_PROBLEMS,
    "basic_3x3", "odd_sizes", "1x1_stride2", "stride2_pad1", "groups2", "groups3_stride2",
    "depthwise", "depthwise_mult2", "batch0", "kernel_eq_padded_input", "pad4_asymmetric",
    "block_remainders", "wide_160", "wide_groups2", "wide_ragged", "full_wave_forward")
UNTIED_CONV_TRANSPOSE_PROBLEMS = _by_id(
    CONV_TRANSPOSE_PROBLEMS + WIDE_CONV_TRANSPOSE_PROBLEMS,
    "t_basic", "t_stride2_outpad1", "t_odd", "t_groups2", "t_depthwise", "t_batch0",
    "t_crop_to_1", "t_wide_160_stride2")
UNTIED_TILED_PROBLEMS = _by_id(
    TILED_PROBLEMS + WIDE_TILED_PROBLEMS,
    "tiles_1x1", "tiles_2x2", "tiles_2x3", "tiles_not_dividing", "tiles_eq_output",
    "tiles_gt_output", "stride2_pad1", "groups2", "depthwise_mult2_stride2", "batch0",
    "kernel_eq_padded_input", "remainders", "wide_tiles_160", "wide_tiles_256_stride2")

FAMILIES = [
    Family("conv2d", tuple(CONV_PROBLEMS + OP_ONLY_CONV_PROBLEMS + WIDE_CONV_PROBLEMS
                           + FULL_WAVE_CONV_PROBLEMS), conv_shapes, *convolution("conv2d")),
    Family("conv2d_untied_bias", UNTIED_CONV_PROBLEMS, untied_bias_shapes(conv_out_shape),
           convolution("conv2d")[0], forward_only),
    Family("conv_transpose2d_untied_bias", UNTIED_CONV_TRANSPOSE_PROBLEMS,
           untied_bias_shapes(transpose_out_shape), conv_transpose_forward, forward_only),
    Family("tiled_conv2d_untied_bias", UNTIED_TILED_PROBLEMS, untied_bias_shapes(conv_out_shape),
           convolution("tiled_conv2d", tiled=True)[0], forward_only),
    Family("conv_transpose2d", tuple(CONV_TRANSPOSE_PROBLEMS + WIDE_CONV_TRANSPOSE_PROBLEMS),
           conv_shapes, conv_transpose_forward, conv_transpose_backward),
    Family("local_conv2d", tuple(LOCAL_PROBLEMS), conv_shapes, *convolution("local_conv2d")),
    Family("tiled_conv2d", tuple(TILED_PROBLEMS + WIDE_TILED_PROBLEMS), conv_shapes,
           *convolution("tiled_conv2d", tiled=True)),
    Family("max_pool2d", tuple(POOL_PROBLEMS), pool_shapes, max_pool_forward, max_pool_backward),
    # Average pooling has no dilation: the problems without it.
    Family("avg_pool2d", tuple(AVG_PROBLEMS), pool_shapes, avg_pool_forward, avg_pool_backward),
    Family("adaptive_max_pool2d", tuple(ADAPTIVE_POOL_PROBLEMS), pool_shapes,
           adaptive_max_pool_forward, max_pool_backward),
    Family("adaptive_avg_pool2d", tuple(ADAPTIVE_POOL_PROBLEMS), pool_shapes,
           adaptive_avg_pool_forward, adaptive_avg_pool_backward),
    Family("channel_max_pool", tuple(CHANNEL_POOL_PROBLEMS), pool_shapes,
           channel_max_pool_forward, channel_max_pool_backward),
]
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}


def operands(family: Family, pb, dtype, layout="contiguous"):
    """Standard-normal operands drawn in float64, rounded to dtype, in layout."""
    return [make_tensor(shape, dtype, layout=layout) for shape in family.shapes(pb)]


def results(family: Family, lib, pb, values, grad_output, outputs=None) -> dict:
    """The forward op's outputs ("output", and "indices" for the max pools) and
    every backward op's result for grad_output, by name; `outputs` are the
    forward's, when already computed."""
    if outputs is None:
        outputs = family.forward(lib, pb, *values)
    named = {"output": outputs[0]}
    if len(outputs) == 2:
        named["indices"] = outputs[1]
    named.update(family.backward(lib, pb, values, outputs, grad_output))
    return named


def run_with_reference(family: Family, pb, values):
    """The emulated results and their float64 references (the CPU ops on the
    same values in float64), for a grad_output drawn like the operands."""
    dtype = values[0].dtype
    values64 = [t.to(F64) for t in values]
    outputs64 = family.forward(ops, pb, *values64)
    grad_output = make_tensor(outputs64[0].shape, dtype)
    want = results(family, ops, pb, values64, grad_output.to(F64), outputs64)
    got = results(family, emu, pb, values, grad_output)
    return got, want, grad_output


# --------------------------------------------------------------------------- comparisons

# float64: the emulated CUDA kernels and the CPU kernels differ only in the order
# in which they sum, so they agree to a few roundings of the largest magnitude:
# max|got - want| <= AGREEMENT * max(1, max|want|).
AGREEMENT = 1e-12

# float32 and 16-bit against the float64 reference, as relative_error (of the
# whole tensor, see tests/test_cuda.py): float32 sums of at most a few thousand
# products keep ~1e-6; the 16-bit kernels accumulate in float32 and round once.
RELATIVE_ERROR = {
    torch.float32: 1e-5,
    torch.float16: HALF_RELATIVE_ERROR,
    torch.bfloat16: HALF_RELATIVE_ERROR,
}


def mismatch(got: torch.Tensor, want: torch.Tensor, dtype) -> Optional[str]:
    """What is wrong with the emulated result `got` against the reference `want`
    (float64, or int64 indices), for operands of `dtype`; None if nothing."""
    if got.device.type != "cpu":
        return f"device {got.device}"
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    expected_dtype = torch.int64 if want.dtype == torch.int64 else dtype
    if got.dtype != expected_dtype:
        return f"dtype {got.dtype}, expected {expected_dtype}"
    if want.numel() == 0:
        return None
    if want.dtype == torch.int64:
        # Indices are exact in every dtype: the float64 reference sees the same
        # rounded values, ties go to the first maximum.
        wrong = (got != want).sum().item()
        return f"{wrong} of {want.numel()} indices differ" if wrong else None
    if dtype == F64:
        difference = (got - want).abs().max().item()
        bound = AGREEMENT * max(1.0, want.abs().max().item())
        # `not <=` also catches NaN.
        return None if difference <= bound else f"max|difference| {difference:.3e} > {bound:.3e}"
    error = relative_error(got, want)
    bound = RELATIVE_ERROR[dtype]
    return None if error < bound else f"relative error {error:.3e} >= {bound:.0e}"


def mismatches(got: dict, want: dict, dtype) -> list:
    """Every result that does not match, as "name: what" (all of them, not just
    the first, so that one run shows which ops of a family are wrong)."""
    assert got.keys() == want.keys()
    found = []
    for name, expected in want.items():
        problem = mismatch(got[name], expected, dtype)
        if problem:
            found.append(f"{name}: {problem}")
    return found


# --------------------------------------------------------------------------- 1. against float64


# The cases tools/sanitize_emulation.py runs under AddressSanitizer and
# ThreadSanitizer (mark "sanitize"): float32 and float16 (the CUDA-core and the
# tensor-core kernels) on a few problems of each family that take every kernel
# and tile shape: those of LAYOUT_PROBLEMS below and a few more; the wide
# problems in float32, and one in float16 for the tensor cores' 128-wide tile
# (a tensor-core product under ThreadSanitizer costs seconds).
SANITIZE_DTYPES = (torch.float32, torch.float16)
SANITIZE_PROBLEMS = {
    "conv2d": {"groups2", "stride2_dilation2", "depthwise"},
    "conv_transpose2d": {"t_stride2_outpad1", "t_groups2"},
    "local_conv2d": {"stride2_pad1", "groups2", "kernel_row_6200"},
    "tiled_conv2d": {"tiles_2x3", "groups2"},
    "conv2d_untied_bias": {"groups2", "stride2_pad1", "depthwise_mult2"},
    "conv_transpose2d_untied_bias": {"t_stride2_outpad1"},
    "tiled_conv2d_untied_bias": {"tiles_2x3", "groups2"},
    "max_pool2d": {"resnet_3x3_s2_p1", "channels19"},
    "avg_pool2d": {"no_count_pad", "ceil_count_pad"},
    "adaptive_max_pool2d": {"non_divisible", "channels19"},
    "adaptive_avg_pool2d": {"global_many_planes", "channels19"},
    "channel_max_pool": {"pairs", "many_groups"},
}
SANITIZE_WIDE_HALF = "wide_160"


def sanitized(family, pb, dtype, wide=True) -> tuple:
    """The marks of a case: "sanitize" where it belongs to the sanitizer run
    (`wide`: the wide problems too)."""
    chosen = dtype in SANITIZE_DTYPES and pb.id in SANITIZE_PROBLEMS.get(family.name, ())
    # (The untied-bias families' wide problems add no kernel code of their own.)
    if wide and pb.id.startswith("wide_") and not family.name.endswith("_untied_bias"):
        chosen = dtype == torch.float32 or (dtype == torch.float16 and pb.id == SANITIZE_WIDE_HALF)
    return (pytest.mark.sanitize,) if chosen else ()


ACCURACY_CASES = [pytest.param(family, pb, dtype, id=f"{family.name}-{pb.id}-{dtype_id(dtype)}",
                               marks=sanitized(family, pb, dtype))
                  for family in FAMILIES for pb in family.problems for dtype in DTYPES]


@pytest.mark.parametrize("family,pb,dtype", ACCURACY_CASES)
def test_matches_float64_reference(family, pb, dtype):
    # Forward (and indices) and every backward op on one problem in one dtype:
    # float64 agrees with the CPU kernels to AGREEMENT, float32 and the 16-bit
    # types are within RELATIVE_ERROR of them. The wide and full-wave problems
    # reach the second column tiles and the 128-wide tiles of the GEMM kernels
    # (the 16-bit weight gradient with more than 128 output channels per group
    # among them).
    got, want, _ = run_with_reference(family, pb, operands(family, pb, dtype))
    found = mismatches(got, want, dtype)
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- 2. memory layouts

# Two problems per family, with N > 0 (the memory format of empty tensors is
# ambiguous): groups, stride, dilation, padding, many channels (channels_last
# vectors and their remainders).
LAYOUT_PROBLEMS = {
    "conv2d": ("groups2", "stride2_dilation2"),
    "conv_transpose2d": ("t_stride2_outpad1", "t_groups2"),
    "local_conv2d": ("stride2_pad1", "groups2"),
    "tiled_conv2d": ("tiles_2x3", "groups2"),
    "conv2d_untied_bias": ("groups2", "depthwise_mult2"),
    "conv_transpose2d_untied_bias": ("t_stride2_outpad1", "t_groups2"),
    "tiled_conv2d_untied_bias": ("tiles_2x3", "groups2"),
    "max_pool2d": ("resnet_3x3_s2_p1", "channels19"),
    "avg_pool2d": ("no_count_pad", "ceil_count_pad"),
    "adaptive_max_pool2d": ("non_divisible", "channels19"),
    "adaptive_avg_pool2d": ("global_many_planes", "channels19"),
    "channel_max_pool": ("pairs", "many_groups"),
}
LAYOUT_CASES = [pytest.param(FAMILIES_BY_NAME[name], pb, id=f"{name}-{pb.id}")
                for name, ids in LAYOUT_PROBLEMS.items()
                for pb in FAMILIES_BY_NAME[name].problems if pb.id in ids]
assert len(LAYOUT_CASES) == sum(map(len, LAYOUT_PROBLEMS.values())), \
    "an id of LAYOUT_PROBLEMS is not in its family's problems"


@pytest.mark.parametrize("layout", [pytest.param("channels_last", marks=pytest.mark.sanitize),
                                    "sliced"])
@pytest.mark.parametrize("family,pb", LAYOUT_CASES)
def test_layouts_match_contiguous(family, pb, layout):
    # Operands and grad_output in channels_last (NHWC) or strided with an
    # offset: the emulated kernels must read them as they read contiguous ones
    # (float64, to AGREEMENT; not necessarily bit for bit, the channels_last
    # kernels may sum in another order), and return every result in the memory
    # format the CPU ops return for the same layout.
    values = operands(family, pb, F64)
    outputs = family.forward(emu, pb, *values)
    grad_output = make_tensor(outputs[0].shape, F64)
    contiguous = results(family, emu, pb, values, grad_output, outputs)
    laid_out = [with_layout(t, layout) for t in values]
    grad_laid_out = with_layout(grad_output, layout)
    got = results(family, emu, pb, laid_out, grad_laid_out)
    cpu = results(family, ops, pb, laid_out, grad_laid_out)
    found = mismatches(got, contiguous, F64)
    found += [f"{name}: memory format {memory_format(got[name])}, the CPU op's "
              f"{memory_format(result)}" for name, result in cpu.items()
              if memory_format(got[name]) != memory_format(result)]
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- 3. determinism

# tests/test_cuda.py's determinism problems, scaled down for the emulator (N of
# 2 to 4, images of 16x16 to 48x48, few channels) while keeping what makes a
# kernel split a reduction: the weight-gradient GEMMs cut N*P*Q (per tile
# phase) into slices once it spans 32 steps of 8 (float32) or 32 (16-bit
# tensor cores) pixels, the depthwise weight and the bias gradients once it
# reaches 2 * 4096 terms. The slices' partial sums are added in slice order by
# a second kernel; nothing may depend on the order in which blocks run.
DETERMINISM_PROBLEMS = {
    "conv2d": [
        # Weight gradient in 12 slices (float32) and 3 (bfloat16) of 1568 pixels.
        ConvProblem("edet_3x3", N=2, C=8, K=8, H=28, W=28, kernel=3, padding=1),
        # Depthwise kernels: weight and bias gradients in 2 slices of 9216 terms.
        ConvProblem("edet_depthwise", N=4, C=4, K=4, H=48, W=48, kernel=3, padding=1, groups=4),
        # Strided 1x1 in two groups: a GEMM per pixel that skips pixels.
        ConvProblem("edet_1x1_s2_groups2", N=2, C=16, K=32, H=28, W=28, kernel=1, stride=2,
                    groups=2),
        # A stem: few input channels, a 7x7 kernel at stride 2 (overlapping windows).
        ConvProblem("edet_stem_7x7_s2", N=2, C=3, K=16, H=28, W=28, kernel=7, stride=2,
                    padding=3),
    ],
    "conv_transpose2d": [
        # 2x upsampling; its weight gradient sums over the 1024 input pixels
        # (2 bfloat16 slices).
        ConvTransposeProblem("edet_t_s2", N=4, C_in=16, C_out=8, H=16, W=16, kernel=3, stride=2,
                             padding=1, output_padding=1),
    ],
    "local_conv2d": [
        # The weight gradient sums over the batch only; the input gradient over
        # output channels and taps.
        LocalProblem("edet_local_5x5", N=4, C=8, K=8, H=16, W=16, kernel=5),
        LocalProblem("edet_local_s2_groups2", N=4, C=8, K=8, H=17, W=17, kernel=3, stride=2,
                     groups=2),
    ],
    "tiled_conv2d": [
        # Two phases of 1568 pixels each: 3 bfloat16 slices per phase.
        TiledProblem("edet_tiled_1x2", N=4, C=8, K=8, H=28, W=28, kernel=3, padding=1,
                     tiles=(1, 2)),
        TiledProblem("edet_tiled_depthwise", N=2, C=8, K=8, H=28, W=28, kernel=3, padding=1,
                     groups=8, tiles=(2, 3)),
    ],
    "max_pool2d": [
        # An input element in up to 4 windows (stride 2) or 9 (stride 1): the
        # backward sums them.
        PoolProblem("edet_max_3x3_s2", N=2, C=8, H=28, W=28, kernel=3, stride=2, padding=1),
        PoolProblem("edet_max_3x3_s1", N=2, C=8, H=16, W=16, kernel=3, stride=1, padding=1),
    ],
    "avg_pool2d": [
        PoolProblem("edet_avg_3x3_s1", N=2, C=8, H=28, W=28, kernel=3, stride=1, padding=1,
                    count_include_pad=False),
        PoolProblem("edet_avg_ceil", N=2, C=8, H=29, W=29, kernel=3, stride=2, padding=1,
                    ceil_mode=True),
    ],
    "adaptive_max_pool2d": [
        # Overlapping windows of varying size.
        AdaptivePoolProblem("edet_amax_5x7", N=2, C=8, H=28, W=28, output_size=(5, 7)),
    ],
    "adaptive_avg_pool2d": [
        # Global pooling: a sum of 784 values per plane, reduced across the
        # lanes and warps of a block.
        AdaptivePoolProblem("edet_global", N=2, C=48, H=28, W=28, output_size=1),
        AdaptivePoolProblem("edet_aavg_5x7", N=2, C=8, H=28, W=28, output_size=(5, 7)),
    ],
    "channel_max_pool": [
        ChannelPoolProblem("edet_channel", N=2, C=16, H=16, W=16, pool_size=4),
    ],
}
# channels_last as well where the pools have kernels of their own for it (the
# global pool's blocks of 32 channels merge the partial results of 8 warps).
DETERMINISM_CHANNELS_LAST = {"edet_max_3x3_s2", "edet_global"}
DETERMINISM_CASES = [
    pytest.param(FAMILIES_BY_NAME[name], pb, layout, id=f"{name}-{pb.id}-{layout}")
    for name, problems in DETERMINISM_PROBLEMS.items() for pb in problems
    for layout in ["contiguous"] + (["channels_last"] if pb.id in DETERMINISM_CHANNELS_LAST
                                    else [])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("family,pb,layout", DETERMINISM_CASES)
def test_deterministic(family, pb, layout, dtype):
    # SPEC 3: same inputs, same outputs, bit for bit: forward, indices and every
    # backward op, run twice. The first run is also checked against the float64
    # reference, as in test_matches_float64_reference: these problems reach the
    # split reductions.
    values = operands(family, pb, dtype, layout)
    outputs = family.forward(emu, pb, *values)
    grad_output = make_tensor(outputs[0].shape, dtype, layout=layout)
    first = results(family, emu, pb, values, grad_output, outputs)
    again = results(family, emu, pb, values, grad_output)
    differ = [name for name in first if not torch.equal(first[name], again[name])]
    assert not differ, f"differ between two runs: {', '.join(differ)}"
    want = results(family, ops, pb, [t.to(F64) for t in values], grad_output.to(F64))
    found = mismatches(first, want, dtype)
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- 4. schemas


def schemas(namespace: str) -> dict:
    """{(name, overload): schema text without the namespace} of the ops of `namespace`."""
    prefix = f"{namespace}::"
    return {(s.name.removeprefix(prefix), s.overload_name): str(s).removeprefix(prefix)
            for s in torch._C._jit_get_all_schemas() if s.name.startswith(prefix)}


CNNKIT_SCHEMAS = schemas("cnnkit")


def test_emulated_ops_are_the_cnnkit_ops():
    # One emulated op for every cnnkit op, and no other.
    assert sorted(schemas("cnnkit_emu")) == sorted(CNNKIT_SCHEMAS)


@pytest.mark.parametrize("name,overload", sorted(CNNKIT_SCHEMAS),
                         ids=[name for name, _ in sorted(CNNKIT_SCHEMAS)])
def test_emulated_schema(name, overload):
    # Argument names, types, defaults and returns as in csrc/schemas.h, so
    # that every call of a cnnkit op is a valid call of its emulated twin.
    packet = getattr(emu, name)
    emulated = getattr(packet, overload or "default")._schema
    assert str(emulated) == f"cnnkit_emu::{CNNKIT_SCHEMAS[name, overload]}"


# --------------------------------------------------------------------------- 5. dtype errors

# (op as its message names it, the argument checked first, the call through the
# namespace `lib` with tensors t(*shape) of the dtype under test): every forward
# and backward op, as tests/test_cuda.py's test_unsupported_dtype calls them.
DTYPE_CALLS = [
    ("conv2d", "input", lambda lib, t: lib.conv2d(t(1, 2, 5, 5), t(2, 2, 3, 3), None, *G1)),
    ("conv2d_input_backward", "grad_output",
     lambda lib, t: lib.conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3), [5, 5], *G1)),
    ("conv2d_weight_backward", "input",
     lambda lib, t: lib.conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], *G1)),
    ("conv2d_bias_backward", "grad_output", lambda lib, t: lib.conv2d_bias_backward(t(1, 2, 3, 3))),
    ("conv_transpose2d", "input",
     lambda lib, t: lib.conv_transpose2d(t(1, 4, 5, 5), t(4, 2, 3, 3), None, [1, 1], [0, 0],
                                         [0, 0], 1, [1, 1])),
    ("local_conv2d", "input",
     lambda lib, t: lib.local_conv2d(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), None, *G1)),
    ("local_conv2d_input_backward", "grad_output",
     lambda lib, t: lib.local_conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3, 3, 3), [5, 5],
                                                    *G1)),
    ("local_conv2d_weight_backward", "input",
     lambda lib, t: lib.local_conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3], *G1)),
    ("local_conv2d_bias_backward", "grad_output",
     lambda lib, t: lib.local_conv2d_bias_backward(t(1, 2, 3, 3))),
    ("tiled_conv2d", "input",
     lambda lib, t: lib.tiled_conv2d(t(1, 2, 5, 5), t(2, 2, 3, 3, 2, 2), None, *G1)),
    ("tiled_conv2d_input_backward", "grad_output",
     lambda lib, t: lib.tiled_conv2d_input_backward(t(1, 2, 3, 3), t(2, 3, 3, 3, 2, 2), [5, 5],
                                                    *G1)),
    ("tiled_conv2d_weight_backward", "input",
     lambda lib, t: lib.tiled_conv2d_weight_backward(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3],
                                                     [2, 2], *G1)),
    ("tiled_conv2d_bias_backward", "grad_output",
     lambda lib, t: lib.tiled_conv2d_bias_backward(t(1, 2, 3, 3), [2, 2])),
    ("max_pool2d", "input",
     lambda lib, t: lib.max_pool2d(t(1, 2, 6, 6), [2, 2], [2, 2], [0, 0], [1, 1], False)),
    ("max_pool2d_backward", "input",
     lambda lib, t: lib.max_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6), t.indices(1, 2, 3, 3))),
    ("avg_pool2d", "input",
     lambda lib, t: lib.avg_pool2d(t(1, 2, 6, 6), [2, 2], [2, 2], [0, 0], False, True, None)),
    ("avg_pool2d_backward", "input",
     lambda lib, t: lib.avg_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6), [2, 2], [2, 2], [0, 0],
                                            False, True, None)),
    ("adaptive_max_pool2d", "input", lambda lib, t: lib.adaptive_max_pool2d(t(1, 2, 6, 6), [2, 2])),
    ("adaptive_avg_pool2d", "input", lambda lib, t: lib.adaptive_avg_pool2d(t(1, 2, 6, 6), [2, 2])),
    ("adaptive_avg_pool2d_backward", "input",
     lambda lib, t: lib.adaptive_avg_pool2d_backward(t(1, 2, 3, 3), t(1, 2, 6, 6))),
    ("channel_max_pool", "input", lambda lib, t: lib.channel_max_pool(t(1, 4, 6, 6), 2)),
    ("channel_max_pool_backward", "input",
     lambda lib, t: lib.channel_max_pool_backward(t(1, 2, 6, 6), t(1, 4, 6, 6),
                                                  t.indices(1, 2, 6, 6), 2)),
]
assert {name for name, _, _ in DTYPE_CALLS} == {name for name, _ in CNNKIT_SCHEMAS}, \
    "DTYPE_CALLS must call every cnnkit op"
DTYPE_CASES = [pytest.param(name, argument, call, dtype, id=f"{name}-{dtype_id(dtype)}")
               for name, argument, call in DTYPE_CALLS
               for dtype in (torch.int32, torch.complex64)]


@pytest.mark.parametrize("name,argument,call,dtype", DTYPE_CASES)
def test_unsupported_dtype(name, argument, call, dtype):
    # The emulated ops accept what the CUDA build accepts, and refuse the rest
    # with its message (naming the cnnkit op), before any kernel runs.
    message = f"cnnkit.{name}: expected {argument} of dtype {CUDA_DTYPES}, but got {dtype}"
    with pytest.raises(RuntimeError, match=exact_message(message)):
        call(emu, Maker(dtype, "cpu"))


# --------------------------------------------------------------------------- 6. 64-bit indices


@pytest.fixture
def wide_indices():
    """The host code's 64-bit index paths for every tensor size (on a GPU they
    are taken for tensors of 2^31 elements or more)."""
    cnnkit._C_emu.set_wide_indices(True)
    yield
    cnnkit._C_emu.set_wide_indices(False)


WIDE_INDEX_CASES = [pytest.param(family, pb, dtype, id=f"{family.name}-{pb.id}-{dtype_id(dtype)}",
                                 marks=sanitized(family, pb, dtype, wide=False))
                    for family in FAMILIES for pb in family.problems
                    for dtype in (torch.float32, torch.float16)]


@pytest.mark.parametrize("family,pb,dtype", WIDE_INDEX_CASES)
def test_64_bit_indices_match_float64_reference(family, pb, dtype, wide_indices):
    # The kernels instantiated for int64 indices (pools, depthwise and bias
    # kernels, the tensor-core GEMMs, the slice sums) on every problem.
    got, want, _ = run_with_reference(family, pb, operands(family, pb, dtype))
    found = mismatches(got, want, dtype)
    assert not found, "\n".join(found)
