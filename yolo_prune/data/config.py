"""Parse an official YOLOv7 data YAML (``train``/``val``/``test``/``nc``/``names``) into resolved image lists.

Sources are image folders, ``.txt`` lists of image paths or single image files, alone or in a list; a split's
images are listed as YOLOv7's ``LoadImagesAndLabels`` lists them, so the images (and their order) are test.py's:
folders searched recursively as its ``glob('**/*.*')`` does (hidden files and folders, e.g. macOS ``._x.jpg``
copies, skipped; linked folders followed), list entries starting with ``./`` relative to the list's folder and
other relative entries to the working directory (where YOLOv7 looks; when the file is not there, the list's
folder), and the whole split sorted. Relative sources are resolved against the optional ``path:`` root, else the
YAML's folder; as a fallback for YAMLs written for the YOLOv7 repo layout (``./coco/train2017.txt`` run from the
repo root), the working directory.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import yaml

from yolo_prune.errors import ConfigError, DataError

IMG_FORMATS = ("bmp", "jpg", "jpeg", "png", "tif", "tiff", "dng", "webp", "mpo")
REQUIRED_SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataConfig:
    """A parsed data YAML: absolute image paths per split (``test`` is None when absent), classes and YAML path."""

    path: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: Optional[tuple[str, ...]]
    nc: int
    names: tuple[str, ...]
    root: str = ""


def load_data_config(path: str | os.PathLike[str], splits: Sequence[str] | None = None) -> DataConfig:
    """Read and validate a YOLOv7 data YAML; raises DataError naming the file and key on any problem.

    ``splits``: resolve only these splits (each then required; the others are left empty), e.g. ``("val",)`` for
    evaluation, which must not fail on a ``train:`` path that exists only on the training machine. Default:
    ``train`` and ``val`` required, ``test`` optional.
    """
    yaml_path = os.path.abspath(os.fspath(path))
    raw = _read_yaml(yaml_path)
    root = _root_dir(raw, yaml_path)
    nc, names = _classes(raw, yaml_path)
    wanted = ("train", "val", "test") if splits is None else tuple(splits)
    required = REQUIRED_SPLITS if splits is None else wanted
    found = {key: _split(raw, key, root, yaml_path, key in required) if key in wanted else None
             for key in ("train", "val", "test")}
    return DataConfig(yaml_path, found["train"] or (), found["val"] or (), found["test"], nc, names, root)


def class_count_error(model_nc: int, weights: str, data: str, data_nc: int, hint: str = "") -> ConfigError:
    """The one message, for every command, of a model whose class count differs from the data YAML's."""
    return ConfigError(f"--weights {weights} has nc={model_nc} classes but --data {data} has nc={data_nc}"
                       + (f"; {hint}" if hint else ""))


def is_image_file(path: str) -> bool:
    """True if the file name has one of YOLOv7's image extensions."""
    return path.rsplit(".", 1)[-1].lower() in IMG_FORMATS


def images_in_folder(folder: str | os.PathLike[str]) -> list[str]:
    """The image files under ``folder``, sorted, found as YOLOv7's ``glob('**/*.*', recursive=True)`` finds them:
    hidden files and folders skipped (macOS ``._x.jpg`` copies are not images), linked folders followed."""
    found = glob.glob(os.path.join(glob.escape(os.fspath(folder)), "**", "*.*"), recursive=True)
    return sorted(p for p in found if is_image_file(p) and os.path.isfile(p))


