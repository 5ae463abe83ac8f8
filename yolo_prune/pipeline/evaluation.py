"""Evaluate a model on a YOLO-format dataset, or run the sensitivity analysis on it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from yolo_prune.errors import DataError
from yolo_prune.prune.options import CriterionOptions


@dataclass(frozen=True)
class DataSettings:
    """Which images and how to load them (the evaluator's pre-processing: letterbox, RGB, /255)."""

    data: str
    split: str = "val"
    img_size: int = 640
    batch_size: int = 32
    workers: int = 2
    max_images: int | None = None
    coco_json: str | None = None  # COCO ground truth of the split for pycocotools; None: built from the labels


def split_images(settings: DataSettings) -> tuple[list[str], Any]:
    """Image paths of the split and the data config; clear errors for missing splits."""
    from yolo_prune.data import load_data_config

    cfg = load_data_config(settings.data, splits=(settings.split,))  # other splits may live elsewhere
    paths = getattr(cfg, settings.split, None)
    if not paths:
        raise DataError(f"{settings.data}: split '{settings.split}' is missing or has no images")
    paths = list(paths)[: settings.max_images] if settings.max_images else list(paths)
    return paths, cfg


def check_model_classes(model: Any, settings: DataSettings, source: str) -> None:
    """The model's class count must be the data's (the CLI's message), checked before any image is read."""
    from yolo_prune.data import load_data_config
    from yolo_prune.data.config import class_count_error

    data_nc = load_data_config(settings.data, splits=()).nc
    if int(model.nc) != data_nc:
        raise class_count_error(int(model.nc), source, settings.data, data_nc)


def make_loader(settings: DataSettings, stride: int, rect: bool = True):
    """A deterministic evaluation DataLoader over the split (worker processes, letterboxed batches).

    ``rect``: YOLOv7 test.py's rectangular batches (images sorted by aspect ratio, each batch letterboxed to its
    own stride-multiple shape, pad 0.5), so predictions and test.py's numbers are the official ones; False gives
    square ``img_size`` inputs for models with a fixed input shape (exported ONNX files).
    """
    from yolo_prune.data import create_dataloader

    paths, cfg = split_images(settings)
    loader, _ = create_dataloader(paths, cfg.nc, settings.img_size, settings.batch_size, augment=False,
                                  rect=rect, workers=settings.workers, shuffle=False, stride=stride, pad=0.5)
    return loader, cfg


#: Where YOLOv7's test.py finds COCO's ground truth for a ``coco.yaml`` (relative to the working directory).
OFFICIAL_COCO_JSON = Path("coco") / "annotations" / "instances_val2017.json"


def official_coco_json(data_yaml: str, split: str) -> str | None:
    """YOLOv7's COCO ground truth for its ``coco.yaml`` val split, when it is where test.py looks for it."""
    if split == "val" and str(data_yaml).endswith("coco.yaml") and OFFICIAL_COCO_JSON.is_file():
        return str(OFFICIAL_COCO_JSON)
    return None


def evaluate_on_data(model: torch.nn.Module, settings: DataSettings, *, device: torch.device,
                     conf_thres: float = 0.001, iou_thres: float = 0.65, half: bool = False,
                     save_json: str | None = None, verbose: bool = False, progress: bool = True,
                     source: str = "model"):
    """EvalResult of ``model`` on the split (test.py's metrics from the YOLO labels; pycocotools' against
    ``settings.coco_json`` when given, else against the labels); ``source`` names the model in the error raised
    when its class count differs from the data's."""
    from yolo_prune.engine.evaluator import evaluate

    check_model_classes(model, settings, source)
    stride = int(getattr(model, "stride", torch.tensor([32])).max()) if hasattr(model, "stride") else 32
    loader, cfg = make_loader(settings, stride, rect=getattr(model, "input_hw", None) is None)
    return evaluate(model, loader, nc=cfg.nc, names=cfg.names, conf_thres=conf_thres, iou_thres=iou_thres,
                    device=device, half=half, max_images=settings.max_images, save_json=save_json,
                    verbose=verbose, progress=progress, img_size=settings.img_size, coco_gt=settings.coco_json)


def cached_batches(settings: DataSettings, stride: int, device: torch.device) -> tuple[list, Any]:
    """All batches of the split held on ``device`` as uint8 (read and letterboxed once for every configuration)."""
    from yolo_prune.analysis.sensitivity import Batch
    from yolo_prune.pipeline.scoring import BatchMeta

    loader, cfg = make_loader(settings, stride)
    batches = []
    for imgs, targets, paths, shapes in loader:
        meta = BatchMeta(targets.cpu(), list(paths), list(shapes), (int(imgs.shape[2]), int(imgs.shape[3])))
        batches.append(Batch(imgs.to(device), meta))
    if not batches:
        raise DataError(f"{settings.data}: no images to analyse in split '{settings.split}'")
    return batches, cfg


@dataclass(frozen=True)
class AnalysisSettings:
    """Sensitivity-analysis knobs (what the stored results depend on, plus where they go)."""

    rates: Sequence[float]
    criterion: str = "l2"
    round_to: int | None = None
    seed: int = 0
    layers: Sequence[int] | None = None
    conf_thres: float = 0.001
    iou_thres: float = 0.65
    chunk_layers: int = 4
    prefix: str = "output"
    options: CriterionOptions = field(default_factory=CriterionOptions)
    early_stop: Any = None  # analysis.planning.EarlyStop, opt-in
    stack_bytes: int | None = None  # memory for one stacked pass of a layer's rates (None: automatic, 0: off)
    cache_bytes: int | None = None  # unpruned activations kept across chunks (None: automatic, 0: off)
    channels_last_cpu: bool = False  # score in channels-last layout on CPU (faster; mAP may move by ~1e-4)
    coco_backend: str = "auto"  # COCOeval implementation (engine.coco.coco_backend); same numbers either way
    score_workers: int | None = None  # processes finishing COCOeval while the forwards go on (None: automatic, 0: off)


def sensitivity_on_data(model: torch.nn.Module, data: DataSettings, analysis: AnalysisSettings, out_dir: str | Path,
                        *, device: torch.device, half: bool = False, exist_ok: bool = False,
                        source: str = "", progress: bool = True, dry_run: bool = False, log=None):
    """Run (or resume) the analysis of ``model`` on the split; results land in ``out_dir``. ``log`` receives the
    plan and the ETA; ``dry_run`` logs the plan (time measured on the first batch) and writes nothing."""
    from yolo_prune.analysis.distributed import environment_group
    from yolo_prune.analysis.finish_pool import score_workers
    from yolo_prune.analysis.sensitivity import run_sensitivity
    from yolo_prune.analysis.store import ResultStore
    from yolo_prune.engine.calibration import calibration_source
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.prune.context import CriterionContext, check_analysable, wants_options
    from yolo_prune.prune.criteria import criterion_name
    from yolo_prune.pipeline.scoring import DetectionScorer

    criterion = criterion_name(analysis.criterion)
    extra = {"criterion_options": analysis.options.to_dict()} if wants_options(criterion, analysis.options) else {}
    settings = {"source": source, "data": str(Path(data.data).resolve()), "split": data.split, "img": data.img_size,
                "max_images": data.max_images, "batch": data.batch_size, "rates": [float(r) for r in analysis.rates],
                "criterion": criterion, "round_to": analysis.round_to, "seed": analysis.seed,
                "conf": analysis.conf_thres, "iou": analysis.iou_thres,
                "layers": list(analysis.layers) if analysis.layers is not None else None, **extra}
    if analysis.early_stop is not None:  # only then: analyses without it resume as before
        settings["early_stop"] = analysis.early_stop.settings()
    check_model_classes(model, data, source or "model")
    model = model.to(device).eval()
    if half and device.type == "cuda":
        model = model.half()
    graph = derive_graph(model)
    check_analysable(criterion, analysis.options)
    store = ResultStore.open(out_dir, settings, exist_ok=exist_ok,
                             model={"source": source, "graph_fingerprint": graph.fingerprint()})
    calib = calibration_source(model, criterion, analysis.options, data.data, data.img_size, analysis.seed)
    context = CriterionContext(model, graph, analysis.options, calib)
    batches, cfg = cached_batches(data, int(model.stride.max()), device)
    scorer = DetectionScorer(cfg.nc, cfg.names, analysis.conf_thres, analysis.iou_thres,
                             coco_backend=analysis.coco_backend)
    with environment_group(device.type) as dist:
        return run_sensitivity(model, graph, batches, scorer, store, list(analysis.rates), context=context,
                               layers=analysis.layers, criterion=criterion, round_to=analysis.round_to,
                               seed=analysis.seed, img_size=data.img_size, chunk_layers=analysis.chunk_layers,
                               dist=dist, progress=progress and not dry_run, prefix=analysis.prefix,
                               stack_bytes=analysis.stack_bytes, cache_bytes=analysis.cache_bytes,
                               channels_last_cpu=analysis.channels_last_cpu, early_stop=analysis.early_stop,
                               score_workers=score_workers(device.type, analysis.score_workers),
                               dry_run=dry_run, log=log)
