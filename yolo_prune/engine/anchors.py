"""How well a model's anchors fit a data set's boxes, and YOLOv7's autoanchor (``check_anchors``,
``kmean_anchors``).

YOLOv7's train.py replaces the anchors with k-means ones when fewer than 98 % of the training boxes have an anchor
within ``anchor_t`` in both sides. yolo-prune does the same for anchors that come from a cfg (training from scratch
or transfer learning); a checkpoint's own anchors are kept (its weights are tied to them) with a warning when the
official trainer would have changed them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MIN_RECALL = 0.98  # YOLOv7's autoanchor threshold
MIN_SIDE = 2.0  # boxes with both sides under this many pixels do not shape the anchors (YOLOv7's filter)
KMEANS_RUNS = 30  # k-means restarts, the lowest distortion kept (scipy's ``iter=30`` in YOLOv7)
GENERATIONS = 1000  # YOLOv7's genetic evolution of the k-means anchors


def label_sizes(labels: Sequence[np.ndarray], hw: np.ndarray, img_size: int) -> np.ndarray:
    """Box (w, h) in pixels ``[n, 2]`` with each image scaled to ``img_size`` on its long side.

    ``labels``: per image ``[n, 5]`` (cls, cx, cy, w, h) normalised; ``hw``: ``[images, 2]`` original (h, w).
    YOLOv7 also jitters the size by 0.9-1.1 when it checks the fit; not here, so the numbers are deterministic."""
    wh_img = img_size * hw[:, ::-1] / hw.max(1, keepdims=True)
    boxes = [lab[:, 3:5] * size for lab, size in zip(labels, wh_img) if len(lab)]
    return np.concatenate(boxes, 0).astype(np.float32) if boxes else np.zeros((0, 2), np.float32)


def _best_ratio(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Per box, the best anchor's worse side ratio (min(r, 1/r) over w and h, then the max over anchors); float32
    torch, as YOLOv7 computes it (and ~7x faster than numpy on the evolution's 1000 rounds)."""
    ratio = wh[:, None] / anchors[None]
    return torch.minimum(ratio, 1 / ratio).amin(2).amax(1)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def recall_of(wh: np.ndarray, anchors: np.ndarray, anchor_t: float) -> float:
    """Best possible recall: the share of boxes with some anchor within ``anchor_t`` in both sides (1.0 if none)."""
    if not len(wh):
        return 1.0
    return float((_best_ratio(_tensor(wh), _tensor(anchors)) > 1 / anchor_t).float().mean())


def best_possible_recall(labels: Sequence[np.ndarray], hw: np.ndarray, img_size: int, anchors_px: np.ndarray,
                         anchor_t: float) -> float:
    """:func:`recall_of` the boxes of a data set (see :func:`label_sizes`); ``anchors_px`` ``[k, 2]`` (w, h)."""
    return recall_of(label_sizes(labels, hw, img_size), anchors_px, anchor_t)


def evolve_anchors(wh: np.ndarray, n: int, anchor_t: float, seed: int = 0,
                   generations: int = GENERATIONS) -> np.ndarray | None:
    """YOLOv7's ``kmean_anchors``: k-means on the whitened box sizes, then a genetic evolution of the mean best
    ratio above ``1 / anchor_t``; ``[n, 2]`` pixel anchors sorted by area, or None when there are fewer than ``n``
    boxes of at least 2 pixels. Deterministic for a ``seed``."""
    from scipy.cluster.vq import kmeans

    wh = wh[(wh >= MIN_SIDE).any(1)].astype(np.float64)
    if len(np.unique(wh, axis=0)) < n:
        return None
    rng = np.random.default_rng(seed)
    sigma = wh.std(0)
    white, best = wh / sigma, None
    for _ in range(KMEANS_RUNS):
        codebook, distortion = kmeans(white, white[rng.choice(len(white), n, replace=False)])
        if len(codebook) == n and (best is None or distortion < best[1]):
            best = (codebook, distortion)
    if best is None:
        return None
    k, thr, boxes = best[0] * sigma, 1 / anchor_t, _tensor(wh)

    def fitness(anchors: np.ndarray) -> float:
        ratio = _best_ratio(boxes, _tensor(anchors))
        return float((ratio * (ratio > thr)).mean())

    f = fitness(k)
    for _ in range(generations):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < 0.9) * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1).clip(0.3, 3.0)
        candidate = (k * v).clip(min=MIN_SIDE)
        fc = fitness(candidate)
        if fc > f:
            f, k = fc, candidate
    return k[np.argsort(k.prod(1))]


def head_anchors(head: torch.nn.Module) -> np.ndarray:
    """A detection head's anchors in pixels, ``[nl * na, 2]`` (w, h), level by level."""
    return head.anchor_grid.detach().reshape(-1, 2).cpu().numpy().astype(np.float32)


def set_anchors(head: torch.nn.Module, anchors_px: np.ndarray) -> None:
    """Give ``head`` these pixel anchors (sorted small to large, so level by level with the strides): its
    ``anchor_grid`` in pixels and ``anchors`` in grid units, in place."""
    a = torch.as_tensor(anchors_px, dtype=head.anchors.dtype, device=head.anchors.device).view_as(head.anchors)
    if bool(head.stride[-1] < head.stride[0]):  # levels from the coarsest: largest anchors first (check_anchor_order)
        a = a.flip(0)
    with torch.no_grad():
        head.anchor_grid.copy_(a.view_as(head.anchor_grid))
        head.anchors.copy_(a / head.stride.to(a).view(-1, 1, 1))
