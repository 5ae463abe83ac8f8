"""The PyTorch reference for end-to-end exports, and matching two detection lists within tolerance.

Detections are [n, 6] float tensors: (x1, y1, x2, y2, score, class) in input pixels, by decreasing score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert, nms

DEFAULT_MAX_WH = 7680.0  # YOLOv7's class offset; any value above the box extent gives per-class NMS


def reference_detections(pred: Tensor, conf_thres: float, iou_thres: float, topk: int,
                         max_wh: float | None = None) -> list[Tensor]:
    """pred [B, N, 5 + nc] (xywh pixels, obj, cls) -> per image [n <= topk, 6], the YOLOv7 PyTorch pipeline.

    Score = max over classes of obj * cls, kept when > ``conf_thres``; NMS per class (boxes offset by
    ``class * max_wh``) with IoU > ``iou_thres`` suppressed; the ``topk`` best survive.
    """
    out = []
    offset = DEFAULT_MAX_WH if max_wh is None else float(max_wh)
    for x in pred.float():
        score, cls = (x[:, 5:] * x[:, 4:5]).max(1)
        keep = score > conf_thres
        boxes, score, cls = box_convert(x[keep, :4], "cxcywh", "xyxy"), score[keep], cls[keep].float()
        kept = nms(boxes + cls[:, None] * offset, score, iou_thres)[:topk]
        out.append(torch.cat((boxes[kept], score[kept, None], cls[kept, None]), 1))
    return out


def unpad(num: Tensor, boxes: Tensor, scores: Tensor, classes: Tensor) -> list[Tensor]:
    """End-to-end outputs (num_dets [B, 1], det_boxes [B, K, 4], det_scores [B, K], det_classes [B, K])
    -> per image [num_dets, 6]."""
    rows = torch.cat((boxes.float(), scores.float()[..., None], classes.float()[..., None]), 2)
    return [r[: int(n)] for r, n in zip(rows, num.view(-1))]


@dataclass
class Match:
    """Result of matching detections ``got`` to ``ref``: counts and the worst differences of matched pairs."""

    matched: int
    only_got: Tensor
    only_ref: Tensor
    box_diff: float = 0.0
    score_diff: float = 0.0


def match_detections(got: Tensor, ref: Tensor, box_tol: float, score_tol: float) -> Match:
    """Pair each row of ``got`` with an unused ``ref`` row of the same class within tolerance (closest box).

    Order is ignored (near-equal scores may swap between runtimes). Unpaired rows are returned.
    """
    used = torch.zeros(len(ref), dtype=torch.bool)
    unpaired, box_diff, score_diff = [], 0.0, 0.0
    for row in got:
        d_box = (ref[:, :4] - row[:4]).abs().amax(1) if len(ref) else ref.new_zeros(0)
        d_score = (ref[:, 4] - row[4]).abs()
        ok = (~used) & (ref[:, 5] == row[5]) & (d_box <= box_tol) & (d_score <= score_tol)
        if not ok.any():
            unpaired.append(row)
            continue
        j = int(torch.where(ok, d_box, float("inf")).argmin())
        used[j] = True
        box_diff, score_diff = max(box_diff, float(d_box[j])), max(score_diff, float(d_score[j]))
    only_got = torch.stack(unpaired) if unpaired else got.new_zeros((0, 6))
    return Match(int(used.sum()), only_got, ref[~used], box_diff, score_diff)


def borderline(rows: Tensor, dets: Tensor, conf_thres: float, topk: int, score_tol: float) -> Tensor:
    """Which unpaired ``rows`` [k, 6] of the list ``dets`` sit on a decision boundary (score tolerance):
    next to ``conf_thres``, or next to the lowest kept score when ``topk`` truncated the list."""
    near_conf = (rows[:, 4] - conf_thres).abs() <= score_tol
    if len(dets) < topk:
        return near_conf
    return near_conf | ((rows[:, 4] - dets[:, 4].min()).abs() <= score_tol)
