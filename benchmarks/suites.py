"""Benchmark suites: the layer shapes of well-known networks, as plain data.

A suite is a list of layers and one or more batch sizes. A layer names its op
(the key of the op registry in run.py) and its shape without the batch; every
layer runs at each of the suite's batches, or at ``run.py --batch``. Identical
shapes inside a network are listed once unless the network's layer list is the
point (VGG-16's 13 convolutions), and the comment says which layers share a shape.

A suite may also list thread counts (every row runs at each, in the same
run); without them its rows run at torch's default. A "layer" may be a whole
network (``PerSampleNet``: the per-sample gradients of a small CNN).

To add a suite: add a layer class here if the op needs other fields, a
``Suite`` to SUITES, and the op's entry to run.py's OPS registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields


# --------------------------------------------------------------------------- layer shapes


@dataclass(frozen=True)
class Conv2d:
    """``conv2d`` of an (N, C, H, W) input with K filters of C/groups x kernel x kernel."""

    name: str
    C: int
    H: int
    W: int
    K: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    op: str = "conv2d"

    def shape(self, batch: int) -> str:
        extra = "".join([f" d{self.dilation}" if self.dilation != 1 else "",
                         f" g{self.groups}" if self.groups != 1 else "",
                         " +bias" if self.bias else ""])
        return (f"{batch}x{self.C}x{self.H}x{self.W} K={self.K} {self.kernel}x{self.kernel}"
                f" s{self.stride} p{self.padding}{extra}")

    def output_size(self) -> tuple[int, int]:
        extent = self.dilation * (self.kernel - 1) + 1
        return ((self.H + 2 * self.padding - extent) // self.stride + 1,
                (self.W + 2 * self.padding - extent) // self.stride + 1)

    def patch_size(self) -> int:
        """Inputs that one output value sums over: C/groups x kernel x kernel."""
        return self.C // self.groups * self.kernel * self.kernel

    def weight_shape(self) -> tuple[int, ...]:
        return (self.K, self.C // self.groups, self.kernel, self.kernel)

    def bias_shape(self) -> tuple[int, ...]:
        return (self.K,)


@dataclass(frozen=True)
class LocalConv2d(Conv2d):
    """``local_conv2d``: the connectivity of Conv2d, but every output location
    has its own weights, (K, OH, OW, C/groups, kernel, kernel), and bias, (K, OH, OW)."""

    bias: bool = True
    op: str = "local_conv2d"

    def weight_shape(self) -> tuple[int, ...]:
        return (self.K, *self.output_size(), self.C // self.groups, self.kernel, self.kernel)

    def bias_shape(self) -> tuple[int, ...]:
        return (self.K, *self.output_size())


@dataclass(frozen=True)
class TiledConv2d(Conv2d):
    """``tiled_conv2d``: tiles x tiles kernels that the output locations cycle
    through; weight (K, C/groups, kernel, kernel, tiles, tiles), bias (K, tiles, tiles)."""

    tiles: int = 2
    op: str = "tiled_conv2d"

    def shape(self, batch: int) -> str:
        return f"{super().shape(batch)} t{self.tiles}x{self.tiles}"

    def weight_shape(self) -> tuple[int, ...]:
        return (*super().weight_shape(), self.tiles, self.tiles)

    def bias_shape(self) -> tuple[int, ...]:
        return (self.K, self.tiles, self.tiles)


def tiled_3x3(network: str, convs, tiles) -> tuple:
    """The unique shapes among the 3x3 convolutions of `convs`, each as a tiled
    convolution at every tile size; layers that share a shape share a row
    ("vgg16 conv3_2/conv3_3 t2")."""
    names: dict = {}  # shape (a Conv2d without its name) -> layer names
    for conv in convs:
        if conv.kernel == 3:
            names.setdefault(Conv2d(**{**_conv_fields(conv), "name": ""}), []).append(conv.name)
    return tuple(TiledConv2d(**{**_conv_fields(shape), "name": f"{network} {'/'.join(layers)} t{t}"},
                             tiles=t)
                 for shape, layers in names.items() for t in tiles)


def _conv_fields(conv: Conv2d) -> dict:
    return {field.name: getattr(conv, field.name) for field in fields(Conv2d) if field.name != "op"}


@dataclass(frozen=True)
class Pool2d:
    """``max_pool2d`` / ``avg_pool2d`` of an (N, C, H, W) input; stride None = kernel."""

    op: str
    name: str
    C: int
    H: int
    W: int
    kernel: int
    stride: int | None = None
    padding: int = 0
    ceil_mode: bool = False

    def shape(self, batch: int) -> str:
        stride = self.kernel if self.stride is None else self.stride
        ceil = " ceil" if self.ceil_mode else ""
        return (f"{batch}x{self.C}x{self.H}x{self.W} {self.kernel}x{self.kernel}"
                f" s{stride} p{self.padding}{ceil}")

    def output_size(self) -> tuple[int, int]:
        stride = self.kernel if self.stride is None else self.stride

        def size(n):
            span = n + 2 * self.padding - self.kernel
            out = (span + (stride - 1 if self.ceil_mode else 0)) // stride + 1
            # ceil_mode: a window may not start in the right/bottom padding
            return out - 1 if self.ceil_mode and (out - 1) * stride >= n + self.padding else out
        return size(self.H), size(self.W)


@dataclass(frozen=True)
class AdaptivePool2d:
    """``adaptive_avg_pool2d`` / ``adaptive_max_pool2d`` of (N, C, H, W) to output x output."""

    op: str
    name: str
    C: int
    H: int
    W: int
    output: int

    def shape(self, batch: int) -> str:
        return f"{batch}x{self.C}x{self.H}x{self.W} -> {self.output}x{self.output}"


def MaxPool(name, C, H, W, kernel, stride=None, padding=0, ceil_mode=False):
    return Pool2d("max_pool2d", name, C, H, W, kernel, stride, padding, ceil_mode)


def AvgPool(name, C, H, W, kernel, stride=None, padding=0, ceil_mode=False):
    return Pool2d("avg_pool2d", name, C, H, W, kernel, stride, padding, ceil_mode)


def AdaptiveAvgPool(name, C, H, W, output):
    return AdaptivePool2d("adaptive_avg_pool2d", name, C, H, W, output)


def AdaptiveMaxPool(name, C, H, W, output):
    return AdaptivePool2d("adaptive_max_pool2d", name, C, H, W, output)


@dataclass(frozen=True)
class PerSampleNet:
    """A small CNN whose per-sample gradients are timed: ``torch.func.vmap(grad)``
    of each sample's cross-entropy with respect to every parameter.

    layers: Conv2d and LocalConv2d (each followed by a ReLU) and max pools
    (Pool2d), in order, each with the input shape the one before it gives; then
    a Linear from the flattened features to ``classes``. run.py builds it from
    cnnkit.nn layers (Conv2d, LocallyConnected2d, MaxPool2d) and, for the
    ops that compare with PyTorch, once more from their torch.nn twins.
    """

    name: str
    layers: tuple
    classes: int = 10
    op: str = "per_sample_grad"

    def __post_init__(self):
        shape = self.input_shape()
        for layer in self.layers:
            if not isinstance(layer, (Conv2d, Pool2d)) or isinstance(layer, TiledConv2d) or (
                    isinstance(layer, Pool2d) and layer.op != "max_pool2d"):
                raise TypeError(f"{self.name}: {type(layer).__name__} {layer.name!r} is not a "
                                "Conv2d, LocalConv2d or max pool")
            if (layer.C, layer.H, layer.W) != shape:
                raise ValueError(f"{self.name}: {layer.name!r} takes {layer.C}x{layer.H}x{layer.W}, "
                                 f"but the layer before it gives {'x'.join(map(str, shape))}")
            shape = (layer.K if isinstance(layer, Conv2d) else layer.C, *layer.output_size())

    def input_shape(self) -> tuple[int, int, int]:
        first = self.layers[0]
        return first.C, first.H, first.W

    def features(self) -> int:
        """Inputs of the final Linear: the last layer's output, flattened."""
        last = self.layers[-1]
        return (last.K if isinstance(last, Conv2d) else last.C) * math.prod(last.output_size())

    def shape(self, batch: int) -> str:
        parts = []
        for layer in self.layers:
            if isinstance(layer, Pool2d):
                parts.append(f"maxpool {layer.kernel}")
            else:
                kind = "local" if isinstance(layer, LocalConv2d) else "conv"
                stride = f"/s{layer.stride}" if layer.stride != 1 else ""
                parts.append(f"{kind} {layer.C}->{layer.K} {layer.kernel}x{layer.kernel}{stride}"
                             f" p{layer.padding}")
        return (f"{batch}x{'x'.join(map(str, self.input_shape()))}: {', '.join(parts)}, "
                f"linear {self.features()}->{self.classes}")


