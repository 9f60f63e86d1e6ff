"""The four convolution ops as families of tests, and what their tests share.

conv2d (SPEC 1.1), conv_transpose2d (1.2), local_conv2d (1.3) and tiled_conv2d
(1.4) are tested the same way: the op against a float64 reference of
tests/reference.py over the problems of tests/problems.py. A `ConvFamily` says
what differs between them: the op, its reference, how a problem becomes
arguments, the output shape, and which problems each shared test runs.
tests/test_conv_families.py runs the shared tests over every family; each op's
own test file keeps what only that op has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from hypothesis import strategies as st

import cnnkit.functional as CF
import reference as ref
from conftest import BadCase, assert_close, make_tensor
from problems import (CONV_PROBLEMS, CONV_TRANSPOSE_PROBLEMS, GRADCHECK_CONV_PROBLEMS,
                      GRADCHECK_CONV_TRANSPOSE_PROBLEMS, GRADCHECK_LOCAL_PROBLEMS,
                      GRADCHECK_TILED_PROBLEMS, LOCAL_PROBLEMS, OP_ONLY_CONV_PROBLEMS,
                      TILED_PROBLEMS, ConvProblem, ConvTransposeProblem, LocalProblem,
                      TiledProblem, pair)

ops = torch.ops.cnnkit
F64 = torch.float64

# The gradient views of a convolution, dispatcher ops of their own
# (`<op>_input_backward`, ...): each is the gradient of one argument of the
# forward op and takes grad_output and the other operand (none for the bias).
VIEWS = ("input_backward", "weight_backward", "bias_backward")
GRADIENT_OF = {"input_backward": "input", "weight_backward": "weight", "bias_backward": "bias"}
OTHER_OPERAND = {"input_backward": "weight", "weight_backward": "input", "bias_backward": None}


def shape_of(pb, argument: str) -> tuple:
    """The shape of the forward op's "input", "weight" or "bias"."""
    return {"input": pb.input_shape, "weight": pb.weight_shape, "bias": pb.bias_shape}[argument]


def op_only(pb) -> bool:
    """Problems with 4-entry padding, which only the dispatcher ops take."""
    return isinstance(pb.padding, tuple) and len(pb.padding) == 4


# --------------------------------------------------------------------------- geometry


def conv_hyper(pb) -> dict:
    """The hyper-parameters as the functional API and the references take them."""
    return dict(stride=pb.stride, padding=pb.padding, dilation=pb.dilation, groups=pb.groups)


def conv_op_geometry(pb) -> list:
    """(stride, padding, dilation, groups) as the dispatcher ops take them."""
    return [list(pair(pb.stride)), ref.op_padding(pb.padding, pb.kernel, pb.dilation),
            list(pair(pb.dilation)), pb.groups]


def conv_out_shape(pb) -> tuple:
    return (pb.N, pb.K, *ref.conv2d_out_size(pb.H, pb.W, pb.kernel, pb.stride, pb.padding,
                                             pb.dilation))


def transpose_hyper(pb: ConvTransposeProblem) -> dict:
    return dict(stride=pb.stride, padding=pb.padding, output_padding=pb.output_padding,
                groups=pb.groups, dilation=pb.dilation)


def transpose_op_geometry(pb: ConvTransposeProblem) -> list:
    """(stride, padding, output_padding, groups, dilation) as the dispatcher op takes them."""
    return [list(pair(pb.stride)), list(pair(pb.padding)), list(pair(pb.output_padding)),
            pb.groups, list(pair(pb.dilation))]


def transpose_out_shape(pb: ConvTransposeProblem) -> tuple:
    return (pb.N, pb.C_out, *ref.conv_transpose2d_out_size(pb.H, pb.W, pb.kernel, pb.stride,
                                                           pb.padding, pb.output_padding,
                                                           pb.dilation))


# --------------------------------------------------------------------------- random problems


