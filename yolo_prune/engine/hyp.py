"""Loading and validating YOLOv7 hyperparameter YAMLs (official ``hyp.*.yaml`` format).

``load_hyp("scratch.tiny")`` reads a shipped file from ``yolo_prune/engine/hyp/``; any other argument is a path.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from yolo_prune.errors import ConfigError

REQUIRED_KEYS: tuple[str, ...] = (
    "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
    "box", "cls", "cls_pw", "obj", "obj_pw", "iou_t", "anchor_t", "fl_gamma",
    "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
    "flipud", "fliplr", "mosaic", "mixup",
)  # fmt: skip

#: Optional keys and the value used when a file leaves them out.
OPTIONAL_DEFAULTS: Mapping[str, int | float] = MappingProxyType(
    {"loss_ota": 1, "copy_paste": 0.0, "paste_in": 0.0, "label_smoothing": 0.0, "aux_weight": 0.25}
)

_PROBABILITY = (0.0, 1.0, True)  # [0, 1]
#: Valid ranges ``(low, high, low included)``, high always included; None = unbounded. Values outside them make
#: training fail much later (or diverge): they are refused when the file is read, naming key and line.
RANGES: Mapping[str, tuple[float, float | None, bool]] = MappingProxyType({
    "lr0": (0.0, None, False), "lrf": (0.0, 1.0, False), "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, None, True), "warmup_epochs": (0.0, None, True), "warmup_momentum": (0.0, 1.0, True),
    "warmup_bias_lr": (0.0, None, True), "box": (0.0, None, True), "cls": (0.0, None, True),
    "obj": (0.0, None, True), "cls_pw": (0.0, None, False), "obj_pw": (0.0, None, False),
    "iou_t": (0.0, 1.0, False), "anchor_t": (0.0, None, False), "fl_gamma": (0.0, None, True),
    "hsv_h": _PROBABILITY, "hsv_s": _PROBABILITY, "hsv_v": _PROBABILITY, "degrees": (0.0, 180.0, True),
    "translate": _PROBABILITY, "scale": _PROBABILITY, "shear": (0.0, 90.0, True), "perspective": (0.0, 0.1, True),
    "flipud": _PROBABILITY, "fliplr": _PROBABILITY, "mosaic": _PROBABILITY, "mixup": _PROBABILITY,
    "copy_paste": _PROBABILITY, "paste_in": _PROBABILITY, "label_smoothing": _PROBABILITY,
})

#: Keys accepted without a default (``anchors``: anchors per level, commented out in the official files).
_OTHER_KNOWN: frozenset[str] = frozenset({"anchors"})


def default_hyp_name(model: Any) -> str:
    """The shipped hyp a model trains with when none is given: ``scratch.p6`` for P6 models (official
    ``train_aux.py`` recipe), else ``scratch.p5``."""
    return "scratch.p6" if getattr(model, "is_p6", False) else "scratch.p5"


def hyp_dir() -> Path:
    """Folder of the shipped hyp files."""
    return Path(__file__).resolve().parent / "hyp"


def shipped_hyp_names() -> list[str]:
    """Names accepted by :func:`load_hyp`, e.g. ``scratch.tiny`` for ``hyp/hyp.scratch.tiny.yaml``."""
    return sorted(p.name[len("hyp."):-len(".yaml")] for p in hyp_dir().glob("hyp.*.yaml"))


def resolve_hyp_path(path_or_name: str | Path) -> Path:
    """An existing path as given, else the shipped file for a name (``scratch.p5``, ``hyp.scratch.p5[.yaml]``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"hyp {path}: is a directory, expected a hyp .yaml file or a shipped name "
                          f"({', '.join(shipped_hyp_names())})")
    name = str(path_or_name).removesuffix(".yaml").removeprefix("hyp.")
    if name in shipped_hyp_names():
        return hyp_dir() / f"hyp.{name}.yaml"
    raise ConfigError(
        f"hyp file not found: {path_or_name} (shipped names: {', '.join(shipped_hyp_names())})"
    )


def _key_lines(text: str) -> dict[Any, int]:
    """1-based line of every top-level key of a YAML mapping (empty if the document is not a mapping)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value}


def _is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(key: str, value: Any, where: str) -> int | float:
    """The validated value of one key; ``loss_ota`` also accepts true/false and becomes 0/1."""
    if key == "loss_ota" and isinstance(value, bool):
        return int(value)
    if not _is_number(value):
        raise ConfigError(f"{where}: hyp key '{key}' must be a finite number, got {value!r}")
    if key == "loss_ota":
        if value not in (0, 1):
            raise ConfigError(f"{where}: hyp key 'loss_ota' must be 0 or 1, got {value!r}")
        return int(value)
    if key in RANGES:
        low, high, low_included = RANGES[key]
        if value < low or (value == low and not low_included) or (high is not None and value > high):
            expected = f"{'>=' if low_included else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise ConfigError(f"{where}: hyp key '{key}' must be {expected}, got {value!r}")
    return value


def validate_hyp(raw: Any, source: str, lines: Mapping[Any, int] | None = None) -> dict[str, Any]:
    """Checked copy of a parsed hyp mapping with optional keys filled in.

    Missing required key or non-number -> :class:`ConfigError` naming ``source`` (and line when known);
    unknown keys -> ``UserWarning`` and are kept.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a hyp file must be a YAML mapping of key: value, got {type(raw).__name__}")
    lines = lines or {}
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ConfigError(f"{source}: missing required hyp key(s): {', '.join(missing)}")
    known = set(REQUIRED_KEYS) | set(OPTIONAL_DEFAULTS)
    hyp: dict[str, Any] = dict(OPTIONAL_DEFAULTS)
    for key, value in raw.items():
        where = f"{source}:{lines[key]}" if key in lines else source
        if key in known:
            hyp[key] = _check_value(key, value, where)
        else:
            if key not in _OTHER_KNOWN:
                warnings.warn(f"{where}: unknown hyp key '{key}' (kept, but nothing reads it)", stacklevel=3)
            hyp[str(key)] = value
    return hyp


def load_hyp(path_or_name: str | Path) -> dict[str, Any]:
    """Read and validate a hyp YAML (path, or shipped name ``scratch.tiny``/``scratch.p5``/``scratch.custom``).

    Returns a new dict: every required key, ``loss_ota`` (int 0/1), ``copy_paste``, ``paste_in``,
    ``label_smoothing`` (defaults 1, 0, 0, 0), plus any unknown keys (warned about).
    Raises :class:`ConfigError` (naming the file) for unreadable, malformed or incomplete files.
    """
    from yolo_prune.fileio import read_text

    path = resolve_hyp_path(path_or_name)
    text = read_text(path, "hyp", ConfigError)
    try:
        raw, lines = yaml.safe_load(text), _key_lines(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    return validate_hyp(raw, str(path), lines)
