"""The built-in default: the synthetic benchmark the shipped demo model was trained on, and where it lives."""
from __future__ import annotations

from pathlib import Path

# generate_synthetic(...) arguments of the benchmark behind the shipped model (same seed: same bytes).
DEMO_SYNTH = {"n_train": 2000, "n_val": 200, "img_size": 256, "n_classes": 6, "seed": 0}
DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "yolov7-tiny-synth.pt"
# The converged base (DEMO_MODEL trained on for 40 more epochs; fine-tuning it further gains nothing): what the
# accuracy benchmarks and `make demo` prune. tools/train_demo_model.py reproduces both.
BASE_MODEL = Path(__file__).resolve().parent / "assets" / "yolov7-tiny-synth-base.pt"
