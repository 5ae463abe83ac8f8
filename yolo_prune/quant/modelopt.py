"""TensorRT PTQ with NVIDIA Model Optimizer (``nvidia-modelopt``, extra ``modelopt``), as an alternative to
yolo-prune's own calibration for ``export --int8 --quantizer modelopt``.

ModelOpt's ``INT8_DEFAULT_CFG``: per-channel int8 weights (axis 0), per-tensor activations at every conv input,
max calibration. Its quantizers export as Q/DQ pairs, so the result goes through the same writer, lint and ORT
check as ours. Only ModelOpt's PyTorch API is used: its ``[onnx]`` extra would replace this environment's
``onnx``/``onnxruntime`` with older and GPU builds.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.fuse import deployable_copy


class ModelOptUnavailable(YoloPruneError):
    """nvidia-modelopt is not installed (exit 2 with the install command)."""


def import_modelopt() -> Any:
    """``modelopt.torch.quantization``, or ModelOptUnavailable saying how to install it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about absent optional packages (transformers, CUDA)
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise ModelOptUnavailable(f"--quantizer modelopt needs NVIDIA Model Optimizer ({exc}); install it with "
                                  "`pip install 'yolo-prune[modelopt]'` (or `pip install nvidia-modelopt`)") from None
    return mtq


@torch.no_grad()
def modelopt_ptq(model: nn.Module, files: Sequence[Path], img_size: tuple[int, int]) -> tuple[nn.Module, int]:
    """(ModelOpt-quantized re-parameterised copy of ``model``, images used); ``model`` is not modified."""
    from yolo_prune.data.calibration import calibration_batches, readable_files

    mtq = import_modelopt()
    fused = deployable_copy(model)
    stride = int(fused.detect.stride.max())
    batches = [torch.from_numpy(a) for a in calibration_batches(readable_files(files), 1, img_size, stride)]
    if not batches:
        raise YoloPruneError("calibration set is empty: no images")

    def forward_loop(m: nn.Module) -> None:
        for b in batches:
            m(b)

    with contextlib.redirect_stdout(io.StringIO()):
        quantized = mtq.quantize(fused, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=forward_loop)
    return quantized.eval(), len(batches)
