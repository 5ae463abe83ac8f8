"""Built-in synthetic detection benchmark, so the toolkit can be tried without downloading a dataset.

``generate_synthetic`` writes a YOLO-format dataset plus a COCO ground truth for the val split::

    out_dir/
      images/{train,val}/000000.jpg ...     JPEG quality 90, img_size x img_size RGB
      labels/{train,val}/000000.txt ...     "cls cx cy w h" normalised to [0, 1], 6 decimals
      annotations/instances_val.json        COCO ground truth of the val split
      data.yaml                             YOLOv7 data YAML (absolute paths, nc, names)
      synth.json                            generation parameters; marks the folder as ours

Conventions:

* File stems are the zero-padded image index, so sorted file order == index order. The COCO
  ``image_id`` of ``val/000042.jpg`` is ``42`` (the integer index in sorted file order, which is also
  ``int(stem)`` as YOLOv7's ``test.py`` computes it). ``category_id`` is the 0-based class index.
  Annotation ids start at 1 (pycocotools treats id 0 as "unmatched").
* Boxes are tight to the visible pixels of the drawn shape (after occlusion, clipped to the image);
  COCO ``bbox`` is ``[x, y, w, h]`` in pixels with pixel edges (a box covering pixel columns 3..7
  has ``x=3, w=5``); COCO ``area`` is the box area ``w*h`` (consistent with how pycocotools computes
  the area of bbox detections). Objects less than 40 % visible, or whose box is < 2 px in either
  side, are dropped from the labels (they stay in the image as hard clutter).
* Every image is drawn from ``numpy.random.default_rng([seed, split, index])``, so the same seed
  gives the same bytes (only ``data.yaml`` differs, as it holds the absolute output path) and images
  are independent of each other, which makes parallel generation safe.

Difficulty comes from: log-uniform object sizes (about 6 px up to ~40 % of the image), aspect
ratio, rotation, four fill textures (solid, stripes, checker, noise), overlaps, unlabelled clutter
(irregular blobs, lines, arcs, scribbles and shapes of classes beyond ``n_classes``) and noisy
backgrounds (gradients, low-frequency noise, translucent rectangles, pixel noise).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import yaml
from PIL import Image, ImageDraw

from yolo_prune.errors import DataError
from yolo_prune.fileio import umask_mode

CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon", "crescent",
    "heart", "arrow", "semicircle", "trapezoid", "pentagon", "frame", "chevron", "l_shape",
    "t_shape", "hourglass", "sparkle",
)
MAX_CLASSES = len(CLASS_NAMES)
SPLITS: tuple[str, ...] = ("train", "val")
JPEG_QUALITY = 90
MIN_VISIBLE_FRACTION = 0.4  # an object occluded by more than 60 % is dropped from the labels
MIN_BOX_PX = 2
MIN_OBJECT_PX = 6.0
MAX_OBJECT_FRACTION = 0.42
META_FILE = "synth.json"
FORMAT_VERSION = 1
COCO_SMALL_AREA = 32 ** 2
COCO_LARGE_AREA = 96 ** 2
MAX_IMG_SIZE = 4096

Parts = list[tuple[np.ndarray, bool]]  # polygons in drawing order; False = cut a hole
Window = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in image pixels


@dataclass(frozen=True)
class SynthBox:
    """One labelled object: class index and pixel box (top-left x, y, width, height)."""

    cls: int
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class SynthImage:
    """One generated image and its labels, as needed to write the COCO json and the summary."""

    split: str
    index: int
    file_name: str
    size: int
    boxes: tuple[SynthBox, ...]


@dataclass(frozen=True)
class SynthResult:
    """Where the dataset was written and what it contains (returned for summaries and tests)."""

    root: Path
    data_yaml: Path
    coco_json: Path
    n_train: int
    n_val: int
    img_size: int
    class_names: tuple[str, ...]
    n_objects: Mapping[str, int] = field(default_factory=dict)
    size_buckets: Mapping[str, int] = field(default_factory=dict)
    class_counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def objects_per_image(self) -> float:
        """Mean number of labelled objects per image over both splits (0 for an empty dataset)."""
        n_img = self.n_train + self.n_val
        return sum(self.n_objects.values()) / n_img if n_img else 0.0


# --------------------------------------------------------------------------------------------
# Argument validation and output-folder handling


def validate_args(n_train: int, n_val: int, img_size: int, n_classes: int, seed: int,
                  workers: int = 1) -> None:
    """Reject bad generator arguments early, naming the CLI flag, so users get a clear message."""
    checks = (
        ("--train", n_train, n_train >= 0 if _is_int(n_train) else False, "an integer >= 0"),
        ("--val", n_val, n_val >= 0 if _is_int(n_val) else False, "an integer >= 0"),
        (
            "--img",
            img_size,
            _is_int(img_size) and 32 <= img_size <= MAX_IMG_SIZE and img_size % 32 == 0,
            f"a multiple of 32 between 32 and {MAX_IMG_SIZE}",
        ),
        (
            "--classes",
            n_classes,
            _is_int(n_classes) and 1 <= n_classes <= MAX_CLASSES,
            f"an integer between 1 and {MAX_CLASSES}",
        ),
        ("--seed", seed, seed >= 0 if _is_int(seed) else False, "an integer >= 0"),
        ("--workers", workers, workers >= 1 if _is_int(workers) else False, "an integer >= 1"),
    )
    for flag, value, ok, expected in checks:
        if not ok:
            raise DataError(f"{flag} must be {expected} (got {value!r})")


def _is_int(value: object) -> bool:
    """True for real integers (bools excluded, they are almost always a caller mistake)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_out_dir(out: Path, exist_ok: bool) -> None:
    """Refuse an output folder we must not replace; never delete a folder we did not create."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not exist_ok:
        raise DataError(f"--out {out} exists and is not empty; pass --exist-ok to replace it")
    if not (out / META_FILE).is_file():
        raise DataError(
            f"--out {out} is not empty and was not written by `yolo-prune synth` (no {META_FILE}); "
            "refusing to delete it even with --exist-ok"
        )


def _install(tmp: Path, out: Path, exist_ok: bool) -> None:
    """Move the finished temp folder onto ``out`` with renames, so readers never see half a dataset."""
    check_out_dir(out, exist_ok)
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # also replaces an existing empty directory


# --------------------------------------------------------------------------------------------
# Shapes, in unit coordinates (about [-1, 1]); y points down as in images


def _ellipse(rx: float = 1.0, ry: float = 1.0, n: int = 48, dx: float = 0.0, dy: float = 0.0,
             a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    """Points on an ellipse arc, used for round shapes."""
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-9)
    return np.stack([dx + rx * np.cos(t), dy + ry * np.sin(t)], axis=1)


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    """Vertices of a regular n-gon with one vertex pointing up."""
    return _ellipse(radius, radius, n + 1, a0=phase, a1=phase + 2 * math.pi)[:n]


def _star(points: int, inner: float) -> np.ndarray:
    """Vertices of a star alternating between radius 1 and ``inner``."""
    t = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    """The classic parametric heart curve, scaled to about [-1, 1]."""
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x / 16.0, (y + 2.5) / 15.0], axis=1)


def _poly(*xy: float) -> np.ndarray:
    """A polygon from a flat list of coordinates."""
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _sq(half: float) -> np.ndarray:
    """An axis-aligned square centred at the origin."""
    return _poly(-half, -half, half, -half, half, half, -half, half)


@lru_cache(maxsize=None)
def unit_shape(name: str) -> tuple[tuple[np.ndarray, bool], ...]:
    """Polygons (and holes) of a class shape in unit coordinates; cached because they are constant."""
    table: dict[str, Parts] = {
        "circle": [(_ellipse(), True)],
        "square": [(_sq(1.0), True)],
        "triangle": [(_regular(3) * 1.1 + (0, 0.25), True)],
        "star": [(_star(5, 0.42), True)],
        "ring": [(_ellipse(), True), (_ellipse(0.55, 0.55), False)],
        "cross": [(_poly(-.3, -1, .3, -1, .3, -.3, 1, -.3, 1, .3, .3, .3, .3, 1, -.3, 1, -.3, .3,
                         -1, .3, -1, -.3, -.3, -.3), True)],
        "diamond": [(_poly(0, -1, 0.58, 0, 0, 1, -0.58, 0), True)],
        "hexagon": [(_regular(6, phase=0.0), True)],
        "crescent": [(_ellipse(), True), (_ellipse(0.85, 0.85, dx=0.5, dy=-0.15), False)],
        "heart": [(_heart(), True)],
        "arrow": [(_poly(-1, -.22, .2, -.22, .2, -.6, 1, 0, .2, .6, .2, .22, -1, .22), True)],
        "semicircle": [(_ellipse(1, 1, 33, dy=0.5, a0=math.pi, a1=2 * math.pi), True)],
        "trapezoid": [(_poly(-1, .6, 1, .6, .45, -.6, -.45, -.6), True)],
        "pentagon": [(_regular(5), True)],
        "frame": [(_sq(1.0), True), (_sq(0.62), False)],
        "chevron": [(_poly(-1, -.6, -.55, -.6, 0, .15, .55, -.6, 1, -.6, 0, .8), True)],
        "l_shape": [(_poly(-.7, -1, -.2, -1, -.2, .5, .7, .5, .7, 1, -.7, 1), True)],
        "t_shape": [(_poly(-1, -1, 1, -1, 1, -.5, .25, -.5, .25, 1, -.25, 1, -.25, -.5, -1, -.5),
                     True)],
        "hourglass": [(_poly(-.8, -1, .8, -1, .12, 0, .8, 1, -.8, 1, -.12, 0), True)],
        "sparkle": [(_star(4, 0.3), True)],
    }
    if name not in table:
        raise KeyError(name)
    return tuple((pts, fill) for pts, fill in table[name])


def class_names(n_classes: int) -> tuple[str, ...]:
    """The first ``n_classes`` names; their order is fixed so class ids are stable across K."""
    return CLASS_NAMES[:n_classes]


# --------------------------------------------------------------------------------------------
# Rasterising and painting


def _place(parts: Sequence[tuple[np.ndarray, bool]], cx: float, cy: float, sx: float, sy: float,
           theta: float) -> Parts:
    """Scale unit polygons by (sx, sy), rotate by theta and move them to (cx, cy)."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    return [((pts * (sx, sy)) @ rot + (cx, cy), fill) for pts, fill in parts]