@dataclass(frozen=True)
class Timing:
    """How run.py times each op of a row (its --min-run-time / --rounds override).

    min_run_time: seconds of timing per op and row, split evenly over `rounds`
    rounds that alternate between cnnkit and the baseline. A round is one
    torch.utils.benchmark blocked_autorange, which first spends a warmup block
    of at least one call; with per_call, a round instead times single calls
    until its share of min_run_time is spent (at least one call), for layers
    whose one call takes seconds (the row's untimed check call warmed them up).
    """

    min_run_time: float = 0.5
    rounds: int = 4
    per_call: bool = False


@dataclass(frozen=True)
class Suite:
    """in_all: part of ``--suite all`` (the default selection for a full CPU run).
    threads: the intra-op thread counts every row runs at, in the same run
    (None: torch's default; run.py's --threads replaces them)."""

    name: str
    description: str
    batches: tuple[int, ...]
    layers: tuple
    timing: Timing = Timing()
    in_all: bool = True
    threads: tuple[int, ...] | None = None

    def batches_label(self) -> str:
        label = ("batch " if len(self.batches) == 1 else "batches ") + ", ".join(map(str, self.batches))
        if self.threads:
            label += f", {' and '.join(map(str, self.threads))} thread{'s' if self.threads != (1,) else ''}"
        return label


