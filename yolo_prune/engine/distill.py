"""Knowledge distillation from the unpruned model while fine-tuning the pruned one.

The teacher is a frozen eval-mode copy of the model *before* pruning. Pruning never changes the detection
head's outputs (same levels, anchors, classes and grid sizes), so student and teacher raw maps
``[B, na, ny, nx, nc + 5]`` line up element for element. The term added to the detection loss is::

    distill_weight * batch_size * mean over levels of
        MSE(student[..., :4], teacher[..., :4])                        # box offsets, raw
      + MSE(sigmoid(student[..., 4:]), sigmoid(teacher[..., 4:]))       # objectness and classes, probabilities

(``batch_size`` because the detection loss is returned as ``loss * batch_size``, like YOLOv7's.)
Auxiliary-head maps (IAuxDetect in training) are ignored: only the first ``nl`` maps are compared.

Feature distillation (``--feature-distill``) adds, at the neck outputs (the maps the head reads), per level::

    feature_distill_weight * batch_size * mean over levels of
        ||map(student) - teacher||^2 / ((||map(student)||^2 + ||teacher||^2) / 2)

(means over elements; the denominator is not differentiated: the term is scale-free and at most 4, even when one
side is near zero, e.g. train-mode BatchNorm against an eval-mode teacher) where ``map`` picks, for each student channel, the teacher channel it was kept from
(``kept``; pruning removed the others) or is a trained 1x1 convolution from the student's channels to the
teacher's (``adapter``, initialised to that same embedding, trained with the model, not part of it).
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


class NeckTap:
    """Records the maps a model's detection head reads (its first ``nl`` inputs) on every forward pass."""

    def __init__(self, model: nn.Module):
        head = model.detect
        self.maps: list[Tensor] = []
        self.handle = head.register_forward_pre_hook(lambda m, inputs: setattr(self, "maps", list(inputs[0])[: m.nl]))

    def remove(self) -> None:
        self.handle.remove()


def neck_index(graph, kept: dict[int, Tensor]) -> list[Tensor]:
    """For each head level, the teacher channel every student channel of that neck output was kept from."""
    from yolo_prune.prune.surgery import input_index

    heads = [i for i in range(len(graph)) if graph[i].kind == "head" and ".m." in graph[i].name]
    return [input_index(graph, i, kept) for i in sorted(heads, key=lambda i: int(graph[i].name.rsplit(".", 1)[1]))]


class FeatureDistiller(nn.Module):
    """Normalised MSE between the student's neck maps (mapped to the teacher's channels) and the teacher's."""

    def __init__(self, index: Sequence[Tensor], teacher_channels: Sequence[int], mode: str = "kept"):
        super().__init__()
        if mode not in ("kept", "adapter"):
            raise ValueError(f"feature distillation mode {mode!r}: kept or adapter")
        self.mode = mode
        for i, idx in enumerate(index):
            self.register_buffer(f"index{i}", torch.as_tensor(idx, dtype=torch.long))
        self.adapters = nn.ModuleList()
        if mode == "adapter":
            for idx, ct in zip(index, teacher_channels):
                conv = nn.Conv2d(len(idx), ct, 1, bias=False)
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.weight[torch.as_tensor(idx), torch.arange(len(idx)), 0, 0] = 1.0
                self.adapters.append(conv)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        terms = []
        for i, (s, t) in enumerate(zip(student, teacher)):
            t = t.float()
            if self.mode == "adapter":
                s = self.adapters[i](s.float())
            else:
                t = t.index_select(1, getattr(self, f"index{i}"))
            if s.shape != t.shape:
                raise ValueError(f"feature distillation: level {i} student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
            energy = (s.detach().float().pow(2).mean() + t.pow(2).mean()) / 2 + 1e-12
            terms.append(F.mse_loss(s.float(), t) / energy)
        return torch.stack(terms).mean()


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


def attach_feature_distiller(student: nn.Module, teacher: nn.Module, index: Sequence[Sequence[int]], mode: str,
                             optimizer: torch.optim.Optimizer, lr0: float,
                             device: torch.device) -> tuple[FeatureDistiller, tuple[NeckTap, NeckTap]]:
    """A FeatureDistiller on ``device`` (its adapters, if any, join ``optimizer`` as a group named ``adapter``)
    and taps on the student's and the teacher's head inputs."""
    channels = [m.in_channels for m in teacher.detect.m]
    distiller = FeatureDistiller([torch.as_tensor(i) for i in index], channels, mode).to(device)
    adapter = list(distiller.parameters())
    if adapter:
        optimizer.add_param_group({"params": adapter, "name": "adapter", "weight_decay": 0.0, "initial_lr": lr0,
                                   "lr": lr0})
    return distiller, (NeckTap(student), NeckTap(teacher))
