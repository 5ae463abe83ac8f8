"""YOLO-format detection dataset: images + ``labels/*.txt`` (``cls cx cy w h`` normalised), YOLOv7 semantics.

Label files may also hold polygons (``cls x1 y1 x2 y2 ...``, the official COCO labels), read as YOLOv7 reads
them: a file with any row of more than 8 fields is all polygons, each row becoming the box that encloses its
points. Labels are validated up front (DataError names file and line); unreadable images, images under 10
pixels and images whose label file repeats a row are skipped with a warning, as YOLOv7's loader skips them,
and counted in ``dataset.skipped``. Nothing is cached on disk. Augmentation randomness is a pure function of
``(seed, epoch, index)``, so results do not depend on worker count or order.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from yolo_prune.errors import DataError

from .augment import (
    MOSAIC9_P, augment_hsv, merge_hyp, mixup, mosaic4, mosaic4_canvas, mosaic9, random_flip, random_perspective,
)
from .decode import load_image_rgb
from .letterbox import AREA, LINEAR, letterbox, resize, xywhn_to_xyxy, xyxy_to_xywhn
from .paste_in import Cutout, cut_out_objects, gather_cutouts, paste_in

MIN_IMAGE_SIDE = 10  # YOLOv7 skips smaller images as corrupt
BOX_TOL = 1e-3  # tolerance on normalised coordinates before a label counts as out of range
ROUNDING_TOL = 1e-6  # an edge past [0, 1] by less than this is rounding (6 decimals, float32), not clipped
IO_THREADS = 8  # header/label reads are I/O bound
EXIF_ORIENTATION = 0x0112
YOLOV7_SWAPPED_ORIENTATIONS = (6, 8)  # exif_size swaps width and height for these only

Shapes = Optional[tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]]]
Sample = tuple[torch.Tensor, torch.Tensor, str, Shapes]


def label_path_for(image_path: str) -> str:
    """Label file of an image: ``/images/`` -> ``/labels/`` with a .txt suffix, else a .txt beside it.

    YOLOv7 replaces the first ``/images/`` of the path; that file is taken when it exists, else the one under
    the last ``/images/`` (the folder nearest the image), else a .txt beside the image when it exists.
    """
    stem = os.path.splitext(image_path)[0] + ".txt"
    for sep in dict.fromkeys((os.sep, "/")):
        token = f"{sep}images{sep}"
        if token in stem:
            official = stem.replace(token, f"{sep}labels{sep}", 1)
            if os.path.exists(official):
                return official
            head, tail = stem.rsplit(token, 1)
            candidate = f"{head}{sep}labels{sep}{tail}"
            if os.path.exists(candidate) or not os.path.exists(stem):
                return candidate
    return stem


POLYGON_FIELDS = 8  # YOLOv7: a label file with any row longer than this holds polygons (cls x1 y1 x2 y2 ...)


def parse_label_file(path: str, nc: int) -> np.ndarray:
    """Read a YOLO label file into float32 ``[n, 5]`` (cls, cx, cy, w, h normalised, clipped to the image).

    A missing file means no objects. A file of polygons gives each polygon's enclosing box. Bad rows raise
    DataError ``"<file>:<line>: <problem>"``.
    """
    return read_label_file(path, nc)[0]


def read_label_file(path: str, nc: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """:func:`parse_label_file`'s boxes, and for a file of polygons each row's float32 ``[k, 2]`` normalised points
    (training warps them); ``()`` for a file of boxes."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32), ()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read label file: {e}") from None
    numbered = [(lineno, line.split()) for lineno, line in enumerate(lines, 1) if line.strip()]
    polygons = any(len(fields) > POLYGON_FIELDS for _, fields in numbered)
    rows = []
    for lineno, fields in numbered:
        try:
            rows.append(parse_polygon_row(fields, nc) if polygons else parse_label_row(fields, nc))
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}: {' '.join(fields)!r}") from None
        if polygons and len(fields) == 5:
            warnings.warn(f"{path}:{lineno}: a 5-field row in a file of polygons is read as the 2-point polygon "
                          f"(x1 y1) (x2 y2), as YOLOv7 reads it, not as a cx cy w h box", stacklevel=2)
    boxes = _clip_labels(np.array(rows, np.float64).reshape(-1, 5)).astype(np.float32)
    if not polygons:
        return boxes, ()
    return boxes, tuple(np.array(fields[1:], np.float32).reshape(-1, 2) for _, fields in numbered)