# --------------------------------------------------------------------------- ResNet-50
# torchvision's ResNet-50 (v1.5: the stride sits on the 3x3 of a stage's first
# block), 224x224 input. Convolutions have no bias (batch norm follows).
# Per stage: block 0 opens with a 1x1 on the previous stage's output, its 3x3
# carries the stride, and a 1x1 projection ("downsample") matches the shortcut;
# blocks 1.. reduce with a 1x1 from the stage's output width.

RESNET50_CONVS = (
    Conv2d("conv1 7x7/s2 stem", C=3, H=224, W=224, K=64, kernel=7, stride=2, padding=3),
    # layer1, 56x56, width 64 -> 256 (no stride: the max pool already halved it)
    Conv2d("layer1.0.conv1 1x1", C=64, H=56, W=56, K=64, kernel=1),
    Conv2d("layer1.*.conv2 3x3", C=64, H=56, W=56, K=64, kernel=3, padding=1),
    # also layer1.0.downsample: the same 64 -> 256 1x1 at stride 1
    Conv2d("layer1.*.conv3 1x1", C=64, H=56, W=56, K=256, kernel=1),
    Conv2d("layer1.1+.conv1 1x1", C=256, H=56, W=56, K=64, kernel=1),
    # layer2, 56 -> 28, width 128 -> 512
    Conv2d("layer2.0.conv1 1x1", C=256, H=56, W=56, K=128, kernel=1),
    Conv2d("layer2.0.conv2 3x3/s2", C=128, H=56, W=56, K=128, kernel=3, stride=2, padding=1),
    Conv2d("layer2.0.downsample 1x1/s2", C=256, H=56, W=56, K=512, kernel=1, stride=2),
    Conv2d("layer2.*.conv3 1x1", C=128, H=28, W=28, K=512, kernel=1),
    Conv2d("layer2.1+.conv1 1x1", C=512, H=28, W=28, K=128, kernel=1),
    Conv2d("layer2.1+.conv2 3x3", C=128, H=28, W=28, K=128, kernel=3, padding=1),
    # layer3, 28 -> 14, width 256 -> 1024 (6 blocks: most of ResNet-50's FLOPs)
    Conv2d("layer3.0.conv1 1x1", C=512, H=28, W=28, K=256, kernel=1),
    Conv2d("layer3.0.conv2 3x3/s2", C=256, H=28, W=28, K=256, kernel=3, stride=2, padding=1),
    Conv2d("layer3.0.downsample 1x1/s2", C=512, H=28, W=28, K=1024, kernel=1, stride=2),
    Conv2d("layer3.*.conv3 1x1", C=256, H=14, W=14, K=1024, kernel=1),
    Conv2d("layer3.1+.conv1 1x1", C=1024, H=14, W=14, K=256, kernel=1),
    Conv2d("layer3.1+.conv2 3x3", C=256, H=14, W=14, K=256, kernel=3, padding=1),
    # layer4, 14 -> 7, width 512 -> 2048
    Conv2d("layer4.0.conv1 1x1", C=1024, H=14, W=14, K=512, kernel=1),
    Conv2d("layer4.0.conv2 3x3/s2", C=512, H=14, W=14, K=512, kernel=3, stride=2, padding=1),
    Conv2d("layer4.0.downsample 1x1/s2", C=1024, H=14, W=14, K=2048, kernel=1, stride=2),
    Conv2d("layer4.*.conv3 1x1", C=512, H=7, W=7, K=2048, kernel=1),
    Conv2d("layer4.1+.conv1 1x1", C=2048, H=7, W=7, K=512, kernel=1),
    Conv2d("layer4.1+.conv2 3x3", C=512, H=7, W=7, K=512, kernel=3, padding=1),
)

