"""Exponential moving average of a model's weights (YOLOv7 ``ModelEMA``).

``ema = ModelEMA(model)`` keeps a frozen eval-mode copy; call ``ema.update(model)`` after every optimizer
step. The decay ramps up as ``0.9999 * (1 - exp(-updates / 2000))`` so early averages follow the model.
Floating-point parameters *and* buffers (BatchNorm running statistics) are averaged; integer buffers are kept.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel/DataParallel (or ``model`` itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """A moving average of ``model`` (deep-copied, eval mode, no gradients); ``updates`` counts the steps."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.base_decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int | None = None) -> float:
        """The decay applied at update number ``updates`` (default: the current count)."""
        n = self.updates if updates is None else updates
        return self.base_decay * (1.0 - math.exp(-n / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = d * ema + (1 - d) * model`` for every float entry of the state dict, d = decay(updates + 1)."""
        self.updates += 1
        d = self.decay()
        current = unwrap(model).state_dict()
        mine = [(v, current[k].detach()) for k, v in self.ema.state_dict().items() if v.dtype.is_floating_point]
        averaged, sources = [v for v, _ in mine], [c.to(v.dtype) for v, c in mine]
        torch._foreach_mul_(averaged, d)  # multi-tensor kernels: the per-tensor arithmetic, one launch per list
        torch._foreach_add_(averaged, sources, alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """``{"updates": int}`` (the weights themselves are the checkpoint's model)."""
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the update counter saved by :meth:`state_dict`."""
        self.updates = int(state["updates"])
