"""The Pruning-Darknet family's projection and clustering scores, as functions of plain arrays.

- PLS + VIP (Jordao et al., "Deep network compression based on partial least squares"): a PLS regression of the
  class targets on the filters' pooled features; a filter's importance is its Variable Importance in Projection,
  ``VIP_j = sqrt(p * sum_a SS_a (w_ja / ||w_a||)^2 / sum_a SS_a)`` with ``SS_a = (t_a' t_a)(q_a' q_a)`` the
  target variance component ``a`` explains (p filters, w the X weights, t the X scores, q the Y loadings).
- CCA: the canonical variates' X weights; importance = sum over components of ``|w_ja|``.
- HAC (Ghosh et al.-style clustering of redundant filters): complete-linkage agglomerative clustering of a layer's
  filters on ``1 - correlation`` of their weights (Pearson, Spearman or Kendall); one representative per cluster.

Faults of the published code fixed here: the feature matrix is built filters x images by transposing (the original
reshaped images x filters into filters x images, scrambling it), CCA runs to convergence (``max_iter=1`` there),
several components are allowed, and the features come from the model in eval mode with inference pre-processing.
PLS and CCA come from scikit-learn, clustering from SciPy (imported when used).
"""
from __future__ import annotations

import warnings

import numpy as np

from yolo_prune.errors import PruningError


def informative_targets(y: np.ndarray) -> np.ndarray:
    """``y`` without its constant columns (a class in every image, or in none); error if nothing is left."""
    keep = y.std(axis=0) > 0
    if not keep.any():
        raise PruningError("the calibration images carry no class information (every image holds the same "
                           "classes); use more or different images (--n-samples / --perc-samples)")
    return y[:, keep]


def fit_pls(x: np.ndarray, y: np.ndarray, n_components: int):
    """``PLSRegression(scale=True)`` of ``y`` [N, K] on ``x`` [N, p]; components capped at what the data holds."""
    from sklearn.cross_decomposition import PLSRegression

    n = min(n_components, x.shape[1], max(1, x.shape[0] - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Y residual is constant" once the targets are explained
        return PLSRegression(n_components=n, scale=True).fit(x, informative_targets(y))


def vip(pls) -> np.ndarray:
    """Variable Importance in Projection of every X variable of a fitted PLS model (standard formula) [p]."""
    w, t, q = pls.x_weights_, pls.x_scores_, pls.y_loadings_  # [p, c], [n, c], [K, c]
    ss = (t ** 2).sum(axis=0) * (q ** 2).sum(axis=0)  # [c] target variance explained per component
    wn = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    total = ss.sum()
    if total <= 0:
        return np.zeros(w.shape[0])
    return np.sqrt(w.shape[0] * (wn ** 2 @ ss) / total)


def pls_vip(x: np.ndarray, y: np.ndarray, n_components: int) -> np.ndarray:
    """VIP of each column of ``x`` [N, p] for predicting ``y`` [N, K] -> [p]."""
    return vip(fit_pls(x, y, n_components))


def cca_weights(x: np.ndarray, y: np.ndarray, n_components: int) -> np.ndarray:
    """Sum over canonical components of ``|x weight|`` of each column of ``x`` [N, p] -> [p]."""
    from sklearn.cross_decomposition import CCA

    y = informative_targets(y)
    n = min(n_components, x.shape[1], y.shape[1], max(1, x.shape[0] - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on nearly collinear features
        cca = CCA(n_components=n, scale=True, max_iter=500).fit(x, y)
    return np.abs(cca.x_weights_).sum(axis=1)


def weight_correlation(w: np.ndarray, measure: str) -> np.ndarray:
    """Correlation of every pair of rows of ``w`` [F, D] -> [F, F]; rows without variance correlate 0."""
    from scipy import stats

    if measure == "kendall":
        f = len(w)
        corr = np.eye(f)
        for i in range(f):
            for j in range(i + 1, f):
                corr[i, j] = corr[j, i] = stats.kendalltau(w[i], w[j]).statistic
    else:
        ranked = stats.rankdata(w, axis=1) if measure == "spearman" else w
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(ranked)
    corr = np.nan_to_num(np.atleast_2d(corr), nan=0.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def hac_scores(w: np.ndarray, measure: str = "pearson") -> np.ndarray:
    """Removal order from complete-linkage clustering of the rows of ``w`` [F, D] on ``1 - correlation`` -> [F].

    Clusters merge from the most to the least similar; at each merge one of the two clusters' representatives
    is dropped: the one more correlated (max |r|) with the other remaining representatives (the published rule:
    keep the filter least redundant with the rest), ties to the smaller L2 norm. A filter's score is the merge at
    which it stops being a representative, so removing the ``F - k`` lowest scores keeps exactly one filter per
    cluster of the ``k``-cluster cut, for every ``k``. An exact copy of another filter is removed first.
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    f = len(w)
    scores = np.full(f, float(f))
    if f < 2:
        return scores
    corr = weight_correlation(w, measure)
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    merges = linkage(squareform((dist + dist.T) / 2, checks=False), method="complete")
    strength, norms = np.abs(corr), np.linalg.norm(w, axis=1)
    rep = {i: i for i in range(f)}  # cluster id -> representative filter
    alive = np.ones(f, dtype=bool)
    for step, (a, b, _, _) in enumerate(merges):
        ra, rb = rep.pop(int(a)), rep.pop(int(b))
        others = alive.copy()
        others[[ra, rb]] = False
        redundancy = (strength[[ra, rb]][:, others].max(axis=1) if others.any() else np.zeros(2))
        key = lambda r, red: (-red, norms[r], -r)  # noqa: E731 - least redundant, then largest, then lower index
        keep, drop = (ra, rb) if key(ra, redundancy[0]) >= key(rb, redundancy[1]) else (rb, ra)
        scores[drop] = step
        alive[drop] = False
        rep[f + step] = keep
    return scores
