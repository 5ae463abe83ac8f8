"""Quantization: fake-quantized twins of YOLOv7 models for int8 deployment on Vitis AI DPUs (power-of-two scales)
and TensorRT (per-channel weights), their calibration (PTQ) and quantization-aware training.

The stage sits between ``engine/`` (which trains a fake-quantized model through a
:class:`~yolo_prune.engine.model_hook.ModelHook`) and ``export/`` (which writes Q/DQ ONNX from it).
"""
from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.prepare import Prepared, quantize_model
from yolo_prune.quant.ptq import calibrated
from yolo_prune.quant.qat import QatHook
from yolo_prune.quant.scheme import SCHEMES, QuantScheme, get_scheme
from yolo_prune.quant.state import load_quantized

__all__ = ["QatHook", "Prepared", "QuantScheme", "SCHEMES", "calibrate", "calibrated", "get_scheme",
           "load_quantized", "quantize_model"]
