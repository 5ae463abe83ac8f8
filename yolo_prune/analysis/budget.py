"""Budget-driven selection: per-layer rates that meet a GFLOPs (or params, or latency) target with the least
predicted mAP loss, at most one rate per layer. A latency budget prices options and selections with a measured
latency table (:class:`~yolo_prune.analysis.latency.LatencyCosts`) in place of the closed-form GFLOPs model: the
same search.

A multiple-choice knapsack: each analysed layer offers its rates or "leave it". A choice's loss is the
analysis' mAP@.5:.95 drop with noise-level gains counted as zero, so the predicted mAP (baseline minus the
summed losses) never exceeds the baseline. Costs are exact when a ``CostModel`` is given: pruning a layer and
its consumer saves less than the sum of their single savings, and the closed-form model prices any selection
without building it; without one, the analysis' single-layer savings are added (a prediction only).

Search, every step on the same (exact) prices: (1) candidates from Lagrangian relaxation (each breakpoint of
``loss - lambda x saving`` per layer) and from the dynamic programme on single-layer savings, the latter
repaired until it fits; (2) local search from the best: single moves that lower the loss, or keep it and
spend leftover budget, then pairwise exchanges that lower the loss, until none applies. The result fits the
budget and, where the options allow, lands just under it (within 1 %).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from yolo_prune.analysis.table import Entry, SensitivityTable
from yolo_prune.errors import YoloPruneError
from yolo_prune.prune.cost import CostModel

if TYPE_CHECKING:
    from yolo_prune.analysis.latency import LatencyTable

EntryCost = Callable[[Entry], float]


@dataclass(frozen=True)
class BudgetChoice:
    """The selected (layer, rate) pairs with predicted totals (and the exact cost when a model priced it)."""

    pairs: list[tuple[int, float]]
    predicted_cost: float  # GFLOPs or params after pruning, additive prediction from the analysis
    predicted_map: float | None
    exact_cost: float | None = None


def _cost(e: Entry, metric: str) -> float:
    return e.gflops if metric == "gflops" else float(e.params)


def _entry_cost(metric: str, costs: CostModel | None, round_to: int | None) -> EntryCost:
    """The cost of the model with one analysed (layer, rate) pruned: the analysis' figure, or for a latency
    budget (no such figure) the latency table's prediction."""
    if metric == "latency":
        if costs is None:
            raise YoloPruneError("a latency budget needs a latency table to price the options")
        return lambda e: float(costs.metric(costs.widths([(e.layer, e.rate)], round_to)[None], metric)[0])
    return lambda e: _cost(e, metric)


def _loss(base_map: float, e: Entry) -> float:
    """mAP drop of one configuration; a measured gain counts as no loss (it is noise, not a real gain)."""
    return max(0.0, base_map - e.map)


