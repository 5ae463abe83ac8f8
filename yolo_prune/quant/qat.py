"""Quantization-aware training through the trainer's :class:`~yolo_prune.engine.model_hook.ModelHook`.

:class:`QatHook` turns the run's model into its fake-quantized twin (:func:`~.prepare.quantize_model`),
calibrates the activation scales on training images pre-processed as at inference (fresh runs) or restores them
(resumed runs), and stores them in every checkpoint (``extra["quant"]``, :mod:`.state`). Weights and biases are
re-quantized from the current values at every step with straight-through gradients; the activation scales stay
fixed, so the EMA copy and the training copy always quantize alike. Works with EMA, AMP (fake quantization runs
in float32) and DDP.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.prepare import quantize_model
from yolo_prune.quant.scheme import QuantScheme, get_scheme
from yolo_prune.quant.state import KEY, load_quant_state, quant_state, stored_scheme


@dataclass
class QatHook:
    """Fake-quantize the trained model for ``scheme``; calibrate on ``calib_images`` training images at
    ``img_size`` (the training size; None: the model's default)."""

    scheme: QuantScheme | str
    img_size: int | None = None  # None: the model's default training size
    calib_images: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        self.scheme = get_scheme(self.scheme)
        if self.calib_images < 1:
            raise YoloPruneError(f"--qat-calib-images must be >= 1, got {self.calib_images}")
        self._used = 0

    def prepare(self, model: nn.Module, data: Any, saved: dict[str, Any] | None) -> nn.Module:
        """The fake-quantized model: scales restored from ``saved`` (resume) or calibrated on ``data.train``."""
        size = self.img_size or getattr(model, "default_img_size", 640)
        prepared = quantize_model(model, self.scheme, size)
        stored = stored_scheme(saved or {})
        if stored is not None:
            if stored != self.scheme:
                raise YoloPruneError(f"the run was trained with --qat {stored.name}; resume it with that scheme")
            load_quant_state(prepared.model, saved[KEY], "resumed checkpoint")
            self._used = int(saved[KEY].get("calib_images", 0))
            return prepared.model
        report = calibrate(prepared.model, self._batches(list(data.train), int(model.stride.max()), size),
                           self.progress)
        self._used = report.images
        if self.progress:
            print(f"qat ({self.scheme.name}): {report}; {prepared.quantizers} activation quantizers after sharing "
                  "scales across concatenations")
        return prepared.model

    def _batches(self, paths: list[str], stride: int, size: int):
        from yolo_prune.data.calibration import calibration_batches, readable_files

        files = readable_files([Path(p) for p in paths[: self.calib_images]])
        return (torch.from_numpy(a) for a in calibration_batches(files, 1, (size, size), stride))

    def checkpoint_extra(self, model: nn.Module) -> dict[str, Any]:
        """``{"quant": scales + scheme}`` for the checkpoint of ``model``."""
        return {KEY: quant_state(model, self.scheme, self._used)}


def resume_hook(checkpoint: str | Path, img_size: int | None = None) -> QatHook | None:
    """The hook that continues the QAT run whose ``last.pt`` is ``checkpoint`` (None for a float run)."""
    from yolo_prune.checkpoint import load_checkpoint

    scheme = stored_scheme(load_checkpoint(checkpoint).extra)  # the safe loader: any file gets a clear error
    return None if scheme is None else QatHook(scheme, img_size)
