"""The one shared list of test problems. Each entry says what it exercises.

Problems are plain data: shapes and hyper-parameters. Tests build tensors from
them (tests/conftest.py) and compare against tests/reference.py. Sections:
convolution (conv2d and its two gradient views), transposed convolution, and
pooling further down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Pair = Union[int, tuple]


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ---- convolution

@dataclass(frozen=True)
class ConvProblem:
    """conv2d: input (N, C, H, W), weight (K, C/groups, kH, kW), bias (K,).

    `padding` is what cnnkit.functional.conv2d takes (int, pair or one of the
    strings 'valid' / 'same' / 'full'), or 4 explicit entries (top, bottom,
    left, right), which only the dispatcher ops take (OP_ONLY_CONV_PROBLEMS).
    """
    id: str
    N: int
    C: int
    K: int
    H: int
    W: int
    kernel: Pair
    stride: Pair = 1
    padding: Union[Pair, str] = 0
    dilation: Pair = 1
    groups: int = 1
    bias: bool = True

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, *pair(self.kernel))

    @property
    def bias_shape(self):
        return (self.K,)

    def __str__(self):
        return self.id


CONV_PROBLEMS = [
    # The common case: 3x3, 'same'-like symmetric padding 1, stride 1.
    ConvProblem("basic_3x3", N=2, C=3, K=4, H=8, W=8, kernel=3, padding=1),
    # Odd sizes everywhere, non-square input, no padding.
    ConvProblem("odd_sizes", N=3, C=5, K=7, H=11, W=9, kernel=3),
    # 1x1 kernel: a pure channel mix (a GEMM per pixel).
    ConvProblem("1x1", N=2, C=6, K=5, H=7, W=5, kernel=1),
    # 1x1 kernel with stride 2: subsampling without spatial extent; odd input
    # rows/columns are never read, so their input gradient is zero.
    ConvProblem("1x1_stride2", N=2, C=4, K=3, H=7, W=6, kernel=1, stride=2),
    # Stride 2 with padding, odd input size: the last window ends exactly at the border.
    ConvProblem("stride2_pad1", N=2, C=3, K=4, H=9, W=10, kernel=3, stride=2, padding=1),
    # Stride 2 where floor() drops the last input row and column (10 - 3 = 7 is odd).
    ConvProblem("stride2_floor", N=1, C=2, K=3, H=10, W=10, kernel=3, stride=2),
    # Stride 3, kernel 2: gaps between windows, inputs no window reads.
    ConvProblem("stride3_gaps", N=2, C=2, K=2, H=11, W=8, kernel=2, stride=3),
    # Dilation 2 with padding 2: an effective 5x5 window with holes.
    ConvProblem("dilation2", N=2, C=3, K=4, H=9, W=9, kernel=3, padding=2, dilation=2),
    # Stride and dilation together.
    ConvProblem("stride2_dilation2", N=2, C=3, K=2, H=12, W=11, kernel=3, stride=2, padding=1,
                dilation=2),
    # Non-square kernel with per-axis padding.
    ConvProblem("kernel_3x5", N=2, C=3, K=4, H=7, W=10, kernel=(3, 5), padding=(1, 2)),
    # Every hyper-parameter different per axis: kernel, stride, dilation, padding.
    ConvProblem("anisotropic", N=2, C=2, K=3, H=9, W=13, kernel=(2, 3), stride=(1, 2),
                padding=(0, 1), dilation=(2, 1)),
    # Two groups: each half of the output channels sees half of the input channels.
    ConvProblem("groups2", N=2, C=4, K=6, H=6, W=7, kernel=3, padding=1, groups=2),
    # Three groups, one output channel per group, strided.
    ConvProblem("groups3_stride2", N=2, C=6, K=3, H=8, W=7, kernel=3, stride=2, groups=3),
    # Depthwise: groups = channels, one filter per channel.
    ConvProblem("depthwise", N=2, C=4, K=4, H=7, W=6, kernel=3, padding=1, groups=4),
    # Depthwise with channel multiplier 2: two filters per input channel.
    ConvProblem("depthwise_mult2", N=2, C=4, K=8, H=6, W=6, kernel=3, padding=1, groups=4),
    # Empty batch: outputs and input gradients are empty, the weight gradient is zero.
    ConvProblem("batch0", N=0, C=3, K=4, H=6, W=6, kernel=3, padding=1),
    # Kernel exactly as large as the padded input: a single 1x1 output.
    ConvProblem("kernel_eq_padded_input", N=2, C=2, K=3, H=5, W=4, kernel=(7, 6), padding=1),
    # Kernel exactly as large as the (unpadded) input: a fully connected layer.
    ConvProblem("kernel_eq_input", N=3, C=3, K=2, H=5, W=5, kernel=5),
    # Padding larger than the kernel: output borders see only zeros (bias alone).
    ConvProblem("pad_gt_kernel", N=1, C=2, K=2, H=4, W=5, kernel=2, padding=3),
    # 'same' with an odd kernel: symmetric padding 1.
    ConvProblem("same_odd", N=2, C=3, K=4, H=7, W=8, kernel=3, padding="same"),
    # 'same' with an even kernel: total 3, one more at the bottom/right (1 top, 2 bottom).
    ConvProblem("same_even", N=2, C=3, K=2, H=7, W=6, kernel=4, padding="same"),
    # 'same' with one even and one odd axis: asymmetric in width only.
    ConvProblem("same_mixed", N=2, C=2, K=3, H=6, W=7, kernel=(3, 2), padding="same"),
    # 'same' with dilation: totals d*(k-1) = 3 (height) and 4 (width).
    ConvProblem("same_dilated", N=1, C=2, K=2, H=6, W=9, kernel=(2, 3), padding="same",
                dilation=(3, 2)),
    # 'same' with groups.
    ConvProblem("same_even_groups", N=2, C=4, K=4, H=5, W=5, kernel=2, padding="same", groups=2),
    # 'valid': no padding.
    ConvProblem("valid", N=2, C=3, K=4, H=8, W=6, kernel=3, padding="valid"),
    # 'full': d*(k-1) on every side, output H + d*(k-1).
    ConvProblem("full", N=2, C=3, K=2, H=5, W=6, kernel=3, padding="full"),
    # 'full' with dilation, a non-square kernel and stride.
    ConvProblem("full_dilated_strided", N=1, C=2, K=3, H=5, W=4, kernel=(2, 3), stride=2,
                padding="full", dilation=2),
    # No bias.
    ConvProblem("no_bias", N=2, C=3, K=4, H=6, W=7, kernel=3, padding=1, bias=False),
    # No bias with groups and stride.
    ConvProblem("no_bias_groups_stride", N=2, C=4, K=2, H=9, W=9, kernel=3, stride=2, groups=2,
                bias=False),
    # A single channel in and out, a single image.
    ConvProblem("single_channel", N=1, C=1, K=1, H=5, W=5, kernel=3),
    # 1xW input rows: a 1-D convolution through the 2-D kernel (what Conv1d does).
    ConvProblem("height1", N=2, C=3, K=2, H=1, W=12, kernel=(1, 3), padding=(0, 1)),
    # Channel counts and widths that are not multiples of any block or vector
    # width a kernel may tile by (remainder loops).
    ConvProblem("block_remainders", N=2, C=19, K=33, H=13, W=37, kernel=3, padding=1),
    # Deep input channels: a long reduction (C*kH*kW = 288), checked against float64.
    ConvProblem("long_reduction", N=2, C=32, K=8, H=6, W=6, kernel=3, padding=1),
    # One small image against more channels: the forward and input-gradient
    # products have one narrow dimension (15 locations against 19 filters and
    # 18 patch rows), which the CPU engine streams (csrc/cpu/narrow_mm.h);
    # none of the sizes is a multiple of a vector or a register tile.
    ConvProblem("narrow_products", N=1, C=2, K=19, H=3, W=5, kernel=3, padding=1),
    # Stride 2 on wide rows (11 outputs per row, odd width, dilated columns):
    # runs of strided input columns longer than the short-run copies.
    ConvProblem("stride2_wide_rows", N=2, C=3, K=4, H=7, W=21, kernel=3, stride=2,
                padding=(1, 2), dilation=(1, 2)),
    # Stride 2 with runs of 32 strided input columns: the vector copy of even
    # columns (im2col.h) takes whole vectors and then a full-length masked
    # tail, in float (16 lanes) and double (8).
    ConvProblem("stride2_vector_rows", N=1, C=2, K=3, H=5, W=65, kernel=3, stride=2),
    # 3 samples of 24x24 outputs: more patch columns than one block of the CPU
    # engine takes (1024), so blocks of samples run on both threads.
    ConvProblem("several_blocks", N=3, C=2, K=3, H=24, W=24, kernel=3, padding=1),
]

# Explicit (top, bottom, left, right) padding, which only the dispatcher ops
# take (the functional API spells these as 'same' with an even kernel).
OP_ONLY_CONV_PROBLEMS = [
    # Larger bottom than top, larger left than right.
    ConvProblem("pad4_asymmetric", N=2, C=2, K=3, H=5, W=6, kernel=3, padding=(0, 2, 1, 0)),
    # Asymmetric padding with stride and dilation.
    ConvProblem("pad4_strided_dilated", N=1, C=2, K=2, H=7, W=7, kernel=2, stride=2,
                padding=(1, 0, 0, 3), dilation=2),
]

# Tiny problems for gradcheck / gradgradcheck (finite differences over every
# element: keep them small), still covering stride, dilation, groups and the
# padding strings.
GRADCHECK_CONV_PROBLEMS = [
    # Plain 3x3 with padding and bias.
    ConvProblem("gc_basic", N=2, C=2, K=2, H=4, W=5, kernel=3, padding=1),
    # Stride 2 with a floor drop, non-square kernel.
    ConvProblem("gc_stride", N=1, C=2, K=3, H=5, W=4, kernel=(2, 3), stride=2),
    # Dilation and groups.
    ConvProblem("gc_dilation_groups", N=1, C=4, K=2, H=5, W=5, kernel=2, padding=1, dilation=2,
                groups=2),
    # 'same' with an even kernel (asymmetric padding).
    ConvProblem("gc_same_even", N=1, C=2, K=2, H=4, W=3, kernel=2, padding="same"),
    # 'full' padding, no bias.
    ConvProblem("gc_full", N=1, C=1, K=2, H=3, W=3, kernel=2, padding="full", bias=False),
]


# ---- transposed convolution

@dataclass(frozen=True)
class ConvTransposeProblem:
    """conv_transpose2d: input (N, C_in, H, W), weight (C_in, C_out/groups, kH, kW),
    bias (C_out,); output (N, C_out, (H-1)*s - 2p + d*(k-1) + output_padding + 1, ...)."""
    id: str
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    kernel: Pair
    stride: Pair = 1
    padding: Pair = 0
    output_padding: Pair = 0
    dilation: Pair = 1
    groups: int = 1
    bias: bool = True

    @property
    def input_shape(self):
        return (self.N, self.C_in, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.C_in, self.C_out // self.groups, *pair(self.kernel))

    @property
    def bias_shape(self):
        return (self.C_out,)

    def __str__(self):
        return self.id


CONV_TRANSPOSE_PROBLEMS = [
    # Stride 1, no padding: the "full" convolution with the kernel.
    ConvTransposeProblem("t_basic", N=2, C_in=4, C_out=3, H=5, W=5, kernel=3),
    # Stride 2, padding 1, output_padding 1: the usual 2x upsampling layer.
    ConvTransposeProblem("t_stride2_outpad1", N=2, C_in=3, C_out=4, H=4, W=5, kernel=3, stride=2,
                         padding=1, output_padding=1),
    # Stride 2 without output_padding (the other input size of the forward conv).
    ConvTransposeProblem("t_stride2", N=2, C_in=3, C_out=2, H=5, W=4, kernel=3, stride=2,
                         padding=1),
    # Kernel smaller than the stride: outputs no input reaches (bias only).
    ConvTransposeProblem("t_stride3_kernel2", N=1, C_in=2, C_out=3, H=4, W=3, kernel=2, stride=3),
    # Odd sizes, stride 3, kernel 4, padding 2, output_padding 2.
    ConvTransposeProblem("t_odd", N=3, C_in=5, C_out=7, H=4, W=6, kernel=4, stride=3, padding=2,
                         output_padding=2),
    # output_padding allowed by dilation (< dilation) at stride 1: the output has
    # one row and column beyond those of the convolution it is the gradient of.
    ConvTransposeProblem("t_outpad_by_dilation", N=2, C_in=2, C_out=3, H=4, W=4, kernel=3,
                         dilation=2, output_padding=1),
    # Dilation with stride.
    ConvTransposeProblem("t_dilation_stride", N=2, C_in=3, C_out=2, H=4, W=5, kernel=3, stride=2,
                         padding=1, dilation=2, output_padding=1),
    # Every hyper-parameter different per axis.
    ConvTransposeProblem("t_anisotropic", N=2, C_in=2, C_out=3, H=3, W=4, kernel=(2, 3),
                         stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2)),
    # Groups: C_in = 4 and C_out = 6 in 2 groups.
    ConvTransposeProblem("t_groups2", N=2, C_in=4, C_out=6, H=4, W=4, kernel=3, stride=2,
                         groups=2),
    # Depthwise transposed convolution.
    ConvTransposeProblem("t_depthwise", N=2, C_in=3, C_out=3, H=5, W=4, kernel=3, padding=1,
                         groups=3),
    # 1x1 kernel, stride 2, output_padding 1: scatter onto even pixels.
    ConvTransposeProblem("t_1x1_stride2", N=2, C_in=3, C_out=2, H=3, W=4, kernel=1, stride=2,
                         output_padding=1),
    # Padding that crops the output down to a single pixel.
    ConvTransposeProblem("t_crop_to_1", N=2, C_in=2, C_out=2, H=3, W=3, kernel=3, padding=2),
    # Empty batch.
    ConvTransposeProblem("t_batch0", N=0, C_in=3, C_out=2, H=4, W=4, kernel=3, stride=2),
    # No bias.
    ConvTransposeProblem("t_no_bias", N=2, C_in=3, C_out=4, H=5, W=3, kernel=2, stride=2,
                         bias=False),
    # Block and vector remainders.
    ConvTransposeProblem("t_block_remainders", N=2, C_in=17, C_out=23, H=7, W=19, kernel=3,
                         stride=2, padding=1, output_padding=1),
]

GRADCHECK_CONV_TRANSPOSE_PROBLEMS = [
    # Stride 2 with output_padding.
    ConvTransposeProblem("gct_stride2", N=2, C_in=2, C_out=2, H=3, W=3, kernel=3, stride=2,
                         padding=1, output_padding=1),
    # Groups, dilation, non-square kernel, no bias.
    ConvTransposeProblem("gct_groups_dilation", N=1, C_in=2, C_out=4, H=3, W=2, kernel=(2, 3),
                         dilation=(2, 1), groups=2, bias=False),
    # output_padding < dilation at stride 1.
    ConvTransposeProblem("gct_outpad_by_dilation", N=1, C_in=2, C_out=1, H=3, W=3, kernel=2,
                         dilation=2, output_padding=1),
]


# ---- pooling

@dataclass(frozen=True)
class PoolProblem:
    """max_pool2d / avg_pool2d on input (N, C, H, W). stride None means the
    kernel size. dilation applies to max pooling only (average-pooling tests
    use the problems with dilation 1); count_include_pad and divisor_override to
    average pooling only. Every problem also runs in each memory layout of
    tests/conftest.py (contiguous, sliced, transposed, channels_last): the
    non-contiguous and channels_last inputs."""
    id: str
    N: int
    C: int
    H: int
    W: int
    kernel: Pair
    stride: Union[Pair, None] = None
    padding: Pair = 0
    dilation: Pair = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: Union[int, None] = None

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def stride_pair(self):
        return pair(self.kernel if self.stride is None else self.stride)

    @property
    def dilated(self):
        return pair(self.dilation) != (1, 1)

    def __str__(self):
        return self.id


POOL_PROBLEMS = [
    # 2x2 stride 2 (VGG): windows tile the input without overlap.
    PoolProblem("vgg_2x2", N=2, C=3, H=8, W=10, kernel=2),
    # 3x3 stride 2 padding 1 (ResNet stem), odd sizes: overlapping windows, padded borders.
    PoolProblem("resnet_3x3_s2_p1", N=2, C=3, H=11, W=9, kernel=3, stride=2, padding=1),
    # Stride 1, odd sizes, no padding: every interior input is in 9 windows.
    PoolProblem("odd_3x3_s1", N=3, C=2, H=7, W=9, kernel=3, stride=1),
    # Stride 1 with padding on rows of 37: full vectors over output columns plus a remainder.
    PoolProblem("s1_pad1_wide", N=1, C=2, H=5, W=37, kernel=3, stride=1, padding=1),
    # Stride 2 with padding on rows of 41 (21 outputs): deinterleaved vectors plus a remainder.
    PoolProblem("s2_pad1_wide", N=1, C=2, H=6, W=41, kernel=3, stride=2, padding=1),
    # Stride 3, kernel 2: gaps between windows (no vector path); unread inputs get zero gradient.
    PoolProblem("s3_gaps", N=2, C=2, H=10, W=11, kernel=2, stride=3),
    # Dilation 2 with padding 1 (max only): a 5x5 window with holes.
    PoolProblem("dilation2", N=2, C=2, H=9, W=10, kernel=3, stride=1, padding=1, dilation=2),
    # Dilation 2 with stride 2: the vector path's strided loads with dilated taps.
    PoolProblem("dilation2_s2_wide", N=1, C=2, H=7, W=40, kernel=3, stride=2, padding=1,
                dilation=2),
    # Every hyper-parameter different per axis.
    PoolProblem("anisotropic", N=2, C=3, H=9, W=13, kernel=(2, 3), stride=(1, 2), padding=(1, 1),
                dilation=(2, 1)),
    # ceil_mode keeps a partial last window: H = 10, kernel 3, stride 2 gives 5 rows, not 4.
    PoolProblem("ceil_partial", N=2, C=2, H=10, W=8, kernel=3, stride=2, ceil_mode=True),
    # ceil_mode's dropped last window: for H = W = 5, kernel 2, stride 2, padding 1 the
    # ceiling gives 4 windows, but the 4th would start in the right padding: 3 remain.
    PoolProblem("ceil_dropped", N=2, C=2, H=5, W=5, kernel=2, stride=2, padding=1,
                ceil_mode=True),
    # The same rule at stride 3: H = W = 4, kernel 2, padding 1: 3 windows by the ceiling, 2 kept.
    PoolProblem("ceil_dropped_s3", N=1, C=2, H=4, W=4, kernel=2, stride=3, padding=1,
                ceil_mode=True),
    # ceil_mode with padding, kept partial window: H = 6, kernel 3, stride 3, padding 1 -> 3.
    PoolProblem("ceil_pad", N=1, C=3, H=6, W=7, kernel=3, stride=3, padding=1, ceil_mode=True),
    # count_include_pad=False: border windows divide by the input elements they cover.
    PoolProblem("no_count_pad", N=2, C=2, H=7, W=6, kernel=3, stride=2, padding=1,
                count_include_pad=False),
    # ceil_mode with count_include_pad: a partial window past the padded input counts
    # only the positions inside it.
    PoolProblem("ceil_count_pad", N=2, C=2, H=8, W=9, kernel=3, stride=2, padding=1,
                ceil_mode=True),
    # ceil_mode without count_include_pad.
    PoolProblem("ceil_no_count_pad", N=2, C=2, H=8, W=9, kernel=3, stride=2, padding=1,
                ceil_mode=True, count_include_pad=False),
    # divisor_override: every window divides by 5, padded or not.
    PoolProblem("divisor_override", N=2, C=2, H=7, W=8, kernel=3, stride=2, padding=1,
                divisor_override=5),
    # divisor_override wins over count_include_pad=False.
    PoolProblem("divisor_override_no_count_pad", N=1, C=2, H=6, W=6, kernel=2, padding=1,
                count_include_pad=False, divisor_override=3),
    # The window equal to the padded input: a single output per plane.
    PoolProblem("window_eq_padded_input", N=2, C=2, H=5, W=4, kernel=(7, 6), padding=1),
    # The window equal to the input: global pooling through the windowed op.
    PoolProblem("window_eq_input", N=2, C=3, H=5, W=6, kernel=(5, 6)),
    # Empty batch: empty outputs and gradients.
    PoolProblem("batch0", N=0, C=3, H=6, W=6, kernel=2),
    # 19 channels: channels_last vectors of 16 channels and a remainder of 3.
    PoolProblem("channels19", N=2, C=19, H=6, W=7, kernel=3, stride=2, padding=1),
    # Rows of height 1: 1-D pooling through the 2-D op.
    PoolProblem("height1", N=2, C=3, H=1, W=12, kernel=(1, 3), stride=(1, 2), padding=(0, 1)),
    # 1x1 kernel, stride 2: subsampling; odd rows and columns get zero gradient.
    PoolProblem("1x1_s2", N=2, C=2, H=7, W=6, kernel=1, stride=2),
]

# Tiny problems for gradcheck / gradgradcheck (finite differences over every element).
GRADCHECK_POOL_PROBLEMS = [
    # Overlapping windows with padding.
    PoolProblem("gc_3x3_s2_p1", N=1, C=2, H=5, W=6, kernel=3, stride=2, padding=1),
    # ceil_mode partial windows, count_include_pad=False, non-square kernel.
    PoolProblem("gc_ceil", N=2, C=1, H=5, W=4, kernel=(2, 3), stride=2, padding=(1, 1),
                ceil_mode=True, count_include_pad=False),
    # Dilation (max) / divisor_override (average).
    PoolProblem("gc_dilation_divisor", N=1, C=2, H=6, W=5, kernel=2, stride=1, padding=1,
                dilation=2, divisor_override=3),
]


@dataclass(frozen=True)
class AdaptivePoolProblem:
    """adaptive_max_pool2d / adaptive_avg_pool2d of input (N, C, H, W) to
    output_size (int or pair; a None entry keeps that input size)."""
    id: str
    N: int
    C: int
    H: int
    W: int
    output_size: Union[int, tuple]

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def out_hw(self):
        oh, ow = pair(self.output_size)
        return (self.H if oh is None else oh, self.W if ow is None else ow)

    def __str__(self):
        return self.id


ADAPTIVE_POOL_PROBLEMS = [
    # Global pooling (classifier heads): one window per plane.
    AdaptivePoolProblem("global", N=2, C=3, H=7, W=7, output_size=1),
    # Global pooling of more planes than one vector holds (39 planes of 45 elements).
    AdaptivePoolProblem("global_many_planes", N=3, C=13, H=5, W=9, output_size=(1, 1)),
    # Divisible sizes: windows tile the input without overlap (plain pooling, stride 2 x 4).
    AdaptivePoolProblem("divisible", N=2, C=3, H=8, W=12, output_size=(4, 3)),
    # VGG's head on a 14x14 input: 2x2 windows at stride 2, the vectorised path.
    AdaptivePoolProblem("divisible_s2", N=2, C=3, H=14, W=14, output_size=7),
    # Non-divisible sizes: window sizes vary and neighbours overlap by one row / column.
    AdaptivePoolProblem("non_divisible", N=2, C=3, H=10, W=13, output_size=(3, 5)),
    # Output larger than the input: windows of one or two elements, inputs repeated.
    AdaptivePoolProblem("upsample", N=2, C=2, H=3, W=4, output_size=(5, 7)),
    # None keeps the input height.
    AdaptivePoolProblem("none_height", N=2, C=2, H=6, W=9, output_size=(None, 4)),
    # None keeps the input width.
    AdaptivePoolProblem("none_width", N=1, C=2, H=9, W=5, output_size=(2, None)),
    # Output equal to the input: every window a single element.
    AdaptivePoolProblem("identity", N=1, C=2, H=5, W=6, output_size=(5, 6)),
    # Windows of 40 columns: vectorised sums.
    AdaptivePoolProblem("wide_windows", N=1, C=2, H=4, W=40, output_size=(2, 1)),
    # 19 channels: channels_last vectors and a remainder.
    AdaptivePoolProblem("channels19", N=2, C=19, H=5, W=6, output_size=(2, 3)),
    # Empty batch.
    AdaptivePoolProblem("batch0", N=0, C=3, H=6, W=6, output_size=2),
]

GRADCHECK_ADAPTIVE_POOL_PROBLEMS = [
    # Overlapping windows of varying size.
    AdaptivePoolProblem("gc_non_divisible", N=1, C=2, H=5, W=7, output_size=(3, 4)),
    # Output larger than the input; None entry.
    AdaptivePoolProblem("gc_upsample_none", N=2, C=1, H=3, W=4, output_size=(4, None)),
]


@dataclass(frozen=True)
class ChannelPoolProblem:
    """channel_max_pool: input (N, C, H, W) -> (N, C / pool_size, H, W)."""
    id: str
    N: int
    C: int
    H: int
    W: int
    pool_size: int

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C // self.pool_size, self.H, self.W)

    def __str__(self):
        return self.id


CHANNEL_POOL_PROBLEMS = [
    # Maxout over pairs of channels.
    ChannelPoolProblem("pairs", N=2, C=6, H=5, W=7, pool_size=2),
    # Groups of 3, odd spatial size.
    ChannelPoolProblem("triples", N=2, C=9, H=3, W=5, pool_size=3),
    # pool_size 1: the identity.
    ChannelPoolProblem("pool1", N=2, C=3, H=4, W=4, pool_size=1),
    # One group of all channels: the max over channels.
    ChannelPoolProblem("all_channels", N=2, C=5, H=3, W=3, pool_size=5),
    # Planes of 185 pixels: vectors over pixels and a remainder.
    ChannelPoolProblem("wide_planes", N=1, C=4, H=5, W=37, pool_size=2),
    # 38 channels in 19 groups: many groups per pixel in channels_last.
    ChannelPoolProblem("many_groups", N=2, C=38, H=3, W=4, pool_size=2),
    # Empty batch.
    ChannelPoolProblem("batch0", N=0, C=4, H=3, W=3, pool_size=2),
    # No channels: an empty output, nothing to pool.
    ChannelPoolProblem("channels0", N=2, C=0, H=3, W=3, pool_size=2),
]


# ---- local and tiled convolution
#
# The geometry of ConvProblem with unshared weights. Tests run every problem in
# each memory layout of tests/conftest.py (contiguous, sliced, transposed,
# channels_last) for the non-contiguous and channels_last inputs. A padding of
# 4 entries (top, bottom, left, right) only the dispatcher ops take.

@dataclass(frozen=True)
class LocalProblem(ConvProblem):
    """local_conv2d: input (N, C, H, W), weight (K, OH, OW, C/groups, kH, kW),
    bias (K, OH, OW): one kernel and one bias per output location."""

    @property
    def out_size(self):
        from reference import conv2d_out_size  # the padding rules live in the reference
        return conv2d_out_size(self.H, self.W, self.kernel, self.stride, self.padding,
                               self.dilation)

    @property
    def weight_shape(self):
        return (self.K, *self.out_size, self.C // self.groups, *pair(self.kernel))

    @property
    def bias_shape(self):
        return (self.K, *self.out_size)


@dataclass(frozen=True)
class TiledProblem(ConvProblem):
    """tiled_conv2d: weight (K, C/groups, kH, kW, tH, tW), bias (K, tH, tW);
    output location (y, x) uses kernel and bias (y % tH, x % tW)."""
    tiles: Pair = 1

    @property
    def out_size(self):
        from reference import conv2d_out_size
        return conv2d_out_size(self.H, self.W, self.kernel, self.stride, self.padding,
                               self.dilation)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, *pair(self.kernel), *pair(self.tiles))

    @property
    def bias_shape(self):
        return (self.K, *pair(self.tiles))


LOCAL_PROBLEMS = [
    # The common case: 3x3, padding 1, stride 1 (output 6x7).
    LocalProblem("basic_3x3", N=2, C=3, K=4, H=6, W=7, kernel=3, padding=1),
    # Odd sizes everywhere, no padding.
    LocalProblem("odd_sizes", N=3, C=5, K=3, H=9, W=7, kernel=3),
    # 1x1 kernel: a separate channel mix at every pixel.
    LocalProblem("1x1", N=2, C=4, K=3, H=5, W=6, kernel=1),
    # Stride 2 with padding, odd input size.
    LocalProblem("stride2_pad1", N=2, C=3, K=2, H=9, W=8, kernel=3, stride=2, padding=1),
    # Stride 2 where floor() drops the last input row and column: they get zero gradient.
    LocalProblem("stride2_floor", N=1, C=2, K=3, H=10, W=10, kernel=3, stride=2),
    # Dilation 2 with padding 2: an effective 5x5 window with holes.
    LocalProblem("dilation2", N=2, C=3, K=2, H=9, W=8, kernel=3, padding=2, dilation=2),
    # Every hyper-parameter different per axis: kernel, stride, padding, dilation.
    LocalProblem("anisotropic", N=2, C=2, K=3, H=9, W=13, kernel=(2, 3), stride=(1, 2),
                 padding=(0, 1), dilation=(2, 1)),
    # Two groups: each half of the output channels sees half of the input channels.
    LocalProblem("groups2", N=2, C=4, K=6, H=6, W=5, kernel=3, padding=1, groups=2),
    # Three groups with stride.
    LocalProblem("groups3_stride2", N=2, C=6, K=3, H=8, W=7, kernel=3, stride=2, groups=3),
    # Depthwise: groups = channels, one filter per channel and location.
    LocalProblem("depthwise", N=2, C=4, K=4, H=6, W=6, kernel=3, padding=1, groups=4),
    # Depthwise with channel multiplier 2.
    LocalProblem("depthwise_mult2", N=2, C=3, K=6, H=5, W=6, kernel=3, padding=1, groups=3),
    # Empty batch: empty output and input gradient, zero weight and bias gradients.
    LocalProblem("batch0", N=0, C=3, K=2, H=6, W=6, kernel=3, padding=1),
    # Kernel exactly as large as the padded input: a single output location.
    LocalProblem("kernel_eq_padded_input", N=2, C=2, K=3, H=5, W=4, kernel=(7, 6), padding=1),
    # Kernel as large as the input: a fully connected layer.
    LocalProblem("kernel_eq_input", N=3, C=3, K=2, H=4, W=5, kernel=(4, 5)),
    # 'same' with an even kernel: total padding 3, one more at the bottom/right.
    LocalProblem("same_even", N=2, C=2, K=3, H=7, W=6, kernel=4, padding="same"),
    # 'same' with one even and one odd axis: asymmetric in width only.
    LocalProblem("same_mixed", N=2, C=2, K=2, H=6, W=7, kernel=(3, 2), padding="same"),
    # 'same' with dilation: totals d*(k-1) = 3 (height, asymmetric) and 4 (width).
    LocalProblem("same_dilated", N=1, C=2, K=2, H=6, W=9, kernel=(2, 3), padding="same",
                 dilation=(3, 2)),
    # 'valid': no padding.
    LocalProblem("valid", N=2, C=3, K=2, H=7, W=6, kernel=3, padding="valid"),
    # 'full': d*(k-1) on every side; border locations see a single input pixel.
    LocalProblem("full", N=2, C=2, K=3, H=5, W=4, kernel=3, padding="full"),
    # 'full' with dilation, a non-square kernel and stride.
    LocalProblem("full_dilated_strided", N=1, C=2, K=2, H=5, W=4, kernel=(2, 3), stride=2,
                 padding="full", dilation=2),
    # Padding larger than the kernel, with stride: whole windows in the padding
    # (output = bias alone there, no gradient to the weights of those locations).
    LocalProblem("pad_gt_kernel_strided", N=2, C=2, K=2, H=4, W=5, kernel=2, stride=3,
                 padding=4),
    # Asymmetric 4-entry padding (dispatcher op only): larger bottom than top, left than right.
    LocalProblem("pad4_asymmetric", N=2, C=2, K=3, H=5, W=6, kernel=3, padding=(0, 2, 1, 0)),
    # No bias, with groups and stride.
    LocalProblem("no_bias", N=2, C=4, K=2, H=7, W=7, kernel=3, stride=2, groups=2, bias=False),
    # 1xW rows: a 1-D locally connected layer through the 2-D op.
    LocalProblem("height1", N=2, C=3, K=2, H=1, W=12, kernel=(1, 3), padding=(0, 1)),
    # Five samples (four at a time plus one) and patch lengths C*kH*kW = 171 and
    # channel counts that are multiples of no vector width: remainder loops.
    LocalProblem("remainders", N=5, C=19, K=17, H=7, W=9, kernel=3, padding=1),
    # Deep input channels: a long reduction (C*kH*kW = 288) against float64.
    LocalProblem("long_reduction", N=2, C=32, K=4, H=5, W=5, kernel=3, padding=1),
    # A kernel row of 6200 taps: no shared-memory stage of the CUDA kernels fits
    # 48 KiB, so forward, input and weight gradient take the direct kernels.
    LocalProblem("kernel_row_6200", N=2, C=2, K=2, H=1, W=6201, kernel=(1, 6200)),
]

TILED_PROBLEMS = [
    # Tiles (1, 1): one kernel everywhere, a dense convolution.
    TiledProblem("tiles_1x1", N=2, C=3, K=4, H=7, W=8, kernel=3, padding=1, tiles=1),
    # Tiles (2, 2) dividing the 8x8 output: a checkerboard of four kernels.
    TiledProblem("tiles_2x2", N=2, C=3, K=4, H=8, W=8, kernel=3, padding=1, tiles=2),
    # Tiles (2, 3) on a 7x9 output: 2 does not divide 7, 3 divides 9.
    TiledProblem("tiles_2x3", N=2, C=3, K=2, H=7, W=9, kernel=3, padding=1, tiles=(2, 3)),
    # Tiles dividing neither output size (6x5 by 4x3): partial last tiles.
    TiledProblem("tiles_not_dividing", N=2, C=2, K=3, H=8, W=7, kernel=3, tiles=(4, 3)),
    # Tiles equal to the output size (4x3): every location its own kernel (local).
    TiledProblem("tiles_eq_output", N=2, C=2, K=3, H=6, W=5, kernel=3, tiles=(4, 3)),
    # Tiles larger than the 3x3 output: some kernels are never used (zero gradient).
    TiledProblem("tiles_gt_output", N=2, C=2, K=2, H=5, W=5, kernel=3, tiles=(5, 4)),
    # Tiles along one axis only.
    TiledProblem("tiles_1x3", N=2, C=2, K=3, H=6, W=8, kernel=3, padding=1, tiles=(1, 3)),
    # Odd sizes, no padding.
    TiledProblem("odd_sizes", N=3, C=5, K=3, H=9, W=7, kernel=3, tiles=(2, 2)),
    # 1x1 kernel: a channel mix that alternates between pixels.
    TiledProblem("1x1", N=2, C=4, K=3, H=5, W=6, kernel=1, tiles=(2, 3)),
    # Stride 2 with padding, odd tiles.
    TiledProblem("stride2_pad1", N=2, C=3, K=2, H=9, W=10, kernel=3, stride=2, padding=1,
                 tiles=(3, 2)),
    # Stride 2 where floor() drops the last input row and column.
    TiledProblem("stride2_floor", N=1, C=2, K=3, H=10, W=10, kernel=3, stride=2, tiles=2),
    # Dilation 2 with padding 2.
    TiledProblem("dilation2", N=2, C=3, K=2, H=9, W=8, kernel=3, padding=2, dilation=2,
                 tiles=(2, 3)),
    # Every hyper-parameter different per axis, tiles included.
    TiledProblem("anisotropic", N=2, C=2, K=3, H=9, W=13, kernel=(2, 3), stride=(1, 2),
                 padding=(0, 1), dilation=(2, 1), tiles=(3, 2)),
    # Two groups.
    TiledProblem("groups2", N=2, C=4, K=6, H=6, W=7, kernel=3, padding=1, groups=2, tiles=2),
    # Depthwise: groups = channels.
    TiledProblem("depthwise", N=2, C=4, K=4, H=6, W=6, kernel=3, padding=1, groups=4, tiles=2),
    # Depthwise with channel multiplier 2, strided.
    TiledProblem("depthwise_mult2_stride2", N=2, C=3, K=6, H=8, W=7, kernel=3, stride=2,
                 padding=1, groups=3, tiles=(2, 3)),
    # Empty batch.
    TiledProblem("batch0", N=0, C=3, K=2, H=6, W=6, kernel=3, padding=1, tiles=2),
    # Kernel as large as the padded input: a 1x1 output, so tiles (2, 2) are mostly unused.
    TiledProblem("kernel_eq_padded_input", N=2, C=2, K=3, H=5, W=4, kernel=(7, 6), padding=1,
                 tiles=2),
    # 'same' with an even kernel (asymmetric padding).
    TiledProblem("same_even", N=2, C=2, K=3, H=7, W=6, kernel=4, padding="same", tiles=(2, 3)),
    # 'same' with dilation, one axis asymmetric.
    TiledProblem("same_dilated", N=1, C=2, K=2, H=6, W=9, kernel=(2, 3), padding="same",
                 dilation=(3, 2), tiles=(3, 2)),
    # 'valid'.
    TiledProblem("valid", N=2, C=3, K=2, H=7, W=6, kernel=3, padding="valid", tiles=(2, 2)),
    # 'full': d*(k-1) on every side.
    TiledProblem("full", N=2, C=2, K=3, H=5, W=4, kernel=3, padding="full", tiles=(3, 2)),
    # 'full' with dilation and stride.
    TiledProblem("full_dilated_strided", N=1, C=2, K=2, H=5, W=4, kernel=(2, 3), stride=2,
                 padding="full", dilation=2, tiles=2),
    # Padding larger than the kernel, with stride: whole windows in the padding.
    TiledProblem("pad_gt_kernel_strided", N=2, C=2, K=2, H=4, W=5, kernel=2, stride=3,
                 padding=4, tiles=(2, 3)),
    # Asymmetric 4-entry padding (dispatcher op only).
    TiledProblem("pad4_asymmetric", N=2, C=2, K=3, H=5, W=6, kernel=3, padding=(0, 2, 1, 0),
                 tiles=(2, 3)),
    # No bias, with groups and stride.
    TiledProblem("no_bias", N=2, C=4, K=2, H=9, W=9, kernel=3, stride=2, groups=2, tiles=2,
                 bias=False),
    # 1xW rows: tiles only along the width.
    TiledProblem("height1", N=2, C=3, K=2, H=1, W=12, kernel=(1, 3), padding=(0, 1),
                 tiles=(1, 4)),
    # Channel counts and widths that are multiples of no block or vector width.
    TiledProblem("remainders", N=2, C=19, K=17, H=11, W=13, kernel=3, padding=1, tiles=(2, 3)),
    # Deep input channels: a long reduction (C*kH*kW = 288).
    TiledProblem("long_reduction", N=2, C=32, K=4, H=6, W=6, kernel=3, padding=1, tiles=2),
    # Wide rows (9 to 10 locations per phase row): runs of input columns 2
    # (2x2 tiles) and 3 (1x3 tiles) apart, longer than the short-run copies.
    TiledProblem("tiles_2x2_wide_rows", N=2, C=3, K=4, H=6, W=19, kernel=3, padding=1, tiles=2),
    TiledProblem("tiles_1x3_wide_rows", N=1, C=2, K=3, H=5, W=26, kernel=3, padding=1,
                 tiles=(1, 3)),
    # More channels than locations per tile phase (2 to 8): the streamed
    # narrow products of the CPU engine, as 4x4 tiles on a 7x7 ResNet layer
    # give them, with remainders in every dimension.
    TiledProblem("narrow_phases", N=2, C=2, K=19, H=7, W=7, kernel=3, padding=1, tiles=4),
    # Exactly 16 locations per phase (4 samples of 2x2): the widest product
    # still streamed, one full vector of float.
    TiledProblem("narrow_phases_16", N=4, C=2, K=17, H=4, W=4, kernel=3, padding=1, tiles=2,
                 bias=False),
    # Phases of 20x20 locations in 3 samples: several blocks of samples.
    TiledProblem("several_blocks", N=3, C=2, K=3, H=40, W=40, kernel=3, padding=1, tiles=2),
    # Phases of 12x12 locations in 3 samples, one block: with two threads
    # each gets at least 128 columns per phase, so the CPU input gradient
    # splits the samples (2 and 1), not the phases, over them.
    TiledProblem("sample_chunks", N=3, C=3, K=4, H=24, W=24, kernel=3, padding=1, tiles=2),
    # 64 channels and long phase rows: the CPU engine's tap products
    # (conv2d.cpp), with phases of unequal extent (41 rows by 2x2 tiles),
    # several blocks of samples, and stride, dilation and 2x3 tiles.
    TiledProblem("tap_products", N=2, C=64, K=5, H=41, W=40, kernel=3, padding=1, tiles=2),
    TiledProblem("tap_products_blocks", N=3, C=64, K=3, H=56, W=56, kernel=3, padding=1,
                 tiles=2, bias=False),
    TiledProblem("tap_products_strided", N=1, C=64, K=3, H=80, W=150, kernel=3, stride=2,
                 padding=2, dilation=2, tiles=(2, 3)),
]

# Tiny problems for gradcheck / gradgradcheck (finite differences over every
# weight of every location: keep them very small).
GRADCHECK_LOCAL_PROBLEMS = [
    # Padding (in height only) and bias: 4x2 locations.
    LocalProblem("gc_basic", N=2, C=1, K=2, H=3, W=3, kernel=2, padding=(1, 0)),
    # Stride with a floor drop, dilation and groups.
    LocalProblem("gc_stride_dilation_groups", N=1, C=2, K=2, H=5, W=4, kernel=2, stride=2,
                 dilation=(1, 2), groups=2),
    # 'same' with an even kernel (asymmetric padding), no bias.
    LocalProblem("gc_same_even", N=1, C=1, K=2, H=2, W=3, kernel=2, padding="same", bias=False),
]

GRADCHECK_TILED_PROBLEMS = [
    # Tiles (2, 2) not dividing a 3x4 output, padding, bias.
    TiledProblem("gc_tiles_2x2", N=2, C=2, K=2, H=3, W=4, kernel=2, padding=1, tiles=2),
    # Stride, dilation, groups, tiles along one axis.
    TiledProblem("gc_stride_dilation_groups", N=1, C=2, K=2, H=5, W=5, kernel=2, stride=2,
                 dilation=(2, 1), groups=2, tiles=(1, 2)),
    # 'same' with an even kernel, tiles larger than the output in width, no bias.
    TiledProblem("gc_same_even_gt", N=1, C=1, K=2, H=3, W=2, kernel=2, padding="same",
                 tiles=(2, 3), bias=False),
]


# ---- wide channels
#
# Channel counts past the column tiles of the CUDA GEMM kernels (64 or 128
# output / input channels per block) and patches (C/groups * kH * kW) of
# several 128-row tiles and many reduction steps: second and third column
# tiles, 128-wide tiles, ragged last tiles. Spatial sizes stay tiny (N 1-2,
# images 3x3 to 6x6) so that each call stays cheap on the emulated backend
# (tests/test_emulated_cuda.py), which runs them in every dtype.

WIDE_CONV_PROBLEMS = [
    # 160 channels per group in and out: a 128-wide tile and a second one of
    # 32 columns; weight-gradient patch of 1440 rows (12 row tiles).
    ConvProblem("wide_160", N=2, C=160, K=160, H=4, W=4, kernel=3, padding=1),
    # 256 in and out, stride 2: two full 128-wide column tiles.
    ConvProblem("wide_256_stride2", N=1, C=256, K=256, H=6, W=6, kernel=3, stride=2, padding=1),
    # 320 in and out, 1x1: three column tiles (128, 128, 64) and a weight-gradient
    # patch of 320 rows (three row tiles), no taps.
    ConvProblem("wide_320_1x1", N=2, C=320, K=320, H=5, W=5, kernel=1),
    # Two groups of 160 input and 256 output channels, stride 2 with a 2x2 kernel:
    # the column tiles of each group start at the group's offset.
    ConvProblem("wide_groups2", N=2, C=320, K=512, H=6, W=6, kernel=2, stride=2, groups=2),
    # 136 input and 200 output channels, multiples of 8 but not of 16: ragged
    # second column tiles (8 and 72 columns) and taps that do not start a
    # 16-channel run.
    ConvProblem("wide_ragged", N=1, C=136, K=200, H=4, W=5, kernel=3, padding=1),
]

WIDE_CONV_TRANSPOSE_PROBLEMS = [
    # 160 channels in and out, stride 2 with output_padding: the input-gradient
    # GEMM with a second column tile; its backward runs conv2d (160 -> 160) and
    # the weight gradient with x as grad_output.
    ConvTransposeProblem("t_wide_160_stride2", N=2, C_in=160, C_out=160, H=3, W=3, kernel=3,
                         stride=2, padding=1, output_padding=1),
    # 256 in, 320 out, stride 1: column tiles of 128 (two full ones, then 64).
    ConvTransposeProblem("t_wide_256_320", N=1, C_in=256, C_out=320, H=3, W=3, kernel=3,
                         padding=1),
    # Two groups of 256 input and 160 output channels, stride 2 with a 2x2 kernel.
    ConvTransposeProblem("t_wide_groups2", N=2, C_in=512, C_out=320, H=3, W=3, kernel=2,
                         stride=2, groups=2),
]

WIDE_TILED_PROBLEMS = [
    # 160 channels in and out, tiles (2, 2): four phase GEMMs of 8 rows, each
    # with a second column tile.
    TiledProblem("wide_tiles_160", N=2, C=160, K=160, H=4, W=4, kernel=3, padding=1, tiles=2),
    # 256 in and out, stride 2 with a 2x2 kernel, tiles (2, 2) on a 3x3 output
    # (phases of unequal extent).
    TiledProblem("wide_tiles_256_stride2", N=2, C=256, K=256, H=6, W=6, kernel=2, stride=2,
                 tiles=2),
    # Two groups of 320 input and 160 output channels, 1x1, tiles (2, 2).
    TiledProblem("wide_tiles_groups2", N=2, C=640, K=320, H=4, W=4, kernel=1, groups=2, tiles=2),
]

# The CUDA-core GEMMs of float32 take their 128x128 tile only when it still
# gives a full wave (two blocks per SM, 264 on an H100's 132 SMs): many rows
# (pixels) as well as more than 64 columns. One channel per group on the other
# side and a 1x1 kernel keep them cheap (4352 pixels, 2.8M products).
FULL_WAVE_CONV_PROBLEMS = [
    # Forward: 34 row tiles x 2 column tiles (160 output channels per group) x 4 groups.
    ConvProblem("full_wave_forward", N=1, C=4, K=640, H=64, W=68, kernel=1, groups=4),
    # Input gradient: the same tiles over 160 input channels per group.
    ConvProblem("full_wave_input_gradient", N=1, C=640, K=4, H=64, W=68, kernel=1, groups=4),
]
