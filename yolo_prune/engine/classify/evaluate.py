"""Top-1 / top-5 accuracy and cross-entropy of a classifier over a loader."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from yolo_prune.models.conv_backend import onednn_convolutions


@dataclass(frozen=True)
class ClassifyResult:
    """Accuracy as fractions in 0..1 (top-5 equals top-1 with fewer than 5 classes), mean loss, image count."""

    top1: float
    top5: float
    loss: float
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many rows of ``logits`` [B, nc] have ``labels`` [B] among their ``k`` largest entries."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(1).sum())


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                        progress: bool = False) -> ClassifyResult:
    """Evaluate ``model`` (switched to eval mode, not otherwise changed) on ``(images, labels)`` batches; on CPU
    every convolution runs on oneDNN (:func:`onednn_convolutions`), as in the detection evaluator and the analysis."""
    model.eval()
    correct1 = correct5 = n = 0
    loss = 0.0
    with onednn_convolutions(model, torch.device(device).type == "cpu"):
        for x, y in tqdm(loader, desc="val", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct1 += topk_correct(logits, y, 1)
            correct5 += topk_correct(logits, y, 5)
            n += len(y)
    n_safe = max(n, 1)
    return ClassifyResult(correct1 / n_safe, correct5 / n_safe, loss / n_safe, n)
