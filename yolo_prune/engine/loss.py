"""YOLOv7 training loss: box (1 - CIoU), objectness (BCE, IoU target) and class (BCE) terms.

Usage, as the official trainer does::

    hyp = scale_loss_gains(load_hyp("scratch.tiny"), nl=head.nl, nc=head.nc, img_size=640)
    criterion = YoloLoss(head, hyp)            # head: the Detect module (or a HeadSpec)
    loss, items = criterion(raw_maps, targets, imgs)
    loss.backward()                              # loss = total * batch size, items = (box, obj, cls, total)

Label assignment is delegated to a strategy from :mod:`yolo_prune.engine.assign`, picked by hyp ``loss_ota``.
:class:`AuxYoloLoss` is the P6 models' loss with auxiliary heads (official ``ComputeLossAuxOTA``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from yolo_prune.engine.assign import Assigner, LevelMatch, SimOTAAssigner, box_coders, make_assigner


class HeadLike(Protocol):
    """What the loss reads from a detect head: ``anchors`` [nl, na, 2] in grid units, ``stride`` [nl]."""

    nc: int
    nl: int
    na: int
    anchors: Tensor
    stride: Tensor


@dataclass
class HeadSpec:
    """The head values the loss needs, for callers without a Detect module.

    anchors [nl, na, 2] in grid units (anchor pixels / stride); stride [nl] pixels per cell.
    """

    nc: int
    anchors: Tensor
    stride: Tensor

    @property
    def nl(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def na(self) -> int:
        return int(self.anchors.shape[1])

    @property
    def no(self) -> int:
        return self.nc + 5


def scale_loss_gains(hyp: Mapping[str, Any], nl: int, nc: int, img_size: int) -> dict[str, Any]:
    """Copy of ``hyp`` with ``box``/``cls``/``obj`` scaled to the head and image size like the official train.py.

    box *= 3/nl; cls *= nc/80 * 3/nl; obj *= (img_size/640)^2 * 3/nl. Call it once, before :class:`YoloLoss`.
    """
    out = dict(hyp)
    layers = 3.0 / nl
    out["box"] = hyp["box"] * layers
    out["cls"] = hyp["cls"] * nc / 80.0 * layers
    out["obj"] = hyp["obj"] * (img_size / 640.0) ** 2 * layers
    return out


def level_balance(nl: int) -> list[float]:
    """Objectness weight per output level (official: [4, 1, 0.4] for 3 levels, else [4, 1, 0.25, 0.06, 0.02])."""
    weights = [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
    if nl > len(weights):
        raise ValueError(f"no objectness balance defined for {nl} output levels")
    return weights[:nl]


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of paired boxes, both [n, 4] as (cx, cy, w, h) -> [n].

    As in YOLOv7, the aspect-ratio weight alpha is treated as a constant (no gradient).
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(1), box2.unbind(1)
    left, right = torch.max(x1 - w1 / 2, x2 - w2 / 2), torch.min(x1 + w1 / 2, x2 + w2 / 2)
    top, bottom = torch.max(y1 - h1 / 2, y2 - h2 / 2), torch.min(y1 + h1 / 2, y2 + h2 / 2)
    inter = (right - left).clamp(0) * (bottom - top).clamp(0)
    iou = inter / (w1 * (h1 + eps) + w2 * (h2 + eps) - inter + eps)
    cw = torch.max(x1 + w1 / 2, x2 + w2 / 2) - torch.min(x1 - w1 / 2, x2 - w2 / 2)
    ch = torch.max(y1 + h1 / 2, y2 + h2 / 2) - torch.min(y1 - h1 / 2, y2 - h2 / 2)
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2  # squared centre distance
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou.clamp(max=1.0) + (1 + eps))  # clamp: rounding must not make this 0 / 0
    return iou - (rho2 / (cw**2 + ch**2 + eps) + v * alpha)


def bce_loss(logits: Tensor, target: Tensor, pos_weight: float, gamma: float = 0.0, alpha: float = 0.25) -> Tensor:
    """Mean BCE-with-logits over all elements (any shape); focal-modulated like YOLOv7's FocalLoss when gamma > 0."""
    pw = torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        prob = logits.sigmoid()
        p_t = target * prob + (1 - target) * (1 - prob)
        loss = loss * (target * alpha + (1 - target) * (1 - alpha)) * (1.0 - p_t) ** gamma
    return loss.mean()


