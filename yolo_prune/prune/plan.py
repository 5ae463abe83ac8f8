"""Decide, then do: a ``PruningPlan`` is data (layer -> kept filter indices) computed from the model.

Scoring strategies (plan-level, any model family): ``sequential`` scores the listed layers in ascending
order, each on its weights as they are at that moment, i.e. without the input channels that earlier listed
producers removed (the published ``prune_structured`` applies layers one after another; Li et al., ICLR 2017,
call it "greedy"). ``independent`` scores every layer on its unpruned weights. Both are one pass over the
layers: the visible input channels come from the graph's slot offsets, no model is rebuilt.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.prune.context import NEEDS, CriterionContext
from yolo_prune.prune.criteria import LayerFilters, criterion_name, get_criterion, score_dtype
from yolo_prune.prune.params import LayerRates, kept_count
from yolo_prune.prune.surgery import input_index


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


def layer_filters(module: nn.Module, generator: torch.Generator, name: str,
                  inputs: torch.Tensor | None = None, layer: int = -1,
                  context: CriterionContext | None = None) -> LayerFilters:
    """The weights and BN scales a criterion sees for a Conv or RepConv (both RepConv branches), restricted to
    the input channels ``inputs`` (None: all); ``layer`` and ``context`` for data-driven criteria."""
    if isinstance(module, Conv):
        gammas = (module.bn.weight,) if isinstance(module.bn, nn.BatchNorm2d) else ()
        convs, bns = (module.conv,), gammas
    elif module.rbr_reparam is not None:
        convs, bns = (module.rbr_reparam,), ()
    else:
        branches = (module.rbr_dense, module.rbr_1x1)
        convs, bns = tuple(b[0] for b in branches), tuple(b[1].weight for b in branches)
    weights = tuple(c.weight if inputs is None else _input_slice(c.weight, inputs) for c in convs)
    return LayerFilters(weights, bns, generator, name, inputs, score_dtype(convs[0].weight), layer, context)


def _input_slice(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``weight[:, inputs]`` as a contiguous tensor (through a 3-D view: several times faster for 3x3 kernels)."""
    out, _, kh, kw = weight.shape
    flat = weight.detach().reshape(out, weight.shape[1], kh * kw)
    return flat.index_select(1, inputs.to(weight.device)).view(out, len(inputs), kh, kw)


def visible_inputs(graph: PruningGraph, layer: int, decided: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Input channels of ``layer`` left after the already decided producers removed theirs (None: all)."""
    if not any(producer in decided for producer, _ in graph[layer].inputs):
        return None
    return input_index(graph, layer, decided)


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
    modules = [m for m in model.modules() if isinstance(m, (Conv, RepConv))]
    if len(modules) != graph.nconv:
        raise PruningError(f"the pruning graph has {graph.nconv} conv layers but the model has {len(modules)}")
    rates = sorted(resolve_rates(graph, params))
    if name in NEEDS:
        context = context or CriterionContext(model, graph)
        context.prepare(name, [layer for layer, _ in rates])
    layers, decided = [], {}
    for layer, rate in rates:
        node = graph[layer]
        before = node.out_channels
        if before != _out_channels(modules[layer]):
            raise PruningError(f"layer {layer} ({node.name}): graph says {before} filters, model has "
                               f"{_out_channels(modules[layer])}; derive the graph from this model")
        inputs = visible_inputs(graph, layer, decided) if strategy == "sequential" else None
        scores = score_fn(layer_filters(modules[layer], layer_generator(seed, layer), node.name, inputs, layer,
                                        context))
        n_keep = kept_count(before, rate, round_to)
        order = torch.argsort(scores.cpu())  # ascending: removed first; ties as the published pruner
        kept = tuple(sorted(order[before - n_keep:].tolist()))
        layers.append(LayerPlan(layer, rate, before, kept))
        decided[layer] = torch.tensor(kept, dtype=torch.long)
    return PruningPlan(tuple(layers), name, round_to, seed, graph.fingerprint(), strategy)


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, Conv):
        return m.conv.out_channels
    return (m.rbr_reparam if m.rbr_reparam is not None else m.rbr_dense[0]).out_channels
