"""The Pruning-Darknet scores on arrays whose answer is known by construction: VIP, CCA, HAC, PLS rotations,
global selection and the rates that reproduce a kept count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_prune.errors import PruningError
from yolo_prune.prune import criteria_data as cd
from yolo_prune.prune.global_select import global_rates, rate_for_kept
from yolo_prune.prune.lc import _standardise, pls_rotations
from yolo_prune.prune.options import CriterionOptions
from yolo_prune.prune.params import kept_count


def _target_data(n=200, seed=0):
    """Column 0 predicts the (two-class) target, columns 1..4 are noise independent of it."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 2))
    y[np.arange(n), rng.integers(0, 2, n)] = 1
    x = rng.normal(size=(n, 5))
    x[:, 0] = 3 * y[:, 0] + 0.1 * rng.normal(size=n)
    return x, y


def test_vip_ranks_the_informative_filter_first_and_follows_the_standard_formula():
    x, y = _target_data()
    v = cd.pls_vip(x, y, 2)
    assert v.shape == (5,) and v.argmax() == 0 and v[0] > 1.5 > v[1:].max()
    assert np.isclose((v ** 2).sum(), 5.0)  # sum of squared VIPs = number of variables
    assert np.array_equal(v, cd.pls_vip(x, y, 2))  # deterministic


def test_vip_of_a_filter_uncorrelated_with_the_target_is_lowest_per_layer():
    x, y = _target_data(seed=1)
    x[:, 3] = 0.0  # a dead filter
    v = cd.pls_vip(x, y, 1)
    assert v[3] == 0.0 and v.argmin() == 3


def test_cca_weights_favour_the_correlated_filter_and_allow_several_components():
    x, y = _target_data(seed=2)
    y3 = np.c_[y, (x[:, 1] > 0).astype(float)]
    w1, w2 = cd.cca_weights(x, y, 1), cd.cca_weights(x, y3, 2)
    assert w1.shape == w2.shape == (5,) and w1.argmax() == 0
    assert set(np.argsort(w2)[-2:]) == {0, 1}  # the second component brings the second target's filter in


def test_constant_targets_are_refused_with_a_clear_message():
    x, _ = _target_data()
    with pytest.raises(PruningError, match="no class information"):
        cd.pls_vip(x, np.ones((len(x), 3)), 2)


@pytest.mark.parametrize("measure", ["pearson", "spearman", "kendall"])
def test_hac_removes_an_exact_copy_first_and_keeps_one_per_cluster(measure):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 27))
    w[5] = w[2]  # an exact copy
    s = cd.hac_scores(w, measure)
    assert s.shape == (8,) and s.argmin() == 5  # the copy (higher index) goes first
    assert np.array_equal(s, cd.hac_scores(w, measure))
    assert sorted(s.tolist())[-1] == 8.0 and len(set(s.tolist())) == 8  # a strict order: one survivor


def test_hac_keeps_one_representative_of_each_cluster_at_every_cut():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 50))
    w = np.repeat(centres, 4, axis=0) + 0.01 * rng.normal(size=(12, 50))  # 3 clusters of 4 near-copies
    s = cd.hac_scores(w, "pearson")
    kept = np.argsort(s)[-3:]
    assert sorted(k // 4 for k in kept) == [0, 1, 2]


def test_correlation_of_a_constant_filter_is_zero_not_nan():
    w = np.vstack([np.zeros(9), np.arange(9.0), np.arange(9.0)[::-1]])
    c = cd.weight_correlation(w, "pearson")
    assert np.isfinite(c).all() and c[0, 1] == 0 and np.isclose(c[1, 2], -1)


def test_pls_rotations_equal_scikit_learn():
    from sklearn.cross_decomposition import PLSRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    y = np.c_[x[:, 0] + rng.normal(size=300), rng.random(300) > 0.5].astype(float)
    ref = PLSRegression(4, tol=1e-12, max_iter=5000).fit(x, y).x_rotations_
    (mx, sx), (my, sy) = _standardise(x), _standardise(y)
    mine = pls_rotations((x - mx) / sx, (y - my) / sy, 4)
    assert np.allclose(np.abs(mine), np.abs(ref), atol=1e-4)


@pytest.mark.parametrize("filters,kept,round_to", [(64, 32, None), (64, 62, None), (255, 101, None), (64, 48, 8),
                                                   (100, 16, 8), (33, 3, None)])
def test_rate_for_kept_reproduces_the_kept_count(filters, kept, round_to):
    assert kept_count(filters, rate_for_kept(filters, kept, round_to), round_to) == kept


def test_global_rates_remove_the_lowest_scores_anywhere_with_a_cap_per_layer():
    scores = {0: torch.tensor([0.015, 0.025, 5.0, 6.0]), 3: torch.tensor([3.0, 4.0, 7.0, 8.0, 9.0, 9.5]),
              7: torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1])}

    def kept(rate):
        return {layer: kept_count(len(scores[layer]), r) for layer, r in global_rates(scores, rate)}

    assert kept(0.4) == {0: 2, 7: 4}  # the 8 lowest of all 20 filters
    assert kept(0.7) == {0: 2, 3: 2, 7: 2}  # 14: layers 7 and 0 stop at their caps (keep 2), layer 3 gives 4
    assert global_rates(scores, 0.4) == global_rates(scores, 0.4)
    with pytest.raises(PruningError, match="rate must be in"):
        global_rates(scores, 1.5)


@pytest.mark.parametrize("kwargs,match", [
    ({"pool_type": "median"}, "--pool-type"), ({"measure": "cosine"}, "--measure"),
    ({"selection": "network"}, "--selection"), ({"n_components": 0}, "--n-components"),
    ({"n_samples": 1}, "--n-samples"), ({"perc_samples": 1.5}, "--perc-samples"),
    ({"n_samples": 8, "perc_samples": 0.5}, "at most one"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(PruningError, match=match):
        CriterionOptions(**kwargs)


def test_sample_count():
    assert CriterionOptions().sample_count(1000) == 128
    assert CriterionOptions(perc_samples=0.1).sample_count(1000) == 100
    assert CriterionOptions(n_samples=50).sample_count(20) == 20
