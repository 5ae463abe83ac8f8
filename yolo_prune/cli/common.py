"""What every command shares: model-source flags, argparse types, and the checks that run before any work.

Each command validates all of its inputs at the top of its ``run`` with these helpers: files are readable files,
output locations are writable (and not folders where files are wanted, or files where folders are wanted), numbers
lie in range, lists parse, the model fits the data. A bad input is a :class:`YoloPruneError` naming the flag (exit
2, one line, no traceback) raised before anything is computed or written.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.model import Model

MAX_IMG = 8192  # larger inputs are not detector inputs (one 99999968 px image would need petabytes)
MAX_SEED = 2**32 - 1  # NumPy's seed range


# ------------------------------------------------------------------------------------------- argparse types
def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """argparse type factory: an integer >= ``minimum`` (and <= ``maximum``)."""
    if maximum is not None:
        wanted = f"an integer from {minimum} to {maximum}"
    else:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """argparse type factory: a finite float in the interval (``None`` = unbounded on that side)."""
    left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    wanted = "a finite number" + (f" {left}" if left else "") + (f" and {right}" if left and right else
                                                                  f" {right}" if right else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        bad_low = low is not None and (value < low or (low_open and value == low))
        bad_high = high is not None and (value > high or (high_open and value == high))
        if not math.isfinite(value) or bad_low or bad_high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
img_int = int_at_least(1, MAX_IMG)
seed_int = int_at_least(0, MAX_SEED)
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
threshold = float_in(0.0, 1.0)  # confidence / IoU thresholds


# ------------------------------------------------------------------------------------------- model source
def add_model_source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--cfg NAME|PATH [--nc N]`` or ``--weights FILE`` (exactly one)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--cfg", help="shipped cfg name (e.g. yolov7-tiny, deploy/yolov7), a cfg .yaml path, a Darknet "
                       ".cfg, or a classification arch (scnnb, vgg16_bn, resnet18, resnet50: random init, 3x32x32 input)")
    group.add_argument("--weights", nargs="+", action=OneWeights, metavar="FILE",
                       help="checkpoint: an official YOLOv7 .pt, a yolo-prune checkpoint, or Darknet .weights (read "
                       "with the .cfg of the same name beside it)")
    parser.add_argument("--nc", type=positive_int, default=None,
                        help="number of classes (overrides the cfg's nc; with --cfg)")


class OneWeights(argparse.Action):
    """``--weights`` as YOLOv7 declares it (``nargs='+'``, so ``--weights a.pt`` and lists parse), one file kept.

    Several files (YOLOv7's ensembles) are a usage error naming them, never silently reduced to one.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        values = [values] if isinstance(values, str) else list(values)
        if len(values) != 1:
            parser.error(f"{option_string} takes one checkpoint here, got {len(values)}: {' '.join(values)} "
                         "(ensembles of several checkpoints are not supported)")
        setattr(namespace, self.dest, values[0])


def add_run_flags(parser: argparse.ArgumentParser, project: str) -> None:
    """--project/--name/--exist-ok/--resume: where a training run writes and how an interrupted one continues
    (YOLOv7's train.py flags, shared by every trainer's command)."""
    parser.add_argument("--project", default=project, help=f"parent folder of runs (default {project})")
    parser.add_argument("--name", default="exp", help="run name: project/name, or name2, name3... if it exists")
    parser.add_argument("--exist-ok", action="store_true", help="write into project/name even if it exists")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                        help="continue an interrupted run: its last.pt or run folder "
                             "(default: newest under --project)")


def check_model_source(args: argparse.Namespace) -> None:
    """``--weights`` is a readable file; ``--nc`` only goes with ``--cfg``."""
    if getattr(args, "weights", None):
        input_file(args.weights, "--weights")
        if getattr(args, "nc", None) is not None:
            raise YoloPruneError("--nc only applies with --cfg (a checkpoint keeps its own classes)")


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


def load_model_and_history(args: argparse.Namespace) -> tuple[Model, list[dict]]:
    """The model named by ``--cfg``/``--weights`` and, for a checkpoint, its history (to extend, not replace)."""
    if getattr(args, "weights", None):
        from yolo_prune.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.weights)
        return loaded.model, list(loaded.history)
    return load_model_from_args(args), []


# ------------------------------------------------------------------------------------------- paths
def input_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a Path if it is a readable file; else a YoloPruneError naming ``flag``."""
    path = Path(path)
    if path.is_dir():
        raise YoloPruneError(f"{flag} {path}: is a directory, expected a file")
    if not path.is_file():
        raise YoloPruneError(f"{flag} {path}: file not found")
    if not os.access(path, os.R_OK):
        raise YoloPruneError(f"{flag} {path}: file is not readable (permission denied)")
    return path


def input_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a Path if it is an existing directory."""
    path = Path(path)
    if path.is_file():
        raise YoloPruneError(f"{flag} {path}: is a file, expected a directory")
    if not path.is_dir():
        raise YoloPruneError(f"{flag} {path}: directory not found")
    return path


