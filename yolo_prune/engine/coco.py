"""COCO-style mAP via COCOeval, with ground truth from YOLO labels or a COCO json.

Two implementations of the same COCOeval: ``faster-coco-eval`` (C++, several times faster; used when installed)
and ``pycocotools`` (the reference). They give the same numbers (tested on real predictions to 1e-6);
``backend`` picks one explicitly.

Everything here is in ORIGINAL image pixels. Detections per image are [n, 6] = (x1, y1, x2, y2, conf, cls)
and labels [m, 5] = (cls, x1, y1, x2, y2); ``cls`` is a 0-based class index that :func:`category_ids`
maps to COCO ``category_id``. Result entries follow the COCO format: ``{"image_id", "category_id",
"bbox": [x, y, w, h], "score"}`` with bbox rounded to 3 and score to 5 decimals, as YOLOv7 writes them.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo_prune.engine.boxes import xyxy2ltwh
from yolo_prune.errors import DataError

CocoSource = Union[str, Path, dict, COCO]
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


@dataclass
class CocoResult:
    """COCOeval output. ``stats`` are the 12 ``summarize()`` numbers (-1 where undefined).

    ``cat_ids`` [K] sorted category ids; ``class_ap`` / ``class_ap50`` [K] per-category AP@.5:.95 / AP@.5
    from ``eval['precision']`` (area all, maxDets 100), NaN for a category without ground truth.
    """

    stats: np.ndarray
    cat_ids: list[int]
    class_ap: np.ndarray
    class_ap50: np.ndarray
    n_detections: int = 0
    map: float = field(init=False)
    map50: float = field(init=False)

    def __post_init__(self) -> None:
        self.map = max(float(self.stats[0]), 0.0)
        self.map50 = max(float(self.stats[1]), 0.0)


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` object from an in-memory dataset dict (no file, no prints)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(source: CocoSource) -> COCO:
    """Ground truth from a ``COCO`` object, a dataset dict or a COCO json path."""
    if isinstance(source, COCO):
        return source
    if isinstance(source, dict):
        return coco_from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        return coco_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO annotation file ({e})") from e


def default_image_ids(paths: Sequence[str]) -> list[int]:
    """Image ids for in-memory ground truth: numeric file stems (YOLOv7/COCO style) when they are all
    numeric and unique, else 1..N in order."""
    stems = [Path(p).stem for p in paths]
    if stems and all(s.isnumeric() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def image_ids_in(coco: COCO, paths: Sequence[str]) -> list[Any]:
    """Ids of ``paths`` in an existing COCO ground truth: by file name, else by numeric file stem."""
    by_name = {Path(str(im.get("file_name", ""))).name: im["id"] for im in coco.dataset.get("images", [])}
    known = set(coco.getImgIds())
    ids = []
    for p in paths:
        name, stem = Path(p).name, Path(p).stem
        if name in by_name:
            ids.append(by_name[name])
        elif stem.isnumeric() and int(stem) in known:
            ids.append(int(stem))
        else:
            raise DataError(f"image {p} is not in the COCO ground truth (no matching file_name or id)")
    return ids


def category_ids(coco: COCO, nc: int) -> list[int]:
    """Class index -> category id: the i-th smallest category id (COCO 80 -> 91 for COCO itself)."""
    cats = sorted(coco.getCatIds())
    if len(cats) != nc:
        raise DataError(f"COCO ground truth has {len(cats)} categories, the model predicts {nc} classes")
    return cats


def build_coco_gt(
    labels: Sequence[Tensor], shapes: Sequence[tuple[int, int]], image_ids: Sequence[int],
    nc: int, names: Sequence[str] | None = None, paths: Sequence[str] | None = None,
) -> dict:
    """COCO dataset dict from per-image labels [m, 5] = (cls, x1, y1, x2, y2) in original pixels.

    shapes[i] = (h0, w0); category id = class index; annotation ids start at 1 (COCOeval needs > 0).
    """
    names = list(names) if names is not None else [str(i) for i in range(nc)]
    images, anns = [], []
    for i, (lab, (h0, w0), img_id) in enumerate(zip(labels, shapes, image_ids)):
        name = Path(paths[i]).name if paths is not None else str(img_id)
        images.append({"id": img_id, "width": int(w0), "height": int(h0), "file_name": name})
        boxes = xyxy2ltwh(lab[:, 1:5].double()).tolist() if len(lab) else []
        for c, b in zip(lab[:, 0].tolist(), boxes):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(c), "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
    cats = [{"id": i, "name": names[i]} for i in range(nc)]
    return {"info": {}, "images": images, "annotations": anns, "categories": cats}


def detections_to_coco(
    dets: Sequence[Tensor], image_ids: Sequence[Any], cat_ids: Sequence[int],
) -> list[dict]:
    """COCO result entries from per-image detections [n, 6] = (x1, y1, x2, y2, conf, cls), original pixels.

    Vectorised over all images; the rounding is Python's ``round`` (:func:`round_decimals`), so the entries equal
    YOLOv7's ``round(x, 3)`` / ``round(conf, 5)`` loop value for value."""
    kept = [(det, img_id) for det, img_id in zip(dets, image_ids) if len(det)]
    if not kept:
        return []
    det = torch.cat([d.detach().cpu() for d, _ in kept]).double()
    boxes = round_decimals(xyxy2ltwh(det[:, :4]).numpy(), 3).tolist()
    scores = round_decimals(det[:, 4].numpy(), 5).tolist()
    cats = np.asarray(cat_ids, dtype=np.int64)[det[:, 5].numpy().astype(np.int64)].tolist()
    ids = [img_id for d, img_id in kept for _ in range(len(d))]
    return [{"image_id": i, "category_id": c, "bbox": b, "score": sc} for i, c, b, sc in zip(ids, cats, boxes, scores)]


