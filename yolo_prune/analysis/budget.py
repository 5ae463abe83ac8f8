"""Budget-driven selection: per-layer rates that meet a GFLOPs (or params, or latency) target with the least
predicted mAP loss, at most one rate per layer. Latency budgets price options with a measured latency table
(``entry_cost``/``exact_cost`` from :class:`~yolo_prune.analysis.latency.LatencyTable`): the same search.

It is a multiple-choice knapsack: each layer offers options (rate -> saving, loss) plus "leave it". Savings
are treated as additive (a first-order prediction; pruning a layer and its consumer saves a little less
than the sum) and discretised *downwards* into bins, so the dynamic programme is exact on the
discretisation and never over-promises. ``select_for_budget`` then checks the real cost with the model and
tightens the target until the budget holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from yolo_prune.analysis.table import Entry, SensitivityTable
from yolo_prune.errors import YoloPruneError

if TYPE_CHECKING:
    from yolo_prune.analysis.latency import LatencyTable


@dataclass(frozen=True)
class BudgetChoice:
    """The selected (layer, rate) pairs with predicted totals."""

    pairs: list[tuple[int, float]]
    predicted_cost: float  # GFLOPs or params after pruning, additive prediction
    predicted_map: float | None
    exact_cost: float | None = None


EntryCost = Callable[[Entry], float]


def _cost(e: Entry, metric: str) -> float:
    return e.gflops if metric == "gflops" else float(e.params)


def _pricer(metric: str, entry_cost: EntryCost | None) -> EntryCost:
    """The cost of the model with one analysed (layer, rate) pruned: ``entry_cost`` or the analysis' own figure."""
    return entry_cost or (lambda e: _cost(e, metric))


def _bins(saving: float, unit: float) -> int:
    """Saving in whole bins, rounded to nearest (the real sum is re-checked by ``solve_knapsack``)."""
    return int(math.floor(saving / unit + 0.5))


def _relax(best: np.ndarray, step: int, loss: float) -> tuple[np.ndarray, np.ndarray]:
    """Losses reachable by adding one option of ``step`` bins to every state, and each target's source bin."""
    bins = len(best) - 1
    cand, src = np.full(bins + 1, math.inf), np.full(bins + 1, -1)
    if step < bins:
        cand[step:bins] = best[: bins - step] + loss
        src[step:bins] = np.arange(bins - step)
    tail = np.arange(max(bins - step, 0), bins + 1)  # every source that reaches the capped last bin
    j = tail[np.argmin(best[tail])]
    cand[bins], src[bins] = best[j] + loss, j
    return cand, src


def solve_knapsack(table: SensitivityTable, base_cost: float, base_map: float, required_saving: float,
                   metric: str = "gflops", bins: int = 4000,
                   entry_cost: EntryCost | None = None) -> list[tuple[int, float]]:
    """Minimise summed mAP loss s.t. summed saving >= ``required_saving`` (<= one rate per layer).

    Rounding each saving to the nearest bin can make the real sum fall a hair short; the requirement is
    then raised by the shortfall and the programme solved again.
    """
    if required_saving <= 0:
        return []
    ask, cost = required_saving, _pricer(metric, entry_cost)
    for _ in range(8):
        pairs = _solve_binned(table, base_cost, base_map, ask, cost, bins)
        real = sum(base_cost - cost(table.entries[p]) for p in pairs)
        if real >= required_saving - 1e-9 * abs(required_saving):
            return pairs
        ask += (required_saving - real) + ask / bins
    raise YoloPruneError(f"the budget cannot be met (needs a saving of {required_saving:g} {metric})")


