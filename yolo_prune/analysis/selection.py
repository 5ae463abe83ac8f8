"""The published layer-selection method: score = removed params (or GFLOPs) x mAP^E.

For each objective (params, FLOPs): every layer's best-scoring rate, then the top-K layers by that score.
The published method joins both lists and can name a layer twice at different rates; ``merge`` keeps one
rate per layer (the lower, safer one) and records which objective chose it.
"""
from __future__ import annotations

from dataclasses import dataclass

from yolo_prune.analysis.table import Entry, SensitivityTable


@dataclass(frozen=True)
class Pick:
    """A selected (layer, rate), its score, and the objective(s) that chose it."""

    layer: int
    rate: float
    score: float
    objectives: tuple[str, ...]


def score(entry: Entry, base: float, objective: str, exponent: float) -> float:
    """Removed params (or GFLOPs) times mAP@.5:.95 to the power ``exponent``."""
    removed = base - (entry.params if objective == "params" else entry.gflops)
    return removed * max(entry.map, 0.0) ** exponent


def top_layers(table: SensitivityTable, base: float, objective: str, exponent: float, k: int) -> list[Pick]:
    """The best rate of each layer under one objective, then the ``k`` best layers (score descending)."""
    best: dict[int, Pick] = {}
    for (layer, rate), entry in sorted(table.entries.items()):
        s = score(entry, base, objective, exponent)
        if layer not in best or s > best[layer].score:
            best[layer] = Pick(layer, rate, s, (objective,))
    return sorted(best.values(), key=lambda p: (-p.score, p.layer))[:k]


def merge(*lists: list[Pick]) -> list[Pick]:
    """One entry per layer: the lower rate when objectives disagree; objectives recorded."""
    merged: dict[int, Pick] = {}
    for picks in lists:
        for p in picks:
            old = merged.get(p.layer)
            if old is None:
                merged[p.layer] = p
            else:
                keep = old if old.rate <= p.rate else p
                merged[p.layer] = Pick(keep.layer, keep.rate, keep.score, old.objectives + p.objectives)
    return sorted(merged.values(), key=lambda p: p.layer)


def published_selection(table: SensitivityTable, base_params: int, base_gflops: float, params_layers: int,
                        flops_layers: int, params_map: float, flops_map: float) -> tuple[list[Pick], list[Pick], list[Pick]]:
    """(params picks, FLOPs picks, merged one-rate-per-layer list)."""
    by_params = top_layers(table, base_params, "params", params_map, params_layers)
    by_flops = top_layers(table, base_gflops, "flops", flops_map, flops_layers)
    return by_params, by_flops, merge(by_params, by_flops)


def format_rates(pairs: list[tuple[int, float]]) -> str:
    """``[(layer, rate), ...]``, ready for ``--pruning-params``."""
    return "[" + ", ".join(f"({layer}, {rate:g})" for layer, rate in pairs) + "]"


def format_pairs(picks: list[Pick]) -> str:
    return format_rates([(p.layer, p.rate) for p in picks])
