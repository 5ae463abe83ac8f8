"""YOLOv7 training augmentation: 4- and 9-image mosaics, mixup, random affine/perspective, HSV jitter and flips.

All randomness comes from a ``numpy.random.Generator`` argument (no global RNG), so a sample is a
pure function of its seed. Images are HWC RGB uint8; labels are float ``[n, 5]`` rows
``(cls, x1, y1, x2, y2)`` in pixels until :func:`random_flip`, which takes normalised ``(cls, cx, cy, w, h)``.
Label rows read from polygons keep them (one ``[k, 2]`` array per row, ``[0, 2]`` for a box row) through the
mosaics and the warp, which then boxes the warped polygon as YOLOv7 does (tighter than a warped box).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from .letterbox import xywhn_to_xyxy
from .paste_in import copy_paste

FILL = 114  # grey used by YOLOv7 for padding and warp borders

# hyp.scratch.p5.yaml values; user hyps override key by key (other keys such as lr0 are ignored here).
DEFAULT_HYP: Mapping[str, float] = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.2, "scale": 0.9,
    "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.15,
}

#: Per label row: its polygon, ``[k, 2]`` points, or ``[0, 2]`` for a row read as a box.
Polygons = Sequence[np.ndarray]
#: ``load(i)`` of a mosaic: (HWC uint8 image resized so its long side is ``img_size``, ``[n, 5]`` (cls, cx, cy, w,
#: h) normalised labels, their normalised polygons (aligned with the rows, or empty when the file held boxes)).
LoadFn = Callable[[int], "tuple[np.ndarray, np.ndarray, Polygons]"]
NO_POLYGON = np.zeros((0, 2))
MOSAIC9_P = 0.2  # YOLOv7 builds a 9-image mosaic instead of a 4-image one with this probability
RESAMPLED_POINTS = 1000  # YOLOv7 resamples each polygon to this many points before warping it


def merge_hyp(hyp: Optional[Mapping[str, Any]]) -> dict[str, float]:
    """Return the augmentation hyps: defaults overridden by ``hyp`` (extra keys kept, values as float)."""
    merged: dict[str, Any] = dict(DEFAULT_HYP)
    merged.update(hyp or {})
    for key in DEFAULT_HYP:
        merged[key] = float(merged[key])
    return merged


def affine_matrix(
    hw: tuple[int, int], hyp: Mapping[str, float], rng: np.random.Generator, border: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, float]:
    """Draw YOLOv7's random 3x3 warp (centre, perspective, rotate+scale, shear, translate); returns (M, scale)."""
    h, w = hw
    height, width = h + 2 * border[0], w + 2 * border[1]
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -w / 2, -h / 2
    persp = np.eye(3)
    persp[2, 0] = rng.uniform(-hyp["perspective"], hyp["perspective"])
    persp[2, 1] = rng.uniform(-hyp["perspective"], hyp["perspective"])
    angle = math.radians(rng.uniform(-hyp["degrees"], hyp["degrees"]))
    s = rng.uniform(1 - hyp["scale"], 1.1 + hyp["scale"])  # 1.1 + scale, as in YOLOv7
    rot = np.eye(3)  # cv2.getRotationMatrix2D(center=(0, 0), angle, s)
    rot[:2, :2] = [[s * math.cos(angle), s * math.sin(angle)], [-s * math.sin(angle), s * math.cos(angle)]]
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(rng.uniform(-hyp["shear"], hyp["shear"])))
    shear[1, 0] = math.tan(math.radians(rng.uniform(-hyp["shear"], hyp["shear"])))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - hyp["translate"], 0.5 + hyp["translate"]) * width
    move[1, 2] = rng.uniform(0.5 - hyp["translate"], 0.5 + hyp["translate"]) * height
    return move @ shear @ rot @ persp @ centre, s


def warp_image(img: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp an HWC uint8 image by 3x3 ``matrix`` (cv2 pixel-centre convention) into ``out_hw``, grey borders.

    Uses Pillow's C transform (bilinear), which samples at ``x + 0.5``; the matrix is conjugated with
    half-pixel shifts so results match cv2.warpAffine/warpPerspective geometry.
    """
    half, minus_half = np.eye(3), np.eye(3)
    half[:2, 2], minus_half[:2, 2] = 0.5, -0.5
    inv = half @ np.linalg.inv(matrix) @ minus_half
    if np.allclose(inv[2], [0, 0, 1]):
        method, data = Image.Transform.AFFINE, inv[:2].ravel()
    else:
        method, data = Image.Transform.PERSPECTIVE, (inv / inv[2, 2]).ravel()[:8]
    src = Image.fromarray(np.ascontiguousarray(img))
    fill = (FILL,) * img.shape[2] if img.ndim == 3 else FILL
    out = src.transform((out_hw[1], out_hw[0]), method, tuple(data), Image.Resampling.BILINEAR, fillcolor=fill)
    return np.array(out)


def transform_boxes(boxes_xyxy: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp pixel ``[n, 4]`` xyxy boxes by ``matrix`` and return their clipped axis-aligned xyxy hulls."""
    n = len(boxes_xyxy)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes_xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = xy @ matrix.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_hw[1])
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_hw[0])
    return new


