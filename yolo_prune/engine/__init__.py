"""Training and evaluation engine: loss, NMS, detection metrics (YOLOv7 ``test.py`` and pycocotools).

Evaluation names are imported lazily so importing another engine module (e.g. the loss) stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from yolo_prune.lazy import lazy_getattr

_EXPORTS = {
    "ClassRow": "evaluator",
    "EvalResult": "evaluator",
    "evaluate": "evaluator",
    "format_results": "evaluator",
    "non_max_suppression": "postprocess",
    "coco_evaluate": "coco",
    "ap_per_class": "metrics",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .coco import coco_evaluate
    from .evaluator import ClassRow, EvalResult, evaluate, format_results
    from .metrics import ap_per_class
    from .postprocess import non_max_suppression

__getattr__ = lazy_getattr(__name__, _EXPORTS)
