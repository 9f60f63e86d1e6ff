"""Automatic mixed precision (``torch.autocast``) for the cnnkit ops.

Inside ``torch.autocast``, PyTorch casts the inputs of its own convolutions to
the autocast dtype ("lower_precision_fp" ops). A custom op has no such rule
unless one is registered, and would receive whatever dtypes the model hands it:
bfloat16 activations from the previous layer beside float32 weights, which
the kernels reject. This module registers a rule for every cnnkit forward op
(every ``torch.ops.cnnkit.*`` op in the registry except the ``*_backward`` ones,
which autograd calls with the dtypes the forward saved):

- **CPU** (``torch.autocast("cpu", dtype=torch.bfloat16)`` or ``float16``):
  CPU autocast runs cnnkit kernels in float32 and returns the autocast dtype.
  The CPU kernels are float32/float64 only, so floating inputs are cast to
  float32, the op runs, and its float32 outputs are cast to the autocast dtype,
  as a lower-precision op would return them: a layer after it sees the dtype
  it would see after PyTorch's own convolution. Integer outputs (pooling
  indices) are left alone.
- **CUDA** (``torch.autocast("cuda", dtype=torch.float16 or torch.bfloat16)``):
  floating inputs are cast to the autocast dtype and the op runs in it (its
  kernels accumulate in float32), as PyTorch's convolutions do.

In both, float64 tensors are left as they are (ATen's rule: autocast never
lowers double precision), as are tensors on another device type, and the op
runs with autocast turned off for its device (the rule runs once, not again
for the ops it calls). The casts are ordinary differentiable ``Tensor.to``
calls, so autograd runs through them: the op's backward gets float32 (CPU) or
autocast-dtype (CUDA) gradients, and the gradients of float32 parameters are
float32, as under PyTorch's own autocast.
"""
from __future__ import annotations

import collections.abc

import torch

__all__ = ["AUTOCAST_OPS", "forward_op_names"]

_DEVICE_KEYS = {
    "cpu": torch._C.DispatchKey.AutocastCPU,
    "cuda": torch._C.DispatchKey.AutocastCUDA,
}


def forward_op_names() -> list[str]:
    """Names of the cnnkit forward ops in the dispatcher's registry
    (``conv2d``, ``max_pool2d``, ...): every ``cnnkit::*`` op whose name does
    not contain ``_backward``."""
    names = (n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("cnnkit::"))
    return sorted(n for n in names if "_backward" not in n)


def _cast_inputs(value, device_type: str, dtype: torch.dtype):
    """`value` with every floating tensor on `device_type` other than float64
    cast to `dtype`; lists and tuples are cast element-wise, anything else kept."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype != torch.float64 and \
                value.device.type == device_type and value.dtype != dtype:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_inputs(v, device_type, dtype) for v in value)
    return value


def _cast_outputs(value, from_dtype: torch.dtype, to_dtype: torch.dtype):
    """`value` (a tensor or a tuple of them) with its `from_dtype` tensors cast to `to_dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(to_dtype) if value.dtype == from_dtype else value
    if isinstance(value, collections.abc.Sequence):
        return type(value)(_cast_outputs(v, from_dtype, to_dtype) for v in value)
    return value


def _make_rule(op, device_type: str):
    """The autocast rule of `op` (an OpOverload) for `device_type` ("cpu" or
    "cuda"), as a function of the op's arguments."""
    exclude = torch._C.DispatchKeySet(_DEVICE_KEYS[device_type])

    if device_type == "cpu":
        def rule(*args):
            dtype = torch.get_autocast_dtype("cpu")
            args = _cast_inputs(args, "cpu", torch.float32)
            with torch._C._ExcludeDispatchKeyGuard(exclude):
                out = op(*args)
            return _cast_outputs(out, torch.float32, dtype)
    else:
        def rule(*args):
            dtype = torch.get_autocast_dtype(device_type)
            args = _cast_inputs(args, device_type, dtype)
            with torch._C._ExcludeDispatchKeyGuard(exclude):
                return op(*args)

    rule.__name__ = f"cnnkit_{op._opname}_autocast_{device_type}"
    return rule


def _register():
    """Register the rules of every forward op for AutocastCPU and AutocastCUDA:
    with the dispatcher (eager calls) and as the op's Python kernel for that key
    (used by tracing under the Python dispatcher, as torch.compile does)."""
    lib = torch.library.Library("cnnkit", "IMPL")
    names = forward_op_names()
    for name in names:
        op = getattr(torch.ops.cnnkit, name).default
        for device_type, key in _DEVICE_KEYS.items():
            rule = _make_rule(op, device_type)
            lib.impl(name, lambda _keyset, *args, _rule=rule: _rule(*args), key.name,
                     with_keyset=True)
            op.py_kernels.pop(key, None)
            op.py_impl(key)(rule)
    return lib, tuple(names)


# Kept alive for the life of the process: dropping the Library object would
# unregister the kernels.
_LIB, AUTOCAST_OPS = _register()
