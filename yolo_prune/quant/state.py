"""Saving and restoring a fake-quantized model: the float weights stay an ordinary (fused) checkpoint, the
quantizers' scales and the scheme ride in its ``extra["quant"]``::

    {"version": 1, "scheme": {QuantScheme fields}, "scales": {quantizer name: float32 tensor},
     "calib_images": int}

:func:`load_quantized` rebuilds the fake-quantized model from such a checkpoint (``None`` for a float one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from yolo_prune.errors import CheckpointError
from yolo_prune.quant.prepare import Prepared, activation_quantizers, quantize_model
from yolo_prune.quant.scheme import QuantScheme, scheme_from_dict

KEY = "quant"
VERSION = 1


def quant_state(model: nn.Module, scheme: QuantScheme, calib_images: int = 0) -> dict[str, Any]:
    """The ``extra["quant"]`` entry of a fake-quantized ``model``."""
    scales = {name: q.scale.detach().cpu().clone() for name, q in activation_quantizers(model).items()}
    return {"version": VERSION, "scheme": scheme.to_dict(), "scales": scales, "calib_images": int(calib_images)}


def load_quant_state(model: nn.Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Set every quantizer of ``model`` from ``state``; CheckpointError when the quantizers do not match."""
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"{source}: quantization state written by a newer yolo-prune")
    quantizers, scales = activation_quantizers(model), dict(state.get("scales", {}))
    if set(quantizers) != set(scales):
        missing, extra = sorted(set(quantizers) - set(scales)), sorted(set(scales) - set(quantizers))
        raise CheckpointError(f"{source}: stored quantizer scales do not fit the model (missing {missing[:4]}, "
                              f"unexpected {extra[:4]})")
    for name, q in quantizers.items():
        q.set_scale(torch.as_tensor(scales[name]))


def stored_scheme(extra: dict[str, Any]) -> QuantScheme | None:
    """The scheme of a QAT checkpoint's ``extra`` (None for a float checkpoint)."""
    state = extra.get(KEY) if isinstance(extra, dict) else None
    return scheme_from_dict(state["scheme"]) if state else None


def restore(model: nn.Module, extra: dict[str, Any], source: str = "checkpoint") -> Prepared:
    """The fake-quantized model of a float ``model`` and the ``extra`` of its QAT checkpoint."""
    scheme = stored_scheme(extra)
    if scheme is None:
        raise CheckpointError(f"{source}: not a quantization-aware-trained checkpoint (no extra['{KEY}'])")
    prepared = quantize_model(model, scheme)
    load_quant_state(prepared.model, extra[KEY], source)
    return prepared


def load_quantized(path: str | Path) -> Prepared | None:
    """The fake-quantized model stored in a QAT checkpoint, or None when ``path`` holds a float model."""
    from yolo_prune.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    if stored_scheme(loaded.extra) is None:
        return None
    return restore(loaded.model, loaded.extra, str(path))