def _rasterize(draw: Callable[[ImageDraw.ImageDraw], None], size: int
               ) -> tuple[np.ndarray, Window] | None:
    """Run a PIL drawing callback on a blank mask; return the in-image mask cropped to its bbox."""
    img = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(img))
    bbox = img.getbbox()
    if bbox is None:
        return None
    return np.asarray(img.crop(bbox)) > 0, bbox


def _draw_parts(parts: Parts) -> Callable[[ImageDraw.ImageDraw], None]:
    """A drawing callback filling polygons (and cutting holes) in order."""

    def draw(d: ImageDraw.ImageDraw) -> None:
        """Fill each polygon (or cut it out) on the mask."""
        for pts, fill in parts:
            d.polygon(pts.ravel().tolist(), fill=255 if fill else 0)

    return draw


def _colour(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    """A random RGB colour that differs clearly from ``avoid`` so labelled objects stay visible."""
    for _ in range(8):
        c = rng.integers(0, 256, 3).astype(np.float32)
        if float(np.linalg.norm(c - avoid)) >= min_dist:
            return c
    return np.where(avoid > 127, 0.0, 255.0).astype(np.float32)


def _texture(rng: np.random.Generator, shape: tuple[int, int], bg: np.ndarray) -> np.ndarray:
    """An (h, w, 3) fill: solid, stripes, checker or noise, contrasting with the background colour."""
    h, w = shape
    c1 = _colour(rng, bg)
    kind = rng.choice(4, p=(0.4, 0.2, 0.2, 0.2))
    if kind == 0:
        return np.broadcast_to(c1, (h, w, 3))
    if kind == 3:
        sigma = rng.uniform(15, 45)
        return c1 + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
    c2 = _colour(rng, (bg + c1) / 2, min_dist=60.0)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(2.0, max(3.0, max(h, w) / 3))
    u = (xx * math.cos(theta) + yy * math.sin(theta)) / period
    if kind == 1:
        sel = np.floor(u) % 2 == 0
    else:
        v = (yy * math.cos(theta) - xx * math.sin(theta)) / period
        sel = (np.floor(u) + np.floor(v)) % 2 == 0
    return np.where(sel[..., None], c1, c2)


def _paint(canvas: np.ndarray, owner: np.ndarray, raster: tuple[np.ndarray, Window],
           rng: np.random.Generator, owner_id: int) -> None:
    """Fill a mask with a fresh texture and record which item owns each pixel (for occlusion)."""
    mask, (x0, y0, x1, y1) = raster
    region = canvas[y0:y1, x0:x1]
    bg = region[mask].mean(axis=0)
    tex = _texture(rng, mask.shape, bg)
    region[mask] = tex[mask]
    owner[y0:y1, x0:x1][mask] = owner_id


# --------------------------------------------------------------------------------------------
# Backgrounds and clutter


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float RGB background: gradient + low-frequency noise + translucent rectangles."""
    ca, cb = rng.integers(0, 256, (2, 3)).astype(np.float32)
    ramp = np.arange(size, dtype=np.float32) / size
    theta = rng.uniform(0, 2 * math.pi)
    t = ramp[None, :] * math.cos(theta) + ramp[:, None] * math.sin(theta)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    canvas = ca + (cb - ca) * t[..., None]
    canvas += _low_freq_noise(rng, size) * rng.uniform(5, 35)
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2 + 1, 2)
        alpha = rng.uniform(0.15, 0.5)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        patch = canvas[y0:y0 + h, x0:x0 + w]
        patch += alpha * (colour - patch)
    return canvas


def _low_freq_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth (size, size, 3) noise of unit scale, made by bicubic upsampling of a coarse grid."""
    k = int(rng.integers(3, 9))
    grid = rng.normal(0.0, 1.0, (3, k, k)).astype(np.float32)
    chans = [np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC))
             for g in grid]
    return np.stack(chans, axis=-1)