def round_decimals(x: np.ndarray, digits: int) -> np.ndarray:
    """``round(v, digits)`` of Python for every float64 element: the exact value rounded to ``digits`` decimals (ties
    to even), as the nearest double. ``np.round`` scales by 10^digits and can round the scaled product, which is
    inexact, the wrong way; here Dekker's exact product decides the cases where the scaled value lands on .5."""
    x = np.asarray(x, dtype=np.float64)
    scale = 10.0 ** digits
    y = x * scale
    hi = 134217729.0 * x  # Veltkamp split: x = hi + lo with hi * scale exact
    hi = hi - (hi - x)
    error = (hi * scale - y) + (x - hi) * scale  # x * scale == y + error exactly
    nearest = np.rint(y)
    floor = np.floor(y)
    tie = (y - floor == 0.5) & (error != 0)
    nearest[tie] = floor[tie] + (error[tie] > 0)
    return nearest / scale


def save_predictions_json(results: list[dict], path: str | Path) -> Path:
    """Write COCO result entries to ``path`` (a ``.json`` file, or a folder that gets predictions.json)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "predictions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def per_category_ap(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-category AP@.5:.95 and AP@.5 [K] from COCOeval ``eval['precision']`` [T, R, K, A, M].

    Uses area range 'all' and the last maxDets (100), averaging only entries > -1, as ``summarize()``.
    """
    p = precision[:, :, :, 0, -1]  # [T, R, K]
    ap, ap50 = np.full(p.shape[2], np.nan), np.full(p.shape[2], np.nan)
    for k in range(p.shape[2]):
        allt, t50 = p[:, :, k], p[0, :, k]
        if (allt > -1).any():
            ap[k] = allt[allt > -1].mean()
        if (t50 > -1).any():
            ap50[k] = t50[t50 > -1].mean()
    return ap, ap50


def _empty_result(gt: COCO, img_ids: Sequence[Any]) -> CocoResult:
    """The result COCOeval would give with no detections: 0 for categories with ground truth, else NaN."""
    cats = sorted(gt.getCatIds())
    has = {a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=list(img_ids)))}
    ap = np.array([0.0 if c in has else np.nan for c in cats])
    stats = np.full(12, 0.0 if has else -1.0)
    return CocoResult(stats, cats, ap, ap.copy(), 0)


