"""One measurement: a checked target, a runtime and a batch size -> a timed :class:`BenchRow`."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from yolo_prune.bench.latency import time_callable
from yolo_prune.bench.runners import RUNTIMES, Runner, ort_runner, torch_runner, torch_threads
from yolo_prune.bench.table import BenchRow
from yolo_prune.bench.targets import Target
from yolo_prune.errors import YoloPruneError


@dataclass(frozen=True)
class BenchSettings:
    """How to time: runtime (torch, torch-compile, ort), warm-up and timed runs, threads (None: the runtime's
    default), fp16 (PyTorch runtimes; an ONNX file's precision is its own)."""

    runtime: str = "torch"
    warmup: int = 10
    iters: int = 50
    threads: int | None = None
    fp16: bool = False

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise YoloPruneError(f"--runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if self.warmup < 0 or self.iters < 1:
            raise YoloPruneError(f"--warmup must be >= 0 and --iters >= 1, got {self.warmup} and {self.iters}")
        if self.threads is not None and self.threads < 1:
            raise YoloPruneError(f"--threads must be >= 1, got {self.threads}")
        if self.fp16 and self.runtime == "ort":
            raise YoloPruneError("--fp16: with --runtime ort the precision is the ONNX file's; time an export made "
                                 "with `yolo-prune export --fp16` (or use --runtime torch/torch-compile)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_for_ort(target: Target, batch: int, workdir: Path) -> Path:
    """A checkpoint target exported (raw outputs, opset 12, fixed batch) into ``workdir``; not re-verified."""
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    path = Path(tempfile.mkdtemp(dir=workdir)) / f"{Path(target.name).stem}-b{batch}.onnx"  # names may repeat
    export_onnx(target.model, path, ExportOptions(img_size=target.img_size, batch_size=batch, opset=12),
                verify=False)
    return path


def make_runner(target: Target, batch: int, settings: BenchSettings, device: torch.device,
                workdir: Path) -> Runner:
    """The runner for ``target`` at ``batch``; checkpoints under ``ort`` are exported to ``workdir`` first."""
    if settings.runtime == "ort":
        path = target.path if target.kind == "onnx" else export_for_ort(target, batch, workdir)
        return ort_runner(path, batch, target.img_size, device, settings.threads)
    if target.model is None:
        raise YoloPruneError(f"--weights {target.name}: an ONNX file runs with --runtime ort")
    return torch_runner(target.model, batch, target.img_size, device, settings.fp16,
                        compiled=settings.runtime == "torch-compile")


def measure(target: Target, batch: int, settings: BenchSettings, device: torch.device,
            workdir: Path) -> tuple[BenchRow, str]:
    """Time ``target`` at ``batch``: (the row, a description of the runtime that ran it)."""
    threads = settings.threads if settings.runtime != "ort" else None  # ORT takes its own thread count
    with torch_threads(threads):
        runner = make_runner(target, batch, settings, device, workdir)
        stats = time_callable(runner.run, settings.warmup, settings.iters, batch, runner.sync)
    row = BenchRow(target.name, settings.runtime, target.img_size, target.params, target.gflops, stats)
    return row, runner.description
