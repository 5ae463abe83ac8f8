"""Darknet ``.data`` files (``classes=``, ``train=``, ``valid=``, ``names=``) as the YOLOv7 data YAML the trainer
and evaluator read. The image lists are the same ``.txt`` files; YOLO labels sit beside the images or under a
parallel ``labels/`` folder, both of which the dataset finds."""
from __future__ import annotations

from pathlib import Path

import yaml

from yolo_prune.errors import DataError


def read_darknet_data(path: str | Path, names: str | Path | None = None) -> dict:
    """The data YAML mapping of a ``.data`` file (``names``: a names file overriding the one it names)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"Darknet data file not found: {path}") from None
    options: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        key, sep, value = text.partition("=")
        if not sep:
            raise DataError(f"{path}:{number}: expected key = value, got {line.strip()!r}")
        options[key.strip()] = value.strip()
    for key in ("classes", "train", "valid"):
        if key not in options:
            raise DataError(f"{path}: missing '{key} = ...' (a Darknet .data file needs classes, train and valid)")
    names_file = Path(names) if names else (Path(options["names"]) if "names" in options else None)
    try:
        nc = int(options["classes"])
    except ValueError:
        raise DataError(f"{path}: classes = {options['classes']!r} is not an integer") from None
    class_names = [str(i) for i in range(nc)]
    if names_file is not None:
        resolved = names_file if names_file.is_absolute() or names_file.exists() else path.parent / names_file
        if not resolved.is_file():
            raise DataError(f"{path}: names file {names_file} not found")
        class_names = [n.strip() for n in resolved.read_text().splitlines() if n.strip()]
        if len(class_names) != nc:
            raise DataError(f"{resolved}: {len(class_names)} names but {path} says classes = {nc}")

    def where(value: str) -> str:
        p = Path(value)
        return str(p if p.is_absolute() or p.exists() else (path.parent / p).resolve())

    return {"train": where(options["train"]), "val": where(options["valid"]), "nc": nc, "names": class_names}


def darknet_data_yaml(path: str | Path, out_dir: str | Path, names: str | Path | None = None) -> Path:
    """Write the data YAML of a ``.data`` file into ``out_dir`` and return its path."""
    from yolo_prune.fileio import write_text_atomic

    mapping = read_darknet_data(path, names)
    return write_text_atomic(Path(out_dir) / f"{Path(path).stem}.data.yaml", yaml.safe_dump(mapping, sort_keys=False))
