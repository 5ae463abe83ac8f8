"""yolo-prune's checkpoint format: architecture + weights + history, readable with ``weights_only=True``.

Layout (a plain dict of primitives and tensors)::

    {"format": "yolo-prune", "version": 1,
     "cfg": <model cfg dict>, "widths": [out channels of every Conv/RepConv, module order],
     "fused": {"conv_bn": bool, "repconv": bool, "implicit": bool},
     "names": [...], "state_dict": {...}, "history": [ {event dict}, ... ], "extra": {...}}

Classification CNNs use the same dict with ``"task": "classify"`` and their ``arch`` spec instead of ``cfg``
(:mod:`.classify`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from yolo_prune.checkpoint.state import load_state_strict
from yolo_prune.errors import CheckpointError
from yolo_prune.fileio import write_atomic
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.fuse import fold_implicit, fuse_conv_bn, fuse_repconv
from yolo_prune.models.heads import IDetect
from yolo_prune.models.model import Model

FORMAT = "yolo-prune"
VERSION = 1


def fused_state(model: Model) -> dict[str, bool]:
    """Which re-parameterisations have been applied to ``model``."""
    convs = [m for m in model.modules() if isinstance(m, Conv)]
    reps = [m for m in model.modules() if isinstance(m, RepConv)]
    head = model.detect
    return {
        "conv_bn": bool(convs) and all(isinstance(m.bn, nn.Identity) for m in convs),
        "repconv": bool(reps) and all(m.rbr_reparam is not None for m in reps),
        "implicit": isinstance(head, IDetect) and len(head.ia) == 0,
    }


def to_checkpoint(model: Model, history: list[dict] | None = None, extra: dict | None = None,
                  half: bool = False) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (tensors copied to CPU; ``half`` stores floats as fp16); classifiers are
    written by :mod:`.classify`."""
    from yolo_prune.models.classify import Classifier

    if isinstance(model, Classifier):
        from yolo_prune.checkpoint.classify import classifier_checkpoint

        return classifier_checkpoint(model, history, extra, half)
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone())
          for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "cfg": model.yaml, "widths": model.widths(),
            "fused": fused_state(model), "names": list(model.names), "state_dict": sd,
            "history": list(history or []), "extra": dict(extra or {})}


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, then rename: a crash never leaves a half-written file."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(model: Model, path: str | Path, history: list[dict] | None = None,
                    extra: dict | None = None, half: bool = False) -> Path:
    """Write ``model`` in our format, atomically."""
    return atomic_save(to_checkpoint(model, history, extra, half), path)


def is_native(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def model_from_native(ckpt: dict, source: str) -> Model:
    """Rebuild the (possibly pruned and fused) model recorded in ``ckpt`` and load its weights strictly."""
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{source}: written by a newer yolo-prune (format version {ckpt['version']})")
    if ckpt.get("task") == "classify":
        from yolo_prune.checkpoint.classify import classifier_from_native

        return classifier_from_native(ckpt, source)
    try:
        cfg = ckpt["cfg"]
        if isinstance(cfg, dict) and "darknet" in cfg:  # a model built from a Darknet .cfg
            from yolo_prune.models.darknet import build_darknet

            model = build_darknet(cfg, widths=ckpt["widths"])
        else:
            model = Model(cfg, widths=ckpt["widths"], source=f"{source} (embedded cfg)")
    except KeyError as exc:
        raise CheckpointError(f"{source}: checkpoint lacks '{exc.args[0]}'") from None
    fused = ckpt.get("fused", {})
    if fused.get("repconv"):
        fuse_repconv(model)
    if fused.get("conv_bn"):
        fuse_conv_bn(model)
    if fused.get("implicit"):
        fold_implicit(model)
    load_state_strict(model, ckpt["state_dict"], source)
    if len(ckpt.get("names") or []) == model.nc:
        model.names = [str(n) for n in ckpt["names"]]
    return model.float().eval()
