"""YOLOv7 ``test.py`` detection metrics: prediction/label matching at 10 IoU thresholds and ``ap_per_class``.

These reproduce the official numbers (P, R, mAP@.5, mAP@.5:.95 as printed by YOLOv7), including its quirks:
greedy matching in NMS order where a prediction only competes for its best-IoU label, AP from a 101-point
interpolated precision envelope with the recall curve extended by 0.01, and P/R read at the confidence
that maximises the mean F1 over classes. The authoritative mAP@.5:.95 comes from :mod:`.coco`.

Vectorised: the greedy matching has a closed form (a label goes to the first prediction, in NMS order, whose
best-IoU label it is), so :class:`StatsAccumulator` matches every image at once when the metrics are computed,
and ``ap_per_class`` builds each class's curves for all thresholds together. Same numbers as the loops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from yolo_prune.engine.boxes import box_iou

_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")


def iou_thresholds(device: torch.device | str = "cpu") -> Tensor:
    """The 10 COCO IoU thresholds 0.50:0.05:0.95 as a float tensor [10]."""
    return torch.linspace(0.5, 0.95, 10, device=device)


def match_predictions(pred: Tensor, labels: Tensor, iouv: Tensor) -> Tensor:
    """Which predictions are true positives at each IoU threshold, as YOLOv7 ``test.py``.

    pred [n, 6] = (x1, y1, x2, y2, conf, cls) in NMS order (decreasing conf); labels [m, 5] = (cls, x1, y1,
    x2, y2) in the same pixel space; iouv [t] thresholds. Returns bool [n, t]. Each prediction is matched
    to its best-IoU label of the same class (IoU > iouv[0]); a label already taken leaves it unmatched.
    """
    return match_images([pred], [labels], iouv)


MATCH_BLOCK = 1 << 22  # largest prediction x label IoU block of one vectorised matching step


def match_images(preds: list[Tensor], labels: list[Tensor], iouv: Tensor) -> Tensor:
    """:func:`match_predictions` of many images at once: bool [sum n_i, t] for the concatenated predictions.

    Images are taken in blocks whose IoU matrix (predictions x labels of the block) stays under MATCH_BLOCK.
    """
    n_pred = [int(p.shape[0]) for p in preds]
    correct = torch.zeros(sum(n_pred), iouv.numel(), dtype=torch.bool)
    start, offset = 0, 0
    while start < len(preds):
        end, n, m = start, 0, 0
        while end < len(preds) and (end == start or (n + n_pred[end]) * (m + len(labels[end])) <= MATCH_BLOCK):
            n, m, end = n + n_pred[end], m + len(labels[end]), end + 1
        correct[offset:offset + n] = _match_block(preds[start:end], labels[start:end], iouv)
        start, offset = end, offset + n
    return correct


def _match_block(preds: list[Tensor], labels: list[Tensor], iouv: Tensor) -> Tensor:
    """Vectorised greedy matching of a few images: predictions only see labels of their image and class."""
    pred = torch.cat([p.float() for p in preds]) if preds else torch.zeros(0, 6)
    lab = torch.cat([t.float() for t in labels]) if labels else torch.zeros(0, 5)
    correct = torch.zeros(pred.shape[0], iouv.numel(), dtype=torch.bool)
    if not pred.shape[0] or not lab.shape[0]:
        return correct
    p_img = torch.repeat_interleave(torch.arange(len(preds)), torch.tensor([len(p) for p in preds]))
    l_img = torch.repeat_interleave(torch.arange(len(labels)), torch.tensor([len(t) for t in labels]))
    same = (p_img[:, None] == l_img[None]) & (pred[:, 5:6] == lab[None, :, 0])  # [n, m]
    iou = box_iou(pred[:, :4], lab[:, 1:5]).masked_fill(~same, -1.0)
    best_iou, best = iou.max(1)  # first label of the highest IoU, as max over the class's labels in order
    claim = (best_iou > iouv[0]).nonzero(as_tuple=True)[0]
    first = torch.full((lab.shape[0],), pred.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, best[claim], claim, reduce="amin")  # each label goes to its first claimant
    won = first[first < pred.shape[0]]
    correct[won] = best_iou[won, None] > iouv.to(best_iou.device)
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one P-R curve (arrays [n], ordered by decreasing confidence), YOLOv7 default metric.

    Sentinels (0, 1) and (recall[-1] + 0.01, 0) are added, the precision envelope taken, and the area
    integrated by the trapezoid rule over 101 recall points. Returns (ap, envelope precision, recall).
    """
    mrec = np.concatenate(([0.0], recall, [recall[-1] + 0.01]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(_trapz(np.interp(x, mrec, mpre), x)), mpre, mrec


@dataclass
class APResult:
    """Per-class output of :func:`ap_per_class`; rows follow ``classes`` (classes that have labels).

    p, r, f1: [k] at the best mean-F1 confidence; ap: [k, t] AP per IoU threshold (column 0 = AP@.5).
    """

    p: np.ndarray
    r: np.ndarray
    ap: np.ndarray
    f1: np.ndarray
    classes: np.ndarray


def _class_curves(tp: np.ndarray, conf: np.ndarray, n_l: int, px: np.ndarray):
    """P/R at confidences -px and AP per threshold for one class; tp [n, t] sorted by decreasing conf.

    :func:`compute_ap` for every threshold at once (envelope and trapezoid over columns; ``np.interp`` per column).
    """
    tpc, fpc = tp.cumsum(0), (1 - tp).cumsum(0)
    recall = tpc / (n_l + 1e-16)
    precision = tpc / (tpc + fpc)
    r = np.interp(-px, -conf, recall[:, 0], left=0)
    p = np.interp(-px, -conf, precision[:, 0], left=1)
    t = tp.shape[1]
    mrec = np.concatenate((np.zeros((1, t)), recall, recall[-1:] + 0.01))  # [n + 2, t]
    mpre = np.concatenate((np.ones((1, t)), precision, np.zeros((1, t))))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 0), 0), 0)
    x = np.linspace(0, 1, 101)
    curves = np.stack([np.interp(x, mrec[:, j], mpre[:, j]) for j in range(t)])  # [t, 101]
    return p, r, _trapz(curves, x, axis=1)


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> APResult:
    """YOLOv7 ``ap_per_class``: tp bool [n, t], conf [n], pred_cls [n] over all predictions, target_cls [m].

    Classes without labels are left out; a class without predictions gets zeros.
    """
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order].astype(np.float64), conf[order], pred_cls[order]
    classes = np.unique(target_cls)
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((classes.shape[0], tp.shape[1]))
    p, r = np.zeros((classes.shape[0], 1000)), np.zeros((classes.shape[0], 1000))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        n_l = int((target_cls == c).sum())
        if i.sum() and n_l:
            p[ci], r[ci], ap[ci] = _class_curves(tp[i], conf[i], n_l, px)
    f1 = 2 * p * r / (p + r + 1e-16)
    best = int(f1.mean(0).argmax()) if classes.shape[0] else 0
    return APResult(p[:, best], r[:, best], ap, f1[:, best], classes.astype(np.int64))


