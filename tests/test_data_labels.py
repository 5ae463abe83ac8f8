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


def _sideways_jpeg(tmp_path: Path, orientation: int) -> Path:
    """A 20x40 (h x w) JPEG stored with this EXIF orientation (6: rotate 90 degrees clockwise to display)."""
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.full((20, 40, 3), 80, np.uint8)).save(path, exif=exif)
    return path


def test_exif_rotation_applied(tmp_path: Path) -> None:
    path = _sideways_jpeg(tmp_path, 6)
    ds = YoloDataset([str(path)], nc=1, img_size=40)
    assert ds.hw0.tolist() == [[40, 20]]
    assert ds.load_resized(0)[0].shape == (40, 20, 3)


@pytest.mark.parametrize("orientation, planned", [(5, (20, 40)), (6, (40, 20)), (7, (20, 40)), (8, (40, 20))])
def test_rect_batches_plan_with_yolov7s_exif_size(tmp_path: Path, orientation: int, planned) -> None:
    """YOLOv7's exif_size swaps the sides for orientations 6 and 8 only, and plans the rectangular batch shape with
    it; the image itself is decoded upright (transposed for 5 and 7, as OpenCV does), so test.py letterboxes a
    40x20 transposed image into a 20x40-shaped batch. The same here, so its numbers are test.py's."""
    import cv2

    path = _sideways_jpeg(tmp_path, orientation)
    ds = YoloDataset([str(path)], nc=1, img_size=64, rect=True, batch_size=1, stride=32, pad=0.5)
    assert tuple(ds.hw0[0]) == planned
    assert cv2.imread(str(path)).shape[:2] == (40, 20) and ds.load_resized(0)[0].shape[:2] == (64, 32)
    wide = planned[1] > planned[0]
    assert (ds.batch_shapes[0][1] > ds.batch_shapes[0][0]) == wide


# ------------------------------------------------------------------ YOLOv7's reading of real label sets
def _yolov7_enclosing_box(coords: list[str]) -> list[np.float32]:
    """YOLOv7's ``segments2boxes`` for one polygon: float32 points, min/max, then ``xyxy2xywh`` in float32."""
    xy = np.array(coords, dtype=np.float32).reshape(-1, 2)
    (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def test_polygon_rows_become_the_boxes_yolov7_computes(tmp_path: Path) -> None:
    """The official COCO labels hold polygons; each row's box must equal YOLOv7's float32 result bit for bit."""
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for _ in range(40):
        centre, radius = rng.uniform(0.2, 0.8, 2), rng.uniform(0.01, 0.15, 2)
        points = np.clip(centre + rng.uniform(-1, 1, (int(rng.integers(4, 25)), 2)) * radius, 0, 1)
        coords = [f"{v:.6f}" for v in points.ravel()]
        cls = int(rng.integers(0, 80))
        rows.append(" ".join([str(cls), *coords]))
        expected.append([cls, *_yolov7_enclosing_box(coords)])
    path = tmp_path / "coco.txt"
    path.write_text("\n".join(rows) + "\n")
    labels = parse_label_file(str(path), nc=80)
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, np.array(expected, np.float32))


def test_a_file_with_any_long_row_is_read_as_polygons_throughout(tmp_path: Path) -> None:
    """YOLOv7's rule: one row of more than 8 fields makes every row a polygon, a 5-field one included (warned)."""
    path = tmp_path / "mixed.txt"
    path.write_text("0 0.25 0.5 0.75 0.25 0.5 0.75 0.375 0.5\n1 0.5 0.5 0.25 0.25\n")
    with pytest.warns(UserWarning, match=r"mixed\.txt:2: a 5-field row in a file of polygons"):
        labels = parse_label_file(str(path), nc=2)
    np.testing.assert_array_equal(labels, [[0, 0.5, 0.5, 0.5, 0.5], [1, 0.375, 0.375, 0.25, 0.25]])
    short = tmp_path / "short.txt"  # no row longer than 8 fields: a 7-field row is malformed, as in YOLOv7
    short.write_text("0 0.25 0.5 0.75 0.25 0.5 0.75\n")
    with pytest.raises(DataError, match=r"short\.txt:1: expected 5 fields"):
        parse_label_file(str(short), nc=2)