def _writable_in(folder: Path, path: Path, flag: str) -> None:
    """Create and delete a scratch file in the nearest existing ancestor of ``folder``: the only test that also
    holds for root, read-only mounts and pseudo file systems."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise YoloPruneError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".yolo-prune-write-check-", dir=probe)
    except OSError as exc:
        raise YoloPruneError(f"{flag} {path}: cannot write in {probe} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def output_file(path: str | os.PathLike, flag: str, inputs: Sequence[str | os.PathLike | None] = (),
                example: str = "out.pt") -> Path:
    """A file we may (over)write: not a folder, not one of ``inputs``, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise YoloPruneError(f"{flag} {path}: is a directory; give a file name such as {path / example}")
    for given in inputs:
        same = given and Path(given).exists() and path.exists() and path.samefile(given)
        if given and (same or path.resolve() == Path(given).resolve()):
            raise YoloPruneError(f"{flag} {path}: is the input checkpoint {given}; write to a new file")
    _writable_in(path.parent, path, flag)
    return path


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder we may create or write into: not an existing file, writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise YoloPruneError(f"{flag} {path}: is a file, expected a directory")
    _writable_in(path, path, flag)
    return path


# ------------------------------------------------------------------------------------------- values
def fit_img(img: int, stride: int, flag: str = "--img") -> int:
    """YOLOv7's rule (``check_img_size``): a size that is not a multiple of the model's max stride is rounded up
    to one, with a warning (the trainer and the benchmark warn the same way)."""
    import warnings

    from yolo_prune.data.letterbox import round_up_to_stride

    size = round_up_to_stride(img, stride)
    if size != img:
        warnings.warn(f"{flag} {img} is not a multiple of the model's max stride {stride}; using {size}", stacklevel=2)
    return size


def model_img(model: "torch.nn.Module", img: int | None, flag: str = "--img") -> int:
    """The image size to count a model at: a detector's ``img`` (default: its own, 640, 1280 for P6 models, a Darknet
    cfg's width) rounded up to its stride; a classifier's own input size (``img``, when given and different, is
    noted on stderr: the network is built for one size)."""
    if hasattr(model, "stride"):
        return fit_img(img or getattr(model, "default_img_size", 640), int(model.stride.max()), flag)
    if img is not None and img != model.img_size:
        print(f"note: {flag} {img} ignored: this classifier is built for {model.img_size} px inputs", file=sys.stderr)
    return model.img_size


def literal_numbers(text: str, flag: str, kind: type, low: float, high: float | None = None,
                    open_interval: bool = False, high_open: bool = False) -> list:
    """A list (or one value) of numbers parsed with ``ast.literal_eval``; ``kind`` int refuses fractions, values
    must lie in [low, high] ((low, high) with ``open_interval``, [low, high) with ``high_open``), and none may
    repeat."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise YoloPruneError(f"{flag}: cannot parse {text!r}; expected a list such as "
                             f"{'[0, 5, 23]' if kind is int else '[0.25, 0.5]'}") from None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or (kind is int and not all(isinstance(v, int) for v in values)):
        wanted = "layer indices (integers)" if kind is int else "numbers"
        raise YoloPruneError(f"{flag}: expected a non-empty list of {wanted}, got {text!r}")
    for v in values:
        below = v < low or (open_interval and v == low)
        above = high is not None and (v > high or ((open_interval or high_open) and v == high))
        if not math.isfinite(v) or below or above:
            where = f"{'(' if open_interval else '['}{low:g}, {high:g}{')' if open_interval or high_open else ']'}" \
                if high is not None else f">= {low:g}"
            raise YoloPruneError(f"{flag}: {v!r} is out of range; values must lie in {where}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise YoloPruneError(f"{flag}: {', '.join(map(str, repeated))} listed more than once")
    return [kind(v) for v in values]


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


#: YOLOv5's AP metric flag, which test.py and train.py both take: not implemented here.
V5_METRIC = (0, "YOLOv5's AP interpolation is not implemented (test.py's default metric is used)")


def add_unsupported_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[int, str]]) -> None:
    """Accept YOLOv7 flags this command does not implement (``flag: (values it takes, why / what instead)``) so
    that :func:`refuse_unsupported` names them, instead of argparse's bare "unrecognized arguments"."""
    for flag, (nargs, _) in flags.items():
        kwargs: dict[str, Any] = {"action": "store_true"} if nargs == 0 else {"nargs": nargs}
        parser.add_argument(flag, dest=_unsupported_dest(flag), help=argparse.SUPPRESS, default=None, **kwargs)
    parser.set_defaults(unsupported_flags=flags)


def refuse_unsupported(args: argparse.Namespace) -> None:
    """A usage error naming every unimplemented YOLOv7 flag given, with what to do instead."""
    flags = getattr(args, "unsupported_flags", {})
    given = [f"{flag}: {why}" for flag, (_, why) in flags.items() if getattr(args, _unsupported_dest(flag)) not in
             (None, False)]
    if given:
        raise YoloPruneError("YOLOv7 flag(s) yolo-prune does not implement: " + "; ".join(given))


def _unsupported_dest(flag: str) -> str:
    return "unsupported_" + flag.lstrip("-").replace("-", "_")
