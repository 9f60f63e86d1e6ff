"""The build: build_info(), the compiled module, op registrations, and the rule
that a CUDA tensor never silently goes through the CPU (SPEC 3, Backends)."""
from __future__ import annotations

import importlib
import os
import importlib.machinery
import re

import pytest
import torch

import cnnkit
import cnnkit.functional as CF
from conftest import assert_close, exact_message, make_tensor

# The convolution ops and their schemas (csrc/cnnkit.cpp): what the functional
# API, autograd and fake kernels are written against.
CONV_SCHEMAS = {
    "conv2d": "cnnkit::conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
              "int[] padding, int[2] dilation, int groups) -> Tensor",
    "conv2d_input_backward": "cnnkit::conv2d_input_backward(Tensor grad_output, Tensor weight, "
                             "int[2] input_size, int[2] stride, int[] padding, int[2] dilation, "
                             "int groups) -> Tensor",
    "conv2d_weight_backward": "cnnkit::conv2d_weight_backward(Tensor grad_output, Tensor input, "
                              "int[2] kernel_size, int[2] stride, int[] padding, "
                              "int[2] dilation, int groups) -> Tensor",
    "conv2d_bias_backward": "cnnkit::conv2d_bias_backward(Tensor grad_output) -> Tensor",
    "conv_transpose2d": "cnnkit::conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, "
                        "int[2] stride, int[2] padding, int[2] output_padding, int groups, "
                        "int[2] dilation) -> Tensor",
}

ALL_OPS = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                 if name.startswith("cnnkit::"))


def test_build_info_fields():
    info = cnnkit.build_info()
    assert set(info) == {"with_cuda", "cuda_version", "cpu_isa", "cpu_capability", "torch"}
    assert isinstance(info["with_cuda"], bool)
    if info["with_cuda"]:
        assert re.fullmatch(r"\d+\.\d+", info["cuda_version"]), info["cuda_version"]
    else:
        assert info["cuda_version"] is None
    capability = {"avx512": "AVX512", "avx2": "AVX2", "generic": "DEFAULT"}
    assert info["cpu_capability"] == capability[info["cpu_isa"]]
    assert info["cpu_isa"] == (os.environ.get("CNNKIT_CPU_ISA") or cnnkit._C.cpu_isas()[0])
    assert info["torch"] == torch.__version__


def test_compiled_module_is_a_pybind11_extension():
    mod = importlib.import_module("cnnkit._C")
    assert mod is cnnkit._C
    assert isinstance(mod.__loader__, importlib.machinery.ExtensionFileLoader)
    assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert mod.__doc__ and "torch.ops.cnnkit" in mod.__doc__
    assert isinstance(mod.with_cuda, bool)
    cpu = importlib.import_module(f"cnnkit._C_cpu_{cnnkit.build_info()['cpu_isa']}")
    assert cpu.cpu_capability == cnnkit.build_info()["cpu_capability"]
    with open(mod.__file__, "rb") as so:
        # PYBIND11_MODULE leaves pybind11's internals key in the binary.
        assert b"pybind11" in so.read()


@pytest.mark.parametrize("name", sorted(CONV_SCHEMAS))
def test_conv_op_schemas(name):
    assert str(getattr(torch.ops.cnnkit, name).default._schema) == CONV_SCHEMAS[name]


def test_ops_are_registered():
    assert set(CONV_SCHEMAS) <= set(ALL_OPS)


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_has_cpu_fake_cuda_and_autograd_kernels(name):
    # SPEC 3: every operation has a CPU kernel; a fake (Meta) kernel for
    # torch.compile; a CUDA registration (a kernel, or the "not built for
    # CUDA" error, never a silent trip through the CPU); an autograd formula.
    qualified = f"cnnkit::{name}"
    for key in ("CPU", "Meta", "CUDA", "Autograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key), key


def _not_built_message(op):
    compiled = "yes" if cnnkit.build_info()["with_cuda"] else "no"
    return (f"cnnkit.{op}: not built for CUDA: this cnnkit build has no CUDA kernel for this "
            f"operation (CUDA sources compiled: {compiled}); move the tensors to the CPU with "
            ".cpu() to run it there")


def test_cuda_tensors_never_go_through_the_cpu(cuda_device):
    # A CUDA input either runs on a CUDA kernel (result on the GPU, equal to
    # the CPU result) or is refused with the clear "not built for CUDA" error;
    # a build without CUDA sources must refuse it.
    x = make_tensor((2, 3, 6, 6), torch.float32, "cpu")
    w = make_tensor((4, 3, 3, 3), torch.float32, "cpu")
    expected = CF.conv2d(x, w, padding=1)
    try:
        y = CF.conv2d(x.to(cuda_device), w.to(cuda_device), padding=1)
    except RuntimeError as err:
        assert re.match(exact_message(_not_built_message("conv2d")), str(err)), str(err)
        return
    assert cnnkit.build_info()["with_cuda"], "a build without CUDA sources ran a CUDA tensor"
    assert y.device.type == "cuda"
    assert_close(y, expected, torch.float32)



@pytest.mark.skipif(not cnnkit.build_info()["with_cuda"], reason="built without CUDA sources")
@pytest.mark.parametrize("name", ALL_OPS)
def test_cuda_build_registers_a_cuda_kernel_for_every_op(name):
    # Checked without a GPU: in a build with the CUDA sources, each op's CUDA
    # key holds a kernel registered by a file in csrc/cuda/, not the
    # "not built for CUDA" error kernel that cnnkit.cpp gives the ops without one.
    dump = torch._C._dispatch_dump(f"cnnkit::{name}")
    (cuda_line,) = [line for line in dump.splitlines() if line.startswith("CUDA:")]
    assert "/csrc/cuda/" in cuda_line and "cnnkit.cpp" not in cuda_line, cuda_line


@pytest.mark.parametrize("float64", [False, True])
def test_fma_peak(float64, one_thread):
    # The benchmark's compute ceiling: a positive rate on the best instruction
    # set the CPU has, from every intra-op thread.
    gflops, isa, threads = cnnkit._C.fma_peak(float64, 0.05)
    assert gflops > 0 and threads == torch.get_num_threads() == 1
    flags = open("/proc/cpuinfo").read()
    expected = ("avx512" if " avx512f" in flags else
                "avx2" if " avx2" in flags and " fma" in flags else "scalar")
    assert isa == expected


def test_fma_peak_rejects_a_non_positive_time():
    with pytest.raises(RuntimeError, match="cnnkit: expected a positive measuring time, but got 0"):
        cnnkit._C.fma_peak(False, 0.0)