class _Problem:
    """Options per layer (0 = leave, j = rates[j-1]), their losses, and a batch pricer over choice vectors."""

    def __init__(self, table: SensitivityTable, base_cost: float, base_map: float, metric: str,
                 costs: CostModel | None, round_to: int | None, cost: EntryCost):
        self.layers, self.rates, self.metric = table.layers, sorted(table.rates), metric
        shape = (len(self.layers), len(self.rates) + 1)
        self.loss, self.saving = np.full(shape, math.inf), np.zeros(shape)
        self.loss[:, 0] = 0.0
        for i, layer in enumerate(self.layers):
            for j, rate in enumerate(self.rates, 1):
                e = table.entries.get((layer, rate))
                if e is not None:
                    self.loss[i, j], self.saving[i, j] = _loss(base_map, e), base_cost - cost(e)
        self.base_cost, self.costs = base_cost, costs
        if costs is not None:
            self.members = [list(costs.graph.group_of(layer)) for layer in self.layers]  # coupled layers share widths
            self.widths = np.array([[costs.base_widths[layer]] + [costs.widths([(layer, r)], round_to)[layer]
                                                                  for r in self.rates] for layer in self.layers])
            self.base_cost = float(self.price(np.zeros((1, len(self.layers)), dtype=np.int64))[0])
            self.saving = np.where(np.isfinite(self.loss), self.base_cost - self._singles(), 0.0)

    def _singles(self) -> np.ndarray:
        n, r = self.loss.shape
        choices = np.zeros((n * r, n), dtype=np.int64)
        choices[np.arange(n * r), np.repeat(np.arange(n), r)] = np.tile(np.arange(r), n)
        return self.price(choices).reshape(n, r)

    def price(self, choices: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Cost (GFLOPs or params) of each row of ``choices`` [K, layers]."""
        if self.costs is None:
            return self.base_cost - self.saving[np.arange(len(self.layers)), choices].sum(1)
        out = []
        for start in range(0, len(choices), chunk):
            part = choices[start:start + chunk]
            widths = np.repeat(self.costs.base_widths[None], len(part), 0)
            for i, members in enumerate(self.members):
                widths[:, members] = self.widths[i, part[:, i]][:, None]
            out.append(self.costs.metric(widths, self.metric))
        return np.concatenate(out) if out else np.zeros(0)

    def total_loss(self, choice: np.ndarray) -> float:
        return float(self.loss[np.arange(len(self.layers)), choice].sum())

    def pairs(self, choice: np.ndarray) -> list[tuple[int, float]]:
        return [(layer, self.rates[j - 1]) for layer, j in zip(self.layers, choice) if j]


def _lagrangian(p: _Problem, target: float) -> np.ndarray | None:
    """The least-loss selection among the Lagrangian ones (every breakpoint lambda) that fits ``target``."""
    loss, sav = np.where(np.isfinite(p.loss), p.loss, 0.0), p.saving
    dl, ds = loss[:, :, None] - loss[:, None, :], sav[:, :, None] - sav[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        lams = np.unique((dl / ds)[(ds > 0) & (dl / ds > 0)])
    lams = np.concatenate([lams * (1 - 1e-9), lams * (1 + 1e-9), [1e-12, 1e18]])
    value = lams[:, None, None] * sav[None] - loss[None]
    value[:, ~np.isfinite(p.loss)] = -math.inf
    choices = value.argmax(2)
    fits = p.price(choices) <= target
    if not fits.any():
        return None
    losses = p.loss[np.arange(len(p.layers)), choices].sum(1)
    return choices[np.flatnonzero(fits)[np.argmin(losses[fits])]]


def _moves(p: _Problem, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every single move (layer i to option j != current): layer, option, loss change."""
    i, j = np.nonzero(np.isfinite(p.loss))
    keep = j != choice[i]
    i, j = i[keep], j[keep]
    return i, j, p.loss[i, j] - p.loss[i, choice[i]]


def _apply(choice: np.ndarray, i, j) -> np.ndarray:
    out = np.repeat(choice[None], len(np.atleast_1d(i)), 0)
    out[np.arange(len(out)), i] = j
    return out


def _repair(p: _Problem, choice: np.ndarray, target: float) -> np.ndarray:
    """Prune more, least loss per saved unit first, until ``choice`` fits."""
    price = p.price(choice[None])[0]
    while price > target:
        i, j, dl = _moves(p, choice)
        new = p.price(_apply(choice, i, j))
        gain = price - new
        ok = gain > 0
        if not ok.any():
            break
        k = np.flatnonzero(ok)[np.argmin(np.maximum(dl[ok], 0) / gain[ok])]
        choice, price = _apply(choice, i[k], j[k])[0], new[k]
    return choice


def _single_step(p: _Problem, choice: np.ndarray, price: float, target: float) -> np.ndarray | None:
    """A fitting move that lowers the loss (most first), or keeps it and spends budget (largest first)."""
    i, j, dl = _moves(p, choice)
    new = p.price(_apply(choice, i, j))
    ok = (new <= target) & ((dl < -1e-12) | ((np.abs(dl) <= 1e-12) & (new > price)))
    if not ok.any():
        return None
    k = np.flatnonzero(ok)[np.lexsort((-new[ok], dl[ok]))[0]]
    return _apply(choice, i[k], j[k])[0]


def _exchange_step(p: _Problem, choice: np.ndarray, target: float, limit: int = 20000) -> np.ndarray | None:
    """Two moves on different layers whose summed loss change is negative and that fit together."""
    i, j, dl = _moves(p, choice)
    a, b = np.meshgrid(np.arange(len(i)), np.arange(len(i)), indexing="ij")
    pair_dl = dl[a] + dl[b]
    ok = (i[a] < i[b]) & (pair_dl < -1e-12)
    a, b, pair_dl = a[ok], b[ok], pair_dl[ok]
    order = np.argsort(pair_dl, kind="stable")[:limit]
    a, b = a[order], b[order]
    cand = _apply(choice, i[a], j[a])
    cand[np.arange(len(cand)), i[b]] = j[b]
    fits = np.flatnonzero(p.price(cand) <= target)
    return cand[fits[0]] if len(fits) else None


def _local_search(p: _Problem, choice: np.ndarray, target: float, max_steps: int = 10000) -> np.ndarray:
    for _ in range(max_steps):
        price = p.price(choice[None])[0]
        step = _single_step(p, choice, price, target)
        if step is None:
            step = _exchange_step(p, choice, target)
        if step is None:
            return choice
        choice = step
    return choice


def _highest(p: _Problem) -> np.ndarray:
    """Every layer at its largest saving (the cheapest reachable model)."""
    return np.where(np.isfinite(p.loss), p.saving, -math.inf).argmax(1)


def select_for_budget(table: SensitivityTable, base_cost: float, base_map: float, target: float,
                      metric: str = "gflops", costs: CostModel | None = None,
                      round_to: int | None = None) -> BudgetChoice:
    """Choose rates so the pruned model's cost is <= ``target`` with the least predicted mAP loss.

    ``costs``: the analysed model's cost model (fused, as the analysis counts) for exact prices; without it the
    analysis' single-layer savings are added. Raises ``YoloPruneError`` when the target is out of reach.
    """
    if not math.isfinite(target) or target <= 0:
        raise YoloPruneError(f"the {metric} budget must be a positive number, got {target:g}")
    cost = _entry_cost(metric, costs, round_to)
    p = _Problem(table, base_cost, base_map, metric, costs, round_to, cost)
    empty = np.zeros(len(p.layers), dtype=np.int64)
    if p.base_cost <= target:
        return _choice(p, empty, table, base_cost, base_map, cost)
    floor = float(p.price(_highest(p)[None])[0])
    if floor > target:
        how = "exactly" if costs is not None else "predicted"
        raise YoloPruneError(f"the {metric} budget {target:g} is out of reach: pruning every analysed layer at its "
                             f"highest rate gives {floor:g} ({how}); the unpruned model has {p.base_cost:g}. "
                             f"Choose a target in [{floor:g}, {p.base_cost:g}] or analyse higher rates")
    starts = [c for c in (_lagrangian(p, target), _dp_start(p, table, base_cost, base_map, target, metric, cost))
              if c is not None]
    best = min((_local_search(p, c, target) for c in starts), key=lambda c: (p.total_loss(c), -p.price(c[None])[0]))
    return _choice(p, best, table, base_cost, base_map, cost)


def _dp_start(p: _Problem, table, base_cost, base_map, target, metric, cost: EntryCost) -> np.ndarray | None:
    """The dynamic programme's answer on additive savings, repaired until it fits the exact prices."""
    try:
        pairs = solve_knapsack(table, base_cost, base_map, base_cost - target, metric, cost=cost)
    except YoloPruneError:
        return None
    choice = np.zeros(len(p.layers), dtype=np.int64)
    for layer, rate in pairs:
        choice[p.layers.index(layer)] = p.rates.index(rate) + 1
    return _repair(p, choice, target)


def _choice(p: _Problem, choice: np.ndarray, table, base_cost, base_map, cost: EntryCost) -> BudgetChoice:
    pairs = p.pairs(choice)
    predicted = base_cost - sum(base_cost - cost(table.entries[q]) for q in pairs)
    exact = float(p.price(choice[None])[0]) if p.costs is not None else None
    return BudgetChoice(pairs, predicted, base_map - p.total_loss(choice), exact)


# ------------------------------------------------------------------------ dynamic programme (additive savings)
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
                   metric: str = "gflops", bins: int = 4000, cost: EntryCost | None = None) -> list[tuple[int, float]]:
    """Minimise summed mAP loss s.t. summed (additive) saving >= ``required_saving`` (<= one rate per layer).

    Rounding each saving to the nearest bin can make the real sum fall a hair short; the requirement is
    then raised by the shortfall and the programme solved again.
    """
    if required_saving <= 0:
        return []
    ask, cost = required_saving, cost or (lambda e: _cost(e, metric))
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
            cand, cand_src = _relax(best, step, _loss(base_map, e))
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


def select_for_latency(table: SensitivityTable, latency: "LatencyTable", base_map: float, target_ms: float,
                       round_to: int | None = None) -> BudgetChoice:
    """:func:`select_for_budget` priced by a measured latency table: every option and every selection the search
    checks is the table's predicted latency (ms) of the model with those layers pruned."""
    from yolo_prune.analysis.latency import LatencyCosts

    bad = [layer for layer in table.layers if layer >= len(latency.nodes) or not latency.nodes[layer]["prunable"]]
    if bad:
        raise YoloPruneError(f"the latency table has no prunable layer(s) {bad}; was it measured on the analysed "
                             f"model ({latency.model.get('source') or 'unknown source'})?")
    costs = LatencyCosts(latency)
    round_to = latency.settings.get("round_to") if round_to is None else round_to
    return select_for_budget(table, latency.predict([], round_to), base_map, target_ms, "latency", costs, round_to)
