"""YOLOv7 building blocks, with the official attribute names so official state_dicts map 1:1.

Every block takes explicit channel counts (including internal ones) so pruned widths rebuild exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from yolo_prune.models.exact_pool import exact_max_pool2d, exact_pool_applies

BN_EPS = 1e-3  # YOLOv7 initialize_weights() sets these on every BatchNorm2d
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for odd kernels, as the official autopad."""
    return k // 2 if p is None else p


def batch_norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def make_act(act: bool | nn.Module | None) -> nn.Module:
    """Official rule: ``True`` -> SiLU, a module -> itself, anything else -> Identity."""
    if act is True:
        return nn.SiLU()
    return act if isinstance(act, nn.Module) else nn.Identity()


class Conv(nn.Module):
    """Conv2d(bias=False) -> BatchNorm2d -> activation. After fusion ``bn`` is Identity and conv has a bias."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn: nn.Module = batch_norm(c2)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class RepConv(nn.Module):
    """RepVGG-style 3x3 + 1x1 (+ identity BN when c1 == c2 and s == 1); fuses into ``rbr_reparam``."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True, deploy: bool = False):
        super().__init__()
        self.groups, self.in_channels, self.out_channels = g, c1, c2
        self.act = make_act(act)
        pad11 = autopad(k, p) - k // 2
        self.rbr_reparam: nn.Conv2d | None = None
        self.rbr_identity: nn.BatchNorm2d | None = None
        self.rbr_dense: nn.Sequential | None = None
        self.rbr_1x1: nn.Sequential | None = None
        if deploy:
            self.rbr_reparam = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=True)
            return
        self.rbr_identity = batch_norm(c1) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False), batch_norm(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, pad11, groups=g, bias=False), batch_norm(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + identity)


class MP(nn.Module):
    """Stride-k max pool (halves resolution)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = ExactMaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class ExactMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with faster kernels that give its values exactly (a maximum never rounds).

    Inference on CPU uses strided element-wise maxima (:mod:`.exact_pool`, 7-14x faster than torch's CPU kernel
    for YOLOv7's 2x2 and SPP pools); training runs a stride-1 "same" pool as a 1xk row pool then a kx1 column pool
    (2-3x faster for the SPP kernels 5/9/13). ONNX export keeps the single k x k MaxPool node deployment tools
    expect.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = (_single(v) for v in (self.kernel_size, self.stride, self.padding))
        plain = (k is None or s is None or p is None or self.ceil_mode or self.return_indices
                 or _single(self.dilation) != 1)
        if not plain and exact_pool_applies(x):
            return exact_max_pool2d(x, k, s, p)
        if (plain or s != 1 or p != k // 2 or k % 2 == 0 or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_exporting()):
            return super().forward(x)
        rows = nn.functional.max_pool2d(x, (1, k), 1, (0, p))
        return nn.functional.max_pool2d(rows, (k, 1), 1, (p, 0))


def _single(value) -> int | None:
    """An int, or a pair of equal ints, as one int (None for unequal pairs)."""
    if isinstance(value, int):
        return value
    return value[0] if len(value) == 2 and value[0] == value[1] else None


class SP(nn.Module):
    """Same-size max pool (SPP branch of yolov7-tiny)."""

    def __init__(self, k: int = 3, s: int = 1):
        super().__init__()
        self.m = ExactMaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPCSPC(nn.Module):
    """CSP spatial pyramid pooling: cv7(cat(cv6(cv5(cat(x1, pools(x1)))), cv2(x))) with x1 = cv4(cv3(cv1(x))).

    ``widths`` are the output channels of cv1..cv7 (official: c_, c_, c_, c_, c_, c_, c2 with c_ = 2*c2*e).
    """

    def __init__(self, c1: int, widths: Sequence[int], k: Sequence[int] = (5, 9, 13),
                 act: bool | nn.Module = True):
        super().__init__()
        w1, w2, w3, w4, w5, w6, w7 = widths
        self.cv1 = Conv(c1, w1, 1, 1, act=act)
        self.cv2 = Conv(c1, w2, 1, 1, act=act)
        self.cv3 = Conv(w1, w3, 3, 1, act=act)
        self.cv4 = Conv(w3, w4, 1, 1, act=act)
        self.m = nn.ModuleList([ExactMaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(w4 * (len(k) + 1), w5, 1, 1, act=act)
        self.cv6 = Conv(w5, w6, 3, 1, act=act)
        self.cv7 = Conv(w6 + w2, w7, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Shortcut(nn.Module):
    """Residual add of two layers (yolov7-e6e)."""

    def __init__(self, dimension: int = 0):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[0] + x[1]


class ReOrg(nn.Module):
    """Space-to-depth: [B,C,H,W] -> [B,4C,H/2,W/2] (P6 models' stem)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class DownC(nn.Module):
    """Downsampling by cat(cv2(cv1(x)), cv3(maxpool(x))); ``widths`` = outputs of cv1, cv2, cv3."""

    def __init__(self, c1: int, widths: Sequence[int], k: int = 2, act: bool | nn.Module = True):
        super().__init__()
        w1, w2, w3 = widths
        self.cv1 = Conv(c1, w1, 1, 1, act=act)
        self.cv2 = Conv(w1, w2, 3, k, act=act)
        self.cv3 = Conv(c1, w3, 1, 1, act=act)
        self.mp = ExactMaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.cv2(self.cv1(x)), self.cv3(self.mp(x))), dim=1)