def parse_label_row(fields: Sequence[str], nc: int) -> list[float]:
    """Validate one ``cls cx cy w h`` row; raises ValueError describing the problem."""
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields 'cls cx cy w h' (or a polygon 'cls x1 y1 x2 y2 ...' of at least "
                         f"{POLYGON_FIELDS // 2} points), got {len(fields)}")
    cls = _parse_class(fields[0], nc)
    try:
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise ValueError("box fields must be numbers") from None
    return [cls, *_checked_box(cx, cy, w, h)]


def parse_polygon_row(fields: Sequence[str], nc: int) -> list[float]:
    """One ``cls x1 y1 x2 y2 ...`` row as ``[cls, cx, cy, w, h]`` of the box enclosing its points.

    Computed in float32 as YOLOv7's ``segments2boxes`` computes it, so the boxes equal test.py's.
    """
    cls = _parse_class(fields[0], nc)
    if len(fields) % 2 == 0 or len(fields) < 5:
        raise ValueError(f"a polygon row is 'cls x1 y1 x2 y2 ...' with x y pairs of at least 2 points, "
                         f"got {len(fields) - 1} coordinates")
    try:
        xy = np.array([float(v) for v in fields[1:]], np.float32).reshape(-1, 2)
    except ValueError:
        raise ValueError("polygon coordinates must be numbers") from None
    if not np.isfinite(xy).all():
        raise ValueError("polygon coordinates must be finite numbers")
    lo, hi = xy.min(0), xy.max(0)
    cx, cy = (lo + hi) / np.float32(2)
    w, h = hi - lo
    if min(lo) < -BOX_TOL or max(hi) > 1 + BOX_TOL:
        raise ValueError("polygon coordinates outside [0, 1] (labels must be normalised x y)")
    return [cls, *_checked_box(float(cx), float(cy), float(w), float(h))]


def _parse_class(field: str, nc: int) -> float:
    """A class id field as a float holding an integer in ``[0, nc)``; raises ValueError naming the problem."""
    try:
        cls = float(field)
    except ValueError:
        raise ValueError(f"class id {field!r} is not an integer") from None
    if not math.isfinite(cls) or cls != int(cls):
        raise ValueError(f"class id {field!r} is not an integer")
    if not 0 <= cls < nc:
        raise ValueError(f"class id {int(cls)} out of range [0, {nc - 1}] (nc={nc})")
    return float(int(cls))


