"""Calibration images for INT8 exports (TensorRT engines, Vitis AI QDQ): found on disk and pre-processed exactly
as evaluation and inference pre-process them (letterbox, RGB, /255)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from yolo_prune.errors import YoloPruneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def calibration_files(folder: str | Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files of ``folder`` (sorted, recursive, hidden ones skipped, as a data YAML's folders
    are listed); YoloPruneError when there are none."""
    from yolo_prune.data.config import images_in_folder

    folder = Path(folder)
    found = images_in_folder(folder) if folder.is_dir() else []
    files = [Path(p) for p in found if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise YoloPruneError(f"--calib-images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files[:limit]


def calibration_batches(files: Sequence[Path], batch: int, img_size: tuple[int, int], stride: int = 32,
                        fp16_input: bool = False) -> Iterator[np.ndarray]:
    """Letterboxed batches [batch, 3, H, W] RGB 0..1 (float32, float16 with ``fp16_input``), exactly as
    evaluation pre-processes images; a short last batch is dropped (TensorRT needs full batches). An unreadable
    or corrupt image is skipped with a warning, as training and evaluation skip it."""
    from yolo_prune.data.letterbox import preprocess

    pending: list[np.ndarray] = []
    for f in files:
        img = _read_rgb(f)
        if img is None:
            continue
        pending.append(preprocess(img, img_size, stride)[0].numpy())
        if len(pending) == batch:
            yield np.concatenate(pending).astype(np.float16 if fp16_input else np.float32)
            pending = []


def _read_rgb(path: Path) -> np.ndarray | None:
    """The image as HWC RGB uint8 (decoded as evaluation decodes it), or None with a warning naming it."""
    import warnings

    from yolo_prune.data.decode import load_image_rgb
    from yolo_prune.errors import DataError

    try:
        return load_image_rgb(str(path))
    except DataError as exc:
        warnings.warn(f"{path}: skipping unreadable or corrupt image ({exc.__cause__ or exc})", stacklevel=3)
        return None


def readable_files(files: Sequence[Path]) -> list[Path]:
    """The calibration images that decode; each corrupt one is skipped with a warning, as in training and evaluation
    (checked before quantizing, so the warnings are not lost inside a quantizer); YoloPruneError when none is."""
    from yolo_prune.data.dataset import scan_images

    good, _, _ = scan_images([str(f) for f in files])
    if not good:
        raise YoloPruneError(f"calibration set is empty: none of the {len(files)} images could be read")
    return [Path(f) for f in good]
