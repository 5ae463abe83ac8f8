"""The detection head of a Darknet model: the ``[convolutional]`` layers before each ``[yolo]`` and the decoding
each ``[yolo]`` layer defines (``scale_x_y``, ``new_coords``).

Raw maps stay pre-activation logits ``[B, na, ny, nx, nc + 5]`` (what the loss trains); with ``new_coords=1``
the cfg's ``logistic`` activation of the head conv is applied in decoding instead, which gives the same values.
Decoding equals Darknet's ``forward_yolo_layer`` + ``get_yolo_box`` (boxes in input pixels, not normalised):

* ``new_coords=0``: xy = (sigmoid(t) * s - (s - 1) / 2 + cell) * stride, wh = exp(t) * anchor;
* ``new_coords=1``: the same xy, wh = (2 * sigmoid(t))^2 * anchor;

objectness and class scores are sigmoids (YOLOv7's decoding is the ``new_coords=1``, ``s = 2`` case).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from yolo_prune.models.heads import Detect, make_grid


@dataclass(frozen=True)
class YoloLevel:
    """One ``[yolo]`` layer: its anchors in pixels, decoding options and where it sits in the cfg."""

    anchors: tuple[tuple[float, float], ...]
    scale_xy: float
    new_coords: bool
    yolo_layer: int  # index of the [yolo] section
    conv_layer: int  # index of the [convolutional] section before it (the head conv)


@dataclass(frozen=True)
class DarknetBoxCoder:
    """Box decoding of one level in grid units, for the loss and label assignment (same formula as inference)."""

    scale_xy: float = 1.0
    new_coords: bool = False

    def __call__(self, raw: Tensor, cells: Tensor, anchors: Tensor) -> Tensor:
        """raw [n, 4] logits (x, y, w, h); cells [n, 2] (gi, gj); anchors [n, 2] grid units -> [n, 4] cx, cy, w, h."""
        xy = raw[:, :2].sigmoid() * self.scale_xy - 0.5 * (self.scale_xy - 1.0) + cells
        return torch.cat((xy, wh_factor(raw[:, 2:4], self.new_coords) * anchors), 1)


def wh_factor(t: Tensor, new_coords: bool) -> Tensor:
    """Box size in anchor units: exp(t), or (2 sigmoid(t))^2 for ``new_coords=1``."""
    return (t.sigmoid() * 2.0) ** 2 if new_coords else t.exp()


class DarknetDetect(Detect):
    """YOLO head with Darknet's per-level decoding; ``m`` holds the head convs as the cfg defines them."""

    def __init__(self, nc: int, levels: Sequence[YoloLevel], convs: Sequence[nn.Conv2d]):
        super().__init__(nc, [[v for a in lv.anchors for v in a] for lv in levels], ch=())
        self.m = nn.ModuleList(convs)
        self.levels = tuple(levels)

    @property
    def box_coders(self) -> list[DarknetBoxCoder]:
        """One coder per level (the loss decodes predicted boxes with them)."""
        return [DarknetBoxCoder(lv.scale_xy, lv.new_coords) for lv in self.levels]

    def decode(self, i: int, raw: Tensor) -> Tensor:
        """Raw map [B, na, ny, nx, no] -> [B, na*ny*nx, no] with xywh in input pixels (Darknet's formulas)."""
        bs, _, ny, nx, _ = raw.shape
        level = self.levels[i]
        grid = make_grid(nx, ny, raw.device, raw.dtype)
        stride = self.stride[i].to(raw.device, raw.dtype)
        txy, twh, tconf = raw.split((2, 2, self.no - 4), 4)
        xy = (txy.sigmoid() * level.scale_xy - 0.5 * (level.scale_xy - 1.0) + grid) * stride
        wh = wh_factor(twh, level.new_coords) * self.anchor_grid[i].to(raw.dtype)
        return torch.cat((xy, wh, tconf.sigmoid()), 4).view(bs, -1, self.no)
