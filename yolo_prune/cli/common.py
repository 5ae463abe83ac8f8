"""Argument helpers shared by CLI commands (model source flags, JSON output)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from yolo_prune.models.model import Model


def add_model_source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--cfg NAME|PATH [--nc N]`` or ``--weights FILE`` (exactly one)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--cfg", help="shipped cfg name (e.g. yolov7-tiny, deploy/yolov7) or a cfg .yaml path")
    group.add_argument("--weights", help="checkpoint: an official YOLOv7 .pt or a yolo-prune checkpoint")
    parser.add_argument("--nc", type=int, default=None, help="number of classes (overrides the cfg's nc; with --cfg)")


def load_model_from_args(args: argparse.Namespace) -> Model:
    """Build or load the model named by ``--cfg``/``--weights``."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.cfgs import build_model

    if getattr(args, "weights", None):
        return load_model(args.weights)
    return build_model(args.cfg, nc=args.nc).eval()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
