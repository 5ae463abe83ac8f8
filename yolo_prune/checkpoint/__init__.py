"""Loading official YOLOv7 checkpoints safely, and saving/loading yolo-prune's own format."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from yolo_prune.checkpoint.legacy import model_from_official
from yolo_prune.checkpoint.native import (atomic_save, is_native, model_from_native, save_checkpoint,
                                          to_checkpoint)
from yolo_prune.errors import CheckpointError
from yolo_prune.models.model import Model

__all__ = ["LoadedCheckpoint", "load_checkpoint", "load_model", "save_checkpoint", "to_checkpoint", "atomic_save"]


@dataclass
class LoadedCheckpoint:
    """A loaded model with what its file said about it."""

    model: Model
    source_format: str
    history: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None  # our format only: the whole dict (optimizer, EMA... for resuming)
    masks: dict[str, torch.Tensor] | None = None  # kernel-level masks stored with the weights (True = kept)


def _read_native(path: Path) -> dict | None:
    """Our format loads with ``weights_only=True``; anything that needs other globals is not ours."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the safe loader failing only means "not our format"; legacy path reports
        return None
    return ckpt if is_native(ckpt) else None


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a yolo-prune checkpoint, an official YOLOv7 ``.pt`` or Darknet ``.weights`` (with the ``.cfg`` of the
    same name beside it); float32, eval mode, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".weights":  # Darknet: read with the .cfg of the same name
        from yolo_prune.checkpoint.darknet import load_darknet, sibling_cfg

        model = load_darknet(sibling_cfg(path), path)
        return LoadedCheckpoint(model, "darknet", [], {"header": list(model.header or ())})
    if not zipfile.is_zipfile(path) and path.stat().st_size < 64:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint")
    native = _read_native(path)
    if native is not None:
        return LoadedCheckpoint(model_from_native(native, str(path)), "yolo-prune",
                                list(native.get("history", [])), dict(native.get("extra", {})), native,
                                native.get("masks") or None)
    model, meta = model_from_official(path)
    return LoadedCheckpoint(model, meta["source_format"], [], meta)


def load_model(path: str | Path) -> Model:
    """The model in ``path`` (ours or official), float32, eval mode, on CPU."""
    return load_checkpoint(path).model
