"""Label files: path mapping, parsing, each bad-label kind (error names file and line), corrupt images skipped."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_prune.data import YoloDataset
from yolo_prune.data.dataset import label_path_for, parse_label_file
from yolo_prune.errors import DataError


def _sample(root: Path, name: str, label: str | None, hw: tuple[int, int] = (24, 32)) -> str:
    """Write images/<name>.png (and labels/<name>.txt unless label is None); returns the image path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    img = root / "images" / f"{name}.png"
    Image.fromarray(np.full((*hw, 3), 60, np.uint8)).save(img)
    if label is not None:
        (root / "labels" / f"{name}.txt").write_text(label)
    return str(img)


def test_label_path_mapping(tmp_path: Path) -> None:
    assert label_path_for("/d/images/a/images/x.jpg") == "/d/images/a/labels/x.txt"
    assert label_path_for("/d/pics/x.jpeg") == "/d/pics/x.txt"
    (tmp_path / "images").mkdir()
    beside = tmp_path / "images" / "y.txt"
    beside.write_text("")
    assert label_path_for(str(tmp_path / "images" / "y.jpg")) == str(beside)  # fallback when labels/ lacks it


def test_parse_valid_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("1 0.5 0.5 0.2 0.4\n\n0 0.0005 0.5 0.001 0.1\n")
    labels = parse_label_file(str(f), nc=2)
    assert labels.shape == (2, 5) and labels.dtype == np.float32
    np.testing.assert_allclose(labels[0], [1, 0.5, 0.5, 0.2, 0.4], atol=1e-6)
    assert labels[1, 1] - labels[1, 3] / 2 >= 0  # tolerance absorbed by clipping
    assert parse_label_file(str(tmp_path / "none.txt"), nc=2).shape == (0, 5)


@pytest.mark.parametrize("line, problem", [
    ("2 0.5 0.5 0.1 0.1", "out of range"),
    ("-1 0.5 0.5 0.1 0.1", "out of range"),
    ("1.5 0.5 0.5 0.1 0.1", "not an integer"),
    ("cat 0.5 0.5 0.1 0.1", "not an integer"),
    ("0 0.5 0.5 0.1", "expected 5 fields"),
    ("0 0.5 0.5 0.1 0.1 0.3", "expected 5 fields"),
    ("0 0.5 x 0.1 0.1", "must be numbers"),
    ("0 1.2 0.5 0.1 0.1", "outside"),
    ("0 0.98 0.5 0.1 0.1", "outside"),
    ("0 0.5 0.5 0 0.1", "> 0"),
    ("0 0.5 0.5 0.1 -0.1", "> 0"),
])
def test_bad_label_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = _sample(tmp_path, "bad", f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError, match=rf"bad\.txt:2: .*{problem}"):
        YoloDataset([path], nc=2, img_size=32)


def test_missing_label_is_background(tmp_path: Path) -> None:
    ds = YoloDataset([_sample(tmp_path, "empty", None)], nc=1, img_size=32)
    img, labels, _, _ = ds[0]
    assert labels.shape == (0, 6) and img.shape == (3, 32, 32)


def test_corrupt_images_skipped_with_warning(tmp_path: Path) -> None:
    good = _sample(tmp_path, "good", "0 0.5 0.5 0.2 0.2\n")
    garbage = tmp_path / "images" / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    truncated = tmp_path / "images" / "trunc.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    missing = str(tmp_path / "images" / "missing.jpg")
    with pytest.warns(UserWarning) as record:
        ds = YoloDataset([good, str(garbage), str(truncated), missing], nc=1, img_size=32)
    messages = " ".join(str(w.message) for w in record)
    for name in ("garbage.jpg", "trunc.jpg", "missing.jpg"):
        assert name in messages
    assert ds.skipped == 3 and ds.image_paths == [good] and len(ds) == 1


def test_all_images_unreadable(tmp_path: Path) -> None:
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 images"):
        YoloDataset([os.fspath(tmp_path / "absent.png")], nc=1)


def test_exif_rotation_applied(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(np.full((20, 40, 3), 80, np.uint8)).save(path, exif=exif)
    ds = YoloDataset([str(path)], nc=1, img_size=40)
    assert ds.hw0.tolist() == [[40, 20]]
    assert ds.load_resized(0)[0].shape == (40, 20, 3)
