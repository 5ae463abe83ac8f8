"""Transfer learning as YOLOv7's ``train.py --cfg new.yaml --weights old.pt``: a model built from a cfg takes every
tensor of a checkpoint whose name and shape match; the rest keeps its fresh initialisation and is named.

As the official ``intersect_dicts(..., exclude=['anchor'])``, anchors always come from the cfg (they are what the
cfg's author chose for the new data), so they are counted as re-initialised even when the values agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

SHOWN = 12  # re-initialised names listed in the one-line summary (all of them go to the history)


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_weights` did: tensors copied, and why each other tensor was left as initialised."""

    source: str
    transferred: int
    total: int
    reinitialised: dict[str, str] = field(default_factory=dict)  # name -> reason

    def summary(self, nc: int) -> str:
        """``transferred 550/556 tensors from yolov7_training.pt; re-initialised for nc=3: model.105.m.0.weight
        (shape 255x256x1x1 -> 24x256x1x1), ...``"""
        names = [f"{k} ({why})" for k, why in self.reinitialised.items()]
        shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")
        text = f"transferred {self.transferred}/{self.total} tensors from {Path(self.source).name}"
        return text + (f"; re-initialised for nc={nc}: {shown}" if names else "; nothing re-initialised")

    def history_entry(self, cfg: str, nc: int) -> dict[str, Any]:
        """The checkpoint-history record of this transfer (every re-initialised tensor, by name and reason)."""
        return {"event": "transfer", "weights": str(self.source), "cfg": str(cfg), "nc": int(nc),
                "transferred": self.transferred, "total": self.total, "reinitialised": dict(self.reinitialised)}


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def transfer_weights(source: nn.Module, target: nn.Module, source_name: str) -> TransferReport:
    """Copy into ``target`` every tensor of ``source``'s state dict with the same name and shape, anchors excepted.

    ``target`` is modified in place (values cast to its dtypes); ``source`` is not. Returns the report.
    """
    theirs, own = source.state_dict(), target.state_dict()
    take, why = {}, {}
    for name, tensor in own.items():
        other = theirs.get(name)
        if "anchor" in name:
            why[name] = "anchors from the cfg"
        elif other is None:
            why[name] = "not in the checkpoint"
        elif other.shape != tensor.shape:
            why[name] = f"shape {_shape(other)} -> {_shape(tensor)}"
        else:
            take[name] = other.detach().to(tensor.dtype)
    with torch.no_grad():
        target.load_state_dict(take, strict=False)
    return TransferReport(source_name, len(take), len(own), why)