def _distractor(rng: np.random.Generator, size: int, n_classes: int
                ) -> Callable[[ImageDraw.ImageDraw], None]:
    """A drawing callback for unlabelled clutter: blob, line, arc, scribble or an unused class shape."""
    kinds = 5 if n_classes < MAX_CLASSES else 4
    kind = int(rng.integers(0, kinds))
    cx, cy = rng.uniform(0, size, 2)
    s = _sample_size(rng, size)
    width = int(rng.integers(1, 5))
    if kind == 0:  # irregular blob
        n = int(rng.integers(7, 14))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = rng.uniform(0.5, 1.0, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        return _draw_parts(_place([(pts, True)], cx, cy, s / 2, s / 2, 0.0))
    if kind == 1:  # straight line
        x1, y1 = rng.uniform(0, size, 2)
        return lambda d: d.line([(cx, cy), (x1, y1)], fill=255, width=width)
    if kind == 2:  # open arc
        start = float(rng.uniform(0, 360))
        end = start + float(rng.uniform(60, 270))
        box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
        return lambda d: d.arc(box, start, end, fill=255, width=width)
    if kind == 3:  # scribble (random-walk polyline)
        steps = rng.normal(0.0, size / 10, (int(rng.integers(3, 9)), 2))
        pts = [tuple(p) for p in np.cumsum(steps, axis=0) + (cx, cy)]
        return lambda d: d.line(pts, fill=255, width=width, joint="curve")
    name = CLASS_NAMES[int(rng.integers(n_classes, MAX_CLASSES))]  # a shape that is no class here
    return _draw_parts(_place(unit_shape(name), cx, cy, s / 2, s / 2, rng.uniform(0, 2 * math.pi)))


# --------------------------------------------------------------------------------------------
# One image


def _sample_size(rng: np.random.Generator, size: int) -> float:
    """Object extent in pixels: log-uniform from ~6 px, plus a share of large (22-42 % of image)."""
    big = MAX_OBJECT_FRACTION * size
    split = max(MIN_OBJECT_PX + 1.0, 0.22 * size)
    if rng.random() < 0.2:
        return float(rng.uniform(split, max(big, split + 1.0)))
    return float(math.exp(rng.uniform(math.log(MIN_OBJECT_PX), math.log(split))))


def _object(rng: np.random.Generator, size: int, n_classes: int
            ) -> tuple[int, float, Callable[[ImageDraw.ImageDraw], None]]:
    """A labelled object: class, draw-order key (big objects tend to go first) and drawing callback."""
    cls = int(rng.integers(0, n_classes))
    s = _sample_size(rng, size)
    aspect = math.exp(rng.uniform(0.0, math.log(1.8)))
    cx, cy = rng.uniform(0, size, 2)
    theta = rng.uniform(0, 2 * math.pi)
    parts = _place(unit_shape(CLASS_NAMES[cls]), cx, cy, s / 2, s / (2 * aspect), theta)
    key = math.log(s) + rng.normal(0.0, 0.7)
    return cls, key, _draw_parts(parts)


def _visible_boxes(owner: np.ndarray, drawn: Mapping[int, tuple[int, int, Window]]
                   ) -> tuple[SynthBox, ...]:
    """Tight boxes of what is still visible of each object; drop mostly hidden or tiny ones."""
    boxes = []
    for oid, (cls, area, (x0, y0, x1, y1)) in drawn.items():
        vis = owner[y0:y1, x0:x1] == oid
        if vis.sum() < MIN_VISIBLE_FRACTION * area:
            continue
        rows, cols = np.flatnonzero(vis.any(axis=1)), np.flatnonzero(vis.any(axis=0))
        bx, by = x0 + int(cols[0]), y0 + int(rows[0])
        bw, bh = int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1
        if bw >= MIN_BOX_PX and bh >= MIN_BOX_PX:
            boxes.append(SynthBox(cls, bx, by, bw, bh))
    return tuple(boxes)


def render_image(seed: int, split: str, index: int, size: int, n_classes: int
                 ) -> tuple[np.ndarray, tuple[SynthBox, ...]]:
    """Draw one image (uint8 HxWx3) and its boxes; depends only on its arguments."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    canvas = _background(rng, size)
    objects = [_object(rng, size, n_classes) for _ in range(int(rng.integers(1, 13)))]
    clutter = [(None, float(rng.normal(1.5, 1.5)), _distractor(rng, size, n_classes))
               for _ in range(int(rng.integers(0, 7)))]
    items = sorted(objects + clutter, key=lambda item: -item[1])  # stable: ties keep plan order
    owner = np.zeros((size, size), dtype=np.int16)
    drawn: dict[int, tuple[int, int, Window]] = {}
    for item_id, (cls, _, draw) in enumerate(items, start=1):
        raster = _rasterize(draw, size)
        if raster is None:
            continue
        _paint(canvas, owner, raster, rng, item_id if cls is not None else -1)
        if cls is not None:
            drawn[item_id] = (cls, int(raster[0].sum()), raster[1])
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0.0, 10.0)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, _visible_boxes(owner, drawn)


# --------------------------------------------------------------------------------------------
# Writing


def yolo_label_text(boxes: Sequence[SynthBox], size: int) -> str:
    """YOLO label file content: one "cls cx cy w h" line per box, normalised, 6 decimals."""
    lines = [
        f"{b.cls} {(b.x + b.w / 2) / size:.6f} {(b.y + b.h / 2) / size:.6f} "
        f"{b.w / size:.6f} {b.h / size:.6f}"
        for b in boxes
    ]
    return "".join(line + "\n" for line in lines)


def _write_image(root: Path, seed: int, size: int, n_classes: int, job: tuple[str, int]
                 ) -> SynthImage:
    """Render one image and write its JPEG and label file; returns its record (worker entry point)."""
    split, index = job
    image, boxes = render_image(seed, split, index, size, n_classes)
    stem = f"{index:06d}"
    Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", "JPEG",
                                quality=JPEG_QUALITY)
    (root / "labels" / split / f"{stem}.txt").write_text(yolo_label_text(boxes, size))
    return SynthImage(split, index, f"{stem}.jpg", size, boxes)


def _generate_all(root: Path, jobs: list[tuple[str, int]], seed: int, size: int, n_classes: int,
                  workers: int, progress: Callable[[int], None] | None) -> Iterator[SynthImage]:
    """Render every job in order, in this process or a process pool; report progress per image."""
    work = partial(_write_image, root, seed, size, n_classes)
    if workers <= 1 or len(jobs) < 2 * workers or "fork" not in get_all_start_methods():
        results: Iterator[SynthImage] = map(work, jobs)
        for rec in results:
            yield _tick(rec, progress)
        return
    # fork: children only run numpy/PIL; spawn would force a __main__ guard on library callers
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        for rec in pool.map(work, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
            yield _tick(rec, progress)


def _tick(rec: SynthImage, progress: Callable[[int], None] | None) -> SynthImage:
    """Call the progress callback for one finished image and pass the record through."""
    if progress is not None:
        progress(1)
    return rec


def coco_ground_truth(records: Sequence[SynthImage], names: Sequence[str]) -> dict:
    """COCO instances dict for one split; image_id = index in sorted file order, ann ids from 1."""
    images, anns = [], []
    for rec in sorted(records, key=lambda r: r.file_name):
        images.append({"id": rec.index, "file_name": rec.file_name,
                       "width": rec.size, "height": rec.size})
        for b in rec.boxes:
            anns.append({"id": len(anns) + 1, "image_id": rec.index, "category_id": b.cls,
                         "bbox": [b.x, b.y, b.w, b.h], "area": b.w * b.h, "iscrowd": 0})
    cats = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(names)]
    info = {"description": "yolo-prune synthetic detection benchmark", "version": str(FORMAT_VERSION)}
    return {"info": info, "images": images, "annotations": anns, "categories": cats}


def _write_metadata(tmp: Path, final: Path, params: Mapping[str, int],
                    names: Sequence[str], val_records: Sequence[SynthImage]) -> None:
    """Write data.yaml (paths of the final location), the val COCO json and synth.json."""
    data = {
        "path": str(final),
        "train": str(final / "images" / "train"),
        "val": str(final / "images" / "val"),
        "nc": len(names),
        "names": list(names),
        "val_coco_json": str(final / "annotations" / "instances_val.json"),
    }
    (tmp / "data.yaml").write_text(
        "# yolo-prune synthetic benchmark (written by `yolo-prune synth`)\n"
        + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    )
    coco = coco_ground_truth(val_records, names)
    (tmp / "annotations" / "instances_val.json").write_text(json.dumps(coco, separators=(",", ":")))
    meta = {"generator": "yolo_prune.data.synth", "format_version": FORMAT_VERSION, **params,
            "names": list(names)}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _summarise(root: Path, records: Sequence[SynthImage], names: Sequence[str],
               params: Mapping[str, int]) -> SynthResult:
    """Count objects per split, per class and per COCO size bucket for the summary."""
    n_objects = {s: sum(len(r.boxes) for r in records if r.split == s) for s in SPLITS}
    buckets = {"small": 0, "medium": 0, "large": 0}
    per_class = {n: 0 for n in names}
    for b in (b for r in records for b in r.boxes):
        area = b.w * b.h
        key = "small" if area < COCO_SMALL_AREA else "medium" if area < COCO_LARGE_AREA else "large"
        buckets[key] += 1
        per_class[names[b.cls]] += 1
    return SynthResult(
        root=root, data_yaml=root / "data.yaml",
        coco_json=root / "annotations" / "instances_val.json",
        n_train=params["n_train"], n_val=params["n_val"], img_size=params["img_size"],
        class_names=tuple(names), n_objects=n_objects, size_buckets=buckets,
        class_counts=per_class,
    )


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    n_train: int = 512,
    n_val: int = 128,
    img_size: int = 320,
    n_classes: int = 6,
    seed: int = 0,
    exist_ok: bool = False,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write the synthetic benchmark to ``out_dir`` atomically (temp sibling folder, then rename).

    ``exist_ok=True`` replaces a non-empty ``out_dir`` only if an earlier run of this generator
    wrote it (it has ``synth.json``); any other folder is never deleted. ``progress`` is called
    with 1 after each image (e.g. ``tqdm.update``). ``workers > 1`` renders in a process pool; the
    output bytes do not depend on it.
    """
    validate_args(n_train, n_val, img_size, n_classes, seed, workers)
    out = Path(out_dir).expanduser().resolve()
    check_out_dir(out, exist_ok)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = class_names(n_classes)
    params = {"seed": int(seed), "n_train": int(n_train), "n_val": int(n_val),
              "img_size": int(img_size), "n_classes": int(n_classes)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, umask_mode(directory=True))  # mkdtemp makes it owner-only; the dataset is an ordinary folder
    try:
        for sub in ("images", "labels"):
            for split in SPLITS:
                (tmp / sub / split).mkdir(parents=True)
        (tmp / "annotations").mkdir()
        jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
        records = list(_generate_all(tmp, jobs, int(seed), int(img_size), int(n_classes),
                                     int(workers), progress))
        _write_metadata(tmp, out, params, names, [r for r in records if r.split == "val"])
        _install(tmp, out, exist_ok)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _summarise(out, records, names, params)