RESNET50_POOLS = (
    MaxPool("maxpool 3x3/s2/p1", C=64, H=112, W=112, kernel=3, stride=2, padding=1),
    AdaptiveAvgPool("avgpool global 7x7 -> 1x1", C=2048, H=7, W=7, output=1),
)

# --------------------------------------------------------------------------- VGG-16
# 224x224 input; every conv 3x3/s1/p1 with bias, every pool 2x2/s2.

VGG16_CONVS = (
    Conv2d("conv1_1", C=3, H=224, W=224, K=64, kernel=3, padding=1, bias=True),
    Conv2d("conv1_2", C=64, H=224, W=224, K=64, kernel=3, padding=1, bias=True),
    Conv2d("conv2_1", C=64, H=112, W=112, K=128, kernel=3, padding=1, bias=True),
    Conv2d("conv2_2", C=128, H=112, W=112, K=128, kernel=3, padding=1, bias=True),
    Conv2d("conv3_1", C=128, H=56, W=56, K=256, kernel=3, padding=1, bias=True),
    Conv2d("conv3_2", C=256, H=56, W=56, K=256, kernel=3, padding=1, bias=True),
    Conv2d("conv3_3", C=256, H=56, W=56, K=256, kernel=3, padding=1, bias=True),
    Conv2d("conv4_1", C=256, H=28, W=28, K=512, kernel=3, padding=1, bias=True),
    Conv2d("conv4_2", C=512, H=28, W=28, K=512, kernel=3, padding=1, bias=True),
    Conv2d("conv4_3", C=512, H=28, W=28, K=512, kernel=3, padding=1, bias=True),
    Conv2d("conv5_1", C=512, H=14, W=14, K=512, kernel=3, padding=1, bias=True),
    Conv2d("conv5_2", C=512, H=14, W=14, K=512, kernel=3, padding=1, bias=True),
    Conv2d("conv5_3", C=512, H=14, W=14, K=512, kernel=3, padding=1, bias=True),
)

VGG16_POOLS = (
    MaxPool("pool1 2x2/s2", C=64, H=224, W=224, kernel=2, stride=2),
    MaxPool("pool2 2x2/s2", C=128, H=112, W=112, kernel=2, stride=2),
    MaxPool("pool3 2x2/s2", C=256, H=56, W=56, kernel=2, stride=2),
    MaxPool("pool4 2x2/s2", C=512, H=28, W=28, kernel=2, stride=2),
    MaxPool("pool5 2x2/s2", C=512, H=14, W=14, kernel=2, stride=2),
)

# --------------------------------------------------------------------------- AlexNet
# torchvision's AlexNet (one tower: no channel groups), 224x224 input, convs with bias.

