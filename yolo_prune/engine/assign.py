"""Label assignment for the YOLOv7 loss: which prediction cells are positives, and for which target.

Two strategies share one candidate generator (:func:`candidate_cells`: YOLOv7's ``find_3_positive`` with
``bias=0.5``, the auxiliary heads' ``find_5_positive`` with ``bias=1.0``):

* :class:`RatioAssigner` (``loss_ota: 0``) - every candidate is a positive for the target that produced
  it (YOLOv5 ``build_targets``).
* :class:`SimOTAAssigner` (``loss_ota: 1``) - the candidates of one image are pooled, and each target
  takes its dynamic-k cheapest cells by ``cls BCE + 3 * -log(IoU)`` (YOLOv7 ``ComputeLossOTA``).

Conventions: ``targets`` is [M, 6] = (image index, class, cx, cy, w, h) normalised to the image;
``preds`` is a list of raw maps [B, na, ny, nx, no]; ``anchors`` is [nl, na, 2] in grid units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou


@dataclass(frozen=True)
class LevelMatch:
    """Positives of one output level: prediction ``preds[l][b, a, gj, gi]`` is trained on ``targets[t]``.

    All fields are long tensors of the same length [n]; ``gj``/``gi`` are already clamped to the grid.
    """

    b: Tensor
    a: Tensor
    gj: Tensor
    gi: Tensor
    t: Tensor

    def __len__(self) -> int:
        return int(self.b.numel())

    @staticmethod
    def empty(device: torch.device) -> "LevelMatch":
        """A level without positives."""
        e = torch.zeros(0, dtype=torch.long, device=device)
        return LevelMatch(e, e, e, e, e)

    def select(self, keep: Tensor) -> "LevelMatch":
        """The positives picked by a boolean mask or index tensor ``keep``."""
        return LevelMatch(self.b[keep], self.a[keep], self.gj[keep], self.gi[keep], self.t[keep])


class Assigner(Protocol):
    """A label-assignment strategy: one :class:`LevelMatch` per output level."""

    def __call__(self, preds: Sequence[Tensor], targets: Tensor, img_hw: tuple[int, int]) -> list[LevelMatch]:
        ...


def decode_xywh(raw: Tensor, cells: Tensor, anchors: Tensor) -> Tensor:
    """YOLOv7 training decode in grid units.

    raw [n, 4] pre-sigmoid (x, y, w, h); cells [n, 2] (gi, gj); anchors [n, 2] grid units -> [n, 4] cx, cy, w, h.
    """
    s = raw.sigmoid()
    xy = s[:, :2] * 2.0 - 0.5 + cells
    wh = (s[:, 2:4] * 2.0) ** 2 * anchors
    return torch.cat((xy, wh), 1)


BoxCoder = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Decodes raw [n, 4] with cells [n, 2] and anchors [n, 2] (grid units) to cx, cy, w, h: :func:`decode_xywh`
for YOLOv7 heads; heads with another decoding expose ``box_coders`` (one per level, e.g. Darknet's)."""


def box_coders(head: object, nl: int) -> list[BoxCoder]:
    """The head's per-level box decoding for training (``head.box_coders``), else YOLOv7's for every level."""
    return list(getattr(head, "box_coders", None) or [decode_xywh] * nl)


def _neighbour_offsets(device: torch.device, dtype: torch.dtype, bias: float) -> Tensor:
    """[5, 2] cell offsets (x, y) subtracted from a target centre: own cell, left, up, right, down."""
    off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device, dtype=dtype)
    return off * bias


def _neighbour_mask(xy: Tensor, gain: Tensor, bias: float) -> Tensor:
    """[5, n] which of the offsets of :func:`_neighbour_offsets` to use for grid centres xy [n, 2].

    The own cell always; with ``bias`` 0.5 the left/up neighbour when the centre sits in the cell's left/upper
    half (and is not in the first cell), the right/down neighbour likewise for the other half; with ``bias`` 1.0
    all four neighbours (away from the border), as the official ``find_5_positive``.
    """

    def near(v: Tensor) -> Tensor:
        return (v % 1.0 < bias) & (v > 1.0)

    own = torch.ones_like(xy[:, :1], dtype=torch.bool)
    return torch.cat((own, near(xy), near(gain - xy)), 1).T


def _level_candidates(targets: Tensor, ny: int, nx: int, anchors: Tensor, anchor_t: float,
                      bias: float = 0.5) -> LevelMatch:
    """Candidates of one level: anchors within ``anchor_t`` of the target's w/h, own cell + neighbours (``bias``).

    targets [M, 6]; anchors [na, 2] grid units.
    """
    if targets.shape[0] == 0:
        return LevelMatch.empty(targets.device)
    gain = torch.tensor([nx, ny], device=targets.device, dtype=targets.dtype)
    gwh = targets[:, 4:6] * gain  # [M, 2]
    ratio = gwh[None] / anchors[:, None].to(targets.dtype)  # [na, M, 2]
    fits = torch.max(ratio, 1.0 / ratio).amax(2) < anchor_t  # [na, M]
    a_idx, t_idx = fits.nonzero(as_tuple=True)
    xy = targets[t_idx, 2:4] * gain  # [n, 2]
    use = _neighbour_mask(xy, gain, bias)  # [5, n]
    k_idx, n_idx = use.nonzero(as_tuple=True)
    cell = (xy[n_idx] - _neighbour_offsets(xy.device, xy.dtype, bias)[k_idx]).long()
    t_sel = t_idx[n_idx]
    return LevelMatch(
        b=targets[t_sel, 0].long(),
        a=a_idx[n_idx],
        gj=cell[:, 1].clamp(0, ny - 1),
        gi=cell[:, 0].clamp(0, nx - 1),
        t=t_sel,
    )


