"""Export to ONNX (raw maps, decoded grid, end-to-end NMS) and TensorRT engines, with verification.

``onnx``, ``onnxruntime``, ``onnxslim`` (the ``export`` extra) and ``tensorrt`` are imported only by the
functions that need them.
"""
from __future__ import annotations

from yolo_prune.export.onnx_export import ExportResult, export_onnx, read_metadata
from yolo_prune.export.options import ExportOptions
from yolo_prune.export.ort_model import OrtDetector
from yolo_prune.export.tensorrt import EngineOptions, InputShape, build_engine, load_engine, trtexec_command
from yolo_prune.export.verify import VerifyReport, verify_onnx

__all__ = ["ExportOptions", "ExportResult", "export_onnx", "read_metadata", "verify_onnx", "VerifyReport",
           "OrtDetector", "EngineOptions", "InputShape", "build_engine", "load_engine", "trtexec_command"]
