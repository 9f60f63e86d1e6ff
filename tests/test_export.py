"""torch.export and AOTInductor of a network with every cnnkit layer: the ops
stay single graph nodes (torch.ops.cnnkit.*) through export, and the
ahead-of-time compiled package calls cnnkit's kernels and matches eager."""
from __future__ import annotations

import pytest
import torch

from test_func_transforms import SmallCNN

F32 = torch.float32


def _exported():
    model = SmallCNN().eval()
    x = torch.randn(2, 1, 12, 12)
    return model, x, torch.export.export(model, (x,))


def test_export_keeps_every_op():
    model, x, program = _exported()
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    for op in ("conv2d", "local_conv2d", "tiled_conv2d", "conv_transpose2d", "max_pool2d",
               "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "channel_max_pool"):
        assert f"cnnkit.{op}.default" in targets
    assert not any(t.startswith("aten.conv") or "pool" in t and t.startswith("aten.")
                   for t in targets)
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.slow
def test_aot_inductor_package(tmp_path):
    model, x, program = _exported()
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "model.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(runner(x), model(x))
    other = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(runner(other), model(other))