def candidate_cells(
    targets: Tensor, grid_hw: Sequence[tuple[int, int]], anchors: Tensor, anchor_t: float, bias: float = 0.5
) -> list[LevelMatch]:
    """YOLOv7 ``find_3_positive`` (``bias`` 0.5) or ``find_5_positive`` (``bias`` 1.0) for every level.

    targets [M, 6]; grid_hw[l] = (ny, nx) of level l; anchors [nl, na, 2] grid units.
    """
    return [
        _level_candidates(targets, ny, nx, anchors[i], anchor_t, bias) for i, (ny, nx) in enumerate(grid_hw)
    ]


def _grid_hw(preds: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(ny, nx) of every raw map [B, na, ny, nx, no]."""
    return [(int(p.shape[2]), int(p.shape[3])) for p in preds]


class RatioAssigner:
    """YOLOv5-style assignment (``loss_ota: 0``): every candidate cell is a positive of its own target."""

    def __init__(self, anchors: Tensor, anchor_t: float) -> None:
        """anchors [nl, na, 2] in grid units; anchor_t: max w/h ratio between target and anchor."""
        self.anchors = anchors.detach().float()
        self.anchor_t = float(anchor_t)

    def __call__(self, preds: Sequence[Tensor], targets: Tensor, img_hw: tuple[int, int]) -> list[LevelMatch]:
        """preds: nl raw maps; targets [M, 6]; img_hw unused (kept for the common signature)."""
        anchors = self.anchors.to(targets.device)
        return candidate_cells(targets.float(), _grid_hw(preds), anchors, self.anchor_t)


@dataclass(frozen=True)
class _Pool:
    """Unique candidate cells over all levels: each field [P] long (``level`` = output level)."""

    level: Tensor
    b: Tensor
    a: Tensor
    gj: Tensor
    gi: Tensor


def _pool_candidates(cands: Sequence[LevelMatch], unique: bool) -> _Pool:
    """Concatenate the levels' candidates; with ``unique``, a cell proposed by several targets appears once."""
    rows = torch.cat(
        [torch.stack((torch.full_like(m.b, i), m.b, m.a, m.gj, m.gi), 1) for i, m in enumerate(cands)]
    )  # [P, 5]
    return _Pool(*(torch.unique(rows, dim=0) if unique else rows).unbind(1))


def _cls_cost(scores: Tensor, gt_cls: Tensor, eps: float = 1e-7) -> Tensor:
    """Summed binary cross-entropy of one-hot ``gt_cls`` [G] against ``scores`` [P, nc] -> [G, P].

    Same value as BCE over a [G, P, nc] one-hot tensor, without building it.
    """
    y = scores.clamp(eps, 1.0 - eps)
    log_y, log_not_y = y.log(), (1.0 - y).log()
    all_negative = -log_not_y.sum(1)  # [P]
    return all_negative[None] + (log_not_y[:, gt_cls] - log_y[:, gt_cls]).T


def _lowest_k(cost: Tensor, k: Tensor) -> Tensor:
    """Boolean [G, P] marking, for each row g, its ``k[g]`` lowest-cost columns."""
    order = cost.argsort(dim=1)
    ranks = torch.arange(cost.shape[1], device=cost.device)[None] < k[:, None]
    return torch.zeros_like(cost, dtype=torch.bool).scatter_(1, order, ranks)


def dynamic_k_match(cost: Tensor, iou: Tensor, topk: int = 10) -> tuple[Tensor, Tensor]:
    """SimOTA matching of G targets to P predictions.

    cost, iou [G, P]. Each target keeps its k cheapest predictions, k = floor(sum of its ``topk`` best
    IoUs), at least 1; a prediction claimed by several targets goes to the cheapest one.
    Returns (prediction index [n], target index [n]), each prediction index at most once.
    """
    k = iou.topk(min(topk, iou.shape[1]), dim=1).values.sum(1).int().clamp(min=1)
    match = _lowest_k(cost, k)
    shared = match.sum(0) > 1
    if shared.any():
        cols = shared.nonzero(as_tuple=True)[0]
        match[:, cols] = False
        match[cost[:, cols].argmin(0), cols] = True
    pred_idx = match.any(0).nonzero(as_tuple=True)[0]
    return pred_idx, match[:, pred_idx].float().argmax(0)


class SimOTAAssigner:
    """YOLOv7 OTA assignment (``loss_ota: 1``): candidates from :func:`candidate_cells`, then dynamic-k.

    Like YOLOv7, a cell proposed by two targets of one image is two pool entries (it can be taken twice,
    counting double in the means); ``unique_cells=True`` pools each cell once instead. ``ComputeLossOTA`` uses
    ``topk=10, bias=0.5``; ``ComputeLossAuxOTA`` uses ``topk=20`` with ``bias=0.5`` (lead) and ``1.0`` (aux).
    """

    def __init__(
        self,
        anchors: Tensor,
        stride: Tensor,
        anchor_t: float,
        topk: int = 10,
        iou_weight: float = 3.0,
        unique_cells: bool = False,
        bias: float = 0.5,
        coders: Sequence[BoxCoder] | None = None,
    ) -> None:
        """anchors [nl, na, 2] grid units; stride [nl] pixels per cell; topk/iou_weight as in YOLOv7; ``bias``
        picks the candidate cells (:func:`candidate_cells`); ``coders`` decode boxes per level (YOLOv7's)."""
        self.anchors = anchors.detach().float()
        self.stride = torch.as_tensor(stride).detach().float()
        self.anchor_t = float(anchor_t)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)
        self.unique_cells = bool(unique_cells)
        self.bias = float(bias)
        self.coders = list(coders) if coders is not None else [decode_xywh] * len(self.anchors)

    def _decode_pool(self, preds: Sequence[Tensor], pool: _Pool) -> tuple[Tensor, Tensor]:
        """Pooled cells -> (boxes xyxy in pixels [P, 4], class scores sqrt(sigmoid(cls) * sigmoid(obj)) [P, nc])."""
        n_pool, nc = pool.level.numel(), preds[0].shape[-1] - 5
        boxes = torch.zeros(n_pool, 4, device=pool.b.device)
        scores = torch.zeros(n_pool, nc, device=pool.b.device)
        for i, p in enumerate(preds):
            sel = pool.level == i
            b, a, gj, gi = pool.b[sel], pool.a[sel], pool.gj[sel], pool.gi[sel]
            ps = p[b, a, gj, gi].float()  # [n, no]
            cells = torch.stack((gi, gj), 1).float()
            xywh = self.coders[i](ps[:, :4], cells, self.anchors[i].to(ps.device)[a]) * self.stride[i].item()
            boxes[sel] = box_convert(xywh, "cxcywh", "xyxy")
            scores[sel] = (ps[:, 5:].sigmoid() * ps[:, 4:5].sigmoid()).sqrt()
        return boxes, scores

    def _match_image(
        self, gt: Tensor, gt_idx: Tensor, boxes: Tensor, scores: Tensor, img_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """One image: gt [G, 6] rows of ``targets`` (indices gt_idx [G]); boxes [P, 4] xyxy px; scores [P, nc].

        Returns (pool column [n], target row [n]).
        """
        h, w = img_hw
        scale = torch.tensor([w, h, w, h], device=gt.device, dtype=torch.float32)
        gt_xyxy = box_convert(gt[:, 2:6].float() * scale, "cxcywh", "xyxy")
        iou = box_iou(gt_xyxy, boxes)  # [G, P]
        cost = _cls_cost(scores, gt[:, 1].long()) + self.iou_weight * -torch.log(iou + 1e-8)
        cols, rows = dynamic_k_match(cost, iou, self.topk)
        return cols, gt_idx[rows]

    @torch.no_grad()
    def __call__(self, preds: Sequence[Tensor], targets: Tensor, img_hw: tuple[int, int]) -> list[LevelMatch]:
        """preds: nl raw maps; targets [M, 6]; img_hw (H, W) of the network input in pixels."""
        device = preds[0].device
        anchors = self.anchors.to(targets.device)
        cands = candidate_cells(targets.float(), _grid_hw(preds), anchors, self.anchor_t, self.bias)
        if sum(len(m) for m in cands) == 0:
            return [LevelMatch.empty(device) for _ in preds]
        pool = _pool_candidates(cands, self.unique_cells)
        boxes, scores = self._decode_pool(preds, pool)
        cols, rows = [], []
        for img in pool.b.unique().tolist():
            gt_idx = (targets[:, 0].long() == img).nonzero(as_tuple=True)[0]
            in_img = (pool.b == img).nonzero(as_tuple=True)[0]
            c, r = self._match_image(targets[gt_idx], gt_idx, boxes[in_img], scores[in_img], img_hw)
            cols.append(in_img[c])
            rows.append(r)
        col, row = torch.cat(cols), torch.cat(rows)
        return [
            LevelMatch(pool.b[col], pool.a[col], pool.gj[col], pool.gi[col], row).select(pool.level[col] == i)
            for i in range(len(preds))
        ]


def make_assigner(loss_ota: int, anchors: Tensor, stride: Tensor, anchor_t: float,
                  coders: Sequence[BoxCoder] | None = None) -> Assigner:
    """The strategy for hyp ``loss_ota``: 1 -> :class:`SimOTAAssigner`, 0 -> :class:`RatioAssigner`."""
    if int(loss_ota):
        return SimOTAAssigner(anchors, stride, anchor_t, coders=coders)
    return RatioAssigner(anchors, anchor_t)
