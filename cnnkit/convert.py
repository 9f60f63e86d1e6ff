"""Swap a model's torch.nn convolution and pooling layers for cnnkit's twins, or back.

    model = torchvision.models.resnet18()
    model = cnnkit.convert(model)                 # a converted deep copy
    model = cnnkit.convert(model, reverse=True)   # and back to torch.nn

Every cnnkit layer subclasses its torch.nn namesake and keeps its attributes,
parameters and buffers under the same names, so a layer is converted by
changing its class and nothing else: parameters, buffers, hooks, training
mode, device and dtype stay exactly as they were, and every reference to the
layer (from its parent, an optimizer, a hook handle, another attribute) sees
the converted layer.
"""
from __future__ import annotations

import copy
import itertools
import warnings

import torch
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from . import functional as CF
from . import nn as cnn

__all__ = ["convert", "ConversionWarning"]


class ConversionWarning(UserWarning):
    """Issued by :func:`convert` for the layers it left as they were (one
    warning per call, listing every such layer and why)."""


# torch.nn class -> its cnnkit twin. Exact classes only: a subclass of
# torch.nn.Conv2d may compute something else in its own forward.
_TO_CNNKIT = {
    torch.nn.Conv1d: cnn.Conv1d,
    torch.nn.Conv2d: cnn.Conv2d,
    torch.nn.ConvTranspose2d: cnn.ConvTranspose2d,
    torch.nn.MaxPool2d: cnn.MaxPool2d,
    torch.nn.AvgPool2d: cnn.AvgPool2d,
    torch.nn.AdaptiveMaxPool2d: cnn.AdaptiveMaxPool2d,
    torch.nn.AdaptiveAvgPool2d: cnn.AdaptiveAvgPool2d,
}
_TO_TORCH = {twin: base for base, twin in _TO_CNNKIT.items()}

# cnnkit layers that torch.nn has no counterpart for (reported by reverse=True).
_CNNKIT_ONLY = (cnn.LocallyConnected2d, cnn.TiledConv2d, cnn.Maxout)


# --------------------------------------------------------------------------- probes
#
# Whether cnnkit serves a device and dtype is found by trying: each kind of
# kernel runs once, forward and backward, on a tiny problem of the layer's
# device and dtype. The answer follows the build (a CUDA kernel present or
# not, the dtypes each backend takes) without a copy of its rules here.


def _tiny(shape, device, dtype):
    return torch.ones(shape, device=device, dtype=dtype, requires_grad=True)


_PROBES = {
    "conv2d": lambda dev, dt: CF.conv2d(_tiny((1, 1, 2, 2), dev, dt), _tiny((1, 1, 2, 2), dev, dt),
                                        _tiny((1,), dev, dt)),
    "conv_transpose2d": lambda dev, dt: CF.conv_transpose2d(
        _tiny((1, 1, 2, 2), dev, dt), _tiny((1, 1, 2, 2), dev, dt), _tiny((1,), dev, dt), stride=2),
    "max_pool2d": lambda dev, dt: CF.max_pool2d(_tiny((1, 1, 2, 2), dev, dt), 2),
    "avg_pool2d": lambda dev, dt: CF.avg_pool2d(_tiny((1, 1, 2, 2), dev, dt), 2),
    "adaptive_max_pool2d": lambda dev, dt: CF.adaptive_max_pool2d(_tiny((1, 1, 2, 2), dev, dt), 1),
    "adaptive_avg_pool2d": lambda dev, dt: CF.adaptive_avg_pool2d(_tiny((1, 1, 2, 2), dev, dt), 1),
}

# The kernel each twin runs (Conv1d runs the 2-D convolution at height 1).
_KERNEL_OF = {
    cnn.Conv1d: "conv2d",
    cnn.Conv2d: "conv2d",
    cnn.ConvTranspose2d: "conv_transpose2d",
    cnn.MaxPool2d: "max_pool2d",
    cnn.AvgPool2d: "avg_pool2d",
    cnn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
    cnn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
}


