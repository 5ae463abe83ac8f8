"""Apply a PruningPlan: slice output filters of pruned layers and input channels of every consumer.

Slicing strategies are small functions in a table keyed by module type; consumers' input indices come
from the graph's slot layout, so a layer that fills several slices of a concatenation (or the same one
several times, SPP-style) is handled in one pass, in any order of layers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.heads import Detect, IDetect

if TYPE_CHECKING:
    from yolo_prune.prune.plan import PruningPlan


def _take(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    """Replace parameter/buffer ``name`` by its selection along ``dim`` (keeps Parameter-ness and grad flag)."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device))  # a new tensor already
    setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new)


def slice_conv_out(conv: nn.Conv2d, index: torch.Tensor) -> None:
    _take(conv, "weight", index, 0)
    _take(conv, "bias", index, 0)
    conv.out_channels = len(index)


def slice_conv_in(conv: nn.Conv2d, index: torch.Tensor) -> None:
    _take(conv, "weight", index, 1)
    conv.in_channels = len(index)


def slice_bn(bn: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _take(bn, name, index, 0)
    bn.num_features = len(index)


def _branches(m: RepConv) -> list[nn.Sequential | nn.Conv2d]:
    return [m.rbr_reparam] if m.rbr_reparam is not None else [m.rbr_dense, m.rbr_1x1]


def slice_out(m: nn.Module, index: torch.Tensor) -> None:
    """Remove output filters of a Conv block or RepConv (conv, bias, BN and its statistics, all branches)."""
    if isinstance(m, Conv):
        slice_conv_out(m.conv, index)
        if isinstance(m.bn, nn.BatchNorm2d):
            slice_bn(m.bn, index)
        return
    for branch in _branches(m):
        if isinstance(branch, nn.Conv2d):
            slice_conv_out(branch, index)
        else:
            slice_conv_out(branch[0], index)
            slice_bn(branch[1], index)
    m.out_channels = len(index)


def slice_in(m: nn.Module, index: torch.Tensor) -> None:
    """Remove input channels of a Conv block or RepConv."""
    if isinstance(m, Conv):
        slice_conv_in(m.conv, index)
        return
    for branch in _branches(m):
        slice_conv_in(branch if isinstance(branch, nn.Conv2d) else branch[0], index)
    m.in_channels = len(index)


def slice_head_in(head: Detect, level_name: str, index: torch.Tensor) -> None:
    """Remove input channels of a head output conv, and of the ImplicitA in front of it."""
    attr, level = level_name.split(".")[-2:]
    slice_conv_in(getattr(head, attr)[int(level)], index)
    if isinstance(head, IDetect) and attr == "m" and len(head.ia) > 0:
        _take(head.ia[int(level)], "implicit", index, 1)


def input_index(graph: PruningGraph, consumer: int, kept: dict[int, torch.Tensor]) -> torch.Tensor:
    """Kept input channels of ``consumer``: per slot, the producer's kept filters shifted by the slot offset."""
    parts, offset = [], 0
    for producer, size in graph[consumer].inputs:
        if producer in kept:
            if int(kept[producer].max()) >= size:
                raise PruningError(f"layer {producer} keeps filter {int(kept[producer].max())} but slot of "
                                   f"layer {consumer} holds only {size} channels: graph does not fit the model")
            parts.append(kept[producer] + offset)
        else:
            parts.append(torch.arange(offset, offset + size))
        offset += size
    return torch.cat(parts)


def apply_plan(model: nn.Module, graph: PruningGraph, plan: PruningPlan) -> nn.Module:
    """Prune ``model`` in place according to ``plan`` and return it."""
    if plan.graph_fingerprint != graph.fingerprint():
        raise PruningError("the pruning plan was made for a different graph; derive the graph from this model")
    kept = plan.kept_map()
    convs = [m for m in model.modules() if isinstance(m, (Conv, RepConv))]
    touched = sorted({c for layer in kept for c, _ in graph[layer].consumers})
    for consumer in touched:  # input indices are computed from the unpruned layout, before any slicing
        index = input_index(graph, consumer, kept)
        node = graph[consumer]
        if node.kind == "head":
            head_name = node.name.rsplit(".", 2)[0]
            slice_head_in(model.get_submodule(head_name), node.name, index)
        else:
            slice_in(convs[consumer], index)
    for layer, index in kept.items():
        slice_out(convs[layer], index)
    return model
