"""Shared builders for the export tests (cached: each model is built once per session), plus the public API pin.

Other ``test_export_*`` modules import these functions; ``lively_tiny`` is a yolov7-tiny whose BatchNorm
statistics were measured on synthetic scenes and whose head weights are spread out, so scores cover
0..1 and confidence/IoU/top-k thresholds all change the detections (a fresh random model scores ~0.001).
"""
from __future__ import annotations

import functools

import pytest
import torch

IMG = (160, 192)  # H, W: small, non-square, multiples of 32


@functools.lru_cache(maxsize=None)
def lively_tiny(nc: int = 3, widths: tuple[int, ...] | None = None) -> torch.nn.Module:
    """An eval-mode yolov7-tiny (IDetect with implicit layers) with informative, non-degenerate scores."""
    from yolo_prune.export.verify import sample_images
    from yolo_prune.models import build_model

    torch.manual_seed(0)
    model = build_model("yolov7-tiny", nc=nc, widths=list(widths) if widths else None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: running stats = the batch's statistics
    model.train()
    with torch.no_grad():
        model(sample_images(IMG, 8, seed=5))
        for conv in model.detect.m:
            torch.nn.init.normal_(conv.weight, std=0.1)
            conv.bias.zero_()
    return model.eval()


@functools.lru_cache(maxsize=None)
def pruned_widths() -> tuple[int, ...]:
    """yolov7-tiny widths with layer 3 cut to 16 filters (what a pruned checkpoint records)."""
    from yolo_prune.models import build_model

    w = build_model("yolov7-tiny").widths()
    w[3] = 16
    return tuple(w)


def test_public_api_is_pinned():
    import yolo_prune.export as export

    assert sorted(export.__all__) == sorted([
        "ExportOptions", "ExportResult", "export_onnx", "read_metadata", "verify_onnx", "VerifyReport",
        "OrtDetector", "EngineOptions", "InputShape", "build_engine", "load_engine", "trtexec_command"])
    assert all(hasattr(export, name) for name in export.__all__)


def test_importing_export_does_not_import_optional_runtimes():
    import subprocess
    import sys

    code = ("import sys, yolo_prune.export, yolo_prune.cli.export; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxslim', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Export tests run one intra-op thread: on a shared 2-core machine, two spinning OpenMP threads made the
    tiny model's forward pass 50x slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
