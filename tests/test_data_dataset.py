"""YoloDataset: sample format, labels on the letterboxed image, shapes for mapping back, rect batches, collate."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_prune.data import YoloDataset, collate_fn, scale_boxes
from yolo_prune.data.dataset import rect_batches

RED = (250, 10, 10)


def _sample(root: Path, name: str, hw: tuple[int, int], box_xyxy: tuple[int, int, int, int]) -> str:
    """Grey PNG with one red box and its YOLO label (class 1); returns the image path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    img = np.full((*hw, 3), 100, np.uint8)
    x1, y1, x2, y2 = box_xyxy
    img[y1:y2, x1:x2] = RED
    Image.fromarray(img).save(root / "images" / f"{name}.png")
    h, w = hw
    cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
    (root / "labels" / f"{name}.txt").write_text(f"1 {cx} {cy} {bw} {bh}\n")
    return str(root / "images" / f"{name}.png")


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    """Six images with varied aspect ratios."""
    specs = [((60, 80), (10, 10, 40, 30)), ((80, 40), (5, 20, 30, 70)), ((50, 50), (0, 0, 25, 25)),
             ((30, 90), (60, 5, 90, 30)), ((90, 45), (10, 50, 40, 88)), ((64, 64), (16, 16, 48, 48))]
    return [_sample(tmp_path, f"im{i}", hw, box) for i, (hw, box) in enumerate(specs)]


def test_sample_format_and_labels_on_letterboxed_image(paths: list[str]) -> None:
    ds = YoloDataset(paths, nc=2, img_size=64)
    for i in range(len(ds)):
        img, labels, path, shapes = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and path == paths[i]
        assert labels.shape == (1, 6) and labels[0, :2].tolist() == [0.0, 1.0]
        cx, cy, w, h = (labels[0, 2:] * 64).tolist()
        inner = img[:, math.ceil(cy - h / 2) + 1:int(cy + h / 2) - 1, math.ceil(cx - w / 2) + 1:int(cx + w / 2) - 1]
        assert (inner[0] > 200).all() and (inner[1] < 60).all(), "label box must cover the red object"


def test_shapes_map_boxes_back_to_original(paths: list[str]) -> None:
    ds = YoloDataset(paths, nc=2, img_size=64, rect=True, batch_size=2)
    for i in range(len(ds)):
        img, labels, path, ((h0, w0), ratio_pad) = ds[i]
        h, w = img.shape[1:]
        xyxy = labels[:, 2:].clone()
        xyxy[:, :2] -= xyxy[:, 2:] / 2
        xyxy[:, 2:] += xyxy[:, :2]
        xyxy *= torch.tensor([w, h, w, h])
        back = scale_boxes(xyxy, (h, w), (h0, w0), ratio_pad)
        orig = np.asarray(Image.open(path))
        ys, xs = np.nonzero(orig[..., 0] > 200)
        np.testing.assert_allclose(back[0].numpy(), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-3)


def test_rect_batch_shapes_like_yolov7(paths: list[str]) -> None:
    ds = YoloDataset(paths, nc=2, img_size=64, rect=True, batch_size=2, stride=32, pad=0.5)
    ar = [h / w for h, w in ds.hw0]
    assert ar == sorted(ar)
    expected = []
    for b in range(3):
        lo, hi = ar[2 * b], ar[2 * b + 1]
        s = [hi, 1] if hi < 1 else [1, 1 / lo] if lo > 1 else [1, 1]
        expected.append([math.ceil(v * 64 / 32 + 0.5) * 32 for v in s])
    assert ds.batch_shapes.tolist() == expected
    for i in range(len(ds)):
        assert list(ds[i][0].shape[1:]) == expected[i // 2]


def test_rect_batches_pad_zero() -> None:
    order, shapes = rect_batches(np.array([[480, 640], [640, 480], [500, 500]]), 1, 640, 32, 0.0)
    assert order.tolist() == [0, 2, 1]
    assert shapes.tolist() == [[480, 640], [640, 640], [640, 480]]


def test_collate_sets_batch_index(paths: list[str]) -> None:
    ds = YoloDataset(paths, nc=2, img_size=64)
    imgs, labels, batch_paths, shapes = collate_fn([ds[0], ds[3], ds[5]])
    assert imgs.shape == (3, 3, 64, 64) and labels[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch_paths == (paths[0], paths[3], paths[5]) and len(shapes) == 3
    assert ds[3][1][0, 0] == 0.0  # collate does not modify the samples
    assert YoloDataset.collate_fn is collate_fn


def test_augmented_samples_deterministic_per_seed_and_epoch(paths: list[str]) -> None:
    hyp = {"degrees": 10.0, "shear": 2.0, "mixup": 0.5}

    def take(seed: int, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ds = YoloDataset(paths, nc=2, img_size=64, augment=True, hyp=hyp, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i][:2] for i in range(len(ds))]

    a, b, c, d = take(0), take(0), take(1), take(0, epoch=1)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, d))
