"""Typed view of an official-format YOLOv7 cfg: rows ``[from, number, module, args]`` -> ``LayerSpec``.

Strings in ``args`` are resolved through small whitelists (``nn.LeakyReLU(0.1)``, ``None``, ``nc``,
``anchors``, ``True``); nothing is ever passed to ``eval``.
"""
from __future__ import annotations

import ast
import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn
import yaml

from yolo_prune.errors import ConfigError

# Activation name -> class. Official cfgs write e.g. ``nn.LeakyReLU(0.1)`` or ``nn.SiLU()``.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "LeakyReLU": nn.LeakyReLU,
    "SiLU": nn.SiLU,
    "ReLU": nn.ReLU,
    "ReLU6": nn.ReLU6,
    "Hardswish": nn.Hardswish,
    "Mish": nn.Mish,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Identity": nn.Identity,
}

_CALL = re.compile(r"^(?:nn\.|torch\.nn\.)?(\w+)\((.*)\)$")


@dataclass(frozen=True)
class ActivationSpec:
    """An activation named in a cfg, e.g. ``LeakyReLU`` with ``(0.1,)``; builds a fresh module."""

    name: str
    args: tuple[Any, ...] = ()

    def build(self) -> nn.Module:
        return ACTIVATIONS[self.name](*self.args)

    def __str__(self) -> str:
        return f"nn.{self.name}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True)
class LayerSpec:
    """One cfg row. ``from_`` is an int or a tuple of ints (negative = relative to this layer)."""

    index: int
    from_: int | tuple[int, ...]
    repeats: int
    module: str
    args: tuple[Any, ...]

    def sources(self) -> tuple[int, ...]:
        """Absolute indices of the layers this one reads (-1 before layer 0 means the image)."""
        fs = (self.from_,) if isinstance(self.from_, int) else self.from_
        return tuple(f if f >= 0 else self.index + f for f in fs)


def parse_activation(text: str, where: str) -> ActivationSpec:
    """``'nn.LeakyReLU(0.1)'`` -> ActivationSpec; arguments must be Python literals."""
    m = _CALL.match(text.strip())
    if not m or m.group(1) not in ACTIVATIONS:
        raise ConfigError(f"{where}: unknown activation {text!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    inner = m.group(2).strip()
    try:
        args = ast.literal_eval(f"({inner},)") if inner else ()
    except (ValueError, SyntaxError) as exc:
        raise ConfigError(f"{where}: activation arguments must be literals, got {text!r}") from exc
    return ActivationSpec(m.group(1), tuple(args))


def resolve_arg(value: Any, symbols: dict[str, Any], where: str) -> Any:
    """Resolve one cfg argument: known symbols, ``None``/booleans, activations; other strings stay strings."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in symbols:
        return copy.deepcopy(symbols[text])
    if text in {"None", "True", "False"}:
        return {"None": None, "True": True, "False": False}[text]
    if "(" in text:
        return parse_activation(text, where)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # e.g. 'nearest'


def _check_row(row: Any, index: int, source: str) -> tuple[Any, int, str, list]:
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ConfigError(f"{source}: layer {index}: expected [from, number, module, args], got {row!r}")
    f, n, m, args = row
    ok_from = isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(x, int) for x in f))
    if not ok_from:
        raise ConfigError(f"{source}: layer {index}: 'from' must be an int or a list of ints, got {f!r}")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"{source}: layer {index}: 'number' must be a positive int, got {n!r}")
    if not isinstance(m, str):
        raise ConfigError(f"{source}: layer {index}: module must be a name, got {m!r}")
    if not isinstance(args, list):
        raise ConfigError(f"{source}: layer {index}: args must be a list, got {args!r}")
    return f, n, m, args


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_header(cfg: dict, source: str = "<cfg>") -> None:
    """``nc``, ``anchors``, ``depth_multiple``, ``width_multiple`` and the row lists have usable types and values
    (a string ``nc`` or a negative ``width_multiple`` would otherwise fail deep inside the builder)."""
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in cfg:
            raise ConfigError(f"{source}: missing key '{key}'")
    nc = cfg["nc"]
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ConfigError(f"{source}: 'nc' must be a positive integer (number of classes), got {nc!r}")
    anchors = cfg["anchors"]
    levels_ok = isinstance(anchors, list) and anchors and all(
        isinstance(a, list) and a and len(a) % 2 == 0 and len(a) == len(anchors[0])
        and all(_is_number(v) and v > 0 for v in a) for a in anchors)
    if not (levels_ok or (isinstance(anchors, int) and not isinstance(anchors, bool) and anchors >= 1)):
        raise ConfigError(f"{source}: 'anchors' must be a list of levels [w1, h1, w2, h2, ...] of positive numbers "
                          f"(the same count per level) or a positive anchor count, got {anchors!r}")
    for key in ("depth_multiple", "width_multiple"):
        value = cfg.get(key, 1.0)
        if not _is_number(value) or not 0 < value <= 16:
            raise ConfigError(f"{source}: '{key}' must be a number in (0, 16], got {value!r}")
    for key in ("backbone", "head"):
        if not isinstance(cfg[key], list):
            raise ConfigError(f"{source}: '{key}' must be a list of [from, number, module, args] rows")


def parse_layers(cfg: dict, source: str = "<cfg>") -> list[LayerSpec]:
    """Turn ``backbone + head`` rows into LayerSpecs, resolving symbols and checking references."""
    check_header(cfg, source)
    symbols = {"nc": cfg["nc"], "anchors": cfg["anchors"]}
    gd = float(cfg.get("depth_multiple", 1.0))
    specs: list[LayerSpec] = []
    for i, row in enumerate(list(cfg["backbone"]) + list(cfg["head"])):
        f, n, m, args = _check_row(row, i, source)
        where = f"{source}: layer {i} ({m})"
        resolved = tuple(resolve_arg(a, symbols, where) for a in args)
        n = max(round(n * gd), 1) if n > 1 else n
        spec = LayerSpec(i, f if isinstance(f, int) else tuple(f), n, m, resolved)
        for src in spec.sources():
            if src >= i or (src < 0 and i > 0) or (src < -1):
                raise ConfigError(f"{where}: 'from' {f!r} refers to layer {src}, which is not before layer {i}")
        specs.append(spec)
    return specs


def load_cfg(path: str | Path) -> dict:
    """Read a cfg YAML file into a dict (no symbol resolution yet)."""
    from yolo_prune.fileio import read_text

    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "model cfg", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with nc/anchors/backbone/head")
    return data


def make_divisible(x: float, divisor: int = 8) -> int:
    """Round a channel count up to a multiple of ``divisor`` (official width_multiple rule)."""
    return int(-(-x // divisor) * divisor)


ActFactory = Callable[[], nn.Module]
