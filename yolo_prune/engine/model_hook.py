"""The trainer's one extension point: a :class:`ModelHook` swaps the model a run trains (quantization-aware
training puts fake quantizers in it) without the trainer knowing how, and adds what it needs to checkpoints."""
from __future__ import annotations

from typing import Any, Protocol

import torch.nn as nn


class ModelHook(Protocol):
    """Called by :func:`~yolo_prune.engine.trainer.train` (``model_hook=``)."""

    def prepare(self, model: nn.Module, data: Any, saved: dict[str, Any] | None) -> nn.Module:
        """The model to train instead of ``model`` (fp32, CPU). Called before the optimizer, the EMA and DDP exist;
        ``data`` is the run's DataConfig; ``saved`` is the ``extra`` dict of the checkpoint a run resumes from
        (called for its training and its EMA model), ``None`` for a fresh run."""

    def checkpoint_extra(self, model: nn.Module) -> dict[str, Any]:
        """Entries merged into the ``extra`` dict of every checkpoint written from (EMA) ``model``."""


def apply_hook(hook: ModelHook | None, model: nn.Module, ema_model: nn.Module | None, data: Any,
               saved: dict[str, Any] | None) -> tuple[nn.Module, nn.Module | None]:
    """(model, EMA model) after ``hook.prepare`` (unchanged without a hook)."""
    if hook is None:
        return model, ema_model
    return hook.prepare(model, data, saved), (None if ema_model is None else hook.prepare(ema_model, data, saved))
