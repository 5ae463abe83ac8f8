"""test.py's ``--task study``: one evaluation per image size, written as its ``study_<data>_<weights>.txt``.

Each row is test.py's ``results + times``: P, R, mAP@.5, mAP@.5:.95, the three validation losses (0 outside
training, as in a standalone test.py), inference / NMS / total ms per image, image height, width and batch size,
saved with ``np.savetxt(fmt='%10.4g')``. The mAPs are pycocotools' when a COCO json is the ground truth (test.py's
``--save-json`` on coco.yaml) and test.py's own otherwise, as test.py returns them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # test.py's x axis: 256, 384, ..., 1536


def study_file(data_yaml: str | Path, weights: str | Path) -> Path:
    """test.py's name for the study of ``weights`` on ``data_yaml`` (in the working directory)."""
    return Path(f"study_{Path(data_yaml).stem}_{Path(weights).stem}.txt")


def study_row(result, coco_ground_truth: bool) -> list[float]:
    """One row of the study file from an EvalResult (see the module docstring)."""
    map50, map_ = (result.map50, result.map) if coco_ground_truth else (result.map50_yolo, result.map_yolo)
    return [result.mp, result.mr, map50, map_, 0.0, 0.0, 0.0, *result.speed]


def run_study(model: torch.nn.Module, settings, sizes: Sequence[int], *, device: torch.device, conf_thres: float,
              iou_thres: float, half: bool = False, on_size: Callable[[int, list[float]], None] | None = None
              ) -> np.ndarray:
    """Evaluate ``model`` at each of ``sizes`` (``settings``: a DataSettings); rows [len(sizes), 13]."""
    from yolo_prune.pipeline.evaluation import evaluate_on_data

    rows = []
    for size in sizes:
        result = evaluate_on_data(model, replace(settings, img_size=size), device=device, conf_thres=conf_thres,
                                  iou_thres=iou_thres, half=half, progress=False)
        rows.append(study_row(result, settings.coco_json is not None))
        if on_size is not None:
            on_size(size, rows[-1])
    return np.array(rows, dtype=np.float64)


def save_study(rows: np.ndarray, path: str | Path) -> Path:
    """Write the rows as test.py does (``np.savetxt``, ``%10.4g``), all at once: no half-written study."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    np.savetxt(tmp, rows, fmt="%10.4g")
    tmp.replace(path)
    return path


def plot_study(rows: np.ndarray, sizes: Sequence[int], label: str, path: str | Path) -> Path:
    """mAP@.5:.95 and total ms per image against the image size (test.py's study plot, without its fixed
    EfficientDet reference curve and axis limits, which only fit COCO on a GPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, speed) = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    acc.plot(sizes, rows[:, 3] * 100, ".-", label=label)
    acc.set_ylabel("mAP@.5:.95 (%)")
    speed.plot(sizes, rows[:, 9], ".-", label=label)
    speed.set_ylabel("t_total (ms/img)")
    for ax in (acc, speed):
        ax.set_xlabel("image size (px)")
        ax.grid(alpha=0.2)
        ax.legend(loc="best")
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