@dataclass
class YoloMetrics:
    """Summary as printed by YOLOv7 ``test.py``; per-class arrays follow ``classes`` (classes with labels).

    n_labels: [nc] label count per class; ap50 / ap: [k] per-class AP@.5 and AP@.5:.95.
    """

    mp: float
    mr: float
    map50: float
    map: float
    classes: np.ndarray
    p: np.ndarray
    r: np.ndarray
    ap50: np.ndarray
    ap: np.ndarray
    n_labels: np.ndarray


class StatsAccumulator:
    """Collects per-image predictions and labels; :meth:`compute` matches them all at once (vectorised) and reduces
    them like YOLOv7 ``test.py``."""

    def __init__(self, iouv: Tensor | None = None) -> None:
        self.iouv = iou_thresholds() if iouv is None else iouv.cpu()
        self._preds: list[Tensor] = []
        self._labels: list[Tensor] = []

    def add(self, pred: Tensor, labels: Tensor) -> None:
        """Add one image: pred [n, 6] (xyxy, conf, cls) in NMS order, labels [m, 5] (cls, xyxy), same space."""
        self._preds.append(pred.detach().float().cpu())
        self._labels.append(labels.detach().float().cpu())

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(correct bool [N, t], conf [N], pred_cls [N], target_cls [M]) over every image added."""
        t = self.iouv.numel()
        if not self._preds:
            return np.zeros((0, t), bool), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        pred, labels = torch.cat(self._preds), torch.cat(self._labels)
        correct = match_images(self._preds, self._labels, self.iouv)
        return correct.numpy(), pred[:, 4].numpy(), pred[:, 5].numpy(), labels[:, 0].numpy()

    def compute(self, nc: int) -> YoloMetrics:
        """mP, mR, mAP@.5, mAP@.5:.95 over classes with labels (all zero when nothing was matched)."""
        tp, conf, pcls, tcls = self.stats()
        n_labels = np.bincount(tcls.astype(np.int64), minlength=nc)
        empty = np.zeros(0)
        if not tp.any():  # YOLOv7 skips ap_per_class when nothing is a true positive
            return YoloMetrics(0.0, 0.0, 0.0, 0.0, np.zeros(0, np.int64), empty, empty, empty, empty, n_labels)
        res = ap_per_class(tp, conf, pcls, tcls)
        ap50, ap = res.ap[:, 0], res.ap.mean(1)
        return YoloMetrics(float(res.p.mean()), float(res.r.mean()), float(ap50.mean()), float(ap.mean()),
                           res.classes, res.p, res.r, ap50, ap, n_labels)
