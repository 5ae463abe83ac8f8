"""Shared by the accuracy benchmarks: a training subset of the synthetic benchmark, resumable result rows, one
fine-tuning recipe for every model, and the evaluation every row is judged by."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data import load_data_config
from yolo_prune.engine.train_state import TrainSettings
from yolo_prune.engine.trainer import train
from yolo_prune.fileio import write_text_atomic
from yolo_prune.models.complexity import count_gflops
from yolo_prune.models.fuse import fuse
from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data


def subset_data(work: Path, data_yaml: str, n_train: int, seed: int = 0) -> Path:
    """A data YAML whose train split is a seeded random ``n_train`` of ``data_yaml``'s (val unchanged)."""
    cfg = load_data_config(data_yaml)
    order = torch.randperm(len(cfg.train), generator=torch.Generator().manual_seed(seed))[:n_train]
    work.mkdir(parents=True, exist_ok=True)
    listing = work / f"train_{n_train}.txt"
    write_text_atomic(listing, "".join(f"{cfg.train[i]}\n" for i in sorted(order.tolist())))
    out = work / f"data_{n_train}.yaml"
    raw = yaml.safe_load(Path(data_yaml).read_text())
    raw.update(train=str(listing.resolve()), val=[str(Path(p).resolve()) for p in cfg.val])
    raw.pop("path", None)
    write_text_atomic(out, yaml.safe_dump(raw, sort_keys=False))
    return out


class Rows:
    """Finished rows by name in ``<work>/rows.json``: a re-run skips them (resumable per row)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored row ``name``, or compute, store and return it."""
        if name not in self.rows:
            started = time.time()
            self.rows[name] = make() | {"name": name, "seconds": round(time.time() - started, 1)}
            write_text_atomic(self.path, json.dumps(self.rows, indent=1))
        r = self.rows[name]
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                                      if k not in ("name",)), flush=True)
        return r


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning every model gets: hyp, epochs, batch, image size, seed; best.pt chosen on ``val_images``."""

    hyp: str
    epochs: int
    batch_size: int
    img_size: int
    seed: int = 0
    val_images: int = 64
    workers: int = 1


def fused_gflops(model: torch.nn.Module, img_size: int) -> float:
    """GFLOPs of the re-parameterised model (``model`` is not modified)."""
    return count_gflops(fuse(copy.deepcopy(model).float().cpu()), img_size)


def evaluate(model: torch.nn.Module, data: Path, img_size: int, n_val: int | None = None) -> dict[str, float]:
    """GFLOPs, mAP@.5 and mAP@.5:.95 (pycocotools) on the validation split."""
    result = evaluate_on_data(model, DataSettings(str(data), "val", img_size, 32, 1, n_val),
                              device=torch.device("cpu"), progress=False)
    return {"gflops": fused_gflops(model, img_size), "map50": result.map50, "map": result.map}


def finetune(start: torch.nn.Module | Path, name: str, data: Path, recipe: Recipe, work: Path,
             **extra: Any) -> Path:
    """Fine-tune ``start`` (a model, saved first, or a checkpoint) with ``recipe``; ``extra`` TrainSettings fields
    (pruning inside train, distillation, ...). Resumes an interrupted run. Returns best.pt."""
    run_dir = work / "runs" / name
    if (run_dir / "weights" / "last.pt").exists():
        return Path(train(TrainSettings(resume=str(run_dir), workers=recipe.workers, device="cpu",
                                        progress=False)).best)
    weights = start if isinstance(start, Path) else save_checkpoint(start, work / "start" / f"{name}.pt")
    settings = TrainSettings(weights=str(weights), data=str(data), hyp=recipe.hyp, epochs=recipe.epochs,
                             batch_size=recipe.batch_size, img_size=recipe.img_size, device="cpu",
                             workers=recipe.workers, project=str(work / "runs"), name=name, exist_ok=True,
                             seed=recipe.seed, max_val_images=recipe.val_images, progress=False, **extra)
    return Path(train(settings).best)


def load(path: Path) -> torch.nn.Module:
    return load_checkpoint(path).model.float().eval()


def hyp_variant(spec: str, folder: Path) -> str:
    """A shipped hyp name, a path, or ``name:key=value,key=value`` (written to ``folder``) -> a --hyp value."""
    from yolo_prune.engine.hyp import load_hyp

    if ":" not in spec:
        return spec
    base, overrides = spec.split(":", 1)
    hyp = load_hyp(base)
    for item in overrides.split(","):
        key, value = item.split("=")
        hyp[key.strip()] = float(value)
    path = folder / f"hyp.{spec.replace(':', '_').replace(',', '_').replace('=', '')}.yaml"
    write_text_atomic(path, yaml.safe_dump(hyp, sort_keys=False))
    return str(path)


def machine_line(threads: int) -> str:
    """CPU count and model, torch threads (for the report)."""
    import os
    import platform

    cpu = platform.processor() or "cpu"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.lower().startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), torch threads {threads}, torch {torch.__version__}"
