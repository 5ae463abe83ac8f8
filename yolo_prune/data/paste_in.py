"""YOLOv7's object-pasting augmentations, both driven by polygon labels (with boxes alone they do nothing, as in
YOLOv7): paste-in (hyp ``paste_in``) pastes objects cut out along their polygons from other mosaics onto a
training sample where they hide little of its labelled objects; copy-paste (hyp ``copy_paste``) mirrors objects
of a mosaic left-right into it where the mirrored box hides little.

The cut-out of an object is the pixels inside its polygon, a pixel value of 0 raised to 255 as YOLOv7's masking
leaves it, and its non-zero pixels are its mask: YOLOv7 keeps the masked image as the mask too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: Paste attempts per sample, as fractions of the image size (YOLOv7's ``pastein``); each is skipped with p=0.2.
PASTE_SCALES = (0.75,) * 2 + (0.5,) * 4 + (0.25,) * 4 + (0.125,) * 4 + (0.0625,) * 6
MIN_CUTOUTS = 30  # cut-outs gathered (from as many mosaics as needed) before pasting
MAX_HIDDEN = 0.30  # a paste may cover at most this fraction of any labelled object's box
MIN_SIDE = 20  # the paste region's sides must exceed this (pixels) ...
MIN_PASTED_SIDE = 10  # ... and the resized cut-out's sides this
MIN_MASK_VALUES = 60  # a resized cut-out with fewer non-zero channel values is not pasted


@dataclass(frozen=True)
class Cutout:
    """An object cut out along its polygon: its class and ``[h, w, 3]`` pixels (0 outside the polygon)."""

    cls: float
    pixels: np.ndarray


def cut_out_objects(
    img: np.ndarray, labels: np.ndarray, polygons: Sequence[np.ndarray], rng: np.random.Generator,
    fraction: float = 0.5,
) -> list[Cutout]:
    """Cut a random ``fraction`` of the objects that have a polygon out of ``img`` (YOLOv7's ``sample_segments``).

    ``labels`` are ``[n, 5]`` (cls, xyxy px) and ``polygons`` their pixel polygons (``[0, 2]`` for a box row). The
    crop is the label box truncated to whole pixels; objects whose crop is empty are skipped."""
    import cv2

    with_polygon = [j for j, p in enumerate(polygons) if len(p)]
    count = round(fraction * len(with_polygon))
    if not count:
        return []
    h, w = img.shape[:2]
    cutouts = []
    for j in rng.choice(with_polygon, size=count, replace=False):
        x1, x2 = labels[j, [1, 3]].astype(int).clip(0, w - 1)
        y1, y2 = labels[j, [2, 4]].astype(int).clip(0, h - 1)
        if x2 <= x1 or y2 <= y1:
            continue
        # Fill the polygon over a region holding both it and the crop, so OpenCV clips its outline only at the
        # image's edges: that gives the pixels of YOLOv7's fill over the whole image, without a full-image mask.
        outline = polygons[j].astype(np.int32)
        (px1, py1), (px2, py2) = outline.min(0).clip(0), outline.max(0) + 1
        rx1, ry1, rx2, ry2 = min(x1, px1), min(y1, py1), max(x2, min(px2, w)), max(y2, min(py2, h))
        region = np.zeros((ry2 - ry1, rx2 - rx1, 3), np.uint8)
        cv2.drawContours(region, [outline - np.array([rx1, ry1], np.int32)], -1, (255, 255, 255), cv2.FILLED)
        mask = region[y1 - ry1:y2 - ry1, x1 - rx1:x2 - rx1]
        crop = img[y1:y2, x1:x2]
        pixels = np.where(mask > 0, np.where(crop > 0, crop, 255), 0).astype(np.uint8)
        cutouts.append(Cutout(float(labels[j, 0]), pixels))
    return cutouts


def gather_cutouts(cut_from_mosaic: Callable[[], list[Cutout]]) -> list[Cutout]:
    """Cut-outs from successive random mosaics until there are :data:`MIN_CUTOUTS`, or none if the first has none
    (YOLOv7's loop in ``__getitem__``)."""
    cutouts: list[Cutout] = []
    while len(cutouts) < MIN_CUTOUTS:
        cutouts += cut_from_mosaic()
        if not cutouts:
            break
    return cutouts


def paste_in(
    img: np.ndarray, labels: np.ndarray, cutouts: Sequence[Cutout], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste cut-outs into random regions of ``img`` that cover < 30 % of every labelled box (YOLOv7's
    ``pastein``); returns (a new image, ``labels`` with one ``(cls, xyxy px)`` row per pasted object)."""
    import cv2

    img, rows = img.copy(), [labels]
    h, w = img.shape[:2]
    for scale in PASTE_SCALES:
        if rng.random() < 0.2:
            continue
        region_h, region_w = int(rng.integers(1, int(h * scale) + 1)), int(rng.integers(1, int(w * scale) + 1))
        x1 = max(0, int(rng.integers(0, w + 1)) - region_w // 2)
        y1 = max(0, int(rng.integers(0, h + 1)) - region_h // 2)
        x2, y2 = min(w, x1 + region_w), min(h, y1 + region_h)
        boxes = np.concatenate(rows, 0)[:, 1:5]
        if not (cutouts and x2 > x1 + MIN_SIDE and y2 > y1 + MIN_SIDE
                and (hidden_fraction(np.array([x1, y1, x2, y2], np.float32), boxes) < MAX_HIDDEN).all()):
            continue
        cutout = cutouts[int(rng.integers(0, len(cutouts)))]
        ch, cw = cutout.pixels.shape[:2]
        ratio = min((y2 - y1) / ch, (x2 - x1) / cw)
        pw, ph = int(cw * ratio), int(ch * ratio)
        if pw <= MIN_PASTED_SIDE or ph <= MIN_PASTED_SIDE:
            continue
        resized = cv2.resize(cutout.pixels, (pw, ph))
        mask = resized > 0
        if mask.sum() > MIN_MASK_VALUES:
            img[y1:y1 + ph, x1:x1 + pw][mask] = resized[mask]
            rows.append(np.array([[cutout.cls, x1, y1, x1 + pw, y1 + ph]], labels.dtype))
    return img, np.concatenate(rows, 0)


def hidden_fraction(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each of ``boxes`` ([n, 4] xyxy) that ``box`` covers (0 for none when there are no boxes)."""
    if not len(boxes):
        return np.zeros(1)
    inter = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0) * \
        (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return inter / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + 1e-16)


def copy_paste(
    img: np.ndarray, labels: np.ndarray, polygons: Sequence[np.ndarray], probability: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Mirror a random ``probability`` share of the objects that have a polygon left-right into ``img``, each one
    whose mirrored box hides < 30 % of every box labelled so far (YOLOv7's ``copy_paste``, on a mosaic before its
    warp). Returns (image, labels and polygons with the mirrored objects appended)."""
    import cv2

    with_polygon = [j for j, p in enumerate(polygons) if len(p)]
    count = round(probability * len(with_polygon))
    rows, polygons = [labels], list(polygons)
    if not count:
        return img, labels, polygons
    w = img.shape[1]
    mask = np.zeros(img.shape, np.uint8)
    for j in rng.choice(with_polygon, size=count, replace=False):
        cls, x1, y1, x2, y2 = labels[j]
        box = np.array([w - x2, y1, w - x1, y2])
        if (hidden_fraction(box, np.concatenate(rows, 0)[:, 1:5]) < MAX_HIDDEN).all():
            rows.append(np.array([[cls, *box]], labels.dtype))
            polygons.append(np.stack((w - polygons[j][:, 0], polygons[j][:, 1]), 1))
            cv2.drawContours(mask, [polygons[j].astype(np.int32)], -1, (255, 255, 255), cv2.FILLED)
    mirrored = cv2.flip(cv2.bitwise_and(img, mask), 1)
    return np.where(mirrored > 0, mirrored, img), np.concatenate(rows, 0), polygons
