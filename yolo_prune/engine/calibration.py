"""Calibration data for data-driven and gradient criteria: a FeatureSource on the training split when the
criterion (or ``--reconstruct``) needs one, with the detection loss for gradient criteria."""
from __future__ import annotations

import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.prune.context import NEEDS, wants_source
from yolo_prune.prune.criteria import criterion_name
from yolo_prune.prune.features import FeatureSource, feature_source
from yolo_prune.prune.options import CriterionOptions


def calibration_source(model: nn.Module, criterion: str | int, options: CriterionOptions, data: str | None,
                       img_size: int, seed: int = 0) -> FeatureSource | None:
    """A FeatureSource over ``data``'s training split if ``criterion`` / ``options`` need images, else None."""
    from yolo_prune.engine.loss import detection_loss_fn

    name = criterion_name(criterion)
    if not wants_source(name, options):
        return None
    if not data:
        what = f"criterion {name!r}" if name in NEEDS else "--reconstruct"
        raise PruningError(f"{what} needs calibration images: give --data (a seeded subset of its training split "
                           f"is used; --n-samples / --perc-samples set its size)")
    loss_fn = detection_loss_fn(model, img_size) if NEEDS.get(name) == "gradients" else None
    return feature_source(model, data, img_size, options, seed, loss_fn=loss_fn)
