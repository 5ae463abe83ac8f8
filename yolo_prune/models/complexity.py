"""Exact parameter and FLOP accounting.

GFLOPs follow the YOLOv7 ecosystem (``thop`` as used by the official ``model_info``): 2 x (multiply-accumulates
of every convolution and linear layer, without bias terms, plus one op per output element of an ``nn.Upsample``). Pooling,
activations and concatenations count zero, BatchNorm is treated as foldable. Shapes come from a forward
pass on the ``meta`` device, so the count is exact for any input size and costs no compute.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics and anchors excluded)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class OpCost:
    """One counted module at a given input size: name, channels, output size and op count (MACs)."""

    name: str
    in_channels: int
    out_channels: int
    out_hw: tuple[int, int]
    macs: int


def _cost(name: str, mod: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> OpCost | None:
    if isinstance(mod, nn.Conv2d):
        kernel = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        return OpCost(name, mod.in_channels, mod.out_channels, tuple(out.shape[-2:]), out[0].numel() * kernel)
    if isinstance(mod, nn.Upsample):
        return OpCost(name, inp.shape[1], out.shape[1], tuple(out.shape[-2:]), out[0].numel())
    if isinstance(mod, nn.Linear):
        return OpCost(name, mod.in_features, mod.out_features, (1, 1), out[0].numel() * mod.in_features)
    return None


def op_costs(model: nn.Module, img_size: int | tuple[int, int] = 640, ch: int = 3) -> list[OpCost]:
    """Per-module op counts for one image of ``img_size`` (int or (h, w)); the model is not touched."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    meta = copy.deepcopy(model).to("meta").eval()
    costs: list[OpCost] = []
    handles = []
    for name, m in meta.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Upsample, nn.Linear)):
            def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, name: str = name) -> None:
                cost = _cost(name, mod, inp[0], out)
                if cost is not None:
                    costs.append(cost)
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(1, ch, h, w, device="meta"))
    finally:
        for hd in handles:
            hd.remove()
    return costs


def count_gflops(model: nn.Module, img_size: int | tuple[int, int] = 640, ch: int = 3) -> float:
    """GFLOPs for one image, as the YOLOv7 ecosystem reports them."""
    return 2 * sum(c.macs for c in op_costs(model, img_size, ch)) / 1e9
