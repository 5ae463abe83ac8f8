"""Validation loop: model -> NMS -> YOLOv7 ``test.py`` metrics + pycocotools mAP, and the printed table.

``evaluate`` accepts a ``torch.nn.Module`` or any callable ``img float [B, 3, H, W] RGB 0..1 -> pred`` or
``(pred, ...)`` with ``pred`` [B, N, 5 + nc] (cx, cy, w, h input pixels, sigmoid obj, sigmoid classes); a numpy
``pred`` (e.g. from ONNX Runtime) is accepted too. Batches follow the data loader contract
``(imgs uint8 [B, 3, H, W], targets [M, 6] = (batch_idx, cls, cx, cy, w, h) normalised to the letterboxed
image, paths, shapes)`` with ``shapes[i] = ((h0, w0), ((h/h0, w/w0), (padw, padh)))`` or None.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from yolo_prune.engine.boxes import scale_coords, xywh2xyxy
from yolo_prune.engine.coco import (
    CocoResult, CocoSource, GroundTruth, build_coco_gt, category_ids, coco_evaluate, default_image_ids,
    detections_to_coco, image_ids_in, load_coco, save_predictions_json,
)
from yolo_prune.engine.metrics import StatsAccumulator, YoloMetrics
from yolo_prune.engine.postprocess import non_max_suppression
from yolo_prune.errors import DataError, YoloPruneError
from yolo_prune.models.conv_backend import onednn_convolutions

Names = Sequence[str] | Mapping[int, str] | None
HEADER = ("Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95")  # YOLOv7 test.py's table
COCO_HEADER = ("COCO@.5", "COCO@.5:.95")  # pycocotools, appended on the right


@dataclass
class ClassRow:
    """One per-class table row. ap50 / ap come from COCOeval, p / r / ap50_yolo / ap_yolo from test.py."""

    cls: int
    name: str
    images: int
    labels: int
    p: float
    r: float
    ap50: float
    ap: float
    ap50_yolo: float
    ap_yolo: float


@dataclass
class EvalResult:
    """Validation summary.

    map / map50: pycocotools mAP@.5:.95 / mAP@.5 (authoritative); mp, mr, map50_yolo, map_yolo: YOLOv7
    ``test.py``. class_ap / class_ap50: [nc] COCO per-class AP (NaN for classes without labels).
    speed: (inference ms, NMS ms, total ms per image, input h, input w, batch size).
    """

    mp: float
    mr: float
    map50: float
    map: float
    map50_yolo: float
    map_yolo: float
    class_ap: list[float]
    class_ap50: list[float]
    rows: list[ClassRow]
    speed: tuple[float, float, float, int, int, int]
    n_images: int
    n_labels: int
    coco_stats: list[float] = field(default_factory=list)
    json_path: Path | None = None


@dataclass
class EvalRun:
    """Per-image records of one evaluation, all in original pixels, plus timing."""

    stats: StatsAccumulator
    paths: list[str] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)  # [m, 5] (cls, x1, y1, x2, y2)
    dets: list[Tensor] = field(default_factory=list)  # [n, 6] (x1, y1, x2, y2, conf, cls)
    t_inf: float = 0.0
    t_nms: float = 0.0
    hw: tuple[int, int] = (0, 0)  # input size of the latest batch
    batch: int = 0
    nominal_hw: tuple[int, int] | None = None  # reported instead of ``hw`` (test.py prints --img, not batch shapes)

    def add(self, path: str, hw0: tuple[int, int], labels: Tensor, dets: Tensor) -> None:
        """Record one image: labels [m, 5] (cls, xyxy), dets [n, 6] (xyxy, conf, cls) in NMS order."""
        self.stats.add(dets, labels)
        self.paths.append(str(path))
        self.shapes.append(hw0)
        self.labels.append(labels.cpu())
        self.dets.append(dets.cpu())

    def packed(self) -> "PackedRun":
        """The records as a few flat arrays (cheap to pickle to another process; :meth:`PackedRun.unpack` undoes it)."""
        return PackedRun(
            self.stats.iouv.numpy(), list(self.paths), list(self.shapes),
            _flat(self.labels, 5), np.asarray([len(t) for t in self.labels], np.int64),
            _flat(self.dets, 6), np.asarray([len(t) for t in self.dets], np.int64),
            self.t_inf, self.t_nms, self.hw, self.batch, self.nominal_hw)


def _flat(tensors: list[Tensor], width: int) -> np.ndarray:
    return torch.cat(tensors).numpy() if tensors else np.zeros((0, width), np.float32)


@dataclass
class PackedRun:
    """An :class:`EvalRun` as flat arrays: per-image labels / detections concatenated, with per-image counts."""

    iouv: np.ndarray
    paths: list[str]
    shapes: list[tuple[int, int]]
    labels: np.ndarray
    label_counts: np.ndarray
    dets: np.ndarray
    det_counts: np.ndarray
    t_inf: float
    t_nms: float
    hw: tuple[int, int]
    batch: int
    nominal_hw: tuple[int, int] | None

    def unpack(self) -> EvalRun:
        """The run it was packed from (same values, element for element)."""
        run = EvalRun(StatsAccumulator(torch.from_numpy(self.iouv)), t_inf=self.t_inf, t_nms=self.t_nms, hw=self.hw,
                      batch=self.batch, nominal_hw=self.nominal_hw)
        labels = torch.from_numpy(self.labels).split(self.label_counts.tolist())
        dets = torch.from_numpy(self.dets).split(self.det_counts.tolist())
        for path, hw0, lab, det in zip(self.paths, self.shapes, labels, dets):
            run.add(path, hw0, lab, det)
        return run


def _name_list(names: Names, nc: int) -> list[str]:
    """Class names [nc] from a list, a {index: name} mapping or None (indices as names)."""
    if isinstance(names, Mapping):
        return [str(names.get(i, i)) for i in range(nc)]
    names = list(names) if names is not None else []
    return [str(names[i]) if i < len(names) else str(i) for i in range(nc)]


def _prepare_model(model: Callable, device: torch.device, half: bool) -> tuple[Callable, Callable[[], None]]:
    """Module -> eval mode on ``device`` (an fp16 copy when ``half``); returns (model, restore-train-mode)."""
    if not isinstance(model, nn.Module):
        return model, lambda: None
    if half:
        return copy.deepcopy(model).to(device).half().eval(), lambda: None
    was_training = model.training
    model.to(device).eval()
    return model, lambda: model.train(was_training)


def _forward(model: Callable, img: Tensor, nc: int) -> Tensor:
    """Run the model and return ``pred`` [B, N, 5 + nc] as a tensor (numpy outputs are converted)."""
    out = model(img)
    if isinstance(out, (tuple, list)):
        out = out[0]
    pred = out if isinstance(out, Tensor) else torch.as_tensor(np.asarray(out), device=img.device)
    if pred.ndim != 3 or pred.shape[0] != img.shape[0] or pred.shape[2] != 5 + nc:
        raise YoloPruneError(
            f"model output {tuple(pred.shape)} does not match [B={img.shape[0]}, N, 5 + nc={5 + nc}]")
    return pred


def _now(device: torch.device) -> float:
    """Wall clock after waiting for queued CUDA work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _batches(loader: Iterable, max_images: int | None, progress: bool) -> Iterable[tuple]:
    """Yield (imgs, targets, paths, shapes) batches, trimmed so at most ``max_images`` images pass."""
    total = len(loader) if hasattr(loader, "__len__") else None
    bs = getattr(loader, "batch_size", None)
    if total is not None and max_images is not None and bs:
        total = min(total, math.ceil(max_images / bs))
    seen = 0
    with tqdm(loader, desc=("%20s" + "%12s" * 6) % HEADER, total=total, disable=not progress) as bar:
        for batch in bar:
            if len(batch) < 4:
                raise DataError("a batch must be (imgs, targets, paths, shapes)")
            imgs, targets, paths, shapes = batch[:4]
            k = imgs.shape[0] if max_images is None else min(imgs.shape[0], max_images - seen)
            if k < imgs.shape[0]:
                imgs, targets = imgs[:k], targets[targets[:, 0] < k]
            seen += k
            yield imgs, targets, list(paths)[:k], list(shapes)[:k]
            if max_images is not None and seen >= max_images:
                break


