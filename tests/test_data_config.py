"""Data YAML parsing: folder and .txt sources, relative paths, `path:` root, and errors naming file/key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from yolo_prune.data import DataConfig, load_data_config
from yolo_prune.errors import DataError


def _image(path: Path) -> Path:
    """Write a tiny RGB JPEG (creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(path)
    return path


def _yaml(path: Path, data: dict) -> Path:
    """Write a data YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """coco-like tree: images/{train,val} folders plus a train.txt list with ./ relative entries."""
    for i in range(3):
        _image(tmp_path / "ds" / "images" / "train" / f"{i}.jpg")
    _image(tmp_path / "ds" / "images" / "val" / "v.png")
    (tmp_path / "ds" / "images" / "val" / "notes.md").write_text("not an image")
    (tmp_path / "ds" / "train.txt").write_text("./images/train/0.jpg\nimages/train/2.jpg\n\n")
    return tmp_path


def test_folder_sources_relative_to_yaml(tree: Path) -> None:
    cfg = load_data_config(_yaml(tree / "ds" / "data.yaml", {
        "train": "images/train", "val": "./images/val", "nc": 2, "names": ["a", "b"]}))
    assert isinstance(cfg, DataConfig)
    assert [Path(p).name for p in cfg.train] == ["0.jpg", "1.jpg", "2.jpg"]
    assert [Path(p).name for p in cfg.val] == ["v.png"]
    assert cfg.test is None and cfg.nc == 2 and cfg.names == ("a", "b")
    assert all(Path(p).is_absolute() for p in cfg.train)
    assert cfg.path == str(tree / "ds" / "data.yaml")


def test_txt_list_relative_to_txt_folder(tree: Path) -> None:
    cfg = load_data_config(_yaml(tree / "cfgs" / "data.yaml", {
        "train": "../ds/train.txt", "val": ["../ds/images/val", "../ds/images/train/1.jpg"],
        "test": "../ds/train.txt", "nc": 1, "names": ["x"]}))
    assert cfg.train == (str(tree / "ds/images/train/0.jpg"), str(tree / "ds/images/train/2.jpg"))
    assert [Path(p).name for p in cfg.val] == ["1.jpg", "v.png"]  # the split sorted as a whole, as YOLOv7's
    assert cfg.test == cfg.train


def test_folders_listed_as_yolov7s_glob(tree: Path) -> None:
    """Hidden files and folders (macOS `._x.jpg` copies, `.ipynb_checkpoints`) are not images of the split; a
    linked folder inside is searched."""
    val = tree / "ds" / "images" / "val"
    (val / "._v.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _image(val / ".ipynb_checkpoints" / "old.jpg")
    _image(tree / "elsewhere" / "linked.jpg")
    (val / "more").symlink_to(tree / "elsewhere", target_is_directory=True)
    cfg = load_data_config(_yaml(tree / "ds" / "data.yaml", {"train": "images/train", "val": "images/val",
                                                             "names": ["a"]}))
    assert [str(Path(p).relative_to(val)) for p in cfg.val] == ["more/linked.jpg", "v.png"]


def test_list_entries_resolved_as_yolov7_does(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`./x` is under the list's folder; another relative entry under the working directory (YOLOv7), else under
    the list's folder."""
    _image(tree / "work" / "images" / "train" / "2.jpg")
    monkeypatch.chdir(tree / "work")
    cfg = load_data_config(_yaml(tree / "ds" / "d.yaml", {"train": "train.txt", "val": "images/val",
                                                          "names": ["a"]}))
    assert cfg.train == (str(tree / "ds/images/train/0.jpg"), str(tree / "work/images/train/2.jpg"))
    monkeypatch.chdir(tree)
    cfg = load_data_config(tree / "ds" / "d.yaml")
    assert cfg.train == (str(tree / "ds/images/train/0.jpg"), str(tree / "ds/images/train/2.jpg"))


def test_path_root_key_and_names_dict(tree: Path) -> None:
    cfg = load_data_config(_yaml(tree / "cfg" / "d.yaml", {
        "path": "../ds", "train": "train.txt", "val": "images/val", "names": {0: "p", 1: "q"}}))
    assert cfg.nc == 2 and cfg.names == ("p", "q") and len(cfg.train) == 2


@pytest.mark.parametrize("missing", ["train", "val", "names"])
def test_missing_key_names_file_and_key(tree: Path, missing: str) -> None:
    data = {"train": "images/train", "val": "images/val", "nc": 1, "names": ["a"]}
    del data[missing]
    path = _yaml(tree / "ds" / "bad.yaml", data)
    with pytest.raises(DataError, match=f"bad.yaml.*'{missing}'"):
        load_data_config(path)


def test_names_count_mismatch(tree: Path) -> None:
    path = _yaml(tree / "ds" / "bad.yaml", {"train": "images/train", "val": "images/val", "nc": 3, "names": ["a"]})
    with pytest.raises(DataError, match=r"bad.yaml.*'names' has 1 entries but 'nc' is 3"):
        load_data_config(path)


def test_nonexistent_path_names_key(tree: Path) -> None:
    path = _yaml(tree / "ds" / "bad.yaml", {"train": "images/train", "val": "nope/val", "nc": 1, "names": ["a"]})
    with pytest.raises(DataError, match=r"bad.yaml: key 'val': path 'nope/val' does not exist"):
        load_data_config(path)


def test_unreadable_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_data_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DataError, match="list.yaml.*mapping"):
        load_data_config(tmp_path / "list.yaml")


def test_empty_split_folder_loads_and_fails_where_it_is_used(tree: Path, tmp_path: Path) -> None:
    """Evaluation-only data (`yolo-prune synth --train 0`): an empty train folder loads; training refuses it."""
    from yolo_prune.engine.train_state import TrainSettings
    from yolo_prune.engine.trainer import train
    from yolo_prune.pipeline.evaluation import DataSettings, split_images

    (tree / "ds" / "images" / "empty").mkdir()
    data = _yaml(tree / "ds" / "eval.yaml", {"train": "images/empty", "val": "images/val", "nc": 1, "names": ["a"]})
    cfg = load_data_config(data)
    assert cfg.train == () and len(cfg.val) == 1
    with pytest.raises(DataError, match="split 'train' is missing or has no images"):
        split_images(DataSettings(str(data), "train"))
    settings = TrainSettings(cfg="yolov7-tiny", data=str(data), epochs=1, batch_size=2, img_size=64, device="cpu",
                             workers=0, project=str(tmp_path / "runs"), progress=False)
    with pytest.raises(DataError, match="key 'train': no images found"):
        train(settings)
