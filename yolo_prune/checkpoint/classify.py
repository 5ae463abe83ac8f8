"""Classifier checkpoints: yolo-prune's format for the classification CNNs, and users' torchvision weights.

Our format for a :class:`~yolo_prune.models.classify.Classifier` (loads with ``weights_only=True``)::

    {"format": "yolo-prune", "version": 1, "task": "classify", "arch": {ArchSpec fields},
     "widths": [out channels of every Conv2d, module order], "names": [...], "state_dict": {...},
     "history": [...], "extra": {...}}

A pruned network rebuilds from ``arch`` plus the shapes in ``state_dict`` (every Conv2d/BN/Linear resized to
them), then loads strictly. A user's own weights file (a torchvision ``state_dict``, bare or under ``state_dict``
/ ``model``, optionally with DataParallel's ``module.`` prefix) loads into an unpruned network of a given spec;
nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from yolo_prune.checkpoint.state import load_state_strict
from yolo_prune.errors import CheckpointError, ConfigError
from yolo_prune.models.classify import ArchSpec, Classifier, conform_to_state

TASK = "classify"


def classifier_checkpoint(model: Classifier, history: list[dict] | None, extra: dict | None,
                          half: bool) -> dict[str, Any]:
    """The checkpoint dict of a classifier (tensors copied to CPU; ``half`` stores floats as fp16)."""
    from yolo_prune.checkpoint.native import FORMAT, VERSION

    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone())
          for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "task": TASK, "arch": model.spec.to_dict(),
            "widths": model.widths(), "names": list(model.names), "state_dict": sd,
            "history": list(history or []), "extra": dict(extra or {})}


def classifier_from_native(ckpt: Mapping[str, Any], source: str) -> Classifier:
    """Rebuild the (possibly pruned) classifier recorded in ``ckpt`` and load its weights strictly."""
    try:
        spec = ArchSpec.from_dict(ckpt["arch"])
        state = ckpt["state_dict"]
    except KeyError as exc:
        raise CheckpointError(f"{source}: checkpoint lacks '{exc.args[0]}'") from None
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    from yolo_prune.checkpoint.native import restore_gating

    model = Classifier(spec)
    restore_gating(model, dict(ckpt), source)
    conform_to_state(model, state)
    load_state_strict(model, state, source)
    if len(ckpt.get("names") or []) == spec.nc:
        model.names = [str(n) for n in ckpt["names"]]
    return model.float().eval()


def _plain_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a weights file: bare, or under ``state_dict``/``model``; ``module.`` prefixes dropped."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict (expected a dict of tensors, e.g. torchvision's .pth)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_torchvision_weights(path: str | Path, spec: ArchSpec) -> Classifier:
    """A classifier of ``spec`` holding the user's weights file (strict: every key and shape must match)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a plain tensor file"
        raise CheckpointError(f"{path}: not a weights file readable with weights_only=True ({type(exc).__name__})") from None
    state = _plain_state(obj, path)
    model = Classifier(spec)
    load_state_strict(model.net, state, f"{path} ({spec.arch}, nc={spec.nc}, in_ch={spec.in_ch})")
    return model.float().eval()