class _Prober:
    """Runs each (kernel, device, dtype) probe once per conversion; the answer
    is None where the kernel works, else the first line of its error."""

    def __init__(self):
        self._answers: dict = {}

    def __call__(self, kernel: str, device: torch.device, dtype: torch.dtype):
        key = (kernel, device, dtype)
        if key not in self._answers:
            self._answers[key] = self._run(kernel, device, dtype)
        return self._answers[key]

    # The kernels alone are probed: not the autocast rules (cnnkit/_autocast.py),
    # which would accept bfloat16 on the CPU inside a torch.autocast region.
    _NO_AUTOCAST = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU) | \
        torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)

    @classmethod
    def _run(cls, kernel, device, dtype):
        try:
            with torch.inference_mode(False), torch.enable_grad(), \
                    torch._C._ExcludeDispatchKeyGuard(cls._NO_AUTOCAST):
                out = _PROBES[kernel](device, dtype)
                out.sum().backward()
        except Exception as e:  # noqa: BLE001 -- any failure means "cannot serve"
            return (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None


# --------------------------------------------------------------------------- classes


def _plain_class(module):
    """(the class a module was built as, the parametrized subclass or None).

    torch.nn.utils.parametrize gives a parametrized module a class of its own,
    `Parametrized<Name>`, a direct subclass of its original class holding the
    properties that compute the parametrized tensors."""
    cls = type(module)
    if parametrize.is_parametrized(module) and len(cls.__bases__) == 1:
        return cls.__bases__[0], cls
    return cls, None


def _retarget(module, target, param_cls):
    """Give `module` the class `target`, or, if it is parametrized, a new
    parametrized class over `target` with the same members as its old one."""
    if param_cls is None:
        module.__class__ = target
        return
    members = {k: v for k, v in vars(param_cls).items()
               if k not in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__")}
    module.__class__ = type(f"Parametrized{target.__name__}", (target,), members)


def _first_float_tensor(module, recurse):
    for t in itertools.chain(module.parameters(recurse=recurse), module.buffers(recurse=recurse)):
        if t.is_floating_point():
            return t
    return None


def _device_dtype(module, ancestors):
    """The device and dtype a layer will compute in: those of its own weight;
    for a pooling layer (no tensors of its own), those of the nearest
    enclosing module holding a floating parameter or buffer; None if there is
    none (then nothing tells, and the layer is converted)."""
    for m in itertools.chain((module,), reversed(ancestors)):
        t = _first_float_tensor(m, recurse=True)
        if t is not None:
            return t.device, t.dtype
    return None


def _unsupported(module, twin, ancestors, probe):
    """Why cnnkit cannot serve `module` as a `twin`, or None if it can."""
    if twin is cnn.ConvTranspose2d and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (transposed convolution pads with zeros only)"
    where = _device_dtype(module, ancestors)
    if where is None:
        return None
    return probe(_KERNEL_OF[twin], *where)


def _subclass_of(module, table, reverse):
    """The converted class that `module`'s class derives from without being
    it, or None. cnnkit's own layers subclass torch.nn's and are not counted
    as such when converting to cnnkit."""
    if not reverse and isinstance(module, tuple(_TO_TORCH)):
        return None
    return next((base for base in table if isinstance(module, base)), None)


def _explicit_full_padding(module):
    """cnnkit's padding='full' is d*(k-1) on every side; torch.nn takes the numbers."""
    if isinstance(module.padding, str) and module.padding == "full":
        module.padding = tuple(d * (k - 1) for k, d in zip(module.kernel_size, module.dilation))


# --------------------------------------------------------------------------- convert


def convert(model: torch.nn.Module, inplace: bool = False,
            reverse: bool = False) -> torch.nn.Module:
    """Replace every torch.nn convolution and pooling layer of ``model`` by its
    cnnkit twin (``reverse=True``: every cnnkit twin by its torch.nn original).

    Converted classes (exact classes: subclasses of them are left alone and reported)::

        torch.nn.Conv1d              <-> cnnkit.nn.Conv1d
        torch.nn.Conv2d              <-> cnnkit.nn.Conv2d
        torch.nn.ConvTranspose2d     <-> cnnkit.nn.ConvTranspose2d
        torch.nn.MaxPool2d           <-> cnnkit.nn.MaxPool2d
        torch.nn.AvgPool2d           <-> cnnkit.nn.AvgPool2d
        torch.nn.AdaptiveMaxPool2d   <-> cnnkit.nn.AdaptiveMaxPool2d
        torch.nn.AdaptiveAvgPool2d   <-> cnnkit.nn.AdaptiveAvgPool2d

    A layer is converted by changing its class only, so it keeps its
    parameters, buffers, forward and backward hooks, training mode, device and
    dtype. Parametrized layers (``torch.nn.utils.parametrize``, e.g.
    ``parametrizations.weight_norm``) are converted with their parametrizations.
    A layer reached through several parents is converted once, and stays shared.

    Layers cnnkit cannot serve are left as they were and listed, with the
    reason, in one :class:`ConversionWarning`. Whether cnnkit serves a layer's
    device and dtype is found by running each kind of kernel once on a tiny
    problem (e.g. float16 or bfloat16 layers on the CPU, or CUDA layers while
    the build has no CUDA kernel for the operation, stay torch.nn). A pooling
    layer computes in the dtype of its input, which is not known before a
    forward pass: it is judged by the nearest enclosing module holding a
    floating parameter or buffer. Other cases left as they are: transposed
    convolutions with a ``padding_mode`` other than ``'zeros'``, subclasses of
    the converted classes (their own ``forward`` may compute something else),
    lazy layers not yet initialised (run one forward pass first) and, with
    ``reverse=True``, cnnkit layers without a torch.nn counterpart
    (``LocallyConnected2d``, ``TiledConv2d``, ``Maxout``).

    Args:
        model: any ``torch.nn.Module``; it may itself be one of the layers above.
        inplace: convert ``model`` itself (the same module objects and the same
            ``Parameter`` objects, so an optimizer built on it keeps working)
            instead of a ``copy.deepcopy`` of it.
        reverse: convert cnnkit layers back to torch.nn. ``padding='full'``,
            which torch.nn lacks, becomes the equivalent explicit padding
            ``dilation * (kernel_size - 1)``.

    Returns:
        The converted model: ``model`` itself with ``inplace=True``, else its copy.

    Example::

        >>> import torch, cnnkit
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.MaxPool2d(2))
        >>> fast = cnnkit.convert(net)
        >>> [type(m).__name__ for m in fast]
        ['Conv2d', 'ReLU', 'MaxPool2d']
        >>> type(fast[0]) is cnnkit.nn.Conv2d, type(net[0]) is torch.nn.Conv2d
        (True, True)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> torch.allclose(fast(x), net(x), atol=1e-5)
        True
        >>> type(cnnkit.convert(fast, reverse=True)[0]) is torch.nn.Conv2d
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cnnkit.convert: expected model to be a torch.nn.Module, but got "
                        f"{type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    table = _TO_TORCH if reverse else _TO_CNNKIT
    probe = _Prober()
    left: list[tuple[str, str, str]] = []  # (path, class name, reason)
    seen: set[int] = set()

    def visit(module, path, ancestors):
        if id(module) in seen:
            return
        seen.add(id(module))
        cls, param_cls = _plain_class(module)
        name = type(module).__name__
        if cls in table:
            target = table[cls]
            reason = None if reverse else _unsupported(module, target, ancestors, probe)
            if reason is None:
                if reverse and isinstance(module, (cnn.Conv1d, cnn.Conv2d)):
                    _explicit_full_padding(module)
                _retarget(module, target, param_cls)
            else:
                left.append((path, name, reason))
        elif not reverse and isinstance(module, LazyModuleMixin) and \
                module.has_uninitialized_params():
            left.append((path, name, "lazy layer not yet initialised: run one forward pass "
                         "before converting"))
        elif (base := _subclass_of(module, table, reverse)) is not None:
            left.append((path, name, f"a subclass of {base.__module__}.{base.__qualname__}, "
                         "whose forward may compute something else"))
        elif reverse and isinstance(module, _CNNKIT_ONLY):
            left.append((path, name, "torch.nn has no such layer"))
        ancestors.append(module)
        for child_name, child in module._modules.items():
            if child is not None:
                visit(child, f"{path}.{child_name}" if path else child_name, ancestors)
        ancestors.pop()

    visit(model, "", [])
    if left:
        direction = "torch.nn" if reverse else "cnnkit"
        lines = [f"  {path or '(the model itself)'} ({name}): {reason}"
                 for path, name, reason in left]
        warnings.warn(f"cnnkit.convert: left {len(left)} layer(s) as they were, not converted to "
                      f"{direction}:\n" + "\n".join(lines), ConversionWarning, stacklevel=2)
    return model