def resample_polygon(points: np.ndarray, n: int = RESAMPLED_POINTS) -> np.ndarray:
    """``[k, 2]`` polygon -> ``[n, 2]`` points evenly spaced in index along its closed outline (YOLOv7's
    ``resample_segments``), so a warp that crops it keeps points along the cut edges."""
    closed = np.concatenate((points, points[:1]), 0)
    at, index = np.linspace(0, len(closed) - 1, n), np.arange(len(closed))
    return np.stack([np.interp(at, index, closed[:, i]) for i in range(2)], 1)


def polygon_box(points: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """xyxy box of a polygon's resampled points warped by ``matrix``, over the points inside the output image
    (YOLOv7's ``segment2box``; zeros when none is, so the candidate filter drops it)."""
    xy = np.ones((RESAMPLED_POINTS, 3))
    xy[:, :2] = resample_polygon(points)
    xy = xy @ matrix.T
    x, y = (xy[:, :2] / xy[:, 2:3]).T
    inside = (x >= 0) & (y >= 0) & (x <= out_hw[1]) & (y <= out_hw[0])
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if np.any(x) else np.zeros(4)


def box_candidates(
    box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20, area_thr: float = 0.1, eps: float = 1e-16
) -> np.ndarray:
    """YOLOv7 filter: keep warped boxes ``box2`` ([4, n] xyxy) > 2 px, aspect < 20 and > 10% of ``box1``'s area."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(
    img: np.ndarray, labels: np.ndarray, hyp: Mapping[str, float], rng: np.random.Generator,
    border: tuple[int, int] = (0, 0), polygons: Optional[Polygons] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random affine/perspective warp of an image and its ``[n, 5]`` (cls, xyxy px) labels; ``border`` crops (<0).

    Rows with a polygon (pixels) get the box of the warped polygon, and with any polygon present a box survives
    down to 1 % of its warped area, not 10 % (YOLOv7's thresholds)."""
    matrix, scale = affine_matrix(img.shape[:2], hyp, rng, border)
    out_hw = (img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1])
    if border != (0, 0) or not np.array_equal(matrix, np.eye(3)):
        img = warp_image(img, matrix, out_hw)
    if len(labels):
        new = transform_boxes(labels[:, 1:5], matrix, out_hw)
        with_polygons = polygons is not None and any(p.any() for p in polygons)
        if with_polygons:
            for i, points in enumerate(polygons):
                if len(points):
                    new[i] = polygon_box(points, matrix, out_hw)
        keep = box_candidates(labels[:, 1:5].T * scale, new.T, area_thr=0.01 if with_polygons else 0.1)
        labels = np.concatenate((labels[keep, :1], new[keep]), 1)
    return img, labels


def augment_hsv(img: np.ndarray, hyp: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Random hue/saturation/value gains via lookup tables on Pillow's HSV (hue 0..255, cv2 uses 0..179)."""
    gains = np.array([hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"]])
    r = rng.uniform(-1, 1, 3) * gains + 1
    if not gains.any():
        return img
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(img)).convert("HSV"))
    x = np.arange(256)
    luts = (((x * r[0]) % 256), np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255))
    out = np.stack([lut.astype(np.uint8)[hsv[..., i]] for i, lut in enumerate(luts)], -1)
    return np.array(Image.frombytes("HSV", (img.shape[1], img.shape[0]), out.tobytes()).convert("RGB"))