@pytest.mark.parametrize("line, problem", [
    ("2 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2", "out of range"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1", "x y pairs"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 zz", "must be numbers"),
    ("0 0.1 0.1 0.2 0.1 0.2 1.2 0.1 0.2", "outside"),
    ("0 0.1 0.1 0.1 0.2 0.1 0.3 0.1 0.4", "> 0"),
    ("0 0.1 0.1 0.2 0.1 nan 0.2 0.1 0.2", "finite"),
])
def test_bad_polygon_row_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = _sample(tmp_path, "poly", f"0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n{line}\n")
    with pytest.raises(DataError, match=rf"poly\.txt:2: .*{problem}"):
        YoloDataset([path], nc=2, img_size=32)


def test_image_whose_label_file_repeats_a_row_is_skipped_as_yolov7_skips_it(tmp_path: Path) -> None:
    good = _sample(tmp_path, "good", "0 0.5 0.5 0.2 0.2\n")
    repeated = _sample(tmp_path, "twice", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.5 0.5 0.2 0.2\n")
    with pytest.warns(UserWarning, match=r"twice\.txt: label row '0 0.5 0.5 0.2 0.2' appears more than once"):
        ds = YoloDataset([repeated, good], nc=2, img_size=32)
    assert ds.image_paths == [good] and ds.skipped == 1 and len(ds.labels) == 1
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"every one of the 1 readable images .*twice\.txt"):
        YoloDataset([repeated], nc=2, img_size=32)


def test_images_under_ten_pixels_are_skipped_as_yolov7_skips_them(tmp_path: Path) -> None:
    good = _sample(tmp_path, "good", "0 0.5 0.5 0.2 0.2\n")
    tiny = _sample(tmp_path, "tiny", "0 0.5 0.5 0.2 0.2\n", hw=(9, 40))
    with pytest.warns(UserWarning, match=r"tiny\.png: .*image size 40x9 is under 10 pixels"):
        ds = YoloDataset([good, tiny], nc=1, img_size=32)
    assert ds.image_paths == [good] and ds.skipped == 1


def test_label_path_takes_yolov7s_first_images_folder_when_its_file_exists(tmp_path: Path) -> None:
    """YOLOv7 maps the first ``/images/`` of a path to ``/labels/``; that file wins over the nearest folder's."""
    image = tmp_path / "images" / "coco" / "images" / "val" / "x.jpg"
    official = tmp_path / "labels" / "coco" / "images" / "val" / "x.txt"
    nearest = tmp_path / "images" / "coco" / "labels" / "val" / "x.txt"
    assert label_path_for(str(image)) == str(nearest)  # neither exists: the nearest folder's (unchanged)
    nearest.parent.mkdir(parents=True)
    nearest.write_text("")
    assert label_path_for(str(image)) == str(nearest)
    official.parent.mkdir(parents=True)
    official.write_text("")
    assert label_path_for(str(image)) == str(official)


def test_rows_past_an_edge_by_rounding_are_read_as_yolov7_reads_them(tmp_path: Path) -> None:
    """6-decimal rows whose edge passes 1 by rounding (1.0000005) keep YOLOv7's float32 values bit for bit; a row
    past it by more (within the tolerance) is clipped to the image."""
    path = tmp_path / "edge.txt"
    path.write_text("0 0.999500 0.500000 0.001001 0.100000\n1 0.600001 0.949999 0.799999 0.100003\n"
                    "0 0.999000 0.500000 0.002800 0.100000\n")
    labels = parse_label_file(str(path), nc=2)
    yolov7 = np.array([line.split() for line in path.read_text().splitlines()], np.float32)
    np.testing.assert_array_equal(labels[:2], yolov7[:2])
    assert labels[2, 1] + labels[2, 3] / 2 == pytest.approx(1.0) and labels[2, 3] < yolov7[2, 3]


def test_images_decode_as_yolov7s_opencv_decodes_them(tmp_path: Path) -> None:
    """8-bit RGB, greyscale, RGBA and 16-bit greyscale / RGB PNGs give OpenCV's pixels (YOLOv7 reads with
    cv2.imread); Pillow's own conversion saturated 16-bit greyscale."""
    import cv2

    from yolo_prune.data.decode import load_image_rgb

    rng = np.random.default_rng(0)
    arrays = {"rgb.png": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
              "grey.png": rng.integers(0, 256, (20, 30), dtype=np.uint8),
              "grey16.png": rng.integers(0, 65536, (20, 30), dtype=np.uint16),
              "rgb16.png": rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16),
              "rgba.png": rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)}
    for name, array in arrays.items():
        cv2.imwrite(str(tmp_path / name), array)
        expected = cv2.imread(str(tmp_path / name))[..., ::-1]
        np.testing.assert_array_equal(load_image_rgb(str(tmp_path / name)), expected, err_msg=name)