def _checked_box(cx: float, cy: float, w: float, h: float) -> list[float]:
    """``[cx, cy, w, h]`` after checking it is a finite, non-empty box inside [0, 1] (within BOX_TOL)."""
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise ValueError("box fields must be finite numbers")
    if w <= 0 or h <= 0:
        raise ValueError("box width and height must be > 0")
    edges = (cx, cy, w, h, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if min(edges) < -BOX_TOL or max(edges) > 1 + BOX_TOL:
        raise ValueError("box coordinates outside [0, 1] (labels must be normalised cx cy w h)")
    return [cx, cy, w, h]


def repeated_row(labels: np.ndarray) -> Optional[np.ndarray]:
    """A row that occurs more than once in ``labels`` (YOLOv7 skips such an image as corrupt), or None."""
    if len(labels) < 2:
        return None
    rows, counts = np.unique(labels, axis=0, return_counts=True)
    return rows[counts > 1][0] if (counts > 1).any() else None


def _clip_labels(labels: np.ndarray) -> np.ndarray:
    """Clip ``[n, 5]`` (cls, cx, cy, w, h) boxes to [0, 1] (absorbs the tolerance); returns a new array.

    A box past an edge by no more than float32 rounding (:data:`ROUNDING_TOL`) is left as read, as YOLOv7 leaves
    it, so its float32 values stay test.py's bit for bit."""
    xyxy = xywhn_to_xyxy(labels[:, 1:5], 1.0, 1.0)
    outside = ((xyxy < -ROUNDING_TOL) | (xyxy > 1 + ROUNDING_TOL)).any(1)
    clipped = labels.copy()
    clipped[outside, 1:5] = xyxy_to_xywhn(xyxy[outside].clip(0.0, 1.0), 1.0, 1.0)
    return clipped


def probe_image(path: str) -> tuple[int, int]:
    """Return an image's ``(h, w)`` as YOLOv7's ``exif_size`` reports it, checking it is not corrupt; raises on bad
    images. Orientations 6 and 8 (rotated a quarter turn) swap the sides; 5 and 7 (transposed and mirrored) do
    not, though the decoded image is transposed: YOLOv7 plans its rectangular batches (and checks autoanchor) with
    this shape, so the letterbox sizes, and test.py's numbers, follow it."""
    with Image.open(path) as im:
        im.verify()  # must come straight after open
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        fmt = im.format
    if fmt == "JPEG" and not _ends_with_eoi(path):
        with Image.open(path) as im:
            im.load()  # truncated JPEG: decoding fails; trailing bytes after EOI: fine
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        raise ValueError(f"image size {w}x{h} is under {MIN_IMAGE_SIDE} pixels")
    return (w, h) if orientation in YOLOV7_SWAPPED_ORIENTATIONS else (h, w)


def _ends_with_eoi(path: str) -> bool:
    """True if a JPEG file ends with the end-of-image marker (the cheap completeness check YOLOv7 uses)."""
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read() == b"\xff\xd9"


def scan_images(paths: Sequence[str]) -> tuple[list[str], np.ndarray, int]:
    """Probe all images in parallel; returns (readable paths, ``[n, 2]`` (h, w) shapes, number skipped).

    Each unreadable image triggers a ``warnings.warn`` naming it.
    """
    def probe(path: str) -> tuple[int, int] | str:
        try:
            return probe_image(path)
        except Exception as e:  # noqa: BLE001 - every failure means "skip this image"
            return f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(IO_THREADS) as pool:
        results = list(pool.map(probe, paths))
    good, shapes = [], []
    for path, result in zip(paths, results):
        if isinstance(result, str):
            warnings.warn(f"{path}: skipping unreadable or corrupt image ({result})", stacklevel=3)
        else:
            good.append(path)
            shapes.append(result)
    return good, np.array(shapes, dtype=np.int64).reshape(-1, 2), len(paths) - len(good)


def load_labels(image_paths: Sequence[str], nc: int) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """Read every image's label file, boxes and polygons (in parallel, first error in path order wins)."""
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(lambda p: read_label_file(label_path_for(p), nc), image_paths))


def repeated_label_images(paths: Sequence[str], labels: Sequence[np.ndarray]) -> list[int]:
    """Indices of the images whose label file repeats a row, each with a warning: YOLOv7's loader skips them
    (its check is ``np.unique(labels, axis=0)``), so evaluation counts the images test.py counts."""
    repeated = []
    for i, (path, lab) in enumerate(zip(paths, labels)):
        row = repeated_row(lab)
        if row is not None:
            shown = " ".join(f"{v:g}" for v in row)
            warnings.warn(f"{label_path_for(path)}: label row '{shown}' appears more than once; skipping {path}, "
                          f"as YOLOv7's loader skips it (remove the repeated row to keep the image)", stacklevel=3)
            repeated.append(i)
    return repeated