def random_flip(
    img: np.ndarray, labels_xywhn: np.ndarray, hyp: Mapping[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down with p=flipud, then left-right with p=fliplr; labels are ``[n, 5]`` (cls, cx, cy, w, h) norm."""
    labels = labels_xywhn.copy()
    if rng.random() < hyp["flipud"]:
        img, labels[:, 2] = img[::-1], 1 - labels[:, 2]
    if rng.random() < hyp["fliplr"]:
        img, labels[:, 1] = img[:, ::-1], 1 - labels[:, 1]
    return np.ascontiguousarray(img), labels


def mosaic_tile(i: int, xc: int, yc: int, w: int, h: int, s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Canvas (a) and source (b) x1, y1, x2, y2 of tile ``i`` (0 TL, 1 TR, 2 BL, 3 BR) around centre (xc, yc)."""
    if i == 0:
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        return a, (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    if i == 1:
        a = (xc, max(yc - h, 0), min(xc + w, 2 * s), yc)
        return a, (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
    if i == 2:
        a = (max(xc - w, 0), yc, xc, min(2 * s, yc + h))
        return a, (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
    a = (xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h))
    return a, (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))


def _place_labels(
    labels: np.ndarray, polygons: Polygons, w: int, h: int, padw: float, padh: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised labels (and polygons) of a ``w x h`` tile placed at ``(padw, padh)``: pixel xyxy rows and pixel
    polygons, one per row (``NO_POLYGON`` for each row when the tile's file held boxes)."""
    rows = np.concatenate((labels[:, :1], xywhn_to_xyxy(labels[:, 1:5], w, h, padw, padh)), 1)
    if not len(polygons):
        return rows, [NO_POLYGON] * len(rows)
    return rows, [p * (w, h) + (padw, padh) for p in polygons]


def mosaic4(
    load: LoadFn, indices: Sequence[int], img_size: int, hyp: Mapping[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 images on a 2s x 2s grey canvas around a random centre, then random-warp it to s x s.

    ``load`` as :data:`LoadFn`. Returns (``[s, s, 3]`` image, ``[n, 5]`` (cls, x1, y1, x2, y2) px labels).
    """
    canvas, labels, polygons = mosaic4_canvas(load, indices, img_size, rng)
    return _warp_mosaic(canvas, labels, polygons, img_size, hyp, rng)


def mosaic4_canvas(
    load: LoadFn, indices: Sequence[int], img_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The 2s x 2s canvas of a 4-image mosaic before its warp: image, ``[n, 5]`` (cls, xyxy px) labels and their
    pixel polygons, both clipped to the canvas (YOLOv7's ``load_mosaic`` up to ``random_perspective``)."""
    s, b = img_size, -img_size // 2  # b: YOLOv7's mosaic_border
    yc, xc = (int(rng.uniform(-b, 2 * s + b)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, 3), FILL, dtype=np.uint8)
    parts, polygons = [], []
    for i, index in enumerate(indices[:4]):
        img, labels, tile_polygons = load(index)
        h, w = img.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_tile(i, xc, yc, w, h, s)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        rows, placed = _place_labels(labels, tile_polygons, w, h, x1a - x1b, y1a - y1b)
        parts.append(rows)
        polygons += placed
    labels4 = np.concatenate(parts, 0)
    labels4[:, 1:] = labels4[:, 1:].clip(0, 2 * s)
    return canvas, labels4, [p.clip(0, 2 * s) for p in polygons]


def mosaic9(
    load: LoadFn, indices: Sequence[int], img_size: int, hyp: Mapping[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv7's 9-image mosaic: the first image in the centre of a 3s x 3s canvas, 8 others around it clockwise
    from the top, a random 2s x 2s crop, then the random warp to s x s. Same ``load`` and returns as mosaic4."""
    s = img_size
    canvas = np.full((3 * s, 3 * s, 3), FILL, dtype=np.uint8)
    parts, polygons = [], []
    h0 = w0 = hp = wp = 0
    for i, index in enumerate(indices[:9]):
        img, labels, tile_polygons = load(index)
        h, w = img.shape[:2]
        if i == 0:
            h0, w0 = h, w
        x1, y1 = (s, s, s + wp, s + w0, s + w0, s + w0 - w, s + w0 - wp - w, s - w, s - w)[i], \
            (s, s - h, s - h, s, s + hp, s + h0, s + h0, s + h0 - h, s + h0 - hp - h)[i]
        cx1, cy1 = max(x1, 0), max(y1, 0)
        canvas[cy1:y1 + h, cx1:x1 + w] = img[cy1 - y1:, cx1 - x1:]
        rows, placed = _place_labels(labels, tile_polygons, w, h, x1, y1)
        parts.append(rows)
        polygons += placed
        hp, wp = h, w
    yc, xc = (int(rng.uniform(0, s)) for _ in range(2))
    labels9 = np.concatenate(parts, 0)
    labels9[:, 1:] = (labels9[:, 1:] - (xc, yc, xc, yc)).clip(0, 2 * s)
    polygons = [(p - (xc, yc)).clip(0, 2 * s) for p in polygons]
    return _warp_mosaic(canvas[yc:yc + 2 * s, xc:xc + 2 * s], labels9, polygons, s, hyp, rng)


def _warp_mosaic(
    canvas: np.ndarray, labels: np.ndarray, polygons: list[np.ndarray], s: int, hyp: Mapping[str, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2s x 2s mosaic's copy-paste (hyp ``copy_paste``, with polygons) and random warp to s x s."""
    if hyp.get("copy_paste", 0.0):
        canvas, labels, polygons = copy_paste(canvas, labels, polygons, hyp["copy_paste"], rng)
    return random_perspective(canvas, labels, hyp, rng, border=(-s // 2, -s // 2), polygons=polygons)


def mixup(
    img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(8, 8) weight and keep both label sets (YOLOv7 mixup)."""
    r = rng.beta(8.0, 8.0)
    img = (img1 * r + img2 * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels1, labels2), 0)
