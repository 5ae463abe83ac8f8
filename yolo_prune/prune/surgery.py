"""Apply a PruningPlan: slice output filters of pruned layers and input channels of every consumer.

How each kind of node is sliced lives in :mod:`.units` (a table keyed by node kind); consumers' input indices
come from the graph's slot layout, so a layer that fills several slices of a concatenation (or the same one
several times, SPP-style) is handled in one pass, in any order of layers. A plan entry for one member of a
coupled group (a residual add) applies to every member: they lose the same filters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.units import slice_bn, slice_conv_in, slice_conv_out, slice_in, slice_out

if TYPE_CHECKING:
    from yolo_prune.prune.plan import PruningPlan

__all__ = ["apply_plan", "coupled_kept", "input_index", "slice_bn", "slice_conv_in", "slice_conv_out"]


def coupled_kept(graph: PruningGraph, plan: PruningPlan) -> dict[int, torch.Tensor]:
    """Kept filters of every layer the plan touches, each coupled group's members included."""
    kept: dict[int, torch.Tensor] = {}
    for layer, index in plan.kept_map().items():
        for member in graph.group_of(layer):
            if member in kept and not torch.equal(kept[member], index):
                raise PruningError(f"layers {layer} and {member} are coupled by a residual add "
                                   f"(group {list(graph.group_of(layer))}) but the plan keeps different filters")
            kept[member] = index
    return kept


def input_index(graph: PruningGraph, consumer: int, kept: dict[int, torch.Tensor]) -> torch.Tensor:
    """Kept input channels of ``consumer``: per slot, the producer's kept filters shifted by the slot offset
    (a slot holding chunk ``part`` of ``parts`` takes the kept filters inside that chunk)."""
    pieces, offset = [], 0
    for slot in graph[consumer].inputs:
        if slot.producer in kept:
            index = kept[slot.producer]
            full, lo = slot.size * slot.parts, slot.part * slot.size
            if int(index.max()) >= full:
                raise PruningError(f"layer {slot.producer} keeps filter {int(index.max())} but slot of "
                                   f"layer {consumer} holds only {full} channels: graph does not fit the model")
            if slot.parts > 1:
                index = index[(index >= lo) & (index < lo + slot.size)] - lo
            pieces.append(index + offset)
        else:
            pieces.append(torch.arange(offset, offset + slot.size))
        offset += slot.size
    return torch.cat(pieces)


def apply_plan(model: nn.Module, graph: PruningGraph, plan: PruningPlan) -> nn.Module:
    """Prune ``model`` in place according to ``plan`` and return it."""
    if plan.graph_fingerprint != graph.fingerprint():
        raise PruningError("the pruning plan was made for a different graph; derive the graph from this model")
    kept = coupled_kept(graph, plan)
    touched = sorted({c for layer in kept for c, _ in graph[layer].consumers})
    indices = {c: input_index(graph, c, kept) for c in touched}  # from the unpruned layout, before any slicing
    for consumer, index in indices.items():
        slice_in(model, graph[consumer], index)
    for layer, index in kept.items():
        slice_out(model, graph[layer], index)
    return model
