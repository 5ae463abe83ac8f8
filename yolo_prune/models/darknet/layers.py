"""Darknet layers that YOLOv7's blocks do not cover: grouped routes, Darknet max-pooling, activated residual adds,
spatial attention (``[sam]``) and channel scaling (``[scale_channels]``), plus Darknet's activation names.

Each computes exactly what Darknet's CPU forward computes (``src/*_layer.c``); inputs are [B, C, H, W].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from yolo_prune.errors import ConfigError
from yolo_prune.models.blocks import Shortcut
from yolo_prune.models.exact_pool import exact_max_pool2d, exact_pool_applies

# Darknet activation name -> module factory (``activation=`` of [convolutional], [shortcut], [sam]...).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "mish": nn.Mish,
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
}


def activation(name: str, where: str) -> nn.Module:
    """The module for a Darknet activation name; an unknown name is an error naming the known ones."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"{where}: activation={name} is not supported; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def activation_name(module: nn.Module) -> str:
    """The Darknet name of an activation module (inverse of :func:`activation`)."""
    for name, factory in ACTIVATIONS.items():
        probe = factory()
        if type(probe) is type(module) and getattr(probe, "negative_slope", None) == getattr(module, "negative_slope", None):
            return name
    raise ConfigError(f"activation {type(module).__name__} has no Darknet name; known: {', '.join(ACTIVATIONS)}")


class RouteGroup(nn.Module):
    """``[route] groups=G group_id=J``: the J-th of G equal channel chunks of every input, concatenated."""

    def __init__(self, groups: int, group_id: int):
        super().__init__()
        self.groups, self.group_id = int(groups), int(group_id)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        xs = x if isinstance(x, (list, tuple)) else [x]
        parts = []
        for t in xs:
            size = t.shape[1] // self.groups  # [B, C, H, W] -> [B, C/G, H, W]
            parts.append(t.narrow(1, self.group_id * size, size))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def out_channels_for(self, inp: list[int]) -> int:
        """Output channels given the inputs' channel counts."""
        return sum(inp) // self.groups

    def extra_repr(self) -> str:
        return f"groups={self.groups}, group_id={self.group_id}"


class DarknetMaxPool(nn.Module):
    """``[maxpool]``: ``padding`` (default size - 1) split as Darknet does (``padding // 2`` before, the rest
    after), padded cells never win; output size ``(W + padding - size) // stride + 1``."""

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride, self.padding = int(size), int(stride), int(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.padding // 2
        after = self.padding - before
        fast = exact_pool_applies(x)  # CPU inference: the same values from strided maxima, several times faster
        if not fast and before == after and before <= self.size // 2:  # symmetric: the pool pads with -inf itself
            return F.max_pool2d(x, self.size, self.stride, before)
        if self.padding:
            x = F.pad(x, (before, after, before, after), value=float("-inf"))
        return exact_max_pool2d(x, self.size, self.stride, 0) if fast else F.max_pool2d(x, self.size, self.stride)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}, padding={self.padding}"


class DarknetShortcut(Shortcut):
    """``[shortcut]``: previous layer + the ``from`` layer, then the activation (``linear`` in YOLOv3/v4)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x[0] + x[1])


class Sam(nn.Module):
    """``[sam]``: previous layer times the ``from`` layer, element-wise, then the activation."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x[0] * x[1])


class ScaleChannels(nn.Module):
    """``[scale_channels]``: the ``from`` layer's maps [B, C, H, W] times the previous layer's per-channel
    scales [B, C, 1, 1], then the activation. Inputs are ``[features, scales]``."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.act(x[0] * x[1])
