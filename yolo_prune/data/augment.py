"""YOLOv7 training augmentation: mosaic, mixup, random affine/perspective, HSV jitter and flips.

All randomness comes from a ``numpy.random.Generator`` argument (no global RNG), so a sample is a
pure function of its seed. Images are HWC RGB uint8; labels are float ``[n, 5]`` rows
``(cls, x1, y1, x2, y2)`` in pixels until :func:`random_flip`, which takes normalised ``(cls, cx, cy, w, h)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from .letterbox import xywhn_to_xyxy

FILL = 114  # grey used by YOLOv7 for padding and warp borders

# hyp.scratch.p5.yaml values; user hyps override key by key (other keys such as lr0 are ignored here).
DEFAULT_HYP: Mapping[str, float] = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.2, "scale": 0.9,
    "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.15,
}

LoadFn = Callable[[int], "tuple[np.ndarray, np.ndarray]"]


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
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random affine/perspective warp of an image and its ``[n, 5]`` (cls, xyxy px) labels; ``border`` crops (<0)."""
    matrix, scale = affine_matrix(img.shape[:2], hyp, rng, border)
    out_hw = (img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1])
    if border != (0, 0) or not np.array_equal(matrix, np.eye(3)):
        img = warp_image(img, matrix, out_hw)
    if len(labels):
        new = transform_boxes(labels[:, 1:5], matrix, out_hw)
        keep = box_candidates(labels[:, 1:5].T * scale, new.T)
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


def mosaic4(
    load: LoadFn, indices: Sequence[int], img_size: int, hyp: Mapping[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 images on a 2s x 2s grey canvas around a random centre, then random-warp it to s x s.

    ``load(i)`` returns (HWC uint8 image resized so its long side is ``img_size``, ``[n, 5]`` (cls, cx, cy, w, h)
    normalised labels). Returns (``[s, s, 3]`` image, ``[n, 5]`` (cls, x1, y1, x2, y2) px labels).
    """
    s, b = img_size, -img_size // 2  # b: YOLOv7's mosaic_border
    yc, xc = (int(rng.uniform(-b, 2 * s + b)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, 3), FILL, dtype=np.uint8)
    parts = []
    for i, index in enumerate(indices[:4]):
        img, labels = load(index)
        h, w = img.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_tile(i, xc, yc, w, h, s)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        boxes = xywhn_to_xyxy(labels[:, 1:5], w, h, x1a - x1b, y1a - y1b)
        parts.append(np.concatenate((labels[:, :1], boxes), 1))
    labels4 = np.concatenate(parts, 0)
    labels4[:, 1:] = labels4[:, 1:].clip(0, 2 * s)
    return random_perspective(canvas, labels4, hyp, rng, border=(b, b))


def mixup(
    img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(8, 8) weight and keep both label sets (YOLOv7 mixup)."""
    r = rng.beta(8.0, 8.0)
    img = (img1 * r + img2 * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels1, labels2), 0)
