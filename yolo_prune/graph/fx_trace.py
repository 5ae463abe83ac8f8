"""Tracing networks that are not YOLOv7 cfg models (torchvision classifiers, SCNNB) with ``torch.fx``.

The network is traced symbolically; each fx node is handed to the tracer of its module type (the table in
:mod:`.derive`) or of its function (residual add, flatten, concatenation, functional ReLU). A BatchNorm2d that
reads nothing but a Conv2d's output is attached to that conv (sliced with its filters), as fx's own conv-BN
fusion pattern does. Anything else stops with an error naming the operation.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.graph.node import Slot

_ADD = {operator.add, operator.iadd, torch.add}
_SAME_FUNCTIONS = {torch.flatten, F.relu, torch.relu, F.relu6, F.silu, F.leaky_relu, F.adaptive_avg_pool2d,
                   F.max_pool2d, F.avg_pool2d, F.dropout}
_SAME_METHODS = {"flatten", "relu", "relu_", "contiguous"}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}


class _LeafTracer(fx.Tracer):
    """fx's tracer, with FBS gated convs kept whole (they act as one conv in the graph)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from yolo_prune.models.gating import GatedConv

        return isinstance(m, GatedConv) or super().is_leaf_module(m, qualname)


def _symbolic(model: nn.Module) -> fx.GraphModule:
    try:
        tracer = _LeafTracer()
        return fx.GraphModule(model, tracer.trace(model))
    except Exception as exc:  # noqa: BLE001 - fx raises many types; the message says what failed
        raise PruningError(f"cannot trace {type(model).__name__} with torch.fx to derive its pruning graph: "
                           f"{type(exc).__name__}: {exc}") from None


def _conv_bn_pairs(gm: fx.GraphModule) -> dict[str, str]:
    """conv module path -> BatchNorm2d path, where the BN is the conv's only reader."""
    modules = dict(gm.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            pairs[src.target] = node.target
    return pairs


def _input_channels(model: nn.Module, gm: fx.GraphModule) -> int:
    """Channels of the network input: ``model.ch_in`` or the first conv's ``in_channels``."""
    if hasattr(model, "ch_in"):
        return int(model.ch_in)
    first = next((m for m in gm.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise PruningError(f"{type(model).__name__} has no Conv2d: nothing to prune")
    return first.in_channels


def _function_tracer(node: fx.Node, tracers: dict[type, Callable]) -> Callable | None:
    """The tracer of a call_function/call_method node, or None when the operation is unknown."""
    from yolo_prune.graph.derive import _concat, _same, _shortcut

    if node.op == "call_function":
        if node.target in _ADD:
            return _shortcut
        if node.target in _SAME_FUNCTIONS:
            return _same
        if node.target is torch.cat and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1:
            return _concat
    if node.op == "call_method":
        if node.target in _ADD_METHODS:
            return _shortcut
        if node.target in _SAME_METHODS:
            return _same
    return None


def _layouts_of(value: Any, layouts: dict[fx.Node, list]) -> list:
    """Input layouts of an fx node's tensor arguments (lists, e.g. of torch.cat, flattened)."""
    if isinstance(value, fx.Node):
        return [layouts[value]] if value in layouts else []
    if isinstance(value, (list, tuple)):
        return [lay for v in value for lay in _layouts_of(v, layouts)]
    return []


def trace_network(model: nn.Module, tracer: Any, tracers: dict[type, Callable]) -> PruningGraph:
    """The pruning graph of ``model`` from its fx trace; ``tracer`` is a fresh ``derive._Tracer``."""
    gm = _symbolic(model)
    modules = dict(gm.named_modules())
    tracer.bn_of = _conv_bn_pairs(gm)
    layouts: dict[fx.Node, list] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            layouts[node] = [Slot(None, _input_channels(model, gm))]
            continue
        if node.op == "output":
            continue
        if node.op == "call_module":
            m = modules[node.target]
            fn = next((f for cls, f in tracers.items() if type(m) is cls), None)
            what = f"module {node.target} ({type(m).__name__})"
        else:
            m, fn = node.target, _function_tracer(node, tracers)
            what = f"operation {getattr(node.target, '__name__', node.target)} at {node.name}"
        if fn is None:
            raise PruningError(f"cannot derive a pruning graph through {what}; supported modules: "
                               f"{', '.join(sorted(c.__name__ for c in tracers))}; functions: add, flatten, "
                               f"cat(dim=1), relu")
        layouts[node] = fn(tracer, str(node.target) if node.op == "call_module" else node.name, m,
                           _layouts_of(list(node.args), layouts))
    return tracer.freeze()
