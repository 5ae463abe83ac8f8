"""Knowledge distillation from the unpruned model while fine-tuning the pruned one.

The teacher is a frozen eval-mode copy of the model *before* pruning. Pruning never changes the detection
head's outputs (same levels, anchors, classes and grid sizes), so student and teacher raw maps
``[B, na, ny, nx, nc + 5]`` line up element for element. The term added to the detection loss is::

    distill_weight * batch_size * mean over levels of
        MSE(student[..., :4], teacher[..., :4])                        # box offsets, raw
      + MSE(sigmoid(student[..., 4:]), sigmoid(teacher[..., 4:]))       # objectness and classes, probabilities

(``batch_size`` because the detection loss is returned as ``loss * batch_size``, like YOLOv7's.)
Auxiliary-head maps (IAuxDetect in training) are ignored: only the first ``nl`` maps are compared.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def make_teacher(model: nn.Module, device: torch.device) -> nn.Module:
    """A frozen eval-mode copy of ``model`` on ``device`` (``model`` is not modified)."""
    teacher = copy.deepcopy(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_maps(teacher: nn.Module, imgs: Tensor) -> list[Tensor]:
    """The teacher's raw maps for ``imgs`` float [B, 3, H, W] (eval-mode BatchNorm, no gradients)."""
    out = teacher(imgs)
    raw = out[1] if isinstance(out, tuple) else out
    return [m.detach() for m in raw]


def distill_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over levels of box MSE (raw) + obj/cls MSE (sigmoid), both maps [B, na, ny, nx, no] -> scalar.

    Uses the first ``len(teacher)`` student maps. Raises ValueError if shapes differ (e.g. nc mismatch).
    """
    terms = []
    for s, t in zip(list(student)[: len(teacher)], teacher):
        if s.shape != t.shape:
            raise ValueError(f"distillation: student map {tuple(s.shape)} vs teacher map {tuple(t.shape)}")
        s, t = s.float(), t.float()
        box = F.mse_loss(s[..., :4], t[..., :4])
        scores = F.mse_loss(s[..., 4:].sigmoid(), t[..., 4:].sigmoid())
        terms.append(box + scores)
    return torch.stack(terms).mean()
