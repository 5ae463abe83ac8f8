"""The model a training starts from: ``--weights`` (strict load), ``--cfg`` (fresh, nc from the data) or both
(YOLOv7's transfer learning: built from ``--cfg``, every tensor of ``--weights`` matching by name and shape)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from yolo_prune.engine.hooks import TrainHooks
from yolo_prune.engine.train_state import TrainSettings
from yolo_prune.errors import CheckpointError

__all__ = ["check_finite", "source_model", "transferred_model"]


def source_model(settings: TrainSettings, data: Any) -> tuple[nn.Module, list[dict], TrainHooks]:
    """The model named by --weights (strict load), --cfg (nc from the data), or both (built from --cfg, matching
    tensors transferred from --weights: YOLOv7's transfer learning), named after the data's classes, with the
    hooks its checkpoint asks for (kernel masks, FBS L1; none for a model built from a cfg)."""
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.models.cfgs import build_model

    if settings.weights and settings.cfg:
        return (*transferred_model(settings, data), TrainHooks())
    hooks = TrainHooks()
    if settings.weights:
        loaded = load_checkpoint(settings.weights)
        model, history, hooks = loaded.model, list(loaded.history), TrainHooks.from_checkpoint(loaded)
        check_finite(model, settings.weights)
        if model.nc != data.nc:
            from yolo_prune.data.config import class_count_error

            raise class_count_error(model.nc, settings.weights, settings.data, data.nc, "layers are never "
                                    "re-initialised silently (use --cfg to train a new head from scratch, or "
                                    "--cfg and --weights together to transfer every matching tensor)")
    else:
        model, history = build_model(settings.cfg, nc=data.nc), []
    model.names = list(data.names)
    return model, history, hooks


def transferred_model(settings: TrainSettings, data: Any) -> tuple[nn.Module, list[dict]]:
    """--cfg built for the data's nc, with every tensor of --weights whose name and shape match; the transfer is
    printed and recorded in the history (what was re-initialised, and why)."""
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.checkpoint.transfer import transfer_weights
    from yolo_prune.models.cfgs import build_model

    loaded = load_checkpoint(settings.weights)
    check_finite(loaded.model, settings.weights)
    model = build_model(settings.cfg, nc=data.nc)
    report = transfer_weights(loaded.model, model, settings.weights)
    if report.transferred == 0:
        raise CheckpointError(f"--weights {settings.weights}: no tensor matches --cfg {settings.cfg} by name and "
                              f"shape; nothing to transfer (check that both describe the same architecture)")
    print(report.summary(data.nc))
    model.names = list(data.names)
    return model, list(loaded.history) + [report.history_entry(settings.cfg, data.nc)]


def check_finite(model: nn.Module, weights: str) -> None:
    """NaN or infinite weights cannot train (the loss is NaN at once): say so, instead of blaming ``lr0`` later."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"--weights {weights}: {name} holds NaN or infinite values; the checkpoint is "
                                  f"damaged and cannot be fine-tuned")