def _read_yaml(yaml_path: str) -> dict[str, Any]:
    """Load the YAML mapping, turning I/O and syntax problems into DataError."""
    from yolo_prune.fileio import read_text

    text = read_text(yaml_path, "data YAML", DataError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{yaml_path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{yaml_path}: data YAML must be a mapping with keys train, val, nc, names")
    return raw


def _root_dir(raw: dict[str, Any], yaml_path: str) -> str:
    """Base folder for relative sources: the ``path:`` key (relative to the YAML) or the YAML's folder."""
    yaml_dir = os.path.dirname(yaml_path)
    value = raw.get("path")
    if value in (None, ""):
        return yaml_dir
    if not isinstance(value, str):
        raise DataError(f"{yaml_path}: key 'path' must be a folder path string, got {value!r}")
    root = os.path.join(yaml_dir, os.path.expanduser(value))
    if not os.path.isdir(root):
        raise DataError(f"{yaml_path}: key 'path': folder '{value}' does not exist (resolved to {root})")
    return os.path.abspath(root)


def _classes(raw: dict[str, Any], yaml_path: str) -> tuple[int, tuple[str, ...]]:
    """Validate ``names`` (list, or dict {index: name}) and ``nc`` (inferred from names if absent)."""
    if "names" not in raw:
        raise DataError(f"{yaml_path}: missing required key 'names'")
    names = raw["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{yaml_path}: key 'names': dict keys must be 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{yaml_path}: key 'names' must be a non-empty list of class names")
    nc = raw.get("nc", len(names))
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise DataError(f"{yaml_path}: key 'nc' must be a positive integer, got {nc!r}")
    if len(names) != nc:
        raise DataError(f"{yaml_path}: key 'names' has {len(names)} entries but 'nc' is {nc}")
    return nc, tuple(str(n) for n in names)


def _split(raw: dict[str, Any], key: str, root: str, yaml_path: str,
           required: bool) -> Optional[tuple[str, ...]]:
    """Resolve one split's source(s) to a sorted tuple of absolute image paths (None for an absent optional split).

    An existing but empty folder gives ``()``: evaluation-only data (``yolo-prune synth --train 0``) loads, and
    the code that reads the split reports it empty.
    """
    value = raw.get(key)
    if value in (None, "", []):
        if required:
            raise DataError(f"{yaml_path}: missing required key '{key}'")
        return None
    sources = value if isinstance(value, list) else [value]
    images: list[str] = []
    for source in sources:
        if not isinstance(source, str):
            raise DataError(f"{yaml_path}: key '{key}': expected a path string, got {source!r}")
        images += _images_from(_resolve_source(source, key, root, yaml_path), key, yaml_path)
    return tuple(sorted(images))


def _resolve_source(source: str, key: str, root: str, yaml_path: str) -> str:
    """Absolute path of a source: as given if absolute, else under ``root``, else under the working directory."""
    expanded = os.path.expanduser(source)
    candidates = [expanded] if os.path.isabs(expanded) else [os.path.join(root, expanded), expanded]
    for candidate in candidates:
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    tried = ", ".join(os.path.abspath(c) for c in candidates)
    raise DataError(f"{yaml_path}: key '{key}': path '{source}' does not exist (tried {tried})")


def _images_from(source: str, key: str, yaml_path: str) -> list[str]:
    """List the images a source names: recursive folder scan (YOLOv7's glob), a .txt list, or one image file."""
    if os.path.isdir(source):
        return images_in_folder(source)
    if source.lower().endswith(".txt"):
        return _read_list(source, key, yaml_path)
    if is_image_file(source):
        return [source]
    raise DataError(f"{yaml_path}: key '{key}': '{source}' is not an image folder, .txt list or image file")


def _read_list(txt_path: str, key: str, yaml_path: str) -> list[str]:
    """Read a .txt image list: ``./`` entries relative to the list's folder, other relative ones as in
    :func:`_list_entry`."""
    try:
        with open(txt_path, encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{yaml_path}: key '{key}': cannot read image list {txt_path}: {e}") from None
    base = os.path.dirname(txt_path)
    return [_list_entry(line, base) for line in lines if line and is_image_file(line)]


def _list_entry(entry: str, base: str) -> str:
    """Absolute path of one list entry. YOLOv7 reads ``./x`` under the list's folder and any other relative entry
    under the working directory; such an entry missing there is taken under the list's folder when it is there."""
    entry = os.path.expanduser(entry)
    if os.path.isabs(entry):
        return entry
    if entry.startswith("./"):
        return os.path.abspath(os.path.join(base, entry[2:]))
    beside_list = os.path.join(base, entry)
    if not os.path.exists(entry) and os.path.exists(beside_list):
        return os.path.abspath(beside_list)
    return os.path.abspath(entry)
