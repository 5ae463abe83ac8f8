"""Decide, then do: a ``PruningPlan`` is data (layer -> kept filter indices) computed from the model.

Scoring strategies (plan-level, any model family): ``sequential`` scores the listed layers in ascending
order, each on its weights as they are at that moment, i.e. without the input channels that earlier listed
producers removed (the published ``prune_structured`` applies layers one after another; Li et al., ICLR 2017,
call it "greedy"). ``independent`` scores every layer on its unpruned weights. Both are one pass over the
layers: the visible input channels come from the graph's slot offsets, no model is rebuilt. A coupled group
(layers joined by a residual add) is one decision: its members' scores are summed, each member seen through
its own visible inputs, and all of them keep the same filters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.context import NEEDS, CriterionContext
from yolo_prune.prune.criteria import criterion_name, get_criterion
from yolo_prune.prune.params import LayerRates, kept_count
from yolo_prune.prune.surgery import input_index
from yolo_prune.prune.units import layer_filters, out_channels


@dataclass(frozen=True)
class LayerPlan:
    """One layer's decision: rate asked, filters before, kept indices (sorted). For a layer of a coupled group
    the decision holds for every member of the group."""

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
    scoring: str = "sequential"

    def kept_map(self) -> dict[int, torch.Tensor]:
        return {lp.layer: torch.tensor(lp.kept, dtype=torch.long) for lp in self.layers}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [{**lp, "kept": list(lp["kept"])} for lp in d["layers"]]
        return d


SCORING = {"sequential": "sequential", "greedy": "sequential", "independent": "independent"}


def scoring_name(value: str) -> str:
    """Normalise a scoring strategy (``sequential``, alias ``greedy``; ``independent``)."""
    name = SCORING.get(str(value).strip().lower())
    if name is None:
        raise PruningError(f"unknown scoring {value!r}; known: sequential (alias greedy: the published pruner's "
                           f"order), independent (every layer on its unpruned weights)")
    return name


def layer_generator(seed: int, layer: int) -> torch.Generator:
    """The random criterion's generator for one layer: independent of which other layers are listed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + layer) % (2 ** 63))


def visible_inputs(graph: PruningGraph, layer: int, decided: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Input channels of ``layer`` left after the already decided producers removed theirs (None: all)."""
    if not any(slot.producer in decided for slot in graph[layer].inputs):
        return None
    return input_index(graph, layer, decided)


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
              round_to: int | None = None, seed: int = 0, scoring: str = "sequential",
              context: CriterionContext | None = None) -> PruningPlan:
    """Choose the filters to keep in each listed layer, in ascending layer order (the model is not changed).

    ``scoring="sequential"`` gives the published pruner's choices (each layer scored after the earlier listed
    layers removed their filters); ``"independent"`` scores every layer on the unpruned weights. ``context``
    carries data-driven / gradient scores (:mod:`.context`), computed on the unpruned model whatever the scoring;
    without one, criteria that need calibration images raise a PruningError saying so.
    """
    name, strategy = criterion_name(criterion), scoring_name(scoring)
    score_fn = get_criterion(name)
    rates = sorted(resolve_rates(graph, params))
    if name in NEEDS:
        context = context or CriterionContext(model, graph)
        context.prepare(name, [layer for layer, _ in rates])
    layers, decided = [], {}
    for layer, rate in rates:
        before = graph[layer].out_channels
        group = graph.group_of(layer)
        for member in group:
            node = graph[member]
            if out_channels(model, node) != before:
                raise PruningError(f"layer {member} ({node.name}): graph says {before} filters, model has "
                                   f"{out_channels(model, node)}; derive the graph from this model")
        generator = layer_generator(seed, layer)
        scores = sum(score_fn(layer_filters(model, graph[m], generator,
                                            visible_inputs(graph, m, decided) if strategy == "sequential" else None,
                                            context))
                     for m in group)
        kept = choose_kept(scores, rate, round_to, graph.parts_of(layer))
        layers.append(LayerPlan(layer, rate, before, kept))
        for m in group:
            decided[m] = torch.tensor(kept, dtype=torch.long)
    return PruningPlan(tuple(layers), name, round_to, seed, graph.fingerprint(), strategy)


def choose_kept(scores: torch.Tensor, rate: float, round_to: int | None = None, parts: int = 1) -> tuple[int, ...]:
    """The highest-scoring filters to keep (sorted; ties as ``torch.argsort``, as the published pruner). A layer read
    in ``parts`` equal chunks (Darknet route groups) keeps the same number in each chunk, so every chunk stays equal."""
    per = len(scores) // parts
    n_keep = kept_count(per, rate, round_to)
    kept: list[int] = []
    for j in range(parts):
        order = torch.argsort(scores[j * per:(j + 1) * per].cpu())  # ascending: removed first
        kept += (order[per - n_keep:] + j * per).tolist()
    return tuple(sorted(kept))


def pruned_width(graph: PruningGraph, layer: int, rate: float, round_to: int | None = None) -> int:
    """Filters ``layer`` (and its coupled group) keeps at ``rate``: the pruner's rounding per chunk."""
    parts = graph.parts_of(layer)
    return kept_count(graph[layer].out_channels // parts, rate, round_to) * parts
