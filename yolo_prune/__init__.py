"""yolo-prune: concatenation-aware structured pruning, analysis, fine-tuning and export for YOLOv7."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("yolo-prune")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"

from yolo_prune.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from yolo_prune.models import Model, build_model  # noqa: E402
from yolo_prune.models.complexity import count_gflops, count_params  # noqa: E402
from yolo_prune.models.fuse import fuse  # noqa: E402

__all__ = ["__version__", "Model", "build_model", "load_model", "load_checkpoint", "save_checkpoint",
           "fuse", "count_params", "count_gflops"]
