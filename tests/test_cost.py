"""The closed-form cost model equals counting the really pruned model, to the unit (params) and exactly (GFLOPs)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_prune.models import build_model
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import fuse
from yolo_prune.prune import prune
from yolo_prune.prune.cost import CostModel, fused_cost_model


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {"tiny": build_model("yolov7-tiny", nc=3).eval(), "v7": build_model("yolov7", nc=2).eval()}


def _selections(n_layers):
    pairs = st.dictionaries(st.integers(0, n_layers - 1), st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75, 0.9]),
                            min_size=0, max_size=n_layers)
    return st.tuples(pairs, st.sampled_from([None, None, 8]), st.sampled_from([64, 96, 128]))


_MODELS: dict = {}


def _cost_models(model, img):
    """(unfused, fused) cost models, built once per model and image size."""
    key = (id(model), img)
    if key not in _MODELS:
        _MODELS[key] = (CostModel.of(model, img), fused_cost_model(model, img))
    return _MODELS[key]


def _check(model, pairs, round_to, img):
    pruned = prune(model, sorted(pairs.items()), "l1", round_to=round_to, summarize=False).model if pairs else model
    plain, fused_costs = _cost_models(model, img)
    got = plain.cost(pairs.items(), round_to)
    assert got.params == count_params(pruned) and got.gflops == count_gflops(pruned, img)
    fused = fuse(copy.deepcopy(pruned), conv_bn=True, repconv=True, implicit=False)
    got = fused_costs.cost(pairs.items(), round_to)
    assert got.params == count_params(fused) and got.gflops == count_gflops(fused, img)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_selections(55))
def test_tiny_cost_equals_counting_the_pruned_model(nets, params):
    _check(nets["tiny"], *params)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_selections(89))
def test_yolov7_cost_equals_counting_the_pruned_model(nets, params):
    """yolov7: RepConv branches (unfused: 3x3 + 1x1 + two BNs; fused: one 3x3 with bias), SPPCSPC repeats."""
    _check(nets["v7"], *params)


def test_every_layer_and_implicit_folded(nets):
    tiny = nets["tiny"]
    every = {i: 0.5 for i in range(55)}
    _check(tiny, every, None, 64)
    folded = fuse(copy.deepcopy(tiny), conv_bn=True, repconv=True, implicit=True)  # deployable: no ImplicitA/M
    pruned = prune(folded, sorted(every.items()), "l1", summarize=False).model
    got = CostModel.of(folded, 64).cost(every.items())
    assert (got.params, got.gflops) == (count_params(pruned), count_gflops(pruned, 64))


def test_batch_evaluation_matches_single_costs(nets):
    costs = fused_cost_model(nets["tiny"], 128)
    rng = np.random.default_rng(0)
    widths = np.array([costs.widths([(l, float(r)) for l in rng.choice(costs.graph.prunable, 10, replace=False)
                                     for r in [rng.choice([0.25, 0.5])]]) for _ in range(5)])
    params, macs = costs.evaluate(widths)
    for w, p, m in zip(widths, params, macs):
        p1, m1 = costs.evaluate(w)
        assert (p1[0], m1[0]) == (p, m)
    base = costs.cost()
    assert (params < base.params).all() and (2 * macs / 1e9 < base.gflops).all()