class YoloLoss:
    """The YOLOv7 loss (ComputeLoss / ComputeLossOTA) with a pluggable label-assignment strategy.

    ``hyp`` must already hold the scaled gains (see :func:`scale_loss_gains`); keys read: box, obj, cls,
    cls_pw, obj_pw, fl_gamma, anchor_t, and optionally loss_ota (1), label_smoothing (0).
    """

    def __init__(self, head: HeadLike, hyp: Mapping[str, Any], assigner: Assigner | None = None) -> None:
        """head: detect module or :class:`HeadSpec`; assigner overrides the one chosen by ``loss_ota``."""
        self.nc, self.nl = int(head.nc), int(head.nl)
        self.anchors = head.anchors.detach().float().clone()  # [nl, na, 2] grid units
        self.stride = torch.as_tensor(head.stride).detach().float().clone()  # [nl]
        self.gains = (float(hyp["box"]), float(hyp["obj"]), float(hyp["cls"]))
        self.cls_pw, self.obj_pw = float(hyp["cls_pw"]), float(hyp["obj_pw"])
        self.gamma = float(hyp.get("fl_gamma", 0.0))
        eps = float(hyp.get("label_smoothing", 0.0))
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps  # positive / negative class targets
        self.gr = 1.0  # objectness target = (1 - gr) + gr * IoU
        self.balance = level_balance(self.nl)
        self.coders = box_coders(head, self.nl)  # per-level box decoding (YOLOv7's, or e.g. Darknet's)
        self.anchor_t = float(hyp["anchor_t"])
        self.assigner = assigner or make_assigner(
            int(hyp.get("loss_ota", 1)), self.anchors, self.stride, self.anchor_t, self.coders
        )

    def _img_hw(self, preds: Sequence[Tensor], imgs: Tensor | None) -> tuple[int, int]:
        """Input (H, W) in pixels, from ``imgs`` [B, 3, H, W] or else from the first map and its stride."""
        if imgs is not None:
            return int(imgs.shape[-2]), int(imgs.shape[-1])
        s = float(self.stride[0])
        return round(preds[0].shape[2] * s), round(preds[0].shape[3] * s)

    def _level_terms(self, i: int, p: Tensor, m: LevelMatch, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Box and class loss of level ``i`` and its objectness target.

        p [B, na, ny, nx, no]; targets [M, 6] -> (lbox [], lcls [], tobj [B, na, ny, nx]).
        """
        tobj = torch.zeros_like(p[..., 4])
        zero = p.new_zeros((), dtype=torch.float32)
        if len(m) == 0:
            return zero, zero, tobj
        ps = p[m.b, m.a, m.gj, m.gi].float()  # [n, no]
        cells = torch.stack((m.gi, m.gj), 1).float()
        pbox = self.coders[i](ps[:, :4], cells, self.anchors[i].to(p.device)[m.a])
        ny, nx = p.shape[2], p.shape[3]
        tbox = targets[m.t, 2:6].float() * torch.tensor([nx, ny, nx, ny], device=p.device)
        ciou = bbox_ciou(pbox, tbox)
        tobj[m.b, m.a, m.gj, m.gi] = ((1.0 - self.gr) + self.gr * ciou.detach().clamp(0)).to(tobj.dtype)
        lcls = zero
        if self.nc > 1:
            t = torch.full_like(ps[:, 5:], self.cn)
            t[torch.arange(len(m), device=p.device), targets[m.t, 1].long()] = self.cp
            lcls = bce_loss(ps[:, 5:], t, self.cls_pw, self.gamma)
        return (1.0 - ciou).mean(), lcls, tobj

    def _terms(self, preds: Sequence[Tensor], matches: Sequence[LevelMatch], targets: Tensor) -> list[Tensor]:
        """[box, objectness (level-balanced), class] summed over the levels of ``preds``, before the gains."""
        lbox, lobj, lcls = (preds[0].new_zeros(1, dtype=torch.float32) for _ in range(3))
        for i, (p, m) in enumerate(zip(preds, matches)):
            box_i, cls_i, tobj = self._level_terms(i, p, m, targets)
            lbox = lbox + box_i
            lcls = lcls + cls_i
            lobj = lobj + bce_loss(p[..., 4].float(), tobj.float(), self.obj_pw, self.gamma) * self.balance[i]
        return [lbox, lobj, lcls]

    def _total(self, terms: Sequence[Tensor], batch: int) -> tuple[Tensor, Tensor]:
        """Apply the gains: (loss [1] = total * batch, items [4] = (box, obj, cls, total), detached)."""
        lbox, lobj, lcls = (t * g for t, g in zip(terms, self.gains))
        total = lbox + lobj + lcls
        return total * batch, torch.cat((lbox, lobj, lcls, total)).detach()

    def __call__(
        self, preds: Sequence[Tensor], targets: Tensor, imgs: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """preds: nl raw maps [B, na, ny, nx, nc + 5] (extra maps, e.g. aux heads, are ignored);
        targets [M, 6]; imgs [B, 3, H, W] (only its size is used; inferred from the maps if None).

        Returns (loss [1] = total * B for backward, items [4] = (box, obj, cls, total), detached).
        """
        preds = list(preds)[: self.nl]
        targets = targets.to(preds[0].device)
        matches = self.assigner(preds, targets, self._img_hw(preds, imgs))
        return self._total(self._terms(preds, matches, targets), preds[0].shape[0])


class AuxYoloLoss(YoloLoss):
    """The loss of models with auxiliary heads (``IAuxDetect``: yolov7-w6/e6/d6/e6e), as the official
    ``ComputeLossAuxOTA`` of ``train_aux.py`` defines it.

    ``preds`` holds the nl lead maps, then the nl auxiliary maps (same grids). Assignment is *lead-guided*: both
    label sets are chosen by OTA from the **lead** heads' predictions; the lead's from 3 candidate cells per level
    (``bias`` 0.5, YOLOv7's ``find_3_positive``), the auxiliary heads' from 5 (``bias`` 1.0: the cell and its four
    neighbours, ``find_5_positive``), both with dynamic k from the 20 best IoUs. The auxiliary terms (box, class,
    and objectness with the same level balance) enter with weight ``aux_weight`` (hyp key ``aux_weight``,
    official 0.25) before the gains. Without auxiliary maps (eval-mode outputs) it is :class:`YoloLoss` with the
    lead assignment.
    """

    def __init__(self, head: HeadLike, hyp: Mapping[str, Any], aux_weight: float | None = None) -> None:
        super().__init__(head, hyp, assigner=None)
        self.assigner = SimOTAAssigner(self.anchors, self.stride, self.anchor_t, topk=20, bias=0.5,
                                       coders=self.coders)
        self.aux_assigner = SimOTAAssigner(self.anchors, self.stride, self.anchor_t, topk=20, bias=1.0,
                                           coders=self.coders)
        self.aux_weight = float(hyp.get("aux_weight", 0.25) if aux_weight is None else aux_weight)

    def __call__(
        self, preds: Sequence[Tensor], targets: Tensor, imgs: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """preds: 2*nl raw maps [B, na, ny, nx, nc + 5] (lead, then auxiliary); targets [M, 6]; imgs [B, 3, H, W].

        Returns (loss [1] = total * B, items [4] = (box, obj, cls, total) with the auxiliary terms included).
        """
        preds = list(preds)
        lead, aux = preds[: self.nl], preds[self.nl: 2 * self.nl]
        targets = targets.to(lead[0].device)
        img_hw = self._img_hw(lead, imgs)
        terms = self._terms(lead, self.assigner(lead, targets, img_hw), targets)
        if len(aux) == self.nl:
            aux_terms = self._terms(aux, self.aux_assigner(lead, targets, img_hw), targets)
            terms = [t + self.aux_weight * a for t, a in zip(terms, aux_terms)]
        return self._total(terms, lead[0].shape[0])


def make_loss(head: HeadLike, hyp: Mapping[str, Any]) -> YoloLoss:
    """The training loss for ``head`` (hyp gains already scaled): :class:`AuxYoloLoss` for heads with auxiliary
    outputs (``IAuxDetect``, as the official ``train_aux.py``), else :class:`YoloLoss`."""
    from yolo_prune.models.heads import IAuxDetect

    return AuxYoloLoss(head, hyp) if isinstance(head, IAuxDetect) and len(head.m2) else YoloLoss(head, hyp)


def detection_loss_fn(model: Any, img_size: int, hyp: str = "scratch.tiny"):
    """The detection loss of ``model`` (its head's anchors and strides, gains of shipped ``hyp``) as a function
    ``(raw maps, targets [M, 6], images) -> scalar``: what gradient criteria back-propagate."""
    from yolo_prune.engine.hyp import load_hyp

    head = model.detect
    loss = make_loss(head, scale_loss_gains(load_hyp(hyp), head.nl, head.nc, img_size))
    return lambda raw, targets, imgs: loss(raw, targets, imgs)[0]
