"""Every cnnkit op, forward and backward, once per case on small CUDA tensors:
the workload that compute-sanitizer checks (scripts/gpu_check.sh sanitize).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 scripts/sanitizer_workload.py
    compute-sanitizer --tool racecheck python3 scripts/sanitizer_workload.py --dtypes float32

With PyTorch's caching allocator off, every tensor is its own cudaMalloc, so
memcheck sees a read or write past the end of any tensor (inside a cached
block it would land in memory that is allocated, only not this tensor's).

Cases cover what changes a kernel's indexing: groups, depthwise, stride 2,
dilation, asymmetric padding, 1x1, sizes that are multiples of no block or
vector width, tiles that do not divide the output, every pool with padding
and ceil_mode, empty batches, in NCHW and channels_last, in float32 and
float16 (or the dtypes given). Each case is named before it runs (flushed), so
that a sanitizer report can be matched to the call that caused it; the script
synchronizes after each case, so an error surfaces at its case. Exit status 0
when every call returned, 1 when one raised.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # cnnkit built in place

import torch  # noqa: E402

import cnnkit.functional as CF  # noqa: E402  (importing cnnkit registers torch.ops.cnnkit)

ops = torch.ops.cnnkit


def conv_case(N, C, K, H, W, kernel, stride=1, padding=0, dilation=1, groups=1):
    """conv2d: input, weight and bias shapes, and the call."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    shapes = [(N, C, H, W), (K, C // groups, kh, kw), (K,)]
    return shapes, lambda x, w, b: CF.conv2d(x, w, b, stride, padding, dilation, groups)


