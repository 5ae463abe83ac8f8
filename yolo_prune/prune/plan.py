"""Decide, then do: a ``PruningPlan`` is data (layer -> kept filter indices) computed from the model."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.prune.context import NEEDS, CriterionContext
from yolo_prune.prune.criteria import LayerFilters, criterion_name, get_criterion
from yolo_prune.prune.params import LayerRates, kept_count


@dataclass(frozen=True)
class LayerPlan:
    """One layer's decision: rate asked, filters before, kept indices (sorted)."""

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


def layer_filters(module: nn.Module, generator: torch.Generator, name: str, layer: int = -1,
                  context: CriterionContext | None = None) -> LayerFilters:
    """The weights and BN scales a criterion sees for a Conv or RepConv (both RepConv branches)."""
    if isinstance(module, Conv):
        gammas = (module.bn.weight,) if isinstance(module.bn, nn.BatchNorm2d) else ()
        return LayerFilters((module.conv.weight,), gammas, generator, name, layer, context)
    if module.rbr_reparam is not None:
        return LayerFilters((module.rbr_reparam.weight,), (), generator, name, layer, context)
    branches = (module.rbr_dense, module.rbr_1x1)
    return LayerFilters(tuple(b[0].weight for b in branches), tuple(b[1].weight for b in branches), generator, name,
                        layer, context)


def resolve_rates(graph: PruningGraph, params: LayerRates | float) -> LayerRates:
    """Expand a global rate to every prunable layer and validate explicit layer indices."""
    if isinstance(params, float):
        return [(i, params) for i in graph.prunable]
    for layer, _ in params:
        if not 0 <= layer < len(graph):
            raise PruningError(f"layer {layer} is out of range: the model has conv layers 0..{graph.nconv - 1} "
                               f"(+ head convs {graph.nconv}..{len(graph) - 1})")
        node = graph[layer]
        if not node.prunable:
            raise PruningError(f"layer {layer} ({node.name}) cannot be pruned: {node.reason}")
    return list(params)


def make_plan(model: nn.Module, graph: PruningGraph, params: LayerRates | float, criterion: str | int = "l2",
              round_to: int | None = None, seed: int = 0, context: CriterionContext | None = None) -> PruningPlan:
    """Choose the filters to keep in each listed layer (the model is not changed).

    ``context`` carries data-driven / gradient scores (see :mod:`.context`); without one, criteria that need
    calibration images raise a PruningError saying so.
    """
    name = criterion_name(criterion)
    score_fn = get_criterion(name)
    modules = [m for m in model.modules() if isinstance(m, (Conv, RepConv))]
    if len(modules) != graph.nconv:
        raise PruningError(f"the pruning graph has {graph.nconv} conv layers but the model has {len(modules)}")
    generator = torch.Generator().manual_seed(seed)
    rates = sorted(resolve_rates(graph, params))
    if name in NEEDS:
        context = context or CriterionContext(model, graph)
        context.prepare(name, [layer for layer, _ in rates])
    layers = []
    for layer, rate in rates:
        node = graph[layer]
        before = node.out_channels
        if before != _out_channels(modules[layer]):
            raise PruningError(f"layer {layer} ({node.name}): graph says {before} filters, model has "
                               f"{_out_channels(modules[layer])}; derive the graph from this model")
        scores = score_fn(layer_filters(modules[layer], generator, node.name, layer, context))
        n_keep = kept_count(before, rate, round_to)
        order = torch.sort(scores.cpu(), stable=True).indices  # ascending: removed first
        kept = tuple(sorted(order[before - n_keep:].tolist()))
        layers.append(LayerPlan(layer, rate, before, kept))
    return PruningPlan(tuple(layers), name, round_to, seed, graph.fingerprint())


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, Conv):
        return m.conv.out_channels
    return (m.rbr_reparam if m.rbr_reparam is not None else m.rbr_dense[0]).out_channels