@st.composite
def random_conv_problems(draw, problem, max_kernel, max_dilation, max_extra_size,
                         max_channels_per_group, **more_fields):
    """Any geometry conv2d-like ops accept, small enough for float64 references;
    `more_fields` are strategies for the fields a problem class adds (tiles)."""
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["valid", "same", "full"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    top, bottom, left, right = ref.explicit_padding(padding, kernel, dilation)
    # The smallest input the dilated kernel fits in once padded, and a few more.
    extra = st.integers(0, max_extra_size)
    H = max(1, dilation[0] * (kernel[0] - 1) + 1 - top - bottom) + draw(extra)
    W = max(1, dilation[1] * (kernel[1] - 1) + 1 - left - right) + draw(extra)
    more = {name: draw(strategy) for name, strategy in more_fields.items()}
    return problem("random", N=draw(st.integers(0, 2)),
                   C=groups * draw(st.integers(1, max_channels_per_group)),
                   K=groups * draw(st.integers(1, max_channels_per_group)), H=H, W=W,
                   kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, bias=draw(st.booleans()), **more)


@st.composite
def random_conv_transpose_problems(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    # output_padding picks one of the stride (or dilation) many input sizes of
    # the forward convolution: any value below max(stride, dilation).
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    # Padding crops the output; keep at least one output pixel per axis.
    padding = []
    for n, k, s, d, op in zip((H, W), kernel, stride, dilation, output_padding):
        full = (n - 1) * s + d * (k - 1) + op + 1
        padding.append(draw(st.integers(0, (full - 1) // 2)))
    return ConvTransposeProblem("random", N=draw(st.integers(0, 2)),
                                C_in=groups * draw(st.integers(1, 3)),
                                C_out=groups * draw(st.integers(1, 3)), H=H, W=W, kernel=kernel,
                                stride=stride, padding=tuple(padding),
                                output_padding=output_padding, dilation=dilation, groups=groups,
                                bias=draw(st.booleans()))


# --------------------------------------------------------------------------- the families


@dataclass(frozen=True)
class ConvFamily:
    """One convolution op under test: `torch.ops.cnnkit.<name>` and
    `cnnkit.functional.<name>`, and the problems each shared test runs it on."""
    name: str
    # tests/reference.py's float64 op, differentiable, hyper-parameters as keywords.
    reference: Callable
    hyper: Callable          # problem -> keyword hyper-parameters of the functional API
    op_geometry: Callable    # problem -> the dispatcher op's arguments after (input, weight, bias)
    out_shape: Callable      # problem -> output shape
    problems: list           # forward, gradients: every layout and dtype
    gradcheck_problems: list
    unbatched: list          # 3-D (C, H, W) inputs
    half: list               # float16 / bfloat16 on CUDA
    backward_of_sum: list
    one_argument: object     # only one argument requires grad
    deterministic: object
    opcheck: list            # (problem, layout, with AOT dispatch)
    random_problems: st.SearchStrategy
    # The references of the gradient views (VIEWS), for the families that have
    # them as dispatcher ops; each takes the arguments of its op.
    view_references: dict = field(default_factory=dict)
    adjoint: list = field(default_factory=list)  # the views as one bilinear form
    # Tiled ops take the tiles after the kernel size (weight gradient) or
    # grad_output (bias gradient).
    tiled: bool = False
    # Problems for the untied bias (C_out, OH, OW), one per output location,
    # which the ops whose own bias is shared also take.
    untied_bias: list = field(default_factory=list)

    def __str__(self):
        return self.name

    def op(self, view: str | None = None):
        return getattr(ops, self.op_name(view))

    def op_name(self, view: str | None = None) -> str:
        return self.name if view is None else f"{self.name}_{view}"

    def functional(self, pb, x, w, b=None):
        """The op through cnnkit.functional (4-D or unbatched 3-D inputs)."""
        return getattr(CF, self.name)(x, w, b, **self.hyper(pb))

    def args(self, pb, dtype, device, layout="contiguous", requires_grad=False):
        """(input, weight, bias or None) of problem `pb`."""
        x = make_tensor(pb.input_shape, dtype, device, layout, requires_grad)
        w = make_tensor(pb.weight_shape, dtype, device, layout, requires_grad)
        b = make_tensor(pb.bias_shape, dtype, device, layout, requires_grad) if pb.bias else None
        return x, w, b

    def call(self, pb, x, w, b=None):
        """The functional API, or the dispatcher op for what only it takes."""
        if op_only(pb):
            return self.op()(x, w, b, *self.op_geometry(pb))
        return self.functional(pb, x, w, b)

    def reference_and_grads(self, pb, x, w, b, g):
        """The reference on float64 copies of (x, w[, b]), and its gradients
        with respect to each of them for grad_output `g`."""
        leaves = [t.detach().to(F64).clone().requires_grad_() for t in (x, w, b) if t is not None]
        y = self.reference(*leaves[:2], leaves[2] if b is not None else None, **self.hyper(pb))
        return y, torch.autograd.grad(y, leaves, g.to(F64))

    def reference_output(self, pb, x, w, b=None):
        """The reference on float64 copies of the inputs (no graph)."""
        f64 = [None if t is None else t.detach().to(F64) for t in (x, w, b)]
        return self.reference(*f64, **self.hyper(pb))

    def untied_bias_shape(self, pb) -> tuple:
        """(C_out, OH, OW)."""
        return self.out_shape(pb)[1:]

    def untied_reference(self, pb, x, w, b):
        """The reference without bias, plus the untied bias at every sample."""
        return self.reference_output(pb, x, w) + b.detach().to(F64)[None]

    def view_args(self, view, pb, g, other=None) -> tuple:
        """The arguments of the gradient view `view` for grad_output `g` and
        its other operand (the weight or the input)."""
        tiles = [list(pair(pb.tiles))] if self.tiled else []
        geometry = self.op_geometry(pb)
        if view == "input_backward":
            return (g, other, [pb.H, pb.W], *geometry)
        if view == "weight_backward":
            return (g, other, list(pair(pb.kernel)), *tiles, *geometry)
        return (g, *tiles)

    def view(self, view, pb, g, other=None):
        return self.op(view)(*self.view_args(view, pb, g, other))

    def view_reference(self, view, pb, g, other=None):
        return self.view_references[view](*self.view_args(view, pb, g, other))

    def by_id(self, *ids):
        table = {pb.id: pb for pb in self.problems + self.gradcheck_problems}
        return [table[i] for i in ids]


def _pick(problems, *ids):
    table = {pb.id: pb for pb in problems}
    return [table[i] for i in ids]


def _opcheck(problems, *cases):
    return [(_pick(problems, pb_id)[0], layout, aot) for pb_id, layout, aot in cases]


_CONV = CONV_PROBLEMS + OP_ONLY_CONV_PROBLEMS

CONV2D = ConvFamily(
    name="conv2d", reference=ref.conv2d, hyper=conv_hyper, op_geometry=conv_op_geometry,
    out_shape=conv_out_shape, problems=_CONV, gradcheck_problems=GRADCHECK_CONV_PROBLEMS,
    unbatched=_pick(_CONV, "basic_3x3", "same_even", "groups2", "stride2_dilation2", "full",
                    "no_bias"),
    half=_pick(_CONV, "basic_3x3", "groups3_stride2", "same_even", "depthwise_mult2",
               "long_reduction"),
    backward_of_sum=_pick(_CONV, "basic_3x3", "stride2_dilation2", "same_even",
                          "depthwise_mult2", "batch0"),
    one_argument=_pick(_CONV, "groups3_stride2")[0],
    deterministic=_pick(_CONV, "block_remainders")[0],
    # Plain, asymmetric padding, groups with stride, a channel multiplier on a
    # sliced input, an empty batch, and a channels_last input, whose output
    # strides the fake kernel must predict.
    opcheck=_opcheck(_CONV, ("basic_3x3", "contiguous", True), ("same_even", "contiguous", True),
                     ("groups3_stride2", "contiguous", True), ("depthwise_mult2", "sliced", True),
                     ("batch0", "contiguous", True), ("anisotropic", "channels_last", True)),
    random_problems=random_conv_problems(ConvProblem, max_kernel=4, max_dilation=3,
                                         max_extra_size=5, max_channels_per_group=3),
    view_references={"input_backward": ref.conv2d_input_backward_ref,
                     "weight_backward": ref.conv2d_weight_backward_ref,
                     "bias_backward": ref.conv2d_bias_backward_ref},
    adjoint=_pick(_CONV, "anisotropic"),
    # Odd sizes, 1x1 (no unfolding), stride 2 with and without a floor drop, one
    # sample (the CPU engine's direct product), groups, a channel multiplier, an
    # empty batch, a 1x1 output (where (C_out, 1, 1) and (C_out,) are both
    # accepted), asymmetric padding, several blocks of samples, narrow products.
    untied_bias=_pick(_CONV, "odd_sizes", "1x1", "stride2_pad1", "stride2_floor", "groups2",
                      "groups3_stride2", "depthwise_mult2", "batch0", "kernel_eq_padded_input",
                      "pad4_asymmetric", "same_even", "several_blocks", "narrow_products"),
)

LOCAL = ConvFamily(
    name="local_conv2d", reference=ref.local_conv2d, hyper=conv_hyper,
    op_geometry=conv_op_geometry, out_shape=conv_out_shape, problems=LOCAL_PROBLEMS,
    gradcheck_problems=GRADCHECK_LOCAL_PROBLEMS,
    unbatched=_pick(LOCAL_PROBLEMS, "basic_3x3", "same_even", "groups2", "anisotropic", "full",
                    "no_bias"),
    half=_pick(LOCAL_PROBLEMS, "basic_3x3", "groups3_stride2", "same_even", "depthwise_mult2",
               "long_reduction"),
    backward_of_sum=_pick(LOCAL_PROBLEMS, "basic_3x3", "anisotropic", "same_even",
                          "depthwise_mult2", "batch0"),
    one_argument=_pick(LOCAL_PROBLEMS, "groups3_stride2")[0],
    deterministic=_pick(LOCAL_PROBLEMS, "remainders")[0],
    # AOT dispatch with dynamic shapes (the slow part of opcheck) on a
    # contiguous and a channels_last case; schema, autograd registration and
    # fake-kernel checks on every case.
    opcheck=_opcheck(LOCAL_PROBLEMS, ("basic_3x3", "contiguous", True),
                     ("same_even", "contiguous", False), ("groups3_stride2", "sliced", False),
                     ("batch0", "contiguous", False), ("anisotropic", "channels_last", True)),
    random_problems=random_conv_problems(LocalProblem, max_kernel=3, max_dilation=2,
                                         max_extra_size=4, max_channels_per_group=2),
    view_references={"input_backward": ref.local_conv2d_input_backward_ref,
                     "weight_backward": ref.local_conv2d_weight_backward_ref,
                     "bias_backward": ref.local_conv2d_bias_backward_ref},
    adjoint=_pick(LOCAL_PROBLEMS, "anisotropic", "groups3_stride2", "same_even"),
)

TILED = ConvFamily(
    name="tiled_conv2d", reference=ref.tiled_conv2d, hyper=conv_hyper,
    op_geometry=conv_op_geometry, out_shape=conv_out_shape, problems=TILED_PROBLEMS,
    gradcheck_problems=GRADCHECK_TILED_PROBLEMS,
    unbatched=_pick(TILED_PROBLEMS, "tiles_2x2", "same_even", "groups2", "anisotropic", "full",
                    "no_bias"),
    half=_pick(TILED_PROBLEMS, "tiles_2x3", "tiles_not_dividing", "same_even",
               "depthwise_mult2_stride2", "long_reduction"),
    backward_of_sum=_pick(TILED_PROBLEMS, "tiles_2x3", "anisotropic", "same_even",
                          "depthwise_mult2_stride2", "batch0"),
    one_argument=_pick(TILED_PROBLEMS, "stride2_pad1")[0],
    deterministic=_pick(TILED_PROBLEMS, "remainders")[0],
    # AOT dispatch on a contiguous and a channels_last case, as for LOCAL.
    opcheck=_opcheck(TILED_PROBLEMS, ("tiles_2x3", "contiguous", True),
                     ("same_even", "contiguous", False),
                     ("depthwise_mult2_stride2", "sliced", False),
                     ("batch0", "contiguous", False), ("anisotropic", "channels_last", True)),
    # Tiles from (1, 1) to larger than most outputs.
    random_problems=random_conv_problems(TiledProblem, max_kernel=3, max_dilation=2,
                                         max_extra_size=5, max_channels_per_group=2,
                                         tiles=st.tuples(st.integers(1, 5), st.integers(1, 5))),
    view_references={"input_backward": ref.tiled_conv2d_input_backward_ref,
                     "weight_backward": ref.tiled_conv2d_weight_backward_ref,
                     "bias_backward": ref.tiled_conv2d_bias_backward_ref},
    adjoint=_pick(TILED_PROBLEMS, "anisotropic", "tiles_not_dividing", "same_even"),
    tiled=True,
    # Tiles dividing the output or not, equal to it, larger than it, (1, 1), one
    # sample, stride 2, groups, depthwise, an empty batch, a 1x1 output, narrow
    # phases (the CPU engine's streamed products), several blocks of samples,
    # phases split over threads, and the CPU engine's tap products (64 channels,
    # with and without stride and dilation).
    untied_bias=_pick(TILED_PROBLEMS, "tiles_1x1", "tiles_2x2", "tiles_2x3", "tiles_not_dividing",
                      "tiles_eq_output", "tiles_gt_output", "odd_sizes", "1x1", "stride2_pad1",
                      "stride2_floor", "groups2", "depthwise", "depthwise_mult2_stride2",
                      "batch0", "kernel_eq_padded_input", "pad4_asymmetric", "narrow_phases",
                      "several_blocks", "sample_chunks", "tap_products", "tap_products_strided"),
)

# Its gradients are conv2d's ops (SPEC 1.2): no gradient views of its own.
TRANSPOSED = ConvFamily(
    name="conv_transpose2d", reference=ref.conv_transpose2d, hyper=transpose_hyper,
    op_geometry=transpose_op_geometry, out_shape=transpose_out_shape,
    problems=CONV_TRANSPOSE_PROBLEMS, gradcheck_problems=GRADCHECK_CONV_TRANSPOSE_PROBLEMS,
    unbatched=_pick(CONV_TRANSPOSE_PROBLEMS, "t_stride2_outpad1", "t_groups2", "t_anisotropic",
                    "t_no_bias"),
    half=_pick(CONV_TRANSPOSE_PROBLEMS, "t_stride2_outpad1", "t_groups2", "t_block_remainders"),
    backward_of_sum=_pick(CONV_TRANSPOSE_PROBLEMS, "t_stride2_outpad1", "t_groups2", "t_batch0"),
    one_argument=_pick(CONV_TRANSPOSE_PROBLEMS, "t_groups2")[0],
    deterministic=_pick(CONV_TRANSPOSE_PROBLEMS, "t_block_remainders")[0],
    # The output strides of a channels_last input too (default opcheck: AOT included).
    opcheck=_opcheck(CONV_TRANSPOSE_PROBLEMS, ("t_stride2_outpad1", "contiguous", True),
                     ("t_groups2", "contiguous", True),
                     ("t_outpad_by_dilation", "contiguous", True),
                     ("t_batch0", "contiguous", True), ("t_anisotropic", "channels_last", True)),
    random_problems=random_conv_transpose_problems(),
    # Stride 2 with output_padding, odd sizes, one sample, groups, depthwise, an
    # empty batch, a 1x1 output (where (C_out, 1, 1) and (C_out,) are both
    # accepted), output_padding below the dilation, block remainders.
    untied_bias=_pick(CONV_TRANSPOSE_PROBLEMS, "t_basic", "t_stride2_outpad1", "t_odd",
                      "t_stride3_kernel2", "t_groups2", "t_depthwise", "t_batch0", "t_crop_to_1",
                      "t_outpad_by_dilation", "t_anisotropic", "t_block_remainders"),
)

FAMILIES = [CONV2D, TRANSPOSED, LOCAL, TILED]


# --------------------------------------------------------------------------- torch.compile


def check_compiled_equals_eager(block, shapes, device):
    """`block` traced without graph breaks (the fake kernels give the shapes)
    on float32 arguments of `shapes`: forward and backward equal to eager."""
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    eager_args = [make_tensor(s, torch.float32, device, requires_grad=True) for s in shapes]
    comp_args = [a.detach().clone().requires_grad_() for a in eager_args]
    y_eager, y_comp = block(*eager_args), compiled(*comp_args)
    assert_close(y_comp, y_eager, torch.float32)
    g = make_tensor(y_eager.shape, torch.float32, device)
    y_eager.backward(g)
    y_comp.backward(g)
    for a, c in zip(eager_args, comp_args):
        assert_close(c.grad, a.grad, torch.float32)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- bad inputs


def view_bad_cases(fam: ConvFamily) -> list:
    """The argument errors of the weight and bias gradient views, which
    conv2d, local_conv2d and tiled_conv2d check and word alike (tiled ones
    given tiles (2, 2)); each op's file adds the errors only its views have."""
    tiles = [[2, 2]] if fam.tiled else []
    fn_wb, fn_bb = (f"cnnkit.{fam.op_name(view)}" for view in ("weight_backward", "bias_backward"))

    def wb(g, x, geometry=([1, 1], [0, 0], [1, 1], 1)):  # stride, padding, dilation, groups
        return fam.op("weight_backward")(g, x, [3, 3], *tiles, *geometry)

    def bb(g):
        return fam.op("bias_backward")(g, *tiles)

    return [
        BadCase("wb_input_3d", lambda t: wb(t(1, 2, 3, 3), t(3, 5, 5)), RuntimeError,
                f"{fn_wb}: expected 4D input (N, C, H, W), but got shape [3, 5, 5]"),
        BadCase("wb_float16", lambda t: wb(t(1, 2, 3, 3, dtype=torch.float16),
                                           t(1, 3, 5, 5, dtype=torch.float16)), RuntimeError,
                f"{fn_wb}: expected input of dtype torch.float32 or torch.float64, but got "
                "torch.float16", devices=("cpu", "meta")),
        BadCase("wb_grad_dtype", lambda t: wb(t(1, 2, 3, 3, dtype=torch.float64), t(1, 3, 5, 5)),
                RuntimeError, f"{fn_wb}: expected grad_output of the dtype of input "
                "(torch.float32), but got torch.float64"),
        BadCase("wb_batch_mismatch", lambda t: wb(t(1, 2, 3, 3), t(2, 3, 5, 5)), RuntimeError,
                f"{fn_wb}: expected grad_output.shape[0] = input.shape[0] = 2, but got "
                "grad_output of shape [1, 2, 3, 3]"),
        BadCase("wb_spatial_mismatch", lambda t: wb(t(2, 2, 3, 4), t(2, 4, 5, 5)), RuntimeError,
                f"{fn_wb}: expected grad_output of spatial size [3, 3] for input of shape "
                "[2, 4, 5, 5], but got shape [2, 2, 3, 4]"),
        BadCase("wb_groups", lambda t: wb(t(2, 2, 3, 3), t(2, 3, 5, 5),
                                          ([1, 1], [0, 0], [1, 1], 2)), RuntimeError,
                f"{fn_wb}: expected input channels (3) to be divisible by groups (2)"),
        BadCase("bb_grad_output_2d", lambda t: bb(t(2, 3)), RuntimeError,
                f"{fn_bb}: expected 4D grad_output (N, C_out, OH, OW), but got shape [2, 3]"),
        BadCase("bb_int64", lambda t: bb(t(1, 2, 3, 3, dtype=torch.int64)), RuntimeError,
                f"{fn_bb}: expected grad_output of dtype torch.float32 or torch.float64, but got "
                "torch.int64", devices=("cpu", "meta")),
    ]
