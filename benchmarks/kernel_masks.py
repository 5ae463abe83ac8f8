"""Kernel-level masks: what unstructured 2-D kernel sparsity buys in ONNX Runtime on CPU, next to structured
(filter) pruning that removes the same fraction of convolution parameters.

Models (``--families``): yolov7-tiny (training cfg, nc=80, 640 px) and torchvision resnet50 (nc=1000, 224 px),
seeded random weights (dense fp32 kernels take the same time whatever the values; what is measured is whether
zeros are skipped). For each: dense; kernel-masked at ``--percents`` of the conv parameters (``kernel_masks(...,
"max-abs")``, one global threshold, whole 3x3/1x1 kernels zero); structured: uniform filter pruning (smallest L1,
coupled residual groups together) at the rate whose conv parameter count is closest to the same fraction removed.
Each model is exported (detectors: ``export_onnx``, fused, raw outputs, opset 12; classifiers:
``export_classifier_onnx``), the zero kernels in the ONNX initializers are counted (exports keep the zeros), and it
is timed with ``yolo_prune.bench`` (one CPUExecutionProvider session at a time, ``--threads`` intra-op threads,
batch 1, ``--rounds`` rounds visiting every model in turn, ``--warmup`` + ``--iters`` runs each).

    .venv/bin/python benchmarks/kernel_masks.py --write     # about 5 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from _report import machine, provenance, publish
from yolo_prune.bench import ort_runner, time_callable

SECTION = "## Kernel-level masks: sparsity vs latency (ONNX Runtime CPU)"
SPEEDUPS: dict[str, list[float]] = {}  # "kernel-masked" / "structured" -> measured speed-ups
LIBS = ("onnxruntime", "onnx")


def conv_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def build(family: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if family == "yolov7-tiny":
        from yolo_prune.models import build_model

        return build_model("yolov7-tiny").eval(), 640
    from yolo_prune.models.classify import build_classifier

    return build_classifier(family, nc=1000, in_ch=3, img_size=224).eval(), 224


def structured(model: nn.Module, fraction: float) -> tuple[float, nn.Module]:
    """Uniform filter pruning whose removed conv parameters are closest to ``fraction`` of the model's."""
    from yolo_prune.prune import prune

    target, best = conv_params(model) * (1 - fraction), None
    for rate in np.arange(0.05, 0.96, 0.025):
        pruned = prune(model, float(rate), "l1", summarize=False).model
        gap = abs(conv_params(pruned) - target)
        if best is None or gap < best[0]:
            best = (gap, float(rate), pruned)
    return best[1], best[2]


def export(model: nn.Module, path: Path, img: int) -> Path:
    if hasattr(model, "detect"):
        from yolo_prune.export.onnx_export import export_onnx
        from yolo_prune.export.options import ExportOptions

        export_onnx(model, path, ExportOptions(img_size=img, opset=12))
    else:
        from yolo_prune.export.classifier import export_classifier_onnx

        export_classifier_onnx(model, path)
    return path


def onnx_zero_fraction(path: Path) -> float:
    """Zero fraction of the weights every Conv node of the ONNX graph reads (through the exporter's Identity
    aliases of equal initializers)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    total = zero = 0
    for node in graph.node:
        if node.op_type == "Conv":
            name = node.input[1]
            while name in alias:
                name = alias[name]
            total += arrays[name].size
            zero += int((arrays[name] == 0).sum())
    return zero / total


def family_rows(family: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    from yolo_prune.prune.masks import apply_masks, kernel_masks

    base, img = build(family)
    models: dict[str, tuple[nn.Module, str]] = {"dense": (base, "-")}
    for p in args.percents:
        masked = apply_masks(__import__("copy").deepcopy(base), kernel_masks(base, p, "max-abs"))
        models[f"kernel-masked {100 * p:.0f}%"] = (masked, f"`kernel_masks(model, {p}, 'max-abs')`")
        rate, pruned = structured(base, p)
        models[f"structured {100 * p:.0f}%"] = (pruned, f"`prune(model, {rate:.3f}, 'l1')`")
    paths = {name: export(m, tmp / f"{family}-{i}.onnx", img) for i, (name, (m, _)) in enumerate(models.items())}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, path in paths.items():
            runner = ort_runner(path, 1, (img, img), torch.device("cpu"), args.threads)
            times[name] += time_callable(runner.run, args.warmup, args.iters).times_ms
            del runner
    dense_ms = statistics.median(times["dense"])
    dense_params = conv_params(base)
    for name in models:
        SPEEDUPS.setdefault(name.split()[0], []).append(dense_ms / statistics.median(times[name]))
    rows = []
    for name, (model, how) in models.items():
        ms = statistics.median(times[name])
        zero = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))
        rows.append(f"| {family} | {name} | {conv_params(model) - zero:,} ({(conv_params(model) - zero) / dense_params:.2f}) "
                    f"| {100 * onnx_zero_fraction(paths[name]):.1f}% | {ms:.1f} | {dense_ms / ms:.2f}x | {how} |")
    return rows


def finding() -> str:
    """The measured speed-up ranges of both kinds, in words."""
    def span(kind: str) -> str:
        v = SPEEDUPS.get(kind, [])
        return f"{min(v):.2f}x-{max(v):.2f}x" if v else "n/a"

    return (f"Measured: kernel-masked models run at {span('kernel-masked')} the dense speed, structured ones at "
            f"{span('structured')}. Kernel zeros are computed like any other weight here; they pay off in storage "
            f"(zeros compress) or on runtimes with sparse convolutions, not in ONNX Runtime CPU latency.")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="yolov7-tiny,resnet50")
    ap.add_argument("--percents", default="0.5,0.7,0.9")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="(re)write the section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[1]
    args.percents = [float(p) for p in args.percents.split(",")]
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            rows += family_rows(family, args, Path(tmp))
    import onnxruntime

    lines = [SECTION, "",
             f"Kernel masks zero whole 2-D kernels but keep every tensor's shape; ONNX Runtime "
             f"{onnxruntime.__version__}'s CPU convolutions are dense, so they compute the zeros. Structured pruning "
             f"removes whole filters (and their input channels downstream). Batch 1, fp32, {args.threads} intra-op "
             f"threads, {args.rounds} rounds x {args.iters} timed runs per model (median); seeded random weights.",
             "", "| model | variant | non-zero conv params (of dense) | zeros in the ONNX conv weights | median ms "
             "| speed-up | how |", "|---|---|---|---|---:|---:|---|", *rows, "",
             finding(), ""]
    lines += [f"Host load while measuring (5-min load average, 2 cores shared with other jobs): "
              f"{load_start:.1f} at the start, {os.getloadavg()[1]:.1f} at the end; absolute times are inflated by "
              f"it, ratios come from runs interleaved in the same rounds.", ""]
    lines += provenance(argv, machine(LIBS), LIBS)
    text = "\n".join(lines)
    publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
