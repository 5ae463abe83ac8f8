"""Box-format helpers for evaluation (private to the engine; the data package may grow its own later).

Formats used throughout:

* ``xywh``  - (cx, cy, w, h), box centre and size (YOLO labels and raw predictions).
* ``xyxy``  - (x1, y1, x2, y2), top-left and bottom-right corners (NMS output, IoU).
* ``ltwh``  - (x, y, w, h), top-left corner and size (the COCO ``bbox`` field).

All functions take a tensor [..., 4] (or [N, >=4] where noted) and return a new tensor; inputs are never
modified in place.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou

Shape2 = Sequence[float]  # (h, w)
RatioPad = tuple[Sequence[float], Sequence[float]]  # ((ratio_h, ratio_w), (padw, padh))


def xywh2xyxy(x: Tensor) -> Tensor:
    """(cx, cy, w, h) [..., 4] -> (x1, y1, x2, y2) [..., 4]."""
    c, half = x[..., :2], x[..., 2:4] / 2
    return torch.cat((c - half, c + half), dim=-1)


def xyxy2xywh(x: Tensor) -> Tensor:
    """(x1, y1, x2, y2) [..., 4] -> (cx, cy, w, h) [..., 4]."""
    p1, p2 = x[..., :2], x[..., 2:4]
    return torch.cat(((p1 + p2) / 2, p2 - p1), dim=-1)


def xyxy2ltwh(x: Tensor) -> Tensor:
    """(x1, y1, x2, y2) [..., 4] -> COCO (x_left, y_top, w, h) [..., 4]."""
    return torch.cat((x[..., :2], x[..., 2:4] - x[..., :2]), dim=-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes a [N, 4] and b [M, 4] -> [N, M] (torchvision.ops.box_iou)."""
    return _tv_box_iou(a, b)


def clip_boxes(boxes: Tensor, shape: Shape2) -> Tensor:
    """Clamp xyxy boxes [N, 4] to an image of ``shape`` = (h, w); returns a new tensor."""
    h, w = float(shape[0]), float(shape[1])
    out = boxes.clone()
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, h)
    return out


def scale_coords(boxes: Tensor, img0_shape: Shape2, ratio_pad: RatioPad) -> Tensor:
    """Map xyxy boxes [N, >=4] from letterboxed-input pixels back to original-image pixels.

    ``img0_shape`` = (h0, w0); ``ratio_pad`` = ((h/h0, w/w0), (padw, padh)) as in YOLOv7's ``shapes[i][1]``.
    Unlike YOLOv7 (which applies the height ratio to both axes) each axis uses its own ratio; the two
    differ only by resize rounding. Only the first 4 columns change; the result is clipped to the image.
    """
    (rh, rw), (padw, padh) = ratio_pad
    out = boxes.clone()
    out[:, [0, 2]] = (out[:, [0, 2]] - float(padw)) / float(rw)
    out[:, [1, 3]] = (out[:, [1, 3]] - float(padh)) / float(rh)
    out[:, :4] = clip_boxes(out[:, :4], img0_shape)
    return out
