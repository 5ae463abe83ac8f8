"""Budget selection: optimal against brute force (additive and exact prices), every reachable budget met and
landed within 1 % under it on exact costs, a clear error for unreachable ones, predicted mAP <= baseline."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from yolo_prune.analysis.budget import select_for_budget, solve_knapsack
from yolo_prune.analysis.table import Entry, SensitivityTable
from yolo_prune.errors import YoloPruneError
from yolo_prune.models import build_model
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import fuse
from yolo_prune.prune import prune
from yolo_prune.prune.cost import fused_cost_model

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


def test_additive_search_is_optimal_against_brute_force():
    rng = random.Random(1)
    for _ in range(25):
        table = _random_table(rng)
        target = rng.uniform(6.5, 9.5)
        best = _brute_force(table, 10.0, 0.5, 10.0 - target)
        if best is None:
            with pytest.raises(YoloPruneError, match="out of reach"):
                select_for_budget(table, 10.0, 0.5, target)
            continue
        choice = select_for_budget(table, 10.0, 0.5, target)
        assert choice.predicted_cost <= target + 1e-9 and choice.exact_cost is None
        assert 0.5 - choice.predicted_map <= best + 1e-9


# ------------------------------------------------------------------------------- exact (closed-form) costs
RATES3 = (0.25, 0.5, 0.75)


def _model_table(costs, seed, gains=0.0, metric_noise=0.002):
    """A table whose costs are the model's exact single-layer costs; mAP drops grow with the rate, plus noise."""
    rng = random.Random(seed)
    base = costs.cost()
    entries = {}
    for layer in costs.graph.prunable:
        sens = rng.random() ** 3
        for r in RATES3:
            c = costs.cost([(layer, r)])
            drop = sens * r * 0.2 - (gains if rng.random() < 0.3 else 0.0)
            entries[(layer, r)] = Entry(layer, r, 0.3 - drop + rng.gauss(0, metric_noise), 0.5, c.params, c.gflops)
    return SensitivityTable(entries, RATES3, Entry(-1, 0.0, 0.3, 0.5, base.params, base.gflops), "synthetic")


@pytest.fixture(scope="module")
def tiny256():
    """yolov7-tiny, 3 classes, 256 px: 2.086 GFLOPs fused, the model of the reported failure."""
    torch.manual_seed(0)
    model = build_model("yolov7-tiny", nc=3).eval()
    return model, fused_cost_model(model, 256)


def test_reported_budget_of_exactly_half_is_met(tiny256):
    model, costs = tiny256
    table = _model_table(costs, 0)
    base = costs.cost().gflops
    assert round(base, 3) == 2.086
    for target in (1.043, 1.2):
        choice = select_for_budget(table, base, 0.3, target, "gflops", costs)
        assert 0.99 * target <= choice.exact_cost <= target
        pruned = fuse(prune(model, choice.pairs, summarize=False).model, conv_bn=True, repconv=True)
        assert count_gflops(pruned, 256) == choice.exact_cost  # the exact cost is the real one
        assert choice.predicted_cost < choice.exact_cost  # the additive prediction over-promises


@pytest.mark.parametrize("metric", ["gflops", "params"])
def test_every_reachable_target_lands_within_one_percent(tiny256, metric):
    model, costs = tiny256
    table = _model_table(costs, 1)
    base = costs.cost().metric(metric)
    floor = costs.cost([(layer, 0.75) for layer in costs.graph.prunable]).metric(metric)
    for target in np.linspace(floor, base, 13)[:-1]:
        choice = select_for_budget(table, base, 0.3, float(target), metric, costs)
        assert 0.99 * target <= choice.exact_cost <= target, (target, choice.exact_cost)
        assert choice.exact_cost == costs.cost(choice.pairs).metric(metric)
        assert len({layer for layer, _ in choice.pairs}) == len(choice.pairs)
    assert select_for_budget(table, base, 0.3, base, metric, costs).pairs == []  # nothing to prune


def test_yolov7_targets_with_repconv_fused():
    torch.manual_seed(0)
    model = build_model("yolov7", nc=2).eval()
    costs = fused_cost_model(model, 128)
    table = _model_table(costs, 2)
    base = costs.cost()
    for share in (0.35, 0.6, 0.9):
        choice = select_for_budget(table, base.params, 0.3, share * base.params, "params", costs)
        assert 0.99 * share * base.params <= choice.exact_cost <= share * base.params
    pruned = fuse(prune(model, choice.pairs, summarize=False).model, conv_bn=True, repconv=True)
    assert count_params(pruned) == choice.exact_cost


def test_unreachable_target_is_a_clear_error(tiny256):
    _, costs = tiny256
    table = _model_table(costs, 0)
    floor = costs.cost([(layer, 0.75) for layer in costs.graph.prunable]).gflops
    with pytest.raises(YoloPruneError, match=f"out of reach.*gives {floor:g} \\(exactly\\)"):
        select_for_budget(table, costs.cost().gflops, 0.3, 0.999 * floor, "gflops", costs)
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(YoloPruneError, match="positive number"):
            select_for_budget(table, costs.cost().gflops, 0.3, bad, "gflops", costs)


def test_predicted_map_never_exceeds_baseline(tiny256):
    """Measured gains are noise: counted as zero, so pruning never predicts a better model."""
    _, costs = tiny256
    table = _model_table(costs, 3, gains=0.05)
    assert sum(e.map > 0.3 for e in table.entries.values()) > 20
    for target in (0.6, 1.0, 1.6, 2.0):
        choice = select_for_budget(table, costs.cost().gflops, 0.3, target, "gflops", costs)
        assert choice.predicted_map <= 0.3


def test_exact_search_is_optimal_against_brute_force(tiny256):
    """Small sub-tables (6 layers x 2 rates): the least loss among all 729 selections that really fit."""
    _, costs = tiny256
    for trial in range(8):
        rng = random.Random(trial)
        layers = sorted(rng.sample(costs.graph.prunable, 6))
        entries = {(l, r): Entry(l, r, 0.3 - rng.random() * r * 0.1, 0.5, costs.cost([(l, r)]).params,
                                 costs.cost([(l, r)]).gflops) for l in layers for r in (0.25, 0.5)}
        table = SensitivityTable(entries, (0.25, 0.5), None, "sub")
        combos = [[(l, r) for l, r in zip(layers, c) if r] for c in itertools.product([None, 0.25, 0.5], repeat=6)]
        prices = [costs.cost(c).gflops for c in combos]
        target = rng.uniform(min(prices), costs.cost().gflops)
        best = min(sum(0.3 - entries[p].map for p in c) for c, price in zip(combos, prices) if price <= target)
        choice = select_for_budget(table, costs.cost().gflops, 0.3, target, "gflops", costs)
        assert choice.exact_cost <= target and 0.3 - choice.predicted_map <= best + 1e-9
