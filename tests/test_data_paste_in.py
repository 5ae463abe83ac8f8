"""Paste-in (hyp ``paste_in``): objects cut out along their polygons, pasted where they hide < 30 % of any labelled
box; copy-paste (hyp ``copy_paste``): objects mirrored within a mosaic; both no-ops for data sets of boxes, as in
YOLOv7."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from yolo_prune.data import YoloDataset
from yolo_prune.data.augment import NO_POLYGON
from yolo_prune.data.paste_in import MAX_HIDDEN, Cutout, copy_paste, cut_out_objects, paste_in


def _canvas_with_objects() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A 96 x 96 noise canvas (some pixels 0) with 5 polygon objects, one cut by the right edge, and a box row."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    img[rng.random((96, 96)) < 0.1] = 0
    polygons = [np.array([[10.0, 10.0], [30.0, 12.0], [25.0, 35.0], [8.0, 30.0]]),
                np.array([[50.0, 5.0], [70.0, 20.0], [55.0, 28.0], [45.0, 18.0]]),
                np.array([[80.0, 40.0], [96.0, 45.0], [96.0, 70.0], [78.0, 66.0]]),  # on the edge (clipped there)
                np.array([[20.5, 60.2], [44.7, 58.9], [40.1, 90.3], [18.2, 85.6], [15.0, 70.0]]),
                np.array([[60.0, 60.0], [75.0, 62.0], [70.0, 80.0]]), NO_POLYGON]
    labels = np.array([[k, *p.min(0), *p.max(0)] if len(p) else [5, 1, 1, 9, 9] for k, p in enumerate(polygons)])
    return img, labels, polygons


def test_a_cutout_is_its_polygons_pixels_with_zeros_raised() -> None:
    img, labels, polygons = _canvas_with_objects()
    cutouts = cut_out_objects(img, labels, polygons, np.random.default_rng(0), fraction=1.0)
    assert sorted(c.cls for c in cutouts) == [0, 1, 2, 3, 4]  # every polygon row, never the box row
    for cutout in cutouts:
        k = int(cutout.cls)
        mask = np.zeros_like(img)  # YOLOv7 fills the polygon over the whole image, then crops the label box
        cv2.drawContours(mask, [polygons[k].astype(np.int32)], -1, (255, 255, 255), cv2.FILLED)
        x1, x2 = labels[k, [1, 3]].astype(int).clip(0, 95)
        y1, y2 = labels[k, [2, 4]].astype(int).clip(0, 95)
        inside, crop = mask[y1:y2, x1:x2] > 0, img[y1:y2, x1:x2]
        assert cutout.pixels.shape == crop.shape and inside.any() and (~inside).any()
        np.testing.assert_array_equal(cutout.pixels[~inside], 0)
        np.testing.assert_array_equal(cutout.pixels[inside], np.where(crop[inside] > 0, crop[inside], 255))


def test_half_of_the_polygon_objects_are_cut_out() -> None:
    img, labels, polygons = _canvas_with_objects()
    for seed in range(5):
        cutouts = cut_out_objects(img, labels, polygons, np.random.default_rng(seed))
        classes = {c.cls for c in cutouts}
        assert len(cutouts) == round(0.5 * 5) and len(classes) == 2 and 5 not in classes
    assert cut_out_objects(img, labels[-1:], polygons[-1:], np.random.default_rng(0)) == []


def test_paste_in_adds_objects_only_inside_their_boxes_and_hides_little() -> None:
    disk = np.zeros((30, 40, 3), np.uint8)
    cv2.ellipse(disk, (20, 15), (19, 14), 0, 0, 360, (200, 120, 40), -1)
    cutouts = [Cutout(3.0, disk)]
    img = np.random.default_rng(0).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    labels = np.array([[0, 10.0, 10.0, 60.0, 50.0], [1, 80.0, 60.0, 130.0, 110.0]])
    pasted_total = 0
    for seed in range(20):
        out, new = paste_in(img, labels, cutouts, np.random.default_rng(seed))
        np.testing.assert_array_equal(new[:2], labels)
        changed = np.zeros(img.shape[:2], bool)
        for k, (cls, x1, y1, x2, y2) in enumerate(new[2:], 2):
            assert cls == 3 and x2 - x1 > 10 and y2 - y1 > 10
            assert 0 <= x1 and x2 <= 140 and 0 <= y1 and y2 <= 120
            box = np.array([x1, y1, x2, y2])
            for earlier in new[:k, 1:]:  # the region chosen covered < 30 % of each box labelled before it
                inter = np.prod((np.minimum(box[2:], earlier[2:]) - np.maximum(box[:2], earlier[:2])).clip(0))
                assert inter / np.prod(earlier[2:] - earlier[:2]) < MAX_HIDDEN + 1e-9
            changed[int(y1):int(y2), int(x1):int(x2)] = True
        assert (out[~changed] == img[~changed]).all() and out.dtype == np.uint8
        pasted_total += len(new) - 2
    assert pasted_total >= 20


def test_copy_paste_mirrors_objects_with_their_pixels_and_polygons() -> None:
    img = np.full((64, 80, 3), 90, np.uint8)
    square, triangle = np.array([[4.0, 4.0], [20.0, 4.0], [20.0, 20.0], [4.0, 20.0]]), \
        np.array([[30.0, 40.0], [36.0, 30.0], [42.0, 40.0], [36.0, 42.0]])
    cv2.drawContours(img, [square.astype(np.int32)], -1, (250, 40, 10), cv2.FILLED)
    cv2.drawContours(img, [triangle.astype(np.int32)], -1, (0, 255, 0), cv2.FILLED)
    labels = np.array([[0, 4.0, 4.0, 20.0, 20.0], [1, 30.0, 30.0, 42.0, 42.0], [2, 60.0, 50.0, 70.0, 60.0]])
    out, new, polygons = copy_paste(img, labels, [square, triangle, NO_POLYGON], 1.0, np.random.default_rng(0))
    # the square mirrors to x 60..76; the triangle's mirror (38..50) would hide 33 % of its own box: not pasted
    np.testing.assert_array_equal(new, [*labels, [0, 60.0, 4.0, 76.0, 20.0]])
    np.testing.assert_array_equal(polygons[3], np.stack((80 - square[:, 0], square[:, 1]), 1))
    assert len(polygons) == 4 and polygons[2] is NO_POLYGON
    # pixels flip about the last column (x -> 79 - x) as cv2.flip does; the box about the width (x -> 80 - x)
    assert (out[4:21, 59:76] == (250, 40, 10)).all() and (out[:, :59] == img[:, :59]).all()
    unchanged, same, _ = copy_paste(img, labels[2:], [NO_POLYGON], 1.0, np.random.default_rng(0))
    assert unchanged is img and np.array_equal(same, labels[2:])


def _polygon_set(root: Path, as_boxes: bool) -> list[str]:
    """Two 64 px images, each with two labelled quadrilaterals (as polygon rows, or as their boxes)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    paths = []
    for i in range(2):
        canvas = Image.new("RGB", (64, 64), (90, 90, 90))
        rows = []
        for k, (cx, cy) in enumerate([(18 + 20 * i, 20), (40, 44 - 10 * i)]):
            quad = [(cx - 12, cy), (cx, cy - 10), (cx + 12, cy), (cx, cy + 12)]
            ImageDraw.Draw(canvas).polygon(quad, fill=(250, 40 + 100 * k, 20))
            if as_boxes:
                rows.append(f"{k} {cx / 64:.6f} {(cy + 1) / 64:.6f} {24 / 64:.6f} {22 / 64:.6f}")
            else:
                rows.append(f"{k} " + " ".join(f"{v / 64:.6f}" for point in quad for v in point))
        canvas.save(root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
        paths.append(str(root / "images" / f"{i}.png"))
    return paths


@pytest.mark.parametrize("key, where", [("paste_in", "yolo_prune.data.dataset.paste_in"),
                                        ("copy_paste", "yolo_prune.data.augment.copy_paste")])
def test_dataset_pastes_objects_from_polygon_labels_and_not_from_boxes(tmp_path: Path, monkeypatch, key: str,
                                                                      where: str) -> None:
    """Training samples get pasted objects (counted where the dataset calls the augmentation) from polygon labels
    only; with box labels the samples equal those drawn with the hyp at 0, as in YOLOv7."""
    import importlib

    module, name = where.rsplit(".", 1)
    real, pasted = getattr(importlib.import_module(module), name), []

    def counting(img, labels, *args):
        out = real(img, labels, *args)
        pasted.append(len(out[1]) - len(labels))
        return out

    monkeypatch.setattr(where, counting)
    hyp = {"mosaic": 1.0, "mixup": 0.0, "scale": 0.2, "translate": 0.1, "degrees": 0.0, "shear": 0.0,
           "perspective": 0.0, "fliplr": 0.5, "flipud": 0.0}
    for as_boxes in (False, True):
        pasted.clear()
        paths = _polygon_set(tmp_path / str(as_boxes), as_boxes)
        with_paste = YoloDataset(paths, nc=2, img_size=64, augment=True, hyp={**hyp, key: 1.0})
        without = YoloDataset(paths, nc=2, img_size=64, augment=True, hyp={**hyp, key: 0.0})
        assert with_paste.has_polygons is not as_boxes
        for epoch in range(6):
            for ds in (with_paste, without):
                ds.set_epoch(epoch)
            for i in range(2):
                (img, labels, _, _), (img0, labels0, _, _) = with_paste[i], without[i]
                xywh = labels[:, 2:]
                assert (xywh[:, 2:] > 0).all() and (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6).all()
                assert (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6).all() and set(labels[:, 1].tolist()) <= {0, 1}
                if as_boxes:  # YOLOv7 pastes nothing without polygons: the same sample
                    assert np.array_equal(img, img0) and np.array_equal(labels, labels0)
        if as_boxes:
            assert sum(pasted) == 0
        else:
            assert len(pasted) >= 12 and sum(pasted) > 0, pasted  # called per sample (mosaic), objects added
