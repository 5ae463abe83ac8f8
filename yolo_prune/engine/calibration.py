"""Calibration data for data-driven and gradient criteria: a FeatureSource on the training split when the
criterion (or ``--reconstruct``) needs one, with the detection loss for gradient criteria; and the pruning step
a training run starts with."""
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


def prune_for_training(settings, model: nn.Module, history: list[dict]) -> tuple[nn.Module, list[dict], dict]:
    """Prune a copy of ``model`` as ``settings`` (TrainSettings) say: (pruned model, history + its entry, kept
    filters per layer)."""
    from yolo_prune.graph.io import read_published
    from yolo_prune.prune import prune

    options = CriterionOptions(**settings.criterion_options)
    source = calibration_source(model, settings.criterion, options, settings.data, settings.img_size, settings.seed)
    graph = read_published(settings.pruning_config) if settings.pruning_config else None
    result = prune(model, settings.pruning_params, settings.criterion, round_to=settings.round_to,
                   seed=settings.seed, graph=graph, inplace=False, img_size=settings.img_size,
                   scoring=settings.scoring, options=options, source=source)
    return result.model, history + [result.history_entry()], result.plan.kept_map()