def conv4_case(N, C, K, H, W, kernel, padding4, stride=1, dilation=1, groups=1):
    """conv2d through the dispatcher op, with (top, bottom, left, right) padding."""
    shapes = [(N, C, H, W), (K, C // groups, kernel, kernel), (K,)]
    geometry = ([stride, stride], list(padding4), [dilation, dilation], groups)
    return shapes, lambda x, w, b: ops.conv2d(x, w, b, *geometry)


def conv_transpose_case(N, C_in, C_out, H, W, kernel, stride=1, padding=0, output_padding=0,
                        groups=1, dilation=1):
    shapes = [(N, C_in, H, W), (C_in, C_out // groups, kernel, kernel), (C_out,)]
    return shapes, lambda x, w, b: CF.conv_transpose2d(x, w, b, stride, padding, output_padding,
                                                       groups, dilation)


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def local_case(N, C, K, H, W, kernel, stride=1, padding=0, dilation=1, groups=1):
    P, Q = (out_size(s, kernel, stride, padding, dilation) for s in (H, W))
    shapes = [(N, C, H, W), (K, P, Q, C // groups, kernel, kernel), (K, P, Q)]
    return shapes, lambda x, w, b: CF.local_conv2d(x, w, b, stride, padding, dilation, groups)


def tiled_case(N, C, K, H, W, kernel, tiles, stride=1, padding=0, dilation=1, groups=1):
    th, tw = tiles
    shapes = [(N, C, H, W), (K, C // groups, kernel, kernel, th, tw), (K, th, tw)]
    return shapes, lambda x, w, b: CF.tiled_conv2d(x, w, b, stride, padding, dilation, groups)


def pool_case(shape, call):
    return [shape], call


def cases():
    """(name, operand shapes, call) of every case; the call's first output is differentiated."""
    return [
        ("conv2d 3x3 pad 1", *conv_case(2, 5, 7, 13, 11, 3, padding=1)),
        ("conv2d remainders", *conv_case(2, 19, 33, 13, 37, 3, padding=1)),
        ("conv2d 1x1", *conv_case(2, 16, 24, 9, 7, 1)),
        ("conv2d 1x1 stride 2", *conv_case(2, 8, 12, 9, 10, 1, stride=2)),
        ("conv2d 7x7 stride 2 pad 3", *conv_case(2, 3, 16, 23, 21, 7, stride=2, padding=3)),
        ("conv2d dilation 2", *conv_case(2, 6, 4, 12, 11, 3, padding=2, dilation=2)),
        ("conv2d groups 2 stride 2", *conv_case(2, 8, 6, 11, 12, 3, stride=2, padding=1, groups=2)),
        ("conv2d depthwise", *conv_case(2, 12, 12, 10, 13, 3, padding=1, groups=12)),
        ("conv2d depthwise multiplier 2", *conv_case(2, 6, 12, 9, 9, 5, padding=2, groups=6)),
        ("conv2d asymmetric padding", *conv4_case(2, 4, 5, 9, 8, 3, (0, 2, 1, 0))),
        ("conv2d empty batch", *conv_case(0, 4, 5, 8, 8, 3, padding=1)),
        ("conv_transpose2d stride 2", *conv_transpose_case(2, 8, 6, 7, 9, 3, stride=2, padding=1,
                                                           output_padding=1)),
        ("conv_transpose2d groups dilation", *conv_transpose_case(2, 6, 9, 6, 5, 3, groups=3,
                                                                  dilation=2)),
        ("local_conv2d 3x3 pad 1", *local_case(2, 5, 7, 11, 13, 3, padding=1)),
        ("local_conv2d stride 2 groups 2", *local_case(3, 8, 6, 13, 12, 3, stride=2, groups=2)),
        ("local_conv2d dilation 2", *local_case(2, 4, 4, 12, 12, 3, padding=1, dilation=2)),
        ("local_conv2d depthwise", *local_case(2, 6, 6, 9, 9, 3, padding=1, groups=6)),
        ("tiled_conv2d 2x3 tiles", *tiled_case(2, 5, 7, 11, 13, 3, (2, 3), padding=1)),
        ("tiled_conv2d tiles not dividing, stride 2",
         *tiled_case(2, 6, 4, 15, 14, 3, (3, 2), stride=2)),
        ("tiled_conv2d depthwise", *tiled_case(2, 8, 8, 10, 10, 3, (2, 2), padding=1, groups=8)),
        ("tiled_conv2d dilation 2", *tiled_case(2, 4, 6, 12, 11, 3, (2, 2), padding=2,
                                                dilation=2)),
        ("max_pool2d 3x3 stride 2 pad 1", *pool_case(
            (2, 19, 13, 15), lambda x: CF.max_pool2d(x, 3, 2, 1))),
        ("max_pool2d 2x2", *pool_case((2, 8, 14, 16), lambda x: CF.max_pool2d(x, 2))),
        ("max_pool2d dilation 2 ceil", *pool_case(
            (2, 5, 13, 12), lambda x: CF.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True))),
        ("avg_pool2d 3x3 stride 1 pad 1", *pool_case(
            (2, 19, 13, 15), lambda x: CF.avg_pool2d(x, 3, 1, 1, count_include_pad=False))),
        ("avg_pool2d ceil divisor", *pool_case(
            (2, 6, 11, 10), lambda x: CF.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                    divisor_override=5))),
        ("adaptive_max_pool2d 5x7 of 13x17", *pool_case(
            (2, 9, 13, 17), lambda x: CF.adaptive_max_pool2d(x, (5, 7)))),
        ("adaptive_max_pool2d global", *pool_case(
            (2, 40, 7, 7), lambda x: CF.adaptive_max_pool2d(x, 1))),
        ("adaptive_avg_pool2d 5x7 of 13x17", *pool_case(
            (2, 9, 13, 17), lambda x: CF.adaptive_avg_pool2d(x, (5, 7)))),
        ("adaptive_avg_pool2d global", *pool_case(
            (2, 40, 7, 7), lambda x: CF.adaptive_avg_pool2d(x, 1))),
        ("adaptive_avg_pool2d upsample", *pool_case(
            (2, 3, 3, 4), lambda x: CF.adaptive_avg_pool2d(x, (5, 7)))),
        ("channel_max_pool 2", *pool_case((2, 38, 5, 7), lambda x: CF.channel_max_pool(x, 2))),
        ("channel_max_pool 3", *pool_case((2, 9, 6, 5), lambda x: CF.channel_max_pool(x, 3))),
        ("max_pool2d empty batch", *pool_case((0, 4, 8, 8), lambda x: CF.max_pool2d(x, 2))),
    ]


def run_case(shapes, call, dtype, channels_last: bool, device="cuda"):
    """One forward and one backward (gradients of every operand), then a
    synchronisation, so that an asynchronous kernel error is raised here."""
    operands = []
    for shape in shapes:
        tensor = torch.randn(shape, device=device, dtype=dtype)
        if channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        operands.append(tensor.requires_grad_())
    output = call(*operands)
    grad_output = torch.randn_like(output)
    torch.autograd.grad(output, operands, grad_output)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32,float16",
                        help="comma-separated dtypes (default: float32,float16)")
    parser.add_argument("--layouts", default="contiguous,channels_last",
                        help="comma-separated layouts (default: contiguous,channels_last)")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print("sanitizer workload: no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    failures, calls = [], 0
    for dtype_name in options.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for layout in options.layouts.split(","):
            for name, shapes, call in cases():
                label = f"{name} | {dtype_name} | {layout}"
                print(f"case: {label}", flush=True)
                try:
                    run_case(shapes, call, dtype, layout == "channels_last")
                    calls += 1
                except Exception:  # noqa: BLE001 (report every failing case, go on)
                    failures.append(label)
                    traceback.print_exc()
                    sys.stderr.flush()
    print(f"sanitizer workload: {calls} cases ran, {len(failures)} raised", flush=True)
    for label in failures:
        print(f"  raised: {label}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
