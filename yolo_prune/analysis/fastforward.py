"""Partial forward passes: run a model once, cache every layer's output, then re-run only the layers that
depend on a changed one. Used by the sensitivity analysis, where pruning layer L changes nothing upstream.

Networks without cfg rows (the classification CNNs) have no cached prefix: ``run_all`` keeps only the output and
``run_from`` runs the whole (masked) network again, which the same property makes exact.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.heads import IDetect
from yolo_prune.models.model import Model


def run_all(model: nn.Module, x: torch.Tensor) -> list:
    """Every cfg layer's output for input ``x`` (the last one is the head's output); other networks: [output]."""
    if not isinstance(model, Model):
        return [model(x)]
    outputs: list = []
    for spec, m in zip(model.specs, model.model):
        outputs.append(m(_inputs(spec, outputs, x)))
    return outputs


def _inputs(spec, outputs: Sequence, x: torch.Tensor):
    sources = spec.sources()
    if isinstance(spec.from_, int):
        return x if sources[0] == -1 else outputs[sources[0]]
    return [x if s == -1 else outputs[s] for s in sources]


def downstream_layers(model: nn.Module) -> list[list[int]] | None:
    """For each cfg layer L, the sorted layers whose output depends on L (L included); None without cfg rows."""
    if not isinstance(model, Model):
        return None
    n = len(model.specs)
    deps: list[list[int]] = []
    for start in range(n):
        changed = {start}
        for spec in model.specs[start + 1:]:
            if any(s in changed for s in spec.sources()):
                changed.add(spec.index)
        deps.append(sorted(changed))
    return deps


def run_from(model: nn.Module, cache: Sequence, layers: Sequence[int], x: torch.Tensor):
    """Re-run ``layers`` (sorted, downstream of a change) reading unchanged inputs from ``cache`` (other networks:
    the whole network)."""
    if not isinstance(model, Model):
        return model(x)
    outputs = list(cache)
    for i in layers:
        spec = model.specs[i]
        outputs[i] = model.model[i](_inputs(spec, outputs, x))
    return outputs[-1]


def layer_of(graph: PruningGraph, conv: int) -> int:
    """Top-level cfg layer that holds conv ``conv`` (names look like ``model.<layer>...``); for a coupled group
    the earliest member's layer (everything after it is re-run)."""
    return min(int(graph[m].name.split(".")[1]) for m in graph.group_of(conv))


@contextmanager
def masked(model: nn.Module, graph: PruningGraph, conv: int, removed: Sequence[int]) -> Iterator[None]:
    """Zero filters ``removed`` of conv ``conv`` (and of every layer coupled with it) after its activation (after a
    plain conv's BN; after the ImplicitA they reach).

    By the pruned == masked property this gives the pruned model's outputs without building it.
    """
    index = torch.as_tensor(list(removed), dtype=torch.long)
    handles = []

    def zero(_m: nn.Module, _i, out: torch.Tensor) -> torch.Tensor:
        return out.index_fill(1, index.to(out.device), 0)

    head = model.detect if isinstance(model, Model) else None
    for member in graph.group_of(conv):
        handles.append(model.get_submodule(graph[member].mask_point).register_forward_hook(zero))
        for consumer, _ in graph[member].consumers:
            node = graph[consumer]
            if node.kind == "head" and isinstance(head, IDetect) and len(head.ia) > 0 and ".m." in node.name:
                handles.append(head.ia[int(node.name.rsplit(".", 1)[1])].register_forward_hook(zero))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