def rect_batches(
    hw: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv7 rectangular training: returns (order sorting images by h/w, ``[nb, 2]`` (h, w) batch shapes).

    Batch ``i`` holds sorted images ``i*batch_size ...``; its shape is ``ceil(shape * img_size / stride + pad) * stride``.
    """
    ar = hw[:, 0] / hw[:, 1]
    order = np.argsort(ar, kind="stable")
    ar = ar[order]
    batch_index = np.arange(len(ar)) // batch_size
    shapes = np.ones((int(batch_index[-1]) + 1, 2))
    for i in range(len(shapes)):
        ari = ar[batch_index == i]
        if ari.max() < 1:
            shapes[i] = [ari.max(), 1]
        elif ari.min() > 1:
            shapes[i] = [1, 1 / ari.min()]
    return order, (np.ceil(shapes * img_size / stride + pad).astype(np.int64) * stride)


def collate_fn(batch: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Shapes, ...]]:
    """Stack a batch: images ``[B, 3, H, W]`` uint8, labels ``[N, 6]`` with column 0 = index in batch."""
    imgs, labels, paths, shapes = zip(*batch)
    labels = [lab.clone() for lab in labels]
    for i, lab in enumerate(labels):
        lab[:, 0] = i
    return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes


class YoloDataset(Dataset):
    """YOLO detection dataset yielding ``(img uint8 [3, H, W] RGB, labels float [n, 6], path, shapes)``.

    ``labels`` rows are ``(0, cls, cx, cy, w, h)`` normalised to the returned image; ``shapes`` is
    ``((h0, w0), ((h / h0, w / w0), (padw, padh)))`` mapping the returned image back to the original
    (``h, w`` = size of the image content inside it), or None for mosaic samples. With ``rect=True``
    images are sorted by aspect ratio and batch ``i`` (of ``batch_size``) is letterboxed to ``batch_shapes[i]``.
    """

    def __init__(
        self, image_paths: Sequence[str], nc: int, img_size: int = 640, batch_size: int = 16,
        augment: bool = False, hyp: Optional[Mapping[str, Any]] = None, rect: bool = False,
        stride: int = 32, pad: float = 0.5, *, seed: int = 0,
    ) -> None:
        if not image_paths:
            raise DataError("no image paths given to the dataset")
        self.nc, self.img_size, self.batch_size, self.stride, self.pad = nc, img_size, batch_size, stride, pad
        self.augment, self.rect, self.seed, self.epoch = augment, rect, seed, 0
        self.hyp = merge_hyp(hyp)
        self.mosaic = augment and not rect
        paths, hw, self.skipped = scan_images([os.fspath(p) for p in image_paths])
        if not paths:
            raise DataError(f"none of the {len(image_paths)} images could be read (first: {image_paths[0]})")
        labels, polygons = zip(*load_labels(paths, nc))
        repeated = set(repeated_label_images(paths, labels))
        if len(repeated) == len(paths):
            raise DataError(f"every one of the {len(paths)} readable images has a label file with a repeated "
                            f"row (first: {label_path_for(paths[0])})")
        self.skipped += len(repeated)
        order = [i for i in range(len(paths)) if i not in repeated]
        self.batch_shapes: Optional[np.ndarray] = None
        if rect:
            by_shape, self.batch_shapes = rect_batches(hw[order], batch_size, img_size, stride, pad)
            order = [order[i] for i in by_shape]
        paths, hw = [paths[i] for i in order], hw[order]
        self.image_paths: list[str] = paths
        self.label_paths: list[str] = [label_path_for(p) for p in paths]
        self.labels: list[np.ndarray] = [labels[i] for i in order]  # per image float32 [n, 5] (cls, cx, cy, w, h)
        #: per image: each label row's normalised polygon ([k, 2]) for a file of polygons, else ()
        self.polygons: list[tuple[np.ndarray, ...]] = [polygons[i] for i in order]
        self.has_polygons = any(self.polygons)  # paste-in needs them (with boxes alone it does nothing in YOLOv7)
        self.hw0: np.ndarray = hw  # [n, 2] original (h, w) as YOLOv7's exif_size gives it (see probe_image)
        self._cache: Optional[list] = None  # per image: load_resized()'s result, once cache_images() ran

    collate_fn = staticmethod(collate_fn)

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws ``__getitem__`` reproduces."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator for one sample: a pure function of (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def cache_images(self) -> int:
        """Decode and resize every image now (threads) and keep the results, as YOLOv7's ``--cache-images``:
        samples are then identical, without a decode per use. Returns the bytes held."""
        if self._cache is None:
            with ThreadPoolExecutor(min(IO_THREADS, os.cpu_count() or 1)) as pool:
                self._cache = list(pool.map(self._decode_resized, range(len(self))))
            for img, _, _ in self._cache:
                img.setflags(write=False)  # shared by every sample that uses it
        return self.cached_bytes

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held by :meth:`cache_images` (0 before)."""
        return sum(img.nbytes for img, _, _ in self._cache or [])

    def load_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Decode image ``index`` and resize its long side to ``img_size``; returns (img, (h0, w0), (h, w)).

        Shrinking without augmentation uses area averaging (cv2.INTER_AREA), otherwise bilinear, as YOLOv7. Served
        from RAM after :meth:`cache_images` (callers never modify the returned image in place).
        """
        if self._cache is not None:
            return self._cache[index]
        return self._decode_resized(index)

    def _decode_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        img = load_image_rgb(self.image_paths[index])
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interpolation = AREA if r < 1 and not self.augment else LINEAR
            img = resize(img, (max(1, int(w0 * r)), max(1, int(h0 * r))), interpolation)
        return img, (h0, w0), img.shape[:2]

    def _mosaic_source(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """Image, normalised labels and their polygons for one mosaic tile."""
        return self.load_resized(index)[0], self.labels[index], self.polygons[index]

    def _mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mosaic of ``index`` and 3 random others, or 8 others (YOLOv7's 9-image mosaic, p=0.2); labels ``[n, 5]``
        (cls, xyxy px)."""
        build, others = (mosaic9, 8) if rng.random() < MOSAIC9_P else (mosaic4, 3)
        indices = [index, *rng.integers(0, len(self), others).tolist()]
        return build(self._mosaic_source, indices, self.img_size, self.hyp, rng)

    def _cutouts(self, rng: np.random.Generator) -> list[Cutout]:
        """Objects cut out of the canvas of a 4-image mosaic of random images (YOLOv7's ``load_samples``)."""
        indices = rng.integers(0, len(self), 4).tolist()
        return cut_out_objects(*mosaic4_canvas(self._mosaic_source, indices, self.img_size, rng), rng)

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, Shapes]:
        """Resized + letterboxed image (rect batch shape or square), labels ``[n, 5]`` (cls, xyxy px), shapes."""
        img, (h0, w0), (h, w) = self.load_resized(index)
        shape = self.batch_shapes[index // self.batch_size] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        sw, sh = ratio[0] * w, ratio[1] * h  # content size inside the letterboxed image
        labels = self.labels[index].astype(np.float64)
        labels = np.concatenate((labels[:, :1], xywhn_to_xyxy(labels[:, 1:], sw, sh, pad[0], pad[1])), 1)
        return img, labels, ((h0, w0), ((sh / h0, sw / w0), pad))

    def __getitem__(self, index: int) -> Sample:
        """Load, (augment,) letterbox and convert sample ``index``; see the class docstring for the format."""
        rng = self.rng(index)
        if self.mosaic and rng.random() < self.hyp["mosaic"]:
            img, labels = self._mosaic(index, rng)
            shapes: Shapes = None
            if rng.random() < self.hyp["mixup"]:
                img, labels = mixup(img, labels, *self._mosaic(int(rng.integers(0, len(self))), rng), rng)
        else:
            img, labels, shapes = self._letterboxed(index)
            if self.augment:
                img, labels = random_perspective(img, labels, self.hyp, rng)
        if self.augment:
            img = augment_hsv(img, self.hyp, rng)
            if self.has_polygons and rng.random() < self.hyp.get("paste_in", 0.0):
                img, labels = paste_in(img, labels, gather_cutouts(lambda: self._cutouts(rng)), rng)
        h, w = img.shape[:2]
        labels = np.concatenate((labels[:, :1], xyxy_to_xywhn(labels[:, 1:5], w, h)), 1)
        if self.augment:
            img, labels = random_flip(img, labels, self.hyp, rng)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels.astype(np.float32))
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, out, self.image_paths[index], shapes
