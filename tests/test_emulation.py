"""The emulator of the CUDA execution model itself (csrc/emulation/), through
the test kernels of csrc/emulation/selftest.cpp: what a GPU would refuse or
hang on is an error here, with a message saying what went wrong, and what a
GPU guarantees holds here too. tests/test_emulated_cuda.py runs cnnkit's own
kernels on it.
"""
from __future__ import annotations

import re

import pytest
import torch

import cnnkit  # noqa: F401
import cnnkit._C_emu as emu

selftest = emu.selftest
pytestmark = pytest.mark.sanitize  # all of it runs under the sanitizers too

BARRIER_ERROR = "a barrier that not every thread of the block reaches"


@pytest.mark.parametrize("exiting", [1, 16, 255])
def test_threads_exiting_before_a_barrier_is_an_error(exiting):
    # On a GPU a __syncthreads that some threads of the block never reach
    # hangs or corrupts; here it is reported, naming the kernel and the block.
    message = (f"early_exit_kernel.*block 0, 0, 0: {BARRIER_ERROR}: {256 - exiting} of 256 "
               f"threads wait .*, {exiting} have exited")
    with pytest.raises(RuntimeError, match=message):
        selftest.early_exit(256, exiting)


def test_no_thread_exiting_early_is_fine():
    selftest.early_exit(256, 0)


def test_threads_at_different_barriers_is_an_error():
    # Warp 0 passes its warp barrier and exits; the others wait at
    # __syncthreads for it forever.
    with pytest.raises(RuntimeError, match=f"{BARRIER_ERROR}: 32 of 64 threads wait"):
        selftest.mismatched_barriers()


@pytest.mark.parametrize("grid,block,why", [
    ((1, 1, 1), (1025, 1, 1), "a block has at most 1024 threads"),
    ((1, 1, 1), (64, 32, 1), "a block has at most 1024 threads"),
    ((1, 1, 1), (1, 1, 65), "a block has at most 1024 threads"),
    ((1, 65536, 1), (32, 1, 1), "grid.y and grid.z are at most 65535"),
    ((1, 1, 65536), (32, 1, 1), "grid.y and grid.z are at most 65535"),
    ((0, 1, 1), (32, 1, 1), "a grid or block dimension is 0"),
    ((1, 1, 1), (0, 1, 1), "a grid or block dimension is 0"),
])
def test_launch_limits(grid, block, why):
    # The limits of every GPU since compute capability 3.0: what the hardware
    # refuses with "invalid configuration argument".
    with pytest.raises(RuntimeError, match=f"cannot launch .*: {re.escape(why)}"):
        selftest.launch(list(grid), list(block))


def test_launch_at_the_limits_runs():
    assert selftest.launch([3, 1, 1], [1024, 1, 1]) == 3 * 1024
    assert selftest.launch([1, 65535, 1], [1, 1, 1]) == 1  # every block's thread 0 writes out[0]


def test_dynamic_shared_memory_above_48_kib_needs_the_opt_in():
    with pytest.raises(RuntimeError, match="more than 48 KiB of dynamic shared memory needs"):
        selftest.dynamic_shared(64 * 1024, 0)
    out = selftest.dynamic_shared(64 * 1024, 64 * 1024)
    n = 64 * 1024 // 4
    assert out[1].item() == pytest.approx(n * (n - 1) / 2, rel=1e-4)
    with pytest.raises(RuntimeError, match="more dynamic shared memory than the kernel opted in"):
        selftest.dynamic_shared(128 * 1024, 96 * 1024)


def test_fresh_shared_memory_reads_as_nan():
    # A kernel that reads shared memory before writing it gets NaNs, not the
    # zeros (or the previous block's values) that would hide the bug.
    out = selftest.dynamic_shared(1024, 0)
    assert torch.isnan(out[0])


def test_shared_memory_is_per_block():
    # Blocks run side by side on several threads: each keeps its own
    # __shared__ storage.
    blocks = 64
    out = selftest.shared_per_block(blocks)
    assert torch.equal(out, torch.arange(blocks, dtype=torch.int32)[:, None].expand(-1, 64))


def test_warp_shuffle_reduction():
    values = torch.randn(4 * 256, dtype=torch.float64)
    sums = selftest.shuffle_sum(values)
    torch.testing.assert_close(sums, values.view(-1, 32).sum(1), rtol=1e-14, atol=1e-14)


def test_wmma_product():
    a = torch.randn(16, 16).half()
    b = torch.randn(16, 16).half()
    got = selftest.wmma_product(a, b.t().contiguous(), 0)
    torch.testing.assert_close(got, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


def test_wmma_misaligned_pointer_is_an_error():
    # WMMA loads need a 256-bit aligned pointer: a GPU faults or reads wrong.
    with pytest.raises(RuntimeError, match="wmma_kernel.*not 256-bit aligned"):
        selftest.wmma_product(torch.zeros(16, 16).half(), torch.zeros(16, 16).half(), 1)


def test_launch_statistics_count_launches():
    name = "write_index_kernel : void (*)(int*)"  # as the launch spells it, with the signature
    before = emu.launch_statistics().get(name, (0, 0))
    selftest.launch([2, 1, 1], [32, 1, 1])
    after = emu.launch_statistics()[name]
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)


def test_wide_indices_switch():
    assert not emu.wide_indices()
    emu.set_wide_indices(True)
    try:
        assert emu.wide_indices()
    finally:
        emu.set_wide_indices(False)
