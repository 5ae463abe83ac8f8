"""`yolo-prune <command>`: parses arguments and calls stage functions; nothing else lives here."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

from yolo_prune.errors import YoloPruneError

# Subcommand name -> module under yolo_prune.cli exposing ``register(subparsers)``.
# Modules are imported lazily so `yolo-prune --help` stays fast and optional extras stay optional.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("yolo_prune.cli.info", "print a layer table, parameter count and GFLOPs of a model"),
    "graph": ("yolo_prune.cli.graph", "derive or check a pruning connectivity graph (pruning_config YAML)"),
    "prune": ("yolo_prune.cli.prune", "prune filters structurally and save a pruned checkpoint"),
    "synth": ("yolo_prune.cli.synth", "generate the built-in synthetic detection benchmark"),
    "test": ("yolo_prune.cli.test", "evaluate a model, or run a pruning sensitivity analysis"),
    "layer-selection": ("yolo_prune.cli.layer_selection", "select layers and rates from a sensitivity analysis"),
    "train": ("yolo_prune.cli.train", "train or fine-tune a (pruned) model"),
    "iterate": ("yolo_prune.cli.iterate", "analyse -> select -> prune -> fine-tune, repeated"),
    "export": ("yolo_prune.cli.export", "export to ONNX (verified in ONNX Runtime) or a TensorRT engine"),
    "benchmark": ("yolo_prune.cli.benchmark", "measure latency and throughput of models"),
    "darknet-prune": ("yolo_prune.cli.darknet_prune", "the Pruning-Darknet workflow on Darknet .cfg + .weights"),
    "latency-table": ("yolo_prune.cli.latency_table", "measure each prunable layer's latency at each candidate width"),
    "convert-activation": ("yolo_prune.cli.convert_activation", "swap activations (e.g. SiLU -> LeakyReLU)"),
    "mask": ("yolo_prune.cli.mask", "kernel-level pruning masks (global threshold), kept at zero when fine-tuning"),
    "fbs": ("yolo_prune.cli.fbs", "run-time channel gating (FBS): density schedule, MACs, accuracy, latency"),
    "sweep": ("yolo_prune.cli.sweep", "Li et al.: parameters vs accuracy over filter percentages, with retraining"),
    "classify": ("yolo_prune.cli.classify", "train, evaluate and analyse classification CNNs (vgg16_bn, resnet, SCNNB)"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this installation."""
    import importlib.util

    return {n: v for n, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolo-prune",
        description="Concatenation-aware structured pruning for YOLOv7 detectors.",
    )
    from yolo_prune import __version__

    parser.add_argument("--version", action="version", version=f"yolo-prune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in _available_commands().items():
        module = importlib.import_module(module_name)
        module.register(sub, name, help_text)
    return parser


def _warnings_as_lines(command: str):
    """``warnings.showwarning`` for the CLI: one ``yolo-prune <command>: warning: ...`` line, no source line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        print(f"yolo-prune {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None means this process was started as ``yolo-prune`` (its arguments from the
    command line), and then the host allocator keeps freed memory for reuse (:mod:`yolo_prune.host_allocator`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        from yolo_prune.host_allocator import keep_freed_memory

        keep_freed_memory()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per run (a fresh registry per invocation)
            warnings.showwarning = _warnings_as_lines(args.command)
            return int(args.func(args) or 0)
    except YoloPruneError as exc:
        print(f"yolo-prune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"yolo-prune {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `yolo-prune test --json | head`: the reader left; no traceback, no second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
