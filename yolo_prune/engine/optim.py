"""The YOLOv7 optimisation recipe: SGD param groups, nominal batch, one-cycle LR and warm-up.

Everything here is a pure function of (hyp, batch size, epochs, batches per epoch, global iteration), so a
resumed run recomputes exactly the learning rates, momentum and accumulation an uninterrupted run used.

Param groups follow the official ``train.py``: group 0 ``no_decay`` (BatchNorm weights, implicit layers and any
other 1-D weight), group 1 ``decay`` (conv/linear weights, ``weight_decay`` applied), group 2 ``bias`` (every
bias; the group that warms up from ``warmup_bias_lr``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.models.heads import ImplicitA, ImplicitM

NOMINAL_BATCH = 64  # official ``nbs``: the batch size the hyps are tuned for
MIN_WARMUP_ITERS = 100  # official: 1000; smaller so short fine-tuning runs leave warm-up
GROUPS = ("no_decay", "decay", "bias")
BIAS_GROUP = 2


def accumulate_steps(batch_size: int) -> int:
    """Batches whose gradients are summed before one optimizer step: ``max(round(64 / batch_size), 1)``."""
    return max(round(NOMINAL_BATCH / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int) -> float:
    """Official scaling: ``weight_decay * batch_size * accumulate / 64`` (the decay per nominal batch)."""
    return weight_decay * batch_size * accumulate_steps(batch_size) / NOMINAL_BATCH


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split every trainable parameter of ``model`` into ``no_decay``/``decay``/``bias`` (each exactly once).

    bias: parameters named ``bias``; no_decay: BatchNorm weights, ImplicitA/M and other parameters with
    ndim <= 1; decay: the rest (conv weights).
    """
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for module in model.modules():
        no_decay_module = isinstance(module, (nn.modules.batchnorm._BatchNorm, ImplicitA, ImplicitM))
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                groups["bias"].append(p)
            elif no_decay_module or p.ndim <= 1:
                groups["no_decay"].append(p)
            else:
                groups["decay"].append(p)
    return groups


def build_optimizer(model: nn.Module, hyp: Mapping[str, Any], batch_size: int,
                    kind: str = "sgd") -> torch.optim.Optimizer:
    """Nesterov SGD with the three official groups, or Adam with betas (momentum, 0.999) for ``kind="adam"``
    (YOLOv7's ``--adam``); ``batch_size`` is the total (all ranks) batch size.

    Each group carries ``initial_lr`` (= lr0) and ``name``; weight decay is applied to ``decay`` only. The update
    uses multi-tensor (foreach) kernels: the same arithmetic as the per-parameter loop, far fewer op launches.
    """
    groups = param_groups(model)
    lr0, momentum = float(hyp["lr0"]), float(hyp["momentum"])
    decay = scaled_weight_decay(float(hyp["weight_decay"]), batch_size)
    specs = [{"params": groups[g], "name": g, "weight_decay": decay if g == "decay" else 0.0, "initial_lr": lr0}
             for g in GROUPS]
    if kind == "adam":
        return torch.optim.Adam(specs, lr=lr0, betas=(momentum, 0.999), foreach=True)
    # foreach: one multi-tensor kernel per group instead of one small op per parameter (same arithmetic)
    return torch.optim.SGD(specs, lr=lr0, momentum=momentum, nesterov=True, foreach=True)


def one_cycle(lrf: float, epochs: int) -> Callable[[float], float]:
    """LR factor per epoch: cosine from 1 at epoch 0 to ``lrf`` at epoch ``epochs`` (official ``one_cycle``)."""
    return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1


def linear_lr(lrf: float, epochs: int) -> Callable[[float], float]:
    """LR factor per epoch: linear from 1 at epoch 0 to ``lrf`` at the last epoch (YOLOv7's ``--linear-lr``)."""
    return lambda x: (1 - x / max(epochs - 1, 1)) * (1.0 - lrf) + lrf


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int, epochs: int) -> int:
    """Warm-up length in iterations: ``max(round(warmup_epochs * nb), 100)``, never over half of the run.

    0 when ``warmup_epochs <= 0``. The half-run cap is what lets a few-epoch fine-tune reach its real LR.
    """
    if warmup_epochs <= 0:
        return 0
    wanted = max(round(warmup_epochs * batches_per_epoch), MIN_WARMUP_ITERS)
    return max(1, min(wanted, (epochs * batches_per_epoch) // 2))


@dataclass(frozen=True)
class Schedule:
    """LR, momentum and accumulation of a run, as functions of the epoch and the global iteration ``ni``."""

    hyp: Mapping[str, Any]
    epochs: int
    batches_per_epoch: int
    batch_size: int  # total over ranks
    linear: bool = False  # linear LR decay (YOLOv7's --linear-lr) instead of the one-cycle cosine

    @property
    def warmup(self) -> int:
        return warmup_iterations(float(self.hyp["warmup_epochs"]), self.batches_per_epoch, self.epochs)

    def lr_factor(self, epoch: int) -> float:
        """One-cycle (or linear) factor of ``epoch`` (the LambdaLR value after ``epoch`` scheduler steps)."""
        return (linear_lr if self.linear else one_cycle)(float(self.hyp["lrf"]), self.epochs)(epoch)

    def accumulate(self, ni: int) -> int:
        """Accumulation at iteration ``ni``: ramps from 1 to the nominal value during warm-up (official)."""
        full = accumulate_steps(self.batch_size)
        if ni >= self.warmup:
            return full
        return max(1, int(np.interp(ni, [0, self.warmup], [1, NOMINAL_BATCH / self.batch_size]).round()))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, ni: int) -> None:
        """Set every group's ``lr`` (and SGD's ``momentum`` during warm-up; Adam keeps its betas, as in YOLOv7) for
        iteration ``ni`` of ``epoch``."""
        target = self.lr_factor(epoch)
        for j, group in enumerate(optimizer.param_groups):
            lr = group["initial_lr"] * target
            momentum = float(self.hyp["momentum"])
            if ni < self.warmup:
                start = float(self.hyp["warmup_bias_lr"]) if j == BIAS_GROUP else 0.0
                lr = float(np.interp(ni, [0, self.warmup], [start, lr]))
                momentum = float(np.interp(ni, [0, self.warmup], [float(self.hyp["warmup_momentum"]), momentum]))
            if "momentum" in group:
                group["momentum"] = momentum
            group["lr"] = lr
