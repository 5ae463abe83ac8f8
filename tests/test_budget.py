"""Budget selection: the knapsack is optimal against brute force, respects one rate per layer and the budget."""
from __future__ import annotations

import itertools
import random

import pytest

from yolo_prune.analysis.budget import select_for_budget, solve_knapsack
from yolo_prune.analysis.table import Entry, SensitivityTable
from yolo_prune.errors import YoloPruneError

RATES = (0.25, 0.5, 0.75)


def _random_table(rng, n_layers=5, base_cost=10.0, base_map=0.5):
    entries = {(l, r): Entry(l, r, base_map - rng.random() * r * 0.1, 0.0, 0, base_cost - rng.random() * r * 2)
               for l in range(n_layers) for r in RATES}
    return SensitivityTable(entries, RATES, None, "random")


def _brute_force(table, base_cost, base_map, required):
    best = None
    for combo in itertools.product([None, *RATES], repeat=len(table.layers)):
        pairs = [(l, r) for l, r in zip(table.layers, combo) if r]
        if sum(base_cost - table.entries[p].gflops for p in pairs) < required:
            continue
        loss = sum(base_map - table.entries[p].map for p in pairs)
        best = loss if best is None or loss < best else best
    return best


def test_knapsack_is_optimal_against_brute_force():
    rng = random.Random(0)
    feasible = 0
    for _ in range(40):
        table = _random_table(rng)
        required = rng.uniform(0.5, 4)
        best = _brute_force(table, 10.0, 0.5, required)
        if best is None:
            with pytest.raises(YoloPruneError, match="cannot be met"):
                solve_knapsack(table, 10.0, 0.5, required)
            continue
        pairs = solve_knapsack(table, 10.0, 0.5, required)
        assert len({l for l, _ in pairs}) == len(pairs)  # at most one rate per layer
        assert sum(10.0 - table.entries[p].gflops for p in pairs) >= required - 1e-9
        assert sum(0.5 - table.entries[p].map for p in pairs) <= best + 1e-3
        feasible += 1
    assert feasible > 20


def test_hand_made_table_known_answer():
    # layer 0 is cheap to prune (no loss), layer 1 costs accuracy: the budget must take layer 0 first
    e = {(0, 0.5): Entry(0, 0.5, 0.50, 0, 0, 8.0), (1, 0.5): Entry(1, 0.5, 0.30, 0, 0, 8.0),
         (0, 0.25): Entry(0, 0.25, 0.50, 0, 0, 9.0), (1, 0.25): Entry(1, 0.25, 0.45, 0, 0, 9.0)}
    table = SensitivityTable(e, (0.25, 0.5), None, "hand")
    assert solve_knapsack(table, 10.0, 0.5, 2.0) == [(0, 0.5)]
    assert solve_knapsack(table, 10.0, 0.5, 3.0) == [(0, 0.5), (1, 0.25)]


def test_exact_cost_feedback_tightens_until_budget_holds():
    rng = random.Random(3)
    table = _random_table(rng, n_layers=6)
    calls = []

    def exact(pairs):  # interactions: the real saving is 80% of the additive prediction
        calls.append(pairs)
        return 10.0 - 0.8 * sum(10.0 - table.entries[p].gflops for p in pairs)

    choice = select_for_budget(table, 10.0, 0.5, 8.0, exact_cost=exact)
    assert choice.exact_cost <= 8.0 and len(calls) >= 2
