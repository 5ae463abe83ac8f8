"""Post-training quantization with yolo-prune's own fake quantizers: prepare, calibrate on images, done.

The calibrated model is what :func:`yolo_prune.export.qdq.export_qdq` writes (TensorRT Q/DQ ONNX, or a DPU graph)
and what QAT starts from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from yolo_prune.quant.calibrate import CalibrationReport, calibrate
from yolo_prune.quant.prepare import Prepared, quantize_model
from yolo_prune.quant.scheme import QuantScheme


def calibrated(model: nn.Module, scheme: str | QuantScheme, files: Sequence[Path], img_size: tuple[int, int],
               progress: bool = False) -> tuple[Prepared, CalibrationReport]:
    """A fake-quantized copy of ``model`` (not modified) calibrated on image ``files`` letterboxed to ``img_size``
    exactly as at inference; YoloPruneError for an empty file list."""
    from yolo_prune.data.calibration import calibration_batches, readable_files

    prepared = quantize_model(model, scheme, max(img_size))
    stride = int(prepared.model.detect.stride.max())
    batches = (torch.from_numpy(a) for a in calibration_batches(readable_files(files), 1, img_size, stride))
    return prepared, calibrate(prepared.model, batches, progress)
