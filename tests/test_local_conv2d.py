"""local_conv2d (SPEC 1.3, unshared convolution) beyond what every
convolution op shares (tests/test_conv_families.py: forward against the
float64 reference written from the SPEC formula, gradient views
local_conv2d_input_backward / local_conv2d_weight_backward /
local_conv2d_bias_backward, gradients, gradcheck, opcheck, property test):
the reference itself against the formula, the identity with conv2d,
torch.compile, and argument errors (kernel and fake kernel alike)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import cnnkit.functional as CF
import reference as ref
from conftest import BadCase, assert_close, bad_case_params, check_bad_case, make_tensor
from conv_family import CONV2D, LOCAL, check_compiled_equals_eager, view_bad_cases
from problems import pair

ops = torch.ops.cnnkit
F64 = torch.float64


# --------------------------------------------------------------------------- the reference


def _direct_local(x, w, b, stride, padding, dilation, groups):
    """SPEC 1.3 term by term, one output element at a time (tiny sizes only)."""
    N, C, H, W = x.shape
    K, P, Q, Cg, R, S = w.shape
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    top, _, left, _ = ref.explicit_padding(padding, (R, S), dilation)
    z = torch.zeros(N, K, P, Q, dtype=F64)
    for n, i, y, xo in itertools.product(range(N), range(K), range(P), range(Q)):
        acc = 0.0 if b is None else b[i, y, xo].item()
        g = i // (K // groups)
        for l, m, q in itertools.product(range(Cg), range(R), range(S)):
            row, col = y * sh - top + m * dh, xo * sw - left + q * dw
            if 0 <= row < H and 0 <= col < W:
                acc += x[n, g * Cg + l, row, col].item() * w[i, y, xo, l, m, q].item()
        z[n, i, y, xo] = acc
    return z


@pytest.mark.parametrize("pb", LOCAL.by_id("same_dilated", "pad_gt_kernel_strided",
                                           "depthwise_mult2", "pad4_asymmetric"), ids=str)
def test_reference_is_the_spec_formula(pb):
    # The unfold + einsum reference against the formula evaluated literally,
    # so that the reference itself is tested (asymmetric padding, windows in
    # the padding, groups, stride and dilation).
    pb = dataclasses.replace(pb, N=1)
    x, w, b = LOCAL.args(pb, F64, "cpu")
    want = _direct_local(x, w, b, pb.stride, pb.padding, pb.dilation, pb.groups)
    torch.testing.assert_close(LOCAL.reference_output(pb, x, w, b), want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- identity with conv2d


@pytest.mark.parametrize("pb", LOCAL.by_id("basic_3x3", "anisotropic", "groups3_stride2",
                                           "same_even", "full_dilated_strided",
                                           "pad_gt_kernel_strided", "no_bias"), ids=str)
def test_shared_weights_equal_conv2d(pb, device):
    # SPEC 1.4: local_conv2d whose weights (and biases) are equal at every
    # location is conv2d. The location axes are an expand() of the dense
    # kernel, so autograd sums the local weight gradient over locations: that
    # sum must be conv2d's weight gradient (likewise for the bias).
    x, _, _ = LOCAL.args(pb, F64, device, requires_grad=True)
    P, Q = pb.out_size
    k = make_tensor((pb.K, pb.C // pb.groups, *pair(pb.kernel)), F64, device, requires_grad=True)
    b = make_tensor((pb.K,), F64, device, requires_grad=True) if pb.bias else None
    w_local = k[:, None, None].expand(pb.K, P, Q, *k.shape[1:])
    b_local = None if b is None else b[:, None, None].expand(pb.K, P, Q)
    y_local = LOCAL.call(pb, x, w_local, b_local)
    x2 = x.detach().clone().requires_grad_()
    y_conv = CONV2D.call(pb, x2, k, b)
    assert_close(y_local, y_conv, F64)
    g = make_tensor(y_local.shape, F64, device)
    leaves = [k] + ([b] if b is not None else [])
    grads_local = torch.autograd.grad(y_local, [x] + leaves, g)
    grads_conv = torch.autograd.grad(y_conv, [x2] + leaves, g)
    for got, want in zip(grads_local, grads_conv):
        assert_close(got, want, F64)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph(device):
    # A locally connected block traced without graph breaks (the fake kernels
    # give the shapes), forward and backward equal to eager.
    def block(x, w1, b1, w2):
        y = torch.tanh(CF.local_conv2d(x, w1, b1, padding="same"))
        return CF.local_conv2d(y, w2, None, stride=2, padding=1, groups=2)

    check_compiled_equals_eager(block, [(2, 3, 7, 6), (4, 7, 6, 3, 2, 2), (4, 7, 6),
                                        (6, 4, 3, 2, 3, 3)], device)


# --------------------------------------------------------------------------- bad inputs

FN = "cnnkit.local_conv2d"
LAYOUT = "(C_out, OH, OW, C_in/groups, kH, kW)"


def _local(x, w, b=None, **kw):
    return CF.local_conv2d(x, w, b, **kw)


LOCAL_BAD_CASES = [
    BadCase("input_2d", lambda t: _local(t(3, 5), t(2, 1, 3, 3, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [3, 5]"),
    BadCase("input_5d", lambda t: _local(t(1, 2, 3, 6, 6), t(2, 4, 4, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 4D input (N, C, H, W), but got shape [1, 2, 3, 6, 6]"),
    BadCase("weight_4d", lambda t: _local(t(1, 2, 5, 5), t(2, 2, 3, 3)), RuntimeError,
            f"{FN}: expected 6D weight {LAYOUT}, but got shape [2, 2, 3, 3]"),
    BadCase("weight_5d", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3)), RuntimeError,
            f"{FN}: expected 6D weight {LAYOUT}, but got shape [2, 3, 3, 2, 3]"),
    BadCase("weight_tiled_layout", lambda t: _local(t(1, 2, 5, 5), t(2, 2, 3, 3, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[3] = input channels / groups = 2 / 1, "
            "but got weight of shape [2, 2, 3, 3, 3, 3]"),
    BadCase("weight_locations_mismatch", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 4, 2, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[1:3] = output size [3, 3], but got weight "
            "of shape [2, 3, 4, 2, 3, 3]"),
    BadCase("weight_locations_of_unstrided", lambda t: _local(t(1, 2, 6, 6), t(2, 4, 4, 2, 3, 3),
                                                              stride=2), RuntimeError,
            f"{FN}: expected weight.shape[1:3] = output size [2, 2], but got weight of shape "
            "[2, 4, 4, 2, 3, 3]"),
    BadCase("weight_locations_of_unpadded", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                             padding="same"), RuntimeError,
            f"{FN}: expected weight.shape[1:3] = output size [5, 5], but got weight of shape "
            "[2, 3, 3, 2, 3, 3]"),
    BadCase("weight_channels_mismatch", lambda t: _local(t(1, 4, 5, 5), t(2, 3, 3, 3, 3, 3)),
            RuntimeError, f"{FN}: expected weight.shape[3] = input channels / groups = 4 / 1, but "
            "got weight of shape [2, 3, 3, 3, 3, 3]"),
    BadCase("weight_channels_mismatch_groups", lambda t: _local(t(1, 4, 5, 5),
                                                                t(2, 3, 3, 4, 3, 3), groups=2),
            RuntimeError, f"{FN}: expected weight.shape[3] = input channels / groups = 4 / 2, but "
            "got weight of shape [2, 3, 3, 4, 3, 3]"),
    BadCase("input_channels_not_divisible", lambda t: _local(t(1, 5, 5, 5), t(4, 3, 3, 2, 3, 3),
                                                             groups=2), RuntimeError,
            f"{FN}: expected input channels (5) to be divisible by groups (2)"),
    BadCase("output_channels_not_divisible", lambda t: _local(t(1, 4, 5, 5), t(3, 3, 3, 2, 3, 3),
                                                              groups=2), RuntimeError,
            f"{FN}: expected output channels (3) to be divisible by groups (2)"),
    BadCase("bias_per_channel", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), t(2)),
            RuntimeError, f"{FN}: expected bias of shape [2, 3, 3], but got shape [2]"),
    BadCase("bias_wrong_locations", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                     t(2, 3, 4)), RuntimeError,
            f"{FN}: expected bias of shape [2, 3, 3], but got shape [2, 3, 4]"),
    BadCase("bias_4d", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), t(1, 2, 3, 3)),
            RuntimeError, f"{FN}: expected bias of shape [2, 3, 3], but got shape [1, 2, 3, 3]"),
    BadCase("input_int64", lambda t: _local(t(1, 2, 5, 5, dtype=torch.int64),
                                            t(2, 3, 3, 2, 3, 3, dtype=torch.int64)), RuntimeError,
            f"{FN}: expected input of dtype torch.float32 or torch.float64, but got torch.int64",
            devices=("cpu", "meta")),
    BadCase("input_int64_cuda", lambda t: _local(t(1, 2, 5, 5, dtype=torch.int64),
                                                 t(2, 3, 3, 2, 3, 3, dtype=torch.int64)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32, torch.float64, "
            "torch.float16 or torch.bfloat16, but got torch.int64", devices=("cuda",)),
    BadCase("input_float16_cpu", lambda t: _local(t(1, 2, 5, 5, dtype=torch.float16),
                                                  t(2, 3, 3, 2, 3, 3, dtype=torch.float16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.float16", devices=("cpu", "meta")),
    BadCase("input_bfloat16_cpu", lambda t: _local(t(1, 2, 5, 5, dtype=torch.bfloat16),
                                                   t(2, 3, 3, 2, 3, 3, dtype=torch.bfloat16)),
            RuntimeError, f"{FN}: expected input of dtype torch.float32 or torch.float64, but got "
            "torch.bfloat16", devices=("cpu", "meta")),
    BadCase("weight_float64", lambda t: _local(t(1, 2, 5, 5),
                                               t(2, 3, 3, 2, 3, 3, dtype=torch.float64)),
            RuntimeError, f"{FN}: expected weight of the dtype of input (torch.float32), but got "
            "torch.float64"),
    BadCase("bias_float64", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                             t(2, 3, 3, dtype=torch.float64)), RuntimeError,
            f"{FN}: expected bias of the dtype of input (torch.float32), but got torch.float64"),
    BadCase("weight_on_cpu", lambda t: _local(t(1, 2, 5, 5), make_tensor((2, 3, 3, 2, 3, 3),
                                                                         torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected weight on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("bias_on_cpu", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                            make_tensor((2, 3, 3), torch.float32, "cpu")),
            RuntimeError, f"{FN}: expected bias on the device of input ({{device}}), but got cpu",
            devices=("meta", "cuda")),
    BadCase("kernel_larger_than_input", lambda t: _local(t(1, 1, 4, 4), t(1, 1, 1, 1, 5, 3)),
            RuntimeError, f"{FN}: expected the kernel (5x3 after dilation) to fit in the padded "
            "input (4x4), but it is larger"),
    BadCase("kernel_larger_after_dilation", lambda t: _local(t(1, 1, 6, 4), t(1, 2, 1, 1, 3, 3),
                                                             dilation=2), RuntimeError,
            f"{FN}: expected the kernel (5x5 after dilation) to fit in the padded input (6x4), "
            "but it is larger"),
    BadCase("kernel_larger_than_padded_input", lambda t: _local(t(1, 1, 4, 4),
                                                                t(1, 1, 1, 1, 7, 3), padding=1),
            RuntimeError, f"{FN}: expected the kernel (7x3 after dilation) to fit in the padded "
            "input (6x6), but it is larger"),
    BadCase("empty_kernel", lambda t: _local(t(1, 2, 5, 5), t(2, 5, 3, 2, 0, 3)), RuntimeError,
            f"{FN}: expected kernel size to be positive, but got kernel size 0x3"),
    BadCase("stride_0", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), stride=(0, 1)),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[0, 1]"),
    BadCase("stride_negative", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), stride=-1),
            RuntimeError, f"{FN}: expected stride to be positive, but got stride=[-1, -1]"),
    BadCase("dilation_0", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), dilation=(1, 0)),
            RuntimeError, f"{FN}: expected dilation to be positive, but got dilation=[1, 0]"),
    BadCase("padding_negative", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                 padding=(-1, 0)), RuntimeError,
            f"{FN}: expected padding to be non-negative, but got padding=[-1, 0]"),
    BadCase("groups_0", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3), groups=0),
            RuntimeError, f"{FN}: expected groups to be positive, but got groups=0"),
    BadCase("padding_bad_string", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                   padding="circular"), ValueError,
            f"{FN}: expected padding to be an int, a pair of ints, 'valid', 'same' or 'full', but "
            "got padding='circular'"),
    BadCase("padding_same_stride2", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                     stride=2, padding="same"), ValueError,
            f"{FN}: padding='same' is not supported for strided convolutions, but got "
            "stride=[2, 2]"),
    BadCase("dilation_3_entries", lambda t: _local(t(1, 2, 5, 5), t(2, 3, 3, 2, 3, 3),
                                                   dilation=(1, 2, 3)), TypeError,
            f"{FN}: expected dilation to be an int or a pair of ints, but got "
            "dilation=(1, 2, 3)"),
    BadCase("input_not_a_tensor", lambda t: _local([[1.0]], t(2, 3, 3, 2, 3, 3)), TypeError,
            f"{FN}: expected input to be a torch.Tensor, but got list"),
]

FN_IB, FN_WB = "cnnkit.local_conv2d_input_backward", "cnnkit.local_conv2d_weight_backward"
G1 = ([1, 1], [0, 0], [1, 1], 1)  # stride, padding, dilation, groups


def _ib(g, w, input_size, geo=G1):
    return ops.local_conv2d_input_backward(g, w, input_size, *geo)


def _wb(g, x, kernel_size, geo=G1):
    return ops.local_conv2d_weight_backward(g, x, kernel_size, *geo)


# The gradient views: errors of their own, then those the three convolutions
# share (tests/conv_family.py).
GRAD_VIEW_BAD_CASES = [
    BadCase("ib_grad_output_3d", lambda t: _ib(t(2, 3, 3), t(2, 3, 3, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected 4D grad_output (N, C_out, OH, OW), but got shape "
            "[2, 3, 3]"),
    BadCase("ib_weight_4d", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3), [5, 5]), RuntimeError,
            f"{FN_IB}: expected 6D weight {LAYOUT}, but got shape [2, 3, 3, 3]"),
    BadCase("ib_int32", lambda t: _ib(t(1, 2, 3, 3, dtype=torch.int32),
                                      t(2, 3, 3, 3, 3, 3, dtype=torch.int32), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output of dtype torch.float32 or torch.float64,"
            " but got torch.int32", devices=("cpu", "meta")),
    BadCase("ib_weight_dtype", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 3, 3,
                                                              dtype=torch.float64), [5, 5]),
            RuntimeError, f"{FN_IB}: expected weight of the dtype of grad_output (torch.float32), "
            "but got torch.float64"),
    BadCase("ib_input_size_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 3, 3), [0, 5]),
            RuntimeError, f"{FN_IB}: expected input_size of 2 positive entries, but got "
            "input_size=[0, 5]"),
    BadCase("ib_channels_mismatch", lambda t: _ib(t(1, 3, 3, 3), t(2, 3, 3, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output.shape[1] = weight.shape[0] = 2, but got "
            "grad_output of shape [1, 3, 3, 3]"),
    BadCase("ib_spatial_mismatch", lambda t: _ib(t(1, 2, 4, 3), t(2, 3, 3, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected grad_output of spatial size [3, 3] for input_size "
            "[5, 5], but got shape [1, 2, 4, 3]"),
    BadCase("ib_weight_locations", lambda t: _ib(t(1, 2, 3, 3), t(2, 4, 4, 3, 3, 3), [5, 5]),
            RuntimeError, f"{FN_IB}: expected weight.shape[1:3] = output size [3, 3], but got "
            "weight of shape [2, 4, 4, 3, 3, 3]"),
    BadCase("ib_stride_0", lambda t: _ib(t(1, 2, 3, 3), t(2, 3, 3, 3, 3, 3), [5, 5],
                                         ([0, 1], [0, 0], [1, 1], 1)), RuntimeError,
            f"{FN_IB}: expected stride to be positive, but got stride=[0, 1]"),
    BadCase("ib_kernel_too_large", lambda t: _ib(t(1, 2, 1, 1), t(2, 1, 1, 3, 3, 3), [2, 2]),
            RuntimeError, f"{FN_IB}: expected the kernel (3x3 after dilation) to fit in the padded "
            "input (2x2), but it is larger"),
    BadCase("wb_kernel_size_3", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3, 1]),
            RuntimeError, f"{FN_WB}: expected kernel_size of 2 entries, but got "
            "kernel_size=[3, 3, 1]"),
    BadCase("wb_dilation_0", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3],
                                           ([1, 1], [0, 0], [0, 1], 1)), RuntimeError,
            f"{FN_WB}: expected dilation to be positive, but got dilation=[0, 1]"),
    BadCase("wb_padding_negative", lambda t: _wb(t(1, 2, 3, 3), t(1, 3, 5, 5), [3, 3],
                                                 ([1, 1], [0, 1, -1, 0], [1, 1], 1)),
            RuntimeError, f"{FN_WB}: expected padding to be non-negative, but got "
            "padding=[0, 1, -1, 0]"),
] + view_bad_cases(LOCAL)


@pytest.mark.parametrize("case,dev", bad_case_params(LOCAL_BAD_CASES + GRAD_VIEW_BAD_CASES))
def test_bad_input(case, dev):
    # The C++ checks (cpu, cuda) and the fake kernel (meta) word every error alike.
    check_bad_case(case, dev)
