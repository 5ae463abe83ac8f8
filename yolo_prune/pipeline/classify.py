"""Classification workflows: evaluate a classifier on a dataset, and Li et al.'s per-layer sensitivity analysis
(each prunable layer pruned alone at each rate and scored by top-1) on the shared analysis machinery (resumable
chunks, progress, the pruned == masked fast path)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError


def check_fits(model: nn.Module, data, source: str) -> None:
    """A classifier must take the data's channels and classes (never re-initialised silently)."""
    from yolo_prune.models.classify import Classifier

    if not isinstance(model, Classifier):
        raise ConfigError(f"{source} is not a classifier checkpoint")
    if (model.spec.in_ch, model.nc, model.img_size) != (data.in_ch, data.nc, data.img_size):
        raise ConfigError(f"{source} takes {model.spec.in_ch}x{model.img_size}x{model.img_size} input with "
                          f"{model.nc} classes; --data {data.source} gives {data.in_ch}x{data.img_size}x"
                          f"{data.img_size} images of {data.nc} classes")


def evaluate_on_classification(model: nn.Module, data_name: str, *, batch_size: int = 128, workers: int = 0,
                               device: torch.device | str = "cpu", progress: bool = False, source: str = "--weights"):
    """ClassifyResult (top-1, top-5, loss) of ``model`` on the val split of ``data_name``."""
    from yolo_prune.data.classify import data_loader, load_classification_data
    from yolo_prune.engine.classify.evaluate import evaluate_classifier

    data = load_classification_data(data_name, getattr(model, "img_size", 32))
    check_fits(model, data, source)
    loader = data_loader(data.val, batch_size, shuffle=False, workers=workers)
    return evaluate_classifier(model.to(device), loader, device, progress)


def classify_sensitivity(model: nn.Module, data_name: str, rates: Sequence[float], out_dir: str | Path, *,
                         criterion: str = "l1", layers: Sequence[int] | None = None, round_to: int | None = None,
                         seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu",
                         exist_ok: bool = False, source: str = "", progress: bool = True):
    """Prune each prunable layer (coupled groups as one) alone at each rate and score top-1 on the val split;
    ``sensitivity.json`` / ``sensitivity.csv`` in ``out_dir``; re-running resumes."""
    from yolo_prune.analysis.sensitivity import Batch, run_sensitivity
    from yolo_prune.analysis.store import ResultStore
    from yolo_prune.data.classify import data_loader, load_classification_data
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.pipeline.scoring import ClassificationScorer
    from yolo_prune.prune.criteria import criterion_name
    from yolo_prune.prune.params import _check_rate

    rates = [_check_rate(r, "--pruning-rate") for r in rates]
    data = load_classification_data(data_name, getattr(model, "img_size", 32))
    check_fits(model, data, source or "model")
    graph = derive_graph(model)
    units = [u[0] for u in graph.prunable_units] if layers is None else list(layers)
    settings = {"task": "classify", "source": source, "data": data.source, "rates": [float(r) for r in rates],
                "criterion": criterion_name(criterion), "round_to": round_to, "seed": seed, "layers": units}
    store = ResultStore.open(out_dir, settings, exist_ok=exist_ok)
    batches = [Batch(x.to(device), y) for x, y in data_loader(data.val, batch_size, shuffle=False)]
    return run_sensitivity(model.to(device).eval(), graph, batches, ClassificationScorer(), store, list(rates),
                           layers=units, criterion=settings["criterion"], round_to=round_to, seed=seed,
                           img_size=model.img_size, progress=progress)