ALEXNET = (
    Conv2d("conv1 11x11/s4", C=3, H=224, W=224, K=64, kernel=11, stride=4, padding=2, bias=True),
    MaxPool("pool1 3x3/s2", C=64, H=55, W=55, kernel=3, stride=2),  # overlapping pool: 55 -> 27
    Conv2d("conv2 5x5", C=64, H=27, W=27, K=192, kernel=5, padding=2, bias=True),
    MaxPool("pool2 3x3/s2", C=192, H=27, W=27, kernel=3, stride=2),  # 27 -> 13
    Conv2d("conv3 3x3", C=192, H=13, W=13, K=384, kernel=3, padding=1, bias=True),
    Conv2d("conv4 3x3", C=384, H=13, W=13, K=256, kernel=3, padding=1, bias=True),
    Conv2d("conv5 3x3", C=256, H=13, W=13, K=256, kernel=3, padding=1, bias=True),
    MaxPool("pool5 3x3/s2", C=256, H=13, W=13, kernel=3, stride=2),  # 13 -> 6
    # 6x6 -> 6x6 at 224 input (a copy); it only pools for larger images
    AdaptiveAvgPool("avgpool -> 6x6", C=256, H=6, W=6, output=6),
)

# --------------------------------------------------------------------------- quick (the default)
# The configuration the issue's speed targets are measured on: ResNet-50's
# convolutions and pools at batch 8, plus pools that measure what ResNet-50
# lacks. Sized to finish in a few minutes on 2 cores.

QUICK_EXTRA_POOLS = (
    MaxPool("vgg pool2 2x2/s2", C=128, H=112, W=112, kernel=2, stride=2),
    # VGG's pool with averaging, so avg_pool2d is measured on a 2x2 window too
    AvgPool("vgg pool2 as avg 2x2/s2", C=128, H=112, W=112, kernel=2, stride=2),
    # stride-1 'same' pool as in Inception branches; windows overlap 9-fold
    AvgPool("avg 3x3/s1/p1 on vgg conv3", C=256, H=56, W=56, kernel=3, stride=1, padding=1),
    # the max twin of ResNet-50's global pool
    AdaptiveMaxPool("global max 7x7 -> 1x1", C=2048, H=7, W=7, output=1),
)

# --------------------------------------------------------------------------- DeepFace
# The locally connected layers L4-L6 of DeepFace (Taigman et al., CVPR 2014):
# 16 -> 16 channels, no padding, a bias per output unit. Their weights (up to
# 239 MiB for L4) dwarf the activations, so these layers are bound by memory
# traffic, and a batch shares every weight read: measured at 1, 8 and 32.

DEEPFACE_LOCAL = (
    LocalConv2d("L4 9x9", C=16, H=63, W=63, K=16, kernel=9),  # -> 55x55
    LocalConv2d("L5 7x7/s2", C=16, H=55, W=55, K=16, kernel=7, stride=2),  # -> 25x25
    LocalConv2d("L6 5x5", C=16, H=25, W=25, K=16, kernel=5),  # -> 21x21
)

# --------------------------------------------------------------------------- tiled
# The unique 3x3 convolution shapes of ResNet-50 (7) and VGG-16 (9), each with
# 2x2 and 4x4 tiles (bias where the network has one: VGG-16).

TILED = (tiled_3x3("resnet50", RESNET50_CONVS, tiles=(2, 4))
         + tiled_3x3("vgg16", VGG16_CONVS, tiles=(2, 4)))

# --------------------------------------------------------------------------- per-sample gradients
# A small MNIST-sized CNN (1x28x28), once as it is (its torch.nn twin is the
# baseline) and once with its second convolution locally connected (no torch.nn
# twin: the baseline is a loop over the samples). Bias everywhere, as torch.nn's
# layers have by default.

MNIST_CNN = PerSampleNet("mnist cnn", layers=(
    Conv2d("conv1", C=1, H=28, W=28, K=16, kernel=3, padding=1, bias=True),
    MaxPool("pool1", C=16, H=28, W=28, kernel=2),  # 28 -> 14
    Conv2d("conv2", C=16, H=14, W=14, K=32, kernel=3, padding=1, bias=True),
    MaxPool("pool2", C=32, H=14, W=14, kernel=2),  # 14 -> 7
))

