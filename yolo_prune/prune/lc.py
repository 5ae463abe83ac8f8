"""PLS-LC-Multi, function-preserving where the maths allows.

The published PLS-LC replaces a layer's k kept filters by linear combinations of all its filters (the PLS
projection) and leaves the rest of the network as it was, so the next layer reads channels it was never trained
on. Here, for a layer keeping k filters:

1. PLS regression (standardised X and Y, as scikit-learn's ``PLSRegression(scale=True)``) of the class targets
   on the layer's pre-activation values at sampled positions (pooled features give at most N - 1 components,
   k can be larger) gives the X rotations ``R`` [C, k]. scikit-learn's NIPALS iterates to convergence for each
   of the k components (minutes per layer for k in the hundreds), so the components are computed here directly
   as NIPALS' fixed point -- the dominant singular vector of the residual cross-covariance -- which a test checks
   against scikit-learn;
2. the new filter j computes the PLS score ``u_j = sum_i R_ij (z_i - mean_i) / std_i``, shifted by ``s_j`` so it
   stays in the activation's (nearly) linear range -- folded *exactly* into the conv kernels and the BatchNorm
   (running mean/var set so train-mode BN starts from the same normalisation);
3. the *original* model's activations are reconstructed from the new ones by least squares on the calibration
   samples, ``act(z) ~ act(u + s) B + c``, and ``B``, ``c`` are folded into every consumer: its input kernels of
   that slot become ``W B^T``, the constant goes into its BatchNorm mean (or bias; an ImplicitA in front of a
   head conv is folded into that conv's bias).

Layers are rewritten in ascending order and each one's PLS is fitted on its maps in the model *as rewritten so
far* (one partial forward pass per layer), so every reconstruction also corrects the error accumulated upstream.

Step 2 is exact; step 3 is exact only when the layer has no non-linearity and nothing non-linear (max-pooling)
sits between it and its consumer, and approximate at zero-padded borders of k > 1 consumers. The plan then keeps
filters 0..k-1. The model passed in is modified in place; statistics come from the FeatureSource's (unpruned)
model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv
from yolo_prune.prune.criteria_data import informative_targets
from yolo_prune.prune.features import FeatureSource
from yolo_prune.prune.reconstruct import fit_reconstruction, fold_into_consumers

SHIFT_QUANTILE = 0.005  # new channels are shifted so that this share of calibration values stays negative


def _standardise(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 1, zero -> 1) as scikit-learn's PLS uses them."""
    mean, std = z.mean(axis=0), z.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    return mean, std


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``a * x + b`` per channel."""
    a = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return a, bn.bias.detach().double() - a * bn.running_mean.double()


def pls_rotations(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """X rotations [C, k] of a k-component PLS regression of ``y`` [P, K] on ``x`` [P, C] (both standardised).

    Per component: weight = dominant left singular vector of ``X_res' Y_res`` (NIPALS' fixed point; once the
    targets are fully explained, the dominant direction of the X residual), then X and Y are deflated by the
    scores; rotations = ``W (P' W)^-1`` as in scikit-learn.
    """
    xr, yr = x.copy(), y.copy()
    weights, loadings = [], []
    for _ in range(k):
        u, s, _ = np.linalg.svd(xr.T @ yr, full_matrices=False)
        w = u[:, 0] if s[0] > 1e-10 * len(xr) else np.linalg.svd(xr, full_matrices=False)[2][0]
        t = xr @ w
        tt = max(float(t @ t), 1e-12)
        p = xr.T @ t / tt
        xr -= np.outer(t, p)
        yr -= np.outer(t, yr.T @ t / tt)
        weights.append(w)
        loadings.append(p)
    w, p = np.stack(weights, 1), np.stack(loadings, 1)
    return w @ np.linalg.pinv(p.T @ w)


def _projection(z: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(M [C, k] with u = (z - mean) @ M, mean [C], shift [k], scores u [P, k]) of a k-component PLS."""
    mean, std = _standardise(z)
    y = informative_targets(y)
    y_mean, y_std = _standardise(y)
    m = pls_rotations((z - mean) / std, (y - y_mean) / y_std, k) / std[:, None]
    u = (z - mean) @ m
    shift = np.maximum(0.0, -np.quantile(u, SHIFT_QUANTILE, axis=0))
    return m, mean, shift, u


def _rewrite_producer(module: Conv, m: np.ndarray, mean: np.ndarray, shift: np.ndarray, u: np.ndarray) -> None:
    """First k filters of ``module`` := the shifted PLS scores (exact fold into kernels and BatchNorm)."""
    if not isinstance(module, Conv) or not isinstance(module.bn, nn.BatchNorm2d):
        raise PruningError("PLS-LC needs an unfused Conv + BatchNorm layer (RepConv and fused layers are not supported)")
    bn, k = module.bn, m.shape[1]
    a, b = _bn_affine(bn)
    mt = torch.from_numpy(m)  # [C, k]
    w = module.conv.weight.detach().double()
    new_w = torch.einsum("ck,c...->k...", mt * a[:, None], w)
    d = ((b - torch.from_numpy(mean))[:, None] * mt).sum(0)  # u_j = conv'_j + d_j
    var = torch.from_numpy(u.var(axis=0)).clamp_min(1e-6)
    with torch.no_grad():
        module.conv.weight[:k] = new_w.to(module.conv.weight.dtype)
        bn.running_mean[:k] = (-d).to(bn.running_mean.dtype)
        bn.running_var[:k] = (var - bn.eps).clamp_min(1e-8).to(bn.running_var.dtype)
        bn.weight[:k] = torch.sqrt(var).to(bn.weight.dtype)
        bn.bias[:k] = torch.from_numpy(shift).to(bn.bias.dtype)


def rewrite_pls_lc(model: nn.Module, graph: PruningGraph, source: FeatureSource,
                   layers: Sequence[tuple[int, int]]) -> None:
    """Rewrite ``model`` in place so that, for each (layer, k), filters 0..k-1 carry the PLS combinations and
    every consumer reads them (see the module docstring); ``layers`` are processed in ascending order."""
    from yolo_prune.prune.context import blas_threads

    with blas_threads():
        _rewrite_all(model, graph, source, layers)


def rewrite_layer(model: nn.Module, graph: PruningGraph, source: FeatureSource, layer: int, k: int,
                  z_now: np.ndarray, z_orig: np.ndarray) -> None:
    """Rewrite conv ``layer`` (k PLS filters fitted on its current maps ``z_now`` [P, C]) and fold the
    reconstruction of the original activations ``act(z_orig)`` into its consumers."""
    m, mean, shift, u = _projection(z_now, source.position_targets().double().numpy(), k)
    module = model.conv_modules()[layer]
    _rewrite_producer(module, m, mean, shift, u)
    b, c = fit_reconstruction(module.act, z_orig, u + shift)
    fold_into_consumers(model, graph, layer, torch.arange(k), b, c)


def _rewrite_all(model: nn.Module, graph: PruningGraph, source: FeatureSource,
                 layers: Sequence[tuple[int, int]]) -> None:
    current = FeatureSource(model, source.batches, source.nc, positions_per_image=source.positions_per_image,
                            seed=source.seed)
    for layer, k in sorted(layers):
        z_now = current.current_positions(layer).double().numpy()  # this layer's input already rewritten
        rewrite_layer(model, graph, source, layer, k, z_now, source.positions(layer).double().numpy())
