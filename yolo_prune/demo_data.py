"""The built-in default: the synthetic benchmark the shipped demo model was trained on, and where it lives."""
from __future__ import annotations

from pathlib import Path

# generate_synthetic(...) arguments of the benchmark behind the shipped model (same seed: same bytes).
DEMO_SYNTH = {"n_train": 2000, "n_val": 200, "img_size": 256, "n_classes": 6, "seed": 0}
DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "yolov7-tiny-synth.pt"