MNIST_LOCAL_CNN = PerSampleNet("mnist cnn, conv2 local", op="per_sample_grad_local", layers=(
    Conv2d("conv1", C=1, H=28, W=28, K=16, kernel=3, padding=1, bias=True),
    MaxPool("pool1", C=16, H=28, W=28, kernel=2),
    # 32x14x14 kernels of 16x3x3 and 32x14x14 biases: 909,440 parameters, 3.5 MiB
    # per sample's gradient in float32 (the whole network: 925,290)
    LocalConv2d("conv2 local", C=16, H=14, W=14, K=32, kernel=3, padding=1, bias=True),
    MaxPool("pool2", C=32, H=14, W=14, kernel=2),
))

# --------------------------------------------------------------------------- GPU pools
# Every pool of ResNet-50 and VGG-16, and the quick suite's extra pools (a 2x2
# and an overlapping 3x3 average pool, a global max pool), so that each pooling
# op of the CUDA issue's target is measured.

GPU_POOLS = RESNET50_POOLS + VGG16_POOLS + QUICK_EXTRA_POOLS[1:]

SUITES = {
    suite.name: suite
    for suite in (
        Suite("quick", "ResNet-50 convs and pools at batch 8, plus VGG-sized max/avg pools",
              batches=(8,), layers=RESNET50_CONVS + RESNET50_POOLS + QUICK_EXTRA_POOLS,
              in_all=False),
        Suite("resnet50", "ResNet-50's unique conv layers and its pools",
              batches=(16,), layers=RESNET50_CONVS + RESNET50_POOLS),
        Suite("vgg16", "VGG-16's 13 convs and 5 max pools",
              batches=(4,), layers=VGG16_CONVS + VGG16_POOLS),
        Suite("alexnet", "AlexNet's 5 convs, 3 max pools and adaptive avg pool",
              batches=(32,), layers=ALEXNET),
        # One fwd+bwd call of L4 at batch 32 takes ~0.6 s (cnnkit) and ~3 s
        # (unfold + einsum) on 2 quiet cores: 3 rounds of single calls.
        Suite("local", "local_conv2d on DeepFace's locally connected layers L4-L6",
              batches=(1, 8, 32), layers=DEEPFACE_LOCAL,
              timing=Timing(min_run_time=1.0, rounds=3, per_call=True)),
        # Batch 4, not the quick suite's 8: VGG-16's large layers take seconds
        # per fwd+bwd call for each of cnnkit, the baseline and conv2d.
        Suite("tiled", "tiled_conv2d on ResNet-50's and VGG-16's unique 3x3 convs, "
              "2x2 and 4x4 tiles", batches=(4,), layers=TILED,
              timing=Timing(min_run_time=1.0, rounds=3, per_call=True)),
        # Per-sample gradients at 1 and 2 threads in one run; a call takes
        # tens of milliseconds, blocked_autorange's blocks.
        Suite("per_sample", "per-sample gradients (vmap(grad) of cross-entropy) of an MNIST-sized "
              "CNN vs its torch.nn twin, and of the CNN with a locally connected conv2 vs a loop "
              "over samples", batches=(64,), layers=(MNIST_CNN, MNIST_LOCAL_CNN),
              timing=Timing(min_run_time=2.0, rounds=4), threads=(1, 2)),
        # The CUDA issue's configurations (run with --device cuda; they run on
        # the CPU too, slowly, and are not part of --suite all): ResNet-50 at
        # batch 32, the batch GPU convolution libraries are usually compared
        # at, and the pools of ResNet-50 and VGG-16 at batch 32, where most of
        # them move 10-400 MB per call.
        Suite("resnet50-b32", "ResNet-50's unique conv layers and its pools at batch 32 (GPU)",
              batches=(32,), layers=RESNET50_CONVS + RESNET50_POOLS, in_all=False),
        Suite("pools", "ResNet-50's and VGG-16's pools, plus VGG-sized avg and global max pools, "
              "at batch 32 (GPU)", batches=(32,), layers=GPU_POOLS, in_all=False),
    )
}


