"""Decide, then do: a ``PruningPlan`` is data (layer -> kept filter indices) computed from the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.criteria import criterion_name, get_criterion
from yolo_prune.prune.params import LayerRates, kept_count
from yolo_prune.prune.units import layer_filters, out_channels


@dataclass(frozen=True)
class LayerPlan:
    """One layer's decision: rate asked, filters before, kept indices (sorted). For a layer of a coupled group
    the decision holds for every member of the group (scored jointly: summed criterion)."""

    layer: int
    rate: float
    before: int
    kept: tuple[int, ...]


@dataclass(frozen=True)
class PruningPlan:
    """What to remove, how it was chosen, and which graph it refers to."""

    layers: tuple[LayerPlan, ...]
    criterion: str
    round_to: int | None
    seed: int
    graph_fingerprint: str

    def kept_map(self) -> dict[int, torch.Tensor]:
        return {lp.layer: torch.tensor(lp.kept, dtype=torch.long) for lp in self.layers}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [{**lp, "kept": list(lp["kept"])} for lp in d["layers"]]
        return d


def resolve_rates(graph: PruningGraph, params: LayerRates | float) -> LayerRates:
    """Expand a global rate to every prunable layer (one entry per coupled group: its first layer) and validate
    explicit layer indices (two layers of one coupled group cannot both be listed)."""
    if isinstance(params, float):
        return [(unit[0], params) for unit in graph.prunable_units]
    listed: dict[tuple[int, ...], int] = {}
    for layer, _ in params:
        if not 0 <= layer < len(graph):
            raise PruningError(f"layer {layer} is out of range: the model has conv layers 0..{graph.nconv - 1} "
                               f"(+ head convs {graph.nconv}..{len(graph) - 1})")
        node = graph[layer]
        if not node.prunable:
            raise PruningError(f"layer {layer} ({node.name}) cannot be pruned: {node.reason}")
        group = graph.group_of(layer)
        if group in listed:
            raise PruningError(f"layers {listed[group]} and {layer} are coupled by a residual add (group "
                               f"{list(group)}: pruned together with the same filters); list only one of them")
        listed[group] = layer
    return list(params)


def make_plan(model: nn.Module, graph: PruningGraph, params: LayerRates | float, criterion: str | int = "l2",
              round_to: int | None = None, seed: int = 0) -> PruningPlan:
    """Choose the filters to keep in each listed layer (the model is not changed)."""
    name = criterion_name(criterion)
    score_fn = get_criterion(name)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for layer, rate in sorted(resolve_rates(graph, params)):
        before = graph[layer].out_channels
        for member in graph.group_of(layer):
            node = graph[member]
            if out_channels(model, node) != before:
                raise PruningError(f"layer {member} ({node.name}): graph says {before} filters, model has "
                                   f"{out_channels(model, node)}; derive the graph from this model")
        scores = sum(score_fn(layer_filters(model, graph[m], generator)) for m in graph.group_of(layer))
        kept = choose_kept(scores, rate, round_to, graph.parts_of(layer))
        layers.append(LayerPlan(layer, rate, len(scores), kept))
    return PruningPlan(tuple(layers), name, round_to, seed, graph.fingerprint())


def choose_kept(scores: torch.Tensor, rate: float, round_to: int | None = None, parts: int = 1) -> tuple[int, ...]:
    """The highest-scoring filters to keep (sorted; ties keep the higher index). A layer read in ``parts`` equal
    chunks (Darknet route groups) keeps the same number in each chunk, so every chunk stays equal."""
    per = len(scores) // parts
    n_keep = kept_count(per, rate, round_to)
    kept: list[int] = []
    for j in range(parts):
        order = torch.sort(scores[j * per:(j + 1) * per].cpu(), stable=True).indices  # ascending: removed first
        kept += (order[per - n_keep:] + j * per).tolist()
    return tuple(sorted(kept))


def placeholder_plan(graph: PruningGraph, pairs: LayerRates, round_to: int | None = None) -> PruningPlan:
    """A valid plan keeping arbitrary filters (the right number in every chunk): for counting costs."""
    layers = tuple(LayerPlan(layer, rate, graph[layer].out_channels,
                             choose_kept(torch.zeros(graph[layer].out_channels), rate, round_to, graph.parts_of(layer)))
                   for layer, rate in pairs)
    return PruningPlan(layers, "count", round_to, 0, graph.fingerprint())
