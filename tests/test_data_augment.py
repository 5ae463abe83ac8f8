"""Training augmentation: warp/box agreement, valid boxes inside the image, mosaic shape, flips, HSV, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_prune.data import YoloDataset
from yolo_prune.data.augment import (
    DEFAULT_HYP, augment_hsv, merge_hyp, mosaic4, random_flip, random_perspective, transform_boxes, warp_image,
)

STRONG = {"degrees": 30.0, "translate": 0.2, "scale": 0.5, "shear": 5.0, "perspective": 0.0005,
          "flipud": 0.5, "fliplr": 0.5, "mixup": 0.5, "mosaic": 1.0}


def _boxed_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Black image with one white box (x1, y1, x2, y2)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[box[1]:box[3], box[0]:box[2]] = 255
    return img


def test_warp_matches_box_transform() -> None:
    img = _boxed_image(80, 100, (30, 20, 60, 50))
    angle = np.deg2rad(20)
    m = np.array([[np.cos(angle), np.sin(angle), 5.0], [-np.sin(angle), np.cos(angle), 30.0], [0, 0, 1]])
    out = warp_image(img, m, (120, 120))
    ys, xs = np.nonzero(out[..., 0] > 127)
    hull = transform_boxes(np.array([[30.0, 20.0, 60.0, 50.0]]), m, (120, 120))[0]
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], hull, atol=1.5)


def test_integer_translation_is_exact() -> None:
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    m = np.array([[1.0, 0, 3], [0, 1, 2], [0, 0, 1]])
    out = warp_image(img, m, (20, 30))
    np.testing.assert_array_equal(out[2:, 3:], img[:-2, :-3])
    assert (out[:2] == 114).all() and (out[:, :3] == 114).all()


def test_random_perspective_keeps_valid_boxes_inside() -> None:
    img = _boxed_image(64, 96, (10, 10, 50, 40))
    labels = np.array([[0, 10, 10, 50, 40], [1, 60, 5, 95, 60], [2, 0, 50, 4, 64]], np.float64)
    hyp = merge_hyp(STRONG)
    for seed in range(30):
        out, new = random_perspective(img, labels, hyp, np.random.default_rng(seed))
        assert out.shape == img.shape
        assert new.shape[1] == 5 and set(new[:, 0]) <= {0, 1, 2}
        assert (new[:, 3] - new[:, 1] > 2).all() and (new[:, 4] - new[:, 2] > 2).all()
        assert (new[:, 1:] >= 0).all() and (new[:, [1, 3]] <= 96).all() and (new[:, [2, 4]] <= 64).all()


def test_mosaic_shape_and_boxes() -> None:
    sources = {i: (_boxed_image(64 - 8 * i, 64, (8, 8, 40, 24)), np.array([[i, 0.375, 0.25, 0.5, 0.25]]))
               for i in range(4)}
    for seed in range(10):
        img, labels = mosaic4(sources.__getitem__, [0, 1, 2, 3], 64, merge_hyp(STRONG), np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 64).all()
        assert (labels[:, 3] > labels[:, 1]).all() and (labels[:, 4] > labels[:, 2]).all()


def test_flip_moves_boxes_with_pixels() -> None:
    img = _boxed_image(10, 20, (0, 0, 5, 2))
    labels = np.array([[0, 0.125, 0.1, 0.25, 0.2]])
    out, new = random_flip(img, labels, {"flipud": 1.0, "fliplr": 1.0}, np.random.default_rng(0))
    assert (out[-2:, -5:] == 255).all() and out[:2, :5].max() == 0
    np.testing.assert_allclose(new, [[0, 0.875, 0.9, 0.25, 0.2]])
    assert labels[0, 1] == 0.125 and out.flags.c_contiguous


def test_hsv_jitter() -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    zero = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    assert augment_hsv(img, zero, np.random.default_rng(0)) is img
    a = augment_hsv(img, DEFAULT_HYP, np.random.default_rng(1))
    b = augment_hsv(img, DEFAULT_HYP, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a, img)


def test_merge_hyp_defaults_and_overrides() -> None:
    hyp = merge_hyp({"fliplr": 0, "lr0": 0.01})
    assert hyp["fliplr"] == 0.0 and hyp["mosaic"] == 1.0 and hyp["lr0"] == 0.01


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_dataset_augmentation_labels_valid(tmp_path: Path, mosaic: float) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    paths = []
    for i, hw in enumerate([(48, 64), (64, 40), (56, 56)]):
        Image.fromarray(_boxed_image(*hw, (4, 4, 30, 30))).save(tmp_path / "images" / f"{i}.png")
        (tmp_path / "labels" / f"{i}.txt").write_text(f"0 {17 / hw[1]} {17 / hw[0]} {26 / hw[1]} {26 / hw[0]}\n")
        paths.append(str(tmp_path / "images" / f"{i}.png"))
    ds = YoloDataset(paths, nc=1, img_size=64, augment=True, hyp={**STRONG, "mosaic": mosaic})
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, labels, _, shapes = ds[i]
            assert img.shape == (3, 64, 64)
            xywh = labels[:, 2:]
            assert (xywh[:, 2:] > 0).all()
            assert (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6).all() and (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6).all()
            assert (shapes is None) == (mosaic == 1.0)
