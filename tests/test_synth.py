"""Tests for the synthetic benchmark generator (`yolo_prune.data.synth`) and `yolo-prune synth`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolo_prune.data.synth import (
    COCO_LARGE_AREA,
    COCO_SMALL_AREA,
    META_FILE,
    SynthResult,
    generate_synthetic,
)
from yolo_prune.errors import DataError, YoloPruneError

SIZE = 256
N_CLASSES = 6


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root except data.yaml (which holds the absolute output path)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "data.yaml"
    }


def _read_labels(path: Path) -> np.ndarray:
    """A YOLO label file as an (n, 5) float array."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert all(len(r) == 5 for r in rows), path
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """One small dataset shared by the read-only tests (keeps the suite fast)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate_synthetic(out, n_train=24, n_val=16, img_size=SIZE, n_classes=N_CLASSES, seed=3)


def test_layout_and_yaml(dataset: SynthResult) -> None:
    root = dataset.root
    for split, n in (("train", 24), ("val", 16)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels] == [f"{i:06d}" for i in range(n)]
    data = yaml.safe_load(dataset.data_yaml.read_text())
    assert data["nc"] == N_CLASSES and data["names"][:3] == ["circle", "square", "triangle"]
    assert len(data["names"]) == N_CLASSES
    for split in ("train", "val"):
        assert Path(data[split]).is_absolute() and Path(data[split]) == root / "images" / split
    assert (root / META_FILE).is_file()
    assert not list(root.parent.glob(".ds.*")), "temp folders must not be left behind"


def test_labels_valid(dataset: SynthResult) -> None:
    n_boxes = 0
    for path in sorted((dataset.root / "labels").rglob("*.txt")):
        lab = _read_labels(path)
        n_boxes += len(lab)
        assert np.all(lab[:, 0] == np.round(lab[:, 0])) and np.all(lab[:, 0] >= 0)
        assert np.all(lab[:, 0] < N_CLASSES)
        assert np.all((lab[:, 1:] >= 0) & (lab[:, 1:] <= 1))
        assert np.all(lab[:, 3:] * SIZE >= 2 - 1e-6), "boxes must be at least 2 px"
        for line in path.read_text().splitlines():
            assert all(len(v.split(".")[1]) == 6 for v in line.split()[1:]), line
    assert n_boxes == sum(dataset.n_objects.values()) > 40


def test_coco_matches_yolo(dataset: SynthResult) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(dataset.coco_json))
    assert sorted(coco.getCatIds()) == list(range(N_CLASSES))
    files = sorted(p.name for p in (dataset.root / "images" / "val").glob("*.jpg"))
    for img_id, name in enumerate(files):  # image id = index in sorted file order
        info = coco.loadImgs(img_id)[0]
        assert info["file_name"] == name and info["width"] == info["height"] == SIZE
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        lab = _read_labels(dataset.root / "labels" / "val" / (Path(name).stem + ".txt"))
        assert len(anns) == len(lab)
        for ann, row in zip(anns, lab):
            x, y, w, h = ann["bbox"]
            assert ann["category_id"] == int(row[0]) and ann["iscrowd"] == 0
            assert ann["area"] == pytest.approx(w * h)
            cx, cy, bw, bh = row[1:] * SIZE
            expect = [cx - bw / 2, cy - bh / 2, bw, bh]
            np.testing.assert_allclose([x, y, w, h], expect, atol=1e-3)
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
    assert min(a["id"] for a in coco.dataset["annotations"]) == 1


def test_size_variety(dataset: SynthResult) -> None:
    areas = []
    for path in (dataset.root / "labels").rglob("*.txt"):
        lab = _read_labels(path)
        areas.extend((lab[:, 3] * lab[:, 4] * SIZE * SIZE).tolist())
    areas = np.asarray(areas)
    assert (areas < 12 ** 2).sum() >= 5, "expected tiny objects"
    assert (areas < COCO_SMALL_AREA).sum() >= 10
    assert ((areas >= COCO_SMALL_AREA) & (areas < COCO_LARGE_AREA)).sum() >= 10
    assert (areas >= 0.25 * COCO_LARGE_AREA).sum() >= 3, "expected some large objects"
    assert sum(dataset.size_buckets.values()) == len(areas)
    assert all(v > 0 for v in dataset.class_counts.values()), dataset.class_counts


def test_large_bucket_at_bigger_images(tmp_path: Path) -> None:
    res = generate_synthetic(tmp_path / "big", n_train=0, n_val=24, img_size=320, seed=1)
    assert res.size_buckets["large"] > 0 and res.size_buckets["small"] > 0


def test_deterministic_bytes(tmp_path: Path) -> None:
    kw = dict(n_train=4, n_val=4, img_size=64, n_classes=4)
    a = generate_synthetic(tmp_path / "a", seed=7, **kw)
    b = generate_synthetic(tmp_path / "b", seed=7, workers=2, **kw)
    c = generate_synthetic(tmp_path / "c", seed=8, **kw)
    assert _tree_bytes(a.root) == _tree_bytes(b.root)
    bytes_c = _tree_bytes(c.root)
    assert bytes_c.keys() == _tree_bytes(a.root).keys()
    assert bytes_c["images/train/000000.jpg"] != _tree_bytes(a.root)["images/train/000000.jpg"]


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"n_train": -1}, "--train"),
        ({"n_val": -5}, "--val"),
        ({"img_size": 16}, "--img"),
        ({"img_size": 100}, "--img"),
        ({"n_classes": 0}, "--classes"),
        ({"n_classes": 21}, "--classes"),
        ({"seed": -1}, "--seed"),
        ({"n_train": 2.5}, "--train"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_argument_validation(tmp_path: Path, kwargs: dict, flag: str) -> None:
    args = dict(n_train=1, n_val=1, img_size=64, n_classes=2, seed=0) | kwargs
    with pytest.raises(DataError, match=flag):
        generate_synthetic(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    kw = dict(n_train=1, n_val=1, img_size=64)
    with pytest.raises(YoloPruneError, match="--exist-ok"):
        generate_synthetic(foreign, **kw)
    with pytest.raises(YoloPruneError, match="refusing"):
        generate_synthetic(foreign, exist_ok=True, **kw)  # not ours: never deleted
    assert (foreign / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_synthetic(empty, **kw)  # an empty folder is fine
    with pytest.raises(DataError):
        generate_synthetic(empty, **kw)
    res = generate_synthetic(empty, exist_ok=True, n_train=2, n_val=0, img_size=64)
    assert len(list((res.root / "images" / "train").iterdir())) == 2
    assert not list((res.root / "images" / "val").iterdir())
    assert json.loads(res.coco_json.read_text())["images"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]


def test_cli_register_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from yolo_prune.cli import synth as cli_synth

    parser = argparse.ArgumentParser()
    cli_synth.register(parser.add_subparsers(dest="command"), "synth", "generate")
    args = parser.parse_args(["synth", "--out", str(tmp_path / "d"), "--train", "3", "--val", "2",
                              "--img", "64", "--classes", "3", "--workers", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "3 train + 2 val" in out and "small" in out and "large" in out


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from yolo_prune.cli import main

    argv = ["synth", "--out", str(tmp_path / "d"), "--train", "2", "--val", "2", "--img", "64",
            "--seed", "1", "--workers", "1"]
    assert main(argv) == 0
    assert (tmp_path / "d" / "annotations" / "instances_val.json").is_file()
    assert main(argv) == 2  # non-empty without --exist-ok: clean error, exit code 2
    assert "--exist-ok" in capsys.readouterr().err
    assert main(argv + ["--exist-ok"]) == 0
    assert main(["synth", "--out", str(tmp_path / "e"), "--img", "5000"]) == 2
    assert "--img" in capsys.readouterr().err