def _solve_binned(table: SensitivityTable, base_cost: float, base_map: float, required_saving: float,
                  cost: EntryCost, bins: int) -> list[tuple[int, float]]:
    """The dynamic programme over discretised savings."""
    unit = required_saving / bins
    best = np.full(bins + 1, math.inf)  # best[b]: least loss with saving in bin b (last bin: enough)
    best[0] = 0.0
    trail: list[tuple[int, np.ndarray, np.ndarray]] = []  # per layer: chosen rate index and source bin
    for layer in table.layers:
        new, pick, src = best.copy(), np.full(bins + 1, -1), np.arange(bins + 1)
        for ri, rate in enumerate(table.rates):
            e = table.entries.get((layer, rate))
            step = _bins(base_cost - cost(e), unit) if e is not None else 0
            if step <= 0:
                continue
            cand, cand_src = _relax(best, step, base_map - e.map)
            better = cand < new
            new[better], pick[better], src[better] = cand[better], ri, cand_src[better]
        trail.append((layer, pick, src))
        best = new
    if not math.isfinite(best[bins]):
        raise YoloPruneError(f"the budget cannot be met even by pruning every analysed layer at its highest rate "
                             f"(needs a saving of {required_saving:g})")
    pairs, b = [], bins
    for layer, pick, src in reversed(trail):
        if pick[b] >= 0:
            pairs.append((layer, table.rates[int(pick[b])]))
        b = int(src[b])
    return sorted(pairs)


def select_for_budget(table: SensitivityTable, base_cost: float, base_map: float, target: float,
                      metric: str = "gflops",
                      exact_cost: Callable[[list[tuple[int, float]]], float] | None = None,
                      max_rounds: int = 12, entry_cost: EntryCost | None = None) -> BudgetChoice:
    """Choose rates so the pruned model's cost is <= ``target``; checks and corrects with ``exact_cost``.
    ``entry_cost`` prices single-layer options for another metric (latency); default: the analysis' figures."""
    required = base_cost - target
    pairs: list[tuple[int, float]] = []
    exact = None
    for _ in range(max_rounds):
        pairs = solve_knapsack(table, base_cost, base_map, required, metric, entry_cost=entry_cost)
        if exact_cost is None:
            break
        exact = exact_cost(pairs)
        if exact <= target:
            break
        required += (exact - target) * 1.02 + required / 4000  # interactions saved less: ask for more (>= a bin)
    else:
        raise YoloPruneError(f"could not meet the {metric} budget {target:g} (best found {exact:g})")
    cost = _pricer(metric, entry_cost)
    saving = sum(base_cost - cost(table.entries[p]) for p in pairs)
    loss = sum(base_map - table.entries[p].map for p in pairs)
    return BudgetChoice(pairs, base_cost - saving, base_map - loss, exact)


def model_cost(model, pairs: list[tuple[int, float]], metric: str, img_size: int, round_to: int | None = None) -> float:
    """Exact GFLOPs (or params) of ``model`` with ``pairs`` pruned; computed on a meta-device copy."""
    import copy

    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.prune.plan import placeholder_plan
    from yolo_prune.prune.surgery import apply_plan

    meta = copy.deepcopy(model).to("meta")
    graph = derive_graph(meta)
    apply_plan(meta, graph, placeholder_plan(graph, pairs, round_to))
    return count_gflops(meta, img_size) if metric == "gflops" else float(count_params(meta))


def select_for_latency(table: SensitivityTable, latency: "LatencyTable", base_map: float, target_ms: float,
                       round_to: int | None = None) -> BudgetChoice:
    """:func:`select_for_budget` priced by a measured latency table: each option, and each selection the search
    checks, is the table's predicted latency (ms) of the model with those layers pruned."""
    bad = [layer for layer in table.layers
           if layer >= len(latency.nodes) or not latency.nodes[layer]["prunable"]]
    if bad:
        raise YoloPruneError(f"the latency table has no prunable layer(s) {bad}; was it measured on the analysed "
                             f"model ({latency.model.get('source') or 'unknown source'})?")
    round_to = latency.settings.get("round_to") if round_to is None else round_to

    def exact(pairs: list[tuple[int, float]]) -> float:
        return latency.predict(pairs, round_to)

    return select_for_budget(table, exact([]), base_map, target_ms, "latency", exact_cost=exact,
                             entry_cost=lambda e: exact([(e.layer, e.rate)]))
