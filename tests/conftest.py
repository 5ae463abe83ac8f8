"""Shared fixtures: fixture paths and session-scoped models (building yolov7 costs ~1 s)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("YOLO_PRUNE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"

# One intra-op thread: the tests use tiny tensors, and on a shared 2-core machine a second thread that has to
# wait for a busy core made forward passes up to ~50x slower.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def official_tiny_path(fixtures_dir) -> Path:
    return fixtures_dir / "yolov7-tiny-random-official-format.pt"


@pytest.fixture(scope="session")
def yolov7_model():
    from yolo_prune.models import build_model

    return build_model("yolov7").eval()


@pytest.fixture(scope="session")
def tiny_model():
    from yolo_prune.models import build_model

    torch.manual_seed(0)
    return build_model("yolov7-tiny").eval()


@pytest.fixture()
def tiny_quant_model(tiny_model):
    """A fresh DPU fake-quantized copy of the random yolov7-tiny (not calibrated)."""
    from yolo_prune.quant.prepare import quantize_model

    return quantize_model(tiny_model, "dpu", 64)