# --------------------------------------------------------------------------- targets
# Speed goals from the issues, checked and printed when a run covers them.
# A ratio is cnnkit time / baseline time (below 1 = cnnkit faster); every row
# of (suite, op, mode) on the device, in the target's dtype (any dtype when
# None), must meet max_ratio, min_speedup (the same bound put as "N times
# faster": ratio <= 1 / min_speedup), min_ceiling_fraction, max_scratch_ratio
# (cnnkit's peak extra memory -- the peak beyond the call's outputs and
# gradients, which both sides allocate -- over the baseline's), max_reference_ratio
# (cnnkit time over the time of the op's reference, cnnkit's own conv2d for
# tiled_conv2d) and min_bandwidth_fraction (the op's minimal memory traffic per
# cnnkit time over the copy ceiling: local_conv2d), and their geometric mean
# max_geomean_ratio.


@dataclass(frozen=True)
class Target:
    suite: str
    device: str
    op: str
    mode: str
    dtype: str | None = None
    max_geomean_ratio: float | None = None
    max_ratio: float | None = None
    min_speedup: float | None = None
    min_ceiling_fraction: float | None = None
    max_scratch_ratio: float | None = None
    max_reference_ratio: float | None = None
    min_bandwidth_fraction: float | None = None


POOL_OPS = ("max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d")

TARGETS = (
    Target("quick", "cpu", "conv2d", "fwdbwd", max_geomean_ratio=1.25, max_ratio=2.0),
    # "at least 2x faster than ATen" and ">= 25% of measured copy bandwidth"
    Target("quick", "cpu", "max_pool2d", "fwdbwd", max_ratio=0.5, min_ceiling_fraction=0.25),
    Target("quick", "cpu", "avg_pool2d", "fwdbwd", max_ratio=0.5, min_ceiling_fraction=0.25),
    # issue 3: "at least 3x faster than unfold + einsum at every batch size, with
    # at most a quarter of its peak extra memory"
    Target("local", "cpu", "local_conv2d", "fwdbwd", min_speedup=3.0, max_scratch_ratio=0.25),
    # issue 3: "at least 1.5x faster than one conv per tile phase, and within 2x
    # of cnnkit's own conv2d on the same shape"
    Target("tiled", "cpu", "tiled_conv2d", "fwdbwd", min_speedup=1.5, max_reference_ratio=2.0),
    # per-sample gradients of the MNIST-sized CNN: cnnkit's layers at most 1.5x
    # the time of their torch.nn twins, at every thread count
    Target("per_sample", "cpu", "per_sample_grad", "per_sample", max_ratio=1.5),
    # CUDA issue: conv2d on ResNet-50 at batch 32 against cuDNN (TF32 off), the
    # geometric mean over its layers: float32 within 2x forward and 2.5x
    # forward + backward; float16 and bfloat16 within 2.5x of cuDNN in the
    # same precision.
    Target("resnet50-b32", "cuda", "conv2d", "fwd", dtype="float32", max_geomean_ratio=2.0),
    Target("resnet50-b32", "cuda", "conv2d", "fwdbwd", dtype="float32", max_geomean_ratio=2.5),
    *(Target("resnet50-b32", "cuda", "conv2d", mode, dtype=dtype, max_geomean_ratio=2.5)
      for dtype in ("float16", "bfloat16") for mode in ("fwd", "fwdbwd")),
    # CUDA issue: every pool, forward and forward + backward, at least as fast as
    # PyTorch's CUDA pooling and at 70% or more of the measured device-to-device
    # copy bandwidth.
    *(Target("pools", "cuda", op, mode, max_ratio=1.0, min_ceiling_fraction=0.7)
      for op in POOL_OPS for mode in ("fwd", "fwdbwd")),
    # CUDA issue: local_conv2d at batches 1 to 32 at least 5x faster than unfold +
    # einsum, its minimal traffic at 60% or more of the copy bandwidth.
    *(Target("local", "cuda", "local_conv2d", mode, min_speedup=5.0, min_bandwidth_fraction=0.6)
      for mode in ("fwd", "fwdbwd")),
)
