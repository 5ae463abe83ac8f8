"""YOLOv7 non-maximum suppression over raw head predictions.

Input ``pred`` [B, N, 5 + nc]: (cx, cy, w, h) in input pixels, objectness (after sigmoid), nc class scores
(after sigmoid). Output: one tensor per image [n, 6] = (x1, y1, x2, y2, conf, cls), corners in input pixels,
sorted by decreasing ``conf``; ``cls`` is a float class index.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from yolo_prune.engine.boxes import xywh2xyxy
from yolo_prune.errors import YoloPruneError

MAX_NMS = 30000  # most boxes handed to torchvision nms per image (YOLOv7 ``max_nms``)


def _class_scores(x: Tensor) -> Tensor:
    """Per-class confidence [n, nc] of candidate rows x [n, 5 + nc].

    ``obj * cls`` as YOLOv7; with a single class YOLOv7 uses ``obj`` alone (the class score of a one-class
    model carries no information), and so do we.
    """
    if x.shape[1] == 6:
        return x[:, 4:5].clone()
    return x[:, 5:] * x[:, 4:5]


def _detections(x: Tensor, conf_thres: float, multi_label: bool) -> Tensor:
    """Candidate rows x [n, 5 + nc] -> detections [k, 6] (xyxy, conf, cls) with conf > conf_thres."""
    box, scores = xywh2xyxy(x[:, :4]), _class_scores(x)
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = scores.max(1, keepdim=True)
    return torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]


def _nms_image(
    x: Tensor, conf_thres: float, iou_thres: float, classes: Sequence[int] | None,
    agnostic: bool, multi_label: bool, max_det: int, max_wh: float,
) -> Tensor:
    """NMS of one image's predictions x [N, 5 + nc] -> [n <= max_det, 6]."""
    x = x[x[:, 4] > conf_thres]
    if not x.shape[0]:
        return x.new_zeros((0, 6))
    det = _detections(x, conf_thres, multi_label)
    if classes is not None:
        det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device, dtype=det.dtype)).any(1)]
    if not det.shape[0]:
        return det
    if det.shape[0] > MAX_NMS:
        det = det[det[:, 4].argsort(descending=True)[:MAX_NMS]]
    offset = det[:, 5:6] * (0.0 if agnostic else max_wh)  # boxes of different classes never overlap
    keep = nms(det[:, :4] + offset, det[:, 4], iou_thres)[:max_det]
    return det[keep]


def non_max_suppression(
    pred: Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_wh: float = 7680,
) -> list[Tensor]:
    """YOLOv7 NMS: ``pred`` [B, N, 5 + nc] -> list of B tensors [n_i, 6] = (x1, y1, x2, y2, conf, cls).

    Candidates need objectness > ``conf_thres``; a detection's ``conf`` is obj * cls (obj alone when nc == 1)
    and must also exceed ``conf_thres``. ``multi_label`` keeps every class above the threshold per box
    (ignored when nc == 1, as YOLOv7), otherwise only the best class. ``classes`` keeps only those class
    indices. NMS is per class (boxes shifted by ``cls * max_wh``, ``max_wh`` must exceed the input size)
    unless ``agnostic``. At most ``max_det`` detections per image, highest ``conf`` first.
    YOLOv7's wall-clock time limit is omitted so results never depend on machine speed.
    """
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise YoloPruneError(f"NMS expects predictions [B, N, 5 + nc] with nc >= 1, got {tuple(pred.shape)}")
    multi_label = multi_label and pred.shape[2] > 6
    return [
        _nms_image(x, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_wh)
        for x in pred
    ]
