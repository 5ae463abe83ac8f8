"""Detection heads (Detect, IDetect, IAuxDetect) and the implicit-knowledge layers of YOLOR.

Train mode returns the raw per-level maps ``[B, na, ny, nx, no]`` (pre-sigmoid); eval mode returns
``(predictions [B, N, no], raw maps)`` with predictions decoded to (cx, cy, w, h) in input pixels,
objectness and class scores. Decoding uses split/cat (no in-place slice writes, so ONNX has no ScatterND).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


HEAD_GROUPS = ("box", "obj", "cls")  # the keys of Detect.channel_groups(), in output order


class ImplicitA(nn.Module):
    """Learned per-channel offset added to the input: ``x + implicit``."""

    def __init__(self, channel: int, mean: float = 0.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """Learned per-channel scale applied to the output: ``x * implicit``."""

    def __init__(self, channel: int, mean: float = 1.0, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


def make_grid(nx: int, ny: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cell offsets [1, 1, ny, nx, 2] as (x, y)."""
    yv, xv = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
    return torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(dtype)


class Detect(nn.Module):
    """YOLO head: one 1x1 conv per level producing ``na * (nc + 5)`` channels."""

    has_implicit = False

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", a)  # grid units once the Model has set strides
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))  # pixels
        self.stride = torch.ones(self.nl)  # set by Model
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch[: self.nl])

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Head conv of level i (plus implicit layers in subclasses)."""
        return self.m[i](x)

    def reshape(self, x: torch.Tensor) -> torch.Tensor:
        """[B, na*no, ny, nx] -> [B, na, ny, nx, no]."""
        bs, _, ny, nx = x.shape
        return x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, i: int, raw: torch.Tensor) -> torch.Tensor:
        """Raw map [B, na, ny, nx, no] -> [B, na*ny*nx, no] with xywh in input pixels."""
        bs, _, ny, nx, _ = raw.shape
        grid = make_grid(nx, ny, raw.device, raw.dtype)
        xy, wh, conf = raw.sigmoid().split((2, 2, self.no - 4), 4)
        xy = (xy * 2.0 - 0.5 + grid) * self.stride[i].to(raw.device, raw.dtype)
        wh = (wh * 2) ** 2 * self.anchor_grid[i].to(raw.dtype)
        return torch.cat((xy, wh, conf), 4).view(bs, -1, self.no)

    def forward(self, xs: list[torch.Tensor]):
        raw = [self.reshape(self.level(i, x)) for i, x in enumerate(xs[: self.nl])]
        if self.training:
            return raw
        return torch.cat([self.decode(i, r) for i, r in enumerate(raw)], 1), raw

    def head_convs(self) -> list[nn.Conv2d]:
        """The per-level output convolutions (never pruned)."""
        return list(self.m)

    def channel_groups(self) -> dict[str, torch.Tensor]:
        """Output channels of a head conv ([na * no], anchor-major) by meaning: ``box`` (x, y, w, h of every
        anchor), ``obj`` (objectness), ``cls`` (class logits); int8 deployments give each its own scale."""
        ch = torch.arange(self.na * self.no).view(self.na, self.no)  # [na, no]
        return {"box": ch[:, :4].reshape(-1), "obj": ch[:, 4].reshape(-1), "cls": ch[:, 5:].reshape(-1)}


class IDetect(Detect):
    """Detect with YOLOR implicit layers: ``im(conv(ia(x)))`` per level; ``fold_implicit`` removes them."""

    has_implicit = True

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = ()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch[: self.nl])
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch[: self.nl])

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if len(self.ia) == 0:  # implicit layers folded into the convs
            return self.m[i](x)
        return self.im[i](self.m[i](self.ia[i](x)))


class IAuxDetect(IDetect):
    """IDetect with auxiliary heads (``m2``) on extra levels; aux maps are returned in train mode only."""

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = ()):
        super().__init__(nc, anchors, ch)
        self.m2 = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch[self.nl:])

    def forward(self, xs: list[torch.Tensor]):
        if not self.training:
            return super().forward(xs)
        main = [self.reshape(self.level(i, x)) for i, x in enumerate(xs[: self.nl])]
        aux = [self.reshape(m(x)) for m, x in zip(self.m2, xs[self.nl:])]
        return main + aux

    def head_convs(self) -> list[nn.Conv2d]:
        return list(self.m) + list(self.m2)


HEADS: dict[str, type[Detect]] = {"Detect": Detect, "IDetect": IDetect, "IAuxDetect": IAuxDetect}
