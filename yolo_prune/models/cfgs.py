"""Shipped cfgs, addressable by name (``yolov7-tiny``, ``deploy/yolov7``) or by path, and ``build_model``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from yolo_prune.errors import ConfigError
from yolo_prune.models.model import Model
from yolo_prune.models.spec import load_cfg

CFG_DIR = Path(__file__).resolve().parent / "cfg"


def available_cfgs() -> list[str]:
    """Names accepted by ``resolve_cfg``: ``NAME`` (training variant) and ``deploy/NAME``."""
    names = sorted(p.stem for p in (CFG_DIR / "training").glob("*.yaml"))
    return names + [f"deploy/{p.stem}" for p in sorted((CFG_DIR / "deploy").glob("*.yaml"))]


def resolve_cfg(name_or_path: str | Path) -> Path:
    """A shipped cfg name or a path to a YAML file -> the file's path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"model cfg {path}: " + ("is a directory, expected a .yaml file" if path.is_dir()
                                                         else "file not found"))
        return path
    variant, _, stem = text.rpartition("/")
    candidate = CFG_DIR / (variant or "training") / f"{stem}.yaml"
    if variant not in {"", "training", "deploy"} or not candidate.is_file():
        raise ConfigError(f"unknown model cfg '{text}'; shipped: {', '.join(available_cfgs())}, or give a .yaml path")
    return candidate


def build_model(cfg: str | Path | dict, nc: int | None = None, ch: int = 3,
                widths: Sequence[int] | None = None) -> Model:
    """Build a Model from a shipped name, a cfg path or a cfg dict (``nc`` overrides the cfg's). A Darknet
    ``.cfg`` path, or the cfg dict of a Darknet model (its ``yaml``), builds a :class:`DarknetModel`."""
    if isinstance(cfg, dict):
        if "darknet" in cfg:
            from yolo_prune.models.darknet import build_darknet

            return build_darknet(cfg, nc=nc, widths=widths)
        return Model(cfg, ch=ch, nc=nc, widths=widths)
    if str(cfg).endswith(".cfg"):
        from yolo_prune.models.darknet import build_darknet, read_darknet_cfg

        return build_darknet(read_darknet_cfg(cfg), nc=nc, widths=widths)
    path = resolve_cfg(cfg)
    return Model(load_cfg(path), ch=ch, nc=nc, widths=widths, source=str(path))
