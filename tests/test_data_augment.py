"""Training augmentation: warp/box agreement, valid boxes inside the image, mosaic shape, flips, HSV, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_prune.data import YoloDataset
from yolo_prune.data.augment import (
    DEFAULT_HYP, augment_hsv, merge_hyp, mosaic4, mosaic9, random_flip, random_perspective, transform_boxes,
    warp_image,
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


@pytest.mark.parametrize("mosaic", [mosaic4, mosaic9])
def test_mosaic_shape_and_boxes(mosaic) -> None:
    sources = {i: (_boxed_image(64 - 6 * i, 64, (8, 8, 40, 24)), np.array([[i, 0.375, 0.25, 0.5, 0.25]]), ())
               for i in range(9)}
    for seed in range(10):
        img, labels = mosaic(sources.__getitem__, list(range(9)), 64, merge_hyp(STRONG), np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 64).all()
        assert (labels[:, 3] > labels[:, 1]).all() and (labels[:, 4] > labels[:, 2]).all()


AXIS_ALIGNED = {"degrees": 0.0, "translate": 0.2, "scale": 0.5, "shear": 0.0, "perspective": 0.0}


@pytest.mark.parametrize("mosaic, tiles", [(mosaic4, 4), (mosaic9, 9)])
def test_mosaic_boxes_cover_their_own_tile(mosaic, tiles) -> None:
    """Each tile is one colour labelled as one whole-image box of its own class: after the mosaic and an
    axis-aligned warp, every surviving box must hold its tile's colour (YOLOv7's tile placement, per tile)."""
    colours = np.linspace(20, 240, tiles).astype(np.uint8)
    sizes = [(h, w) for h, w, _, _ in MOSAIC9_LAYOUT]
    sources = {i: (np.full((*sizes[i], 3), colours[i], np.uint8), np.array([[i, 0.5, 0.5, 1.0, 1.0]]), ())
               for i in range(tiles)}
    seen = set()
    for seed in range(40):
        img, labels = mosaic(sources.__getitem__, list(range(tiles)), 64, merge_hyp(AXIS_ALIGNED),
                             np.random.default_rng(seed))
        for cls, x1, y1, x2, y2 in labels:
            inner = img[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
            if inner.size:
                assert (inner == colours[int(cls)]).all(), (seed, cls)
                seen.add(int(cls))
    assert seen == set(range(tiles))


# Tile (h, w) and its top-left corner on YOLOv7's 3s x 3s canvas (s = 64), worked out from load_mosaic9: the
# centre, then clockwise from the top, each tile against the centre's and the previous tile's sides.
MOSAIC9_LAYOUT = [(64, 64, 64, 64), (40, 48, 64, 24), (64, 40, 112, 0), (56, 36, 128, 64), (64, 30, 128, 120),
                  (36, 56, 72, 128), (48, 44, 28, 128), (60, 52, 12, 68), (30, 40, 24, 38)]


def test_mosaic9_places_tiles_as_yolov7(monkeypatch) -> None:
    """The 9-image mosaic before its warp: every tile's pixels and box where YOLOv7 puts them, then the random
    2s x 2s crop (the first two draws, y then x)."""
    import yolo_prune.data.augment as augment

    monkeypatch.setattr(augment, "random_perspective", lambda img, labels, *a, **k: (img, labels))
    sources = {i: (np.full((h, w, 3), 10 + 25 * i, np.uint8), np.array([[i, 0.5, 0.5, 1.0, 1.0]]), ())
               for i, (h, w, _, _) in enumerate(MOSAIC9_LAYOUT)}
    for seed in range(5):
        draws = np.random.default_rng(seed)
        yc, xc = int(draws.uniform(0, 64)), int(draws.uniform(0, 64))
        img, labels = augment.mosaic9(sources.__getitem__, list(range(9)), 64, merge_hyp({}),
                                      np.random.default_rng(seed))
        assert img.shape == (128, 128, 3)
        for i, (h, w, x, y) in enumerate(MOSAIC9_LAYOUT):
            expected = np.clip([x - xc, y - yc, x + w - xc, y + h - yc], 0, 128)
            np.testing.assert_array_equal(labels[i], [i, *expected])
            x1, y1, x2, y2 = expected
            assert (img[y1:y2, x1:x2] == 10 + 25 * i).all()


def test_polygon_box_is_the_warped_objects_hull() -> None:
    """A triangle labelled by its polygon: after a rotating warp its box is the hull of the triangle's pixels,
    not the (larger) hull of its warped bounding box."""
    from PIL import ImageDraw

    triangle = np.array([[20.0, 60.0], [50.0, 15.0], [75.0, 60.0]])
    canvas = Image.new("RGB", (96, 80))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in triangle], fill=(255, 255, 255))
    img, labels = np.array(canvas), np.array([[0, 20.0, 15.0, 75.0, 60.0]])
    hyp = merge_hyp({"degrees": 40.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0})
    for seed in range(8):
        out, boxed = random_perspective(img, labels, hyp, np.random.default_rng(seed))
        out, polygon = random_perspective(img, labels, hyp, np.random.default_rng(seed), polygons=[triangle])
        ys, xs = np.nonzero(out[..., 0] > 127)
        np.testing.assert_allclose(polygon[0, 1:], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
        assert (polygon[0, 1:3] >= boxed[0, 1:3] - 1e-9).all() and (polygon[0, 3:] <= boxed[0, 3:] + 1e-9).all()
    assert boxed[0, 3] - boxed[0, 1] > polygon[0, 3] - polygon[0, 1] + 3  # rotated: the box hull is looser


def test_with_polygons_a_cropped_object_survives_down_to_one_percent() -> None:
    """YOLOv7 keeps a warped box above 10 % of its area, or 1 % when the labels came from polygons: a 32 px square
    cropped by the mosaic border to 2-5 % of its area is dropped as a box, kept as a polygon."""
    img, labels = np.zeros((100, 100, 3), np.uint8), np.array([[0, 0.0, 0.0, 32.0, 32.0]])
    square = np.array([[0.0, 0.0], [32.0, 0.0], [32.0, 32.0], [0.0, 32.0]])
    hyp = merge_hyp({"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0})
    for seed in range(5):
        _, boxed = random_perspective(img, labels, hyp, np.random.default_rng(seed), border=(-25, -25))
        _, kept = random_perspective(img, labels, hyp, np.random.default_rng(seed), border=(-25, -25),
                                     polygons=[square])
        assert len(boxed) == 0 and len(kept) == 1
        assert 0.01 < (kept[0, 3] - kept[0, 1]) * (kept[0, 4] - kept[0, 2]) / 32 ** 2 < 0.1


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


def test_dataset_carries_polygon_labels_through_mosaics_and_warp(tmp_path: Path) -> None:
    """A data set labelled with polygons (one triangle per image): every training sample's box (4- and 9-image
    mosaics, rotation) is the hull of its triangle's pixels, and inside the box the same rows would get as boxes."""
    from PIL import ImageDraw

    triangle = np.array([[12.0, 40.0], [28.0, 12.0], [44.0, 40.0], [28.0, 40.0]])  # 4 points: a polygon row
    for kind in ("polygons", "boxes"):
        (tmp_path / kind / "images").mkdir(parents=True)
        (tmp_path / kind / "labels").mkdir()
        canvas = Image.new("RGB", (56, 56))
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in triangle], fill=(255, 255, 255))
        canvas.save(tmp_path / kind / "images" / "0.png")
        row = " ".join(f"{v / 56:.6f}" for v in triangle.ravel()) if kind == "polygons" else \
            f"{28 / 56:.6f} {26 / 56:.6f} {32 / 56:.6f} {28 / 56:.6f}"
        (tmp_path / kind / "labels" / "0.txt").write_text(f"0 {row}\n")
    hyp = {**STRONG, "degrees": 25.0, "shear": 0.0, "perspective": 0.0, "mixup": 0.0, "fliplr": 0.0, "flipud": 0.0,
           "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    sets = {kind: YoloDataset([str(tmp_path / kind / "images" / "0.png")], nc=1, img_size=64, augment=True, hyp=hyp)
            for kind in ("polygons", "boxes")}
    assert len(sets["polygons"].polygons[0]) == 1 and sets["boxes"].polygons[0] == ()
    checked = 0
    for epoch in range(60):
        samples = {}
        for kind, ds in sets.items():
            ds.set_epoch(epoch)
            img, labels, _, _ = ds[0]
            samples[kind] = (img.numpy().transpose(1, 2, 0), labels[:, 2:].numpy() * 64)
        (img, poly), (img_b, boxes) = samples["polygons"], samples["boxes"]
        assert np.array_equal(img, img_b)  # the same draws: only the labels differ
        for cx, cy, w, h in poly:
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            near = img[max(int(y1) - 2, 0):int(y2) + 3, max(int(x1) - 2, 0):int(x2) + 3, 0] > 127
            ys, xs = np.nonzero(near)
            if w > 6 and h > 6 and 2 < x1 and x2 < 62 and 2 < y1 and y2 < 62:
                ox, oy = max(int(x1) - 2, 0), max(int(y1) - 2, 0)
                hull = np.array([xs.min() + ox, ys.min() + oy, xs.max() + 1 + ox, ys.max() + 1 + oy])
                # never tighter than the pixels; equal unless the mosaic's canvas edge cut the triangle (YOLOv7
                # clips a cut polygon's points onto the edge, which widens its box)
                assert (hull[:2] >= [x1 - 1.6, y1 - 1.6]).all() and (hull[2:] <= [x2 + 1.6, y2 + 1.6]).all()
                checked += bool(np.allclose(hull, [x1, y1, x2, y2], atol=1.6))
            assert any(bx - bw / 2 <= x1 + 1e-3 and x2 <= bx + bw / 2 + 1e-3 and by - bh / 2 <= y1 + 1e-3
                       and y2 <= by + bh / 2 + 1e-3 for bx, by, bw, bh in boxes)
    assert checked >= 15, checked
