"""How well a model's anchors fit a data set's boxes: YOLOv7's best possible recall (``check_anchors``).

YOLOv7's train.py replaces the anchors with k-means ones when fewer than 98 % of the training boxes have an anchor
within ``anchor_t`` in both sides (autoanchor). yolo-prune keeps a model's anchors (fine-tuned and pruned weights
are tied to them) and says so when the official trainer would have changed them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_RECALL = 0.98  # YOLOv7's autoanchor threshold


def best_possible_recall(labels: Sequence[np.ndarray], hw: np.ndarray, img_size: int, anchors_px: np.ndarray,
                         anchor_t: float) -> float:
    """Share of boxes with some anchor whose width and height ratios are both within ``anchor_t``.

    ``labels``: per image ``[n, 5]`` (cls, cx, cy, w, h) normalised; ``hw``: ``[images, 2]`` original (h, w);
    boxes are measured at ``img_size`` on the long side (YOLOv7 also jitters that size by 0.9-1.1; not here, so the
    number is deterministic). ``anchors_px``: ``[k, 2]`` anchor (w, h) in pixels. 1.0 when there are no boxes."""
    wh_img = img_size * hw[:, ::-1] / hw.max(1, keepdims=True)
    boxes = [lab[:, 3:5] * size for lab, size in zip(labels, wh_img) if len(lab)]
    if not boxes:
        return 1.0
    wh = np.concatenate(boxes, 0)
    ratio = wh[:, None] / anchors_px[None]
    fit = np.minimum(ratio, 1 / ratio).min(2).max(1)
    return float((fit > 1 / anchor_t).mean())
