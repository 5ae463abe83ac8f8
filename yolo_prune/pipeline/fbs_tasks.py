"""The two tasks an FBS schedule fine-tunes and scores: classification (top-1) and detection (mAP@.5:.95).

Each task trains a checkpoint for some epochs in a run folder (resuming an interrupted run there, skipping a
finished one), evaluates a model, and yields validation input batches (float 0..1) for counting MACs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn


def _finished(last: Path, epochs: int) -> bool | None:
    """None: no run yet; True: its last.pt completed ``epochs``; False: interrupted (resume it)."""
    if not last.is_file():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True).get("train_state") or {}
    return int(state.get("epoch", -1)) + 1 >= epochs


class ClassifyTask:
    """Classifiers on digits / ImageFolder / CIFAR-10 / Fashion-MNIST files."""

    primary = "top1"

    def __init__(self, settings: Any, model: nn.Module) -> None:
        from yolo_prune.data.classify import load_classification_data
        from yolo_prune.pipeline.classify import check_fits

        self.s = settings
        self.data = load_classification_data(settings.data, model.img_size)
        check_fits(model, self.data, settings.weights)
        self.img_size, self.ch = model.img_size, model.ch_in

    def train(self, weights: Path, name: str, epochs: int) -> Path:
        from yolo_prune.engine.classify import ClassifySettings, train_classifier

        s, last = self.s, Path(self.s.out) / name / "weights" / "last.pt"
        done = _finished(last, epochs)
        if done is None:
            train_classifier(ClassifySettings(
                data=s.data, weights=str(weights), epochs=epochs, batch_size=s.batch_size, lr0=s.lr0,
                seed=s.seed, device=s.device, workers=s.workers, project=s.out, name=name, exist_ok=True,
                progress=s.progress))
        elif not done:
            train_classifier(ClassifySettings(resume=str(last), device=s.device, workers=s.workers,
                                              progress=s.progress))
        return last

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from yolo_prune.data.classify import data_loader
        from yolo_prune.engine.classify.evaluate import evaluate_classifier

        res = evaluate_classifier(model, data_loader(self.data.val, 256, shuffle=False))
        return {"top1": res.top1, "top5": res.top5}

    def batches(self) -> Iterator[torch.Tensor]:
        from yolo_prune.data.classify import data_loader

        for x, _ in data_loader(self.data.val, 256, shuffle=False):
            yield x


class DetectTask:
    """YOLOv7 detectors on a YOLO-format data YAML (the official recipe's hyp)."""

    primary = "mAP@.5:.95"

    def __init__(self, settings: Any, model: nn.Module) -> None:
        from yolo_prune.pipeline.evaluation import DataSettings

        self.s = settings
        self.img_size, self.ch = settings.img_size or 640, 3
        self.eval_data = DataSettings(settings.data, "val", self.img_size, settings.batch_size, settings.workers,
                                      settings.max_images)

    def train(self, weights: Path, name: str, epochs: int) -> Path:
        from yolo_prune.engine.trainer import TrainSettings, train

        s, last = self.s, Path(self.s.out) / name / "weights" / "last.pt"
        done = _finished(last, epochs)
        if done is None:
            train(TrainSettings(data=s.data, weights=str(weights), hyp=s.hyp, epochs=epochs, batch_size=s.batch_size,
                                img_size=self.img_size, device=s.device, workers=s.workers, project=s.out,
                                name=name, exist_ok=True, seed=s.seed, max_val_images=s.max_images,
                                progress=s.progress))
        elif not done:
            train(TrainSettings(resume=str(last), device=s.device, workers=s.workers, progress=s.progress))
        return last

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from yolo_prune.pipeline.evaluation import evaluate_on_data

        res = evaluate_on_data(model, self.eval_data, device=torch.device("cpu"), progress=False)
        return {"mAP@.5": res.map50, "mAP@.5:.95": res.map}

    def batches(self) -> Iterator[torch.Tensor]:
        from yolo_prune.pipeline.evaluation import make_loader

        loader, _ = make_loader(self.eval_data, 32)
        for imgs, *_ in loader:
            yield imgs.float() / 255.0
