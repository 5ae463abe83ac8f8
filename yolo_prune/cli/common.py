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
    group.add_argument("--cfg", help="shipped cfg name (e.g. yolov7-tiny, deploy/yolov7), a cfg .yaml path, a Darknet "
                       ".cfg, or a classification arch (scnnb, vgg16_bn, resnet18, resnet50: random init, 3x32x32 input)")
    group.add_argument("--weights", help="checkpoint: an official YOLOv7 .pt, a yolo-prune checkpoint, or Darknet "
                       ".weights (read with the .cfg of the same name beside it)")
    parser.add_argument("--nc", type=int, default=None, help="number of classes (overrides the cfg's nc; with --cfg)")


def load_model_from_args(args: argparse.Namespace) -> Model:
    """Build or load the model named by ``--cfg``/``--weights``."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.cfgs import build_model
    from yolo_prune.models.classify import build_classifier, is_arch

    if getattr(args, "weights", None):
        return load_model(args.weights)
    if is_arch(args.cfg):
        return build_classifier(args.cfg, nc=args.nc or 10).eval()
    return build_model(args.cfg, nc=args.nc).eval()


def int_at_least(minimum: int):
    """argparse type factory: an integer >= ``minimum``."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def load_model_and_history(args: argparse.Namespace) -> tuple[Model, list[dict]]:
    """The model named by ``--cfg``/``--weights`` and, for a checkpoint, its history (to extend, not replace)."""
    if getattr(args, "weights", None):
        from yolo_prune.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.weights)
        return loaded.model, list(loaded.history)
    return load_model_from_args(args), []


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