BACKENDS = ("auto", "faster-coco-eval", "pycocotools")


def coco_backend(name: str = "auto") -> str:
    """The COCOeval implementation ``name`` resolves to: ``auto`` is faster-coco-eval when importable."""
    if name not in BACKENDS:
        raise ValueError(f"COCO backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name != "auto":
        return name
    import importlib.util

    return "faster-coco-eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


class GroundTruth:
    """A COCO ground truth prepared once for many evaluations (the sensitivity analysis scores hundreds of
    configurations on the same images): the pycocotools index, and faster-coco-eval's own copy made on first use."""

    def __init__(self, coco: COCO):
        self.coco = coco
        self._faster: Any = None

    def faster(self) -> Any:
        if self._faster is None:
            from faster_coco_eval import COCO as FasterCOCO

            self._faster = FasterCOCO()
            self._faster.dataset = copy.deepcopy(self.coco.dataset)  # its index adds fields; ours stays as it was
            self._faster.createIndex()
        return self._faster


def _faster_results(gt: Any, entries: list[dict]) -> Any:
    """faster-coco-eval's ``gt.loadRes(entries)`` for bbox entries, without the polygon it builds per entry (bbox
    evaluation never reads it; the rest of that per-entry Python loop was ~70 % of a COCOeval call here): the
    same ids, areas and index."""
    from faster_coco_eval import COCO as FasterCOCO

    if not all("bbox" in e for e in entries):
        return gt.loadRes(entries)
    unknown = {e["image_id"] for e in entries} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"results name images that are not in the ground truth: {sorted(unknown)[:5]}")
    for n, e in enumerate(entries, 1):
        box = e["bbox"]
        e["area"], e["id"], e["iscrowd"] = box[2] * box[3], n, 0
    res = FasterCOCO()
    res.dataset["info"] = copy.deepcopy(gt.dataset.get("info", {}))
    res.dataset["images"] = list(gt.dataset["images"])
    res.dataset["categories"] = copy.deepcopy(gt.dataset["categories"])
    res.dataset["annotations"] = entries
    res.createIndex()
    return res


def _cocoeval(prepared: GroundTruth, results: list[dict], img_ids: list[Any], backend: str, owned: bool = False):
    """An evaluated + accumulated + summarised COCOeval object of ``backend`` (same attributes either way).
    ``loadRes`` adds fields to the entries, so they are copied unless the caller hands them over (``owned``)."""
    entries = results if owned else [dict(r) for r in results]
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCOeval_faster

        fgt = prepared.faster()
        ev = COCOeval_faster(fgt, _faster_results(fgt, entries), "bbox", print_function=print)
    else:
        ev = COCOeval(prepared.coco, prepared.coco.loadRes(entries), "bbox")
    ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def coco_evaluate(
    results: list[dict], gt: CocoSource | GroundTruth, img_ids: Sequence[Any] | None = None, verbose: bool = False,
    backend: str = "auto", owned: bool = False,
) -> CocoResult:
    """Run COCOeval (bbox) on COCO result entries against ``gt``; ``img_ids`` restricts the images.

    ``results`` are not modified unless ``owned`` hands them over (saves a copy per evaluation). With ``verbose`` the
    implementation's own printout is shown. ``backend``: see :func:`coco_backend`. A :class:`GroundTruth` is reused
    as it is (nothing rebuilt per call).
    """
    prepared = gt if isinstance(gt, GroundTruth) else GroundTruth(load_coco(gt))
    img_ids = sorted(prepared.coco.getImgIds()) if img_ids is None else list(img_ids)
    if not results:
        return _empty_result(prepared.coco, img_ids)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        ev = _cocoeval(prepared, results, img_ids, coco_backend(backend), owned)
    ap, ap50 = per_category_ap(ev.eval["precision"])
    stats = np.asarray(ev.stats, dtype=float)[:12]  # faster-coco-eval appends AR@.5 and AR@.75
    return CocoResult(stats, list(ev.params.catIds), ap, ap50, len(results))
