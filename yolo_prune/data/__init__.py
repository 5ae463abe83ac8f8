"""Datasets as YOLOv7 users have them: data YAMLs, YOLO label files, letterboxing, augmentation, loaders; and
classification data (scikit-learn's digits, ImageFolder, CIFAR-10 / Fashion-MNIST files) for the CNNs.

Torch-dependent names are imported lazily so ``import yolo_prune.data`` stays cheap. The letterbox functions
are bound eagerly because the submodule ``yolo_prune.data.letterbox`` would otherwise shadow the function of
the same name (import helpers from there with ``from yolo_prune.data.letterbox import ...``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from yolo_prune.lazy import lazy_getattr

from .letterbox import letterbox, preprocess, scale_boxes

_EXPORTS = {
    "DataConfig": "config",
    "load_data_config": "config",
    "YoloDataset": "dataset",
    "collate_fn": "dataset",
    "create_dataloader": "loader",
    "ClassificationData": "classify",
    "load_classification_data": "classify",
}

__all__ = sorted([*_EXPORTS, "letterbox", "preprocess", "scale_boxes"])

if TYPE_CHECKING:
    from .config import DataConfig, load_data_config
    from .dataset import YoloDataset, collate_fn
    from .classify import ClassificationData, load_classification_data
    from .loader import create_dataloader

__getattr__ = lazy_getattr(__name__, _EXPORTS)