def to_original(
    img_hw: tuple[int, int], targets: Tensor, det: Tensor, shape: Any,
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """One image's targets [m, 6] (normalised xywh) and detections [n, 6] (input-pixel xyxy) -> original
    pixels: (labels [m, 5] = (cls, xyxy), dets [n, 6] = (xyxy, conf, cls), (h0, w0))."""
    h, w = img_hw
    if shape is None:  # no mapping given: the input is the original image
        hw0, ratio_pad = (h, w), ((1.0, 1.0), (0.0, 0.0))
    else:
        hw0, ratio_pad = (int(shape[0][0]), int(shape[0][1])), shape[1]
    t = targets[:, 1:6].float().cpu()
    boxes = xywh2xyxy(t[:, 1:5] * torch.tensor([w, h, w, h], dtype=torch.float32))
    labels = torch.cat((t[:, :1], scale_coords(boxes, hw0, ratio_pad)), 1)
    return labels, scale_coords(det.float().cpu(), hw0, ratio_pad), hw0


def _eval_batch(
    model: Callable, batch: tuple, run: EvalRun, nc: int, conf_thres: float, iou_thres: float,
    device: torch.device, half: bool,
) -> None:
    """Forward + NMS (multi-label, as YOLOv7 test.py) one batch and record every image in ``run``."""
    imgs, targets, paths, shapes = batch
    img = imgs.to(device, non_blocking=True)
    img = img.half() if half else img.float()
    if imgs.dtype == torch.uint8:
        img = img / 255.0
    t0 = _now(device)
    pred = _forward(model, img, nc)
    t1 = _now(device)
    out = non_max_suppression(pred, conf_thres, iou_thres, multi_label=True)
    run.t_inf, run.t_nms = run.t_inf + t1 - t0, run.t_nms + _now(device) - t1
    run.hw, run.batch = (int(img.shape[2]), int(img.shape[3])), max(run.batch, int(img.shape[0]))
    targets = targets.cpu()
    for si, det in enumerate(out):
        labels, dets, hw0 = to_original(run.hw, targets[targets[:, 0] == si], det, shapes[si])
        run.add(paths[si], hw0, labels, dets)


def _coco_metrics(
    run: EvalRun, nc: int, names: list[str], coco_gt: CocoSource | None, save_json: str | Path | None,
    verbose: bool, backend: str = "auto", gt_cache: dict | None = None,
) -> tuple[CocoResult, list[int], Path | None]:
    """COCOeval of the recorded detections against ``coco_gt`` (or GT built from the labels).

    ``gt_cache`` (a dict the caller keeps) holds the prepared ground truth of each image list, so repeated
    evaluations of the same images (the sensitivity analysis) build it once.
    Returns (result, category id of each class index [nc], path of the written predictions.json or None).
    """
    key = (coco_gt is None, tuple(run.paths), sum(len(lab) for lab in run.labels))
    if gt_cache is not None and key in gt_cache:
        gt, img_ids, cat_ids = gt_cache[key]
    else:
        if coco_gt is None:
            img_ids = default_image_ids(run.paths)
            gt = GroundTruth(load_coco(build_coco_gt(run.labels, run.shapes, img_ids, nc, names, run.paths)))
            cat_ids = list(range(nc))
        else:
            coco = load_coco(coco_gt)
            gt, img_ids, cat_ids = GroundTruth(coco), image_ids_in(coco, run.paths), category_ids(coco, nc)
        if gt_cache is not None:
            gt_cache[key] = (gt, img_ids, cat_ids)
    results = detections_to_coco(run.dets, img_ids, cat_ids)
    json_path = save_predictions_json(results, save_json) if save_json is not None else None
    coco = coco_evaluate(results, gt, img_ids=img_ids, verbose=verbose, backend=backend, owned=True)
    return coco, cat_ids, json_path


def _class_coco_ap(coco: CocoResult, cat_ids: list[int]) -> tuple[list[float], list[float]]:
    """COCO per-class AP@.5:.95 and AP@.5 re-indexed by class index [nc] (NaN where absent)."""
    where = {c: k for k, c in enumerate(coco.cat_ids)}
    ap = [float(coco.class_ap[where[c]]) if c in where else math.nan for c in cat_ids]
    ap50 = [float(coco.class_ap50[where[c]]) if c in where else math.nan for c in cat_ids]
    return ap, ap50


def _rows(yolo: YoloMetrics, ap: list[float], ap50: list[float], names: list[str], n_images: int) -> list[ClassRow]:
    """A table row for every class that has labels (YOLOv7 fields are 0 when nothing matched)."""
    at = {int(c): i for i, c in enumerate(yolo.classes)}
    rows = []
    for c in np.flatnonzero(yolo.n_labels).tolist():
        i = at.get(c)
        yv = (0.0,) * 4 if i is None else (yolo.p[i], yolo.r[i], yolo.ap50[i], yolo.ap[i])
        yv = tuple(float(v) for v in yv)
        rows.append(ClassRow(c, names[c], n_images, int(yolo.n_labels[c]), yv[0], yv[1], ap50[c], ap[c],
                             yv[2], yv[3]))
    return rows


def evaluate(
    model: Callable,
    dataloader: Iterable,
    *,
    nc: int,
    names: Names = None,
    conf_thres: float = 0.001,
    iou_thres: float = 0.65,
    device: str | torch.device = "cpu",
    half: bool = False,
    max_images: int | None = None,
    coco_gt: CocoSource | None = None,
    save_json: str | Path | None = None,
    verbose: bool = False,
    progress: bool = True,
    img_size: int | None = None,
) -> EvalResult:
    """Evaluate a detector like YOLOv7 ``test.py`` (multi-label NMS, max 300 detections per image).

    ``half`` runs an fp16 copy of a Module on CUDA (ignored elsewhere); a Module evaluated in place is put
    back in its training mode afterwards. ``coco_gt`` is a COCO json/dict/object (images matched by
    file name or numeric stem, class i -> i-th category id); by default ground truth is built from the
    labels. ``save_json`` is a ``.json`` path or a folder for ``predictions.json``. ``verbose`` prints the
    per-class table and pycocotools' summary. ``img_size`` is the input size the speed line names (test.py
    prints ``--img`` although its rectangular batches vary); default: the last batch's. Raises DataError when
    no image was evaluated.
    """
    device = torch.device(device)
    half = bool(half) and device.type == "cuda"
    net, restore = _prepare_model(model, device, half)
    run, names_l = EvalRun(StatsAccumulator()), _name_list(names, nc)
    run.nominal_hw = (img_size, img_size) if img_size else None
    try:
        with torch.inference_mode(), onednn_convolutions(net, isinstance(net, nn.Module) and device.type == "cpu"):
            for batch in _batches(dataloader, max_images, progress):
                _eval_batch(net, batch, run, nc, conf_thres, iou_thres, device, half)
    finally:
        restore()
    if not run.paths:
        raise DataError("the data loader yielded no images to evaluate")
    result = summarize(run, nc, names_l, coco_gt, save_json, verbose)
    if verbose:
        format_results(result, names_l, verbose=True)
    return result


def summarize(
    run: EvalRun, nc: int, names: list[str], coco_gt: CocoSource | None, save_json: str | Path | None,
    verbose: bool, coco_backend: str = "auto", gt_cache: dict | None = None,
) -> EvalResult:
    """Reduce the recorded images to an :class:`EvalResult` (``coco_backend``: see :func:`.coco.coco_backend`;
    ``gt_cache``: see :func:`_coco_metrics`)."""
    yolo = run.stats.compute(nc)
    if yolo.n_labels.shape[0] > nc:
        raise DataError(f"labels contain class {yolo.n_labels.shape[0] - 1}, but nc={nc}")
    coco, cat_ids, json_path = _coco_metrics(run, nc, names, coco_gt, save_json, verbose, coco_backend, gt_cache)
    ap, ap50 = _class_coco_ap(coco, cat_ids)
    n = len(run.paths)
    speed = (run.t_inf / n * 1e3, run.t_nms / n * 1e3, (run.t_inf + run.t_nms) / n * 1e3, *(run.nominal_hw or run.hw),
             run.batch)
    return EvalResult(
        mp=yolo.mp, mr=yolo.mr, map50=coco.map50, map=coco.map, map50_yolo=yolo.map50, map_yolo=yolo.map,
        class_ap=ap, class_ap50=ap50, rows=_rows(yolo, ap, ap50, names, n), speed=speed, n_images=n,
        n_labels=int(yolo.n_labels.sum()), coco_stats=[float(s) for s in coco.stats], json_path=json_path,
    )


def official_metrics(result: EvalResult) -> dict[str, float]:
    """test.py's own summary (P, R and its interpolated mAPs), keyed as in ``yolo-prune test --json``."""
    return {"mp": result.mp, "mr": result.mr, "map50": result.map50_yolo, "map": result.map_yolo}


def format_results(
    result: EvalResult, names: Names = None, verbose: bool = False, file: TextIO | None | str = "stdout",
) -> str:
    """The YOLOv7 ``test.py`` printout with the pycocotools mAPs appended: header, 'all' row, per-class rows
    when ``verbose``, speed line.

    Columns P, R, mAP@.5, mAP@.5:.95 are test.py's own numbers (what the official script prints for the same
    predictions); COCO@.5 and COCO@.5:.95 are pycocotools' (the authoritative mAP). ``names`` overrides the
    row names. Printed to ``file`` (default: ``sys.stdout`` at call time, so redirections apply; None: not
    printed); the text is returned.
    """
    pf = "%20s" + "%12i" * 2 + "%12.3g" * 6
    lines = [("%20s" + "%12s" * 8) % (*HEADER, *COCO_HEADER),
             pf % ("all", result.n_images, result.n_labels, result.mp, result.mr, result.map50_yolo,
                   result.map_yolo, result.map50, result.map)]
    if verbose:
        label = (lambda r: _name_list(names, r.cls + 1)[r.cls]) if names is not None else (lambda r: r.name)
        lines += [pf % (label(r), r.images, r.labels, r.p, r.r, r.ap50_yolo, r.ap_yolo, r.ap50, r.ap)
                  for r in result.rows]
    lines.append("Speed: %.1f/%.1f/%.1f ms inference/NMS/total per %gx%g image at batch-size %g" % result.speed)
    text = "\n".join(lines)
    if file is not None:
        print(text, file=sys.stdout if file == "stdout" else file)
    return text
