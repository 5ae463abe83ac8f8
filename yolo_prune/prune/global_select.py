"""Global selection: rank the filters of every listed layer together and turn the choice into per-layer rates.

With ``--selection global`` a single rate means "remove this share of all listed filters, the least important
anywhere" (BN-scale network slimming, PLS-VIP-Single's network mode, Taylor's loss-change estimates are
comparable across layers). Each layer keeps at least ``1 - MAX_LAYER_RATE`` of its filters so no layer is cut to
nothing, and per-layer counts follow the usual rounding (an even number removed, or a multiple of ``round_to``
kept). The result is an ordinary list of ``(layer, rate)`` pairs: the plan then removes, within each layer, the
same lowest-scored filters the global ranking chose.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.context import CriterionContext
from yolo_prune.prune.criteria import get_criterion
from yolo_prune.prune.params import LayerRates, kept_count
from yolo_prune.prune.plan import layer_generator
from yolo_prune.prune.units import layer_filters

MAX_LAYER_RATE = 0.9


def score_layers(model: nn.Module, graph: PruningGraph, layers: Sequence[int], criterion: str,
                 context: CriterionContext, seed: int = 0) -> dict[int, torch.Tensor]:
    """Every listed layer's filter scores under ``criterion`` (on the model as it is; ``context`` prepared here),
    summed over the layer's coupled group (its members lose the same filters)."""
    context.prepare(criterion, layers)
    score_fn = get_criterion(criterion)

    def score(layer: int) -> torch.Tensor:
        generator = layer_generator(seed, layer)
        return sum(score_fn(layer_filters(model, graph[m], generator, None, context)) for m in graph.group_of(layer))
    return {layer: score(layer).float().cpu() for layer in layers}


def rate_for_kept(filters: int, kept: int, round_to: int | None = None) -> float:
    """A rate whose rounding keeps exactly ``kept`` of ``filters`` (``kept_count(filters, rate) == kept``)."""
    if not 0 < kept < filters:
        raise PruningError(f"cannot keep {kept} of {filters} filters by pruning")
    rate = 1.0 - kept / filters if round_to else (filters - kept - 1) / filters
    rate = min(max(rate, 1e-9), 1 - 1e-9)
    if kept_count(filters, rate, round_to) != kept:
        raise PruningError(f"no rate keeps {kept} of {filters} filters with this rounding")
    return rate


def _quantise(filters: int, removed: int, round_to: int | None) -> int:
    """Filters kept once ``removed`` is rounded to what the rounding rule can express (never more removed)."""
    if round_to:
        kept = -(-(filters - removed) // round_to) * round_to
        return filters if filters <= round_to else min(filters, kept)
    return filters - (removed // 2) * 2


def global_rates(scores: Mapping[int, torch.Tensor], rate: float, round_to: int | None = None,
                 max_layer_rate: float = MAX_LAYER_RATE) -> LayerRates:
    """Per-layer rates removing about ``rate`` of all filters in ``scores`` (layer -> [C]), lowest scores first."""
    if not 0.0 < rate < 1.0:
        raise PruningError(f"global selection: rate must be in (0, 1), got {rate}")
    entries = sorted((float(s), layer, i) for layer, t in scores.items() for i, s in enumerate(t.tolist()))
    total = len(entries)
    caps = {layer: len(t) - kept_count(len(t), max_layer_rate, round_to) for layer, t in scores.items()}
    removed = dict.fromkeys(scores, 0)
    budget = int(round(rate * total))
    for _, layer, _ in entries:
        if budget <= 0:
            break
        if removed[layer] < caps[layer]:
            removed[layer] += 1
            budget -= 1
    out: LayerRates = []
    for layer in sorted(scores):
        filters = len(scores[layer])
        kept = _quantise(filters, removed[layer], round_to)
        if kept < filters:
            out.append((layer, rate_for_kept(filters, kept, round_to)))
    if not out:
        raise PruningError(f"global selection at rate {rate} removes no filter (too few filters listed?)")
    return out
