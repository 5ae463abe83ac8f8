"""Latency benchmarks: time checkpoints and ONNX files in PyTorch (eager / compiled) or ONNX Runtime, and compare
the measured speed-up with the GFLOPs saving."""
from yolo_prune.bench.latency import LatencyStats, busy_warning, interleaved, percentile, time_callable
from yolo_prune.bench.measure import BenchSettings, measure
from yolo_prune.bench.onnx_cost import OnnxCost, onnx_cost
from yolo_prune.bench.runners import RUNTIMES, Runner, ort_runner, torch_runner, torch_threads
from yolo_prune.bench.table import BenchRow, Comparison, compare, format_table
from yolo_prune.bench.targets import Target, load_target, load_targets

__all__ = ["BenchRow", "BenchSettings", "Comparison", "LatencyStats", "OnnxCost", "RUNTIMES", "Runner", "Target",
           "busy_warning", "compare", "format_table", "interleaved", "load_target", "load_targets", "measure", "onnx_cost", "ort_runner", "percentile",
           "time_callable", "torch_runner", "torch_threads"]
