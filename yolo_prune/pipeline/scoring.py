"""Scoring for the sensitivity analysis: detection (the evaluator's NMS + metrics) and classification (top-1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from yolo_prune.engine import evaluator as ev
from yolo_prune.engine.metrics import StatsAccumulator
from yolo_prune.engine.postprocess import non_max_suppression


@dataclass(frozen=True)
class BatchMeta:
    """What scoring one batch needs besides predictions: targets [M, 6], paths, shapes, input (h, w)."""

    targets: torch.Tensor
    paths: list[str]
    shapes: list[Any]
    hw: tuple[int, int]


class DetectionScorer:
    """NMS (multi-label, as YOLOv7 test.py) and COCO mAP (faster-coco-eval or pycocotools: ``coco_backend``),
    one state per configuration."""

    def __init__(self, nc: int, names: Sequence[str], conf_thres: float = 0.001, iou_thres: float = 0.65,
                 coco_gt: Any = None, coco_backend: str = "auto"):
        self.nc, self.names = nc, list(names)
        self.conf_thres, self.iou_thres, self.coco_gt = conf_thres, iou_thres, coco_gt
        self.coco_backend = coco_backend
        self._ground_truth: dict = {}  # prepared once per image list: every configuration scores the same images

    def start(self) -> Any:
        return ev.EvalRun(StatsAccumulator())

    def update(self, state: Any, pred: torch.Tensor, meta: BatchMeta) -> None:
        out = non_max_suppression(pred.float(), self.conf_thres, self.iou_thres, multi_label=True)
        state.hw, state.batch = meta.hw, max(state.batch, len(meta.paths))
        for si, det in enumerate(out):
            labels, dets, hw0 = ev.to_original(state.hw, meta.targets[meta.targets[:, 0] == si], det, meta.shapes[si])
            state.add(meta.paths[si], hw0, labels, dets)

    def partial_map50(self, state: Any) -> float:
        """test.py's mAP@.5 of the images scored so far (cheap: no COCOeval), for the analysis' early stop."""
        return float(state.stats.compute(self.nc).map50)

    def portable(self, state: Any) -> ev.PackedRun:
        """``state`` in the form a worker process receives (flat arrays); :meth:`finish` takes either."""
        return state if isinstance(state, ev.PackedRun) else state.packed()

    def finish(self, state: Any) -> dict[str, Any]:
        if isinstance(state, ev.PackedRun):
            state = state.unpack()
        result = ev.summarize(state, self.nc, self.names, self.coco_gt, None, False, self.coco_backend,
                              self._ground_truth)
        # as `yolo-prune test --json`: mp/mr from test.py, map50/map from COCOeval, test.py's own set apart
        return {"mp": result.mp, "mr": result.mr, "map50": result.map50, "map": result.map,
                "official": ev.official_metrics(result),
                # classes without labels report the overall mAP, as the published analysis does
                "per_class": [result.map if v != v else v for v in result.class_ap]}


class ClassificationScorer:
    """Top-1 / top-5 accuracy and cross-entropy of logits [B, nc] against labels [B] (the batch meta)."""

    def start(self) -> list[float]:
        return [0.0, 0.0, 0.0, 0.0]  # correct@1, correct@5, summed loss, images

    def update(self, state: list[float], pred: torch.Tensor, meta: torch.Tensor) -> None:
        from yolo_prune.engine.classify.evaluate import topk_correct

        logits, labels = pred.float(), meta.to(pred.device)
        state[0] += topk_correct(logits, labels, 1)
        state[1] += topk_correct(logits, labels, 5)
        state[2] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        state[3] += len(labels)

    def finish(self, state: list[float]) -> dict[str, Any]:
        n = max(state[3], 1.0)
        return {"top1": state[0] / n, "top5": state[1] / n, "loss": state[2] / n}
