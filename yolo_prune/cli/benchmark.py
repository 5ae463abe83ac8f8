"""`yolo-prune benchmark`: latency and throughput of checkpoints or ONNX files in PyTorch (eager or compiled) or
ONNX Runtime, with each model's speed-up over the first one next to its GFLOPs ratio.

Exit codes: 0 measured; 2 bad input (a missing or unreadable file, a size or batch the model cannot take, a
runtime that cannot run the file): checked before anything is timed (an ONNX file that ONNX Runtime still fails
to load is reported when its turn comes), and no JSON file is written.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from yolo_prune.bench.runners import RUNTIMES
from yolo_prune.cli.common import img_int, input_file, non_negative_int, output_file, positive_int
from yolo_prune.errors import YoloPruneError

EPILOG = """examples:
  yolo-prune benchmark --weights yolov7-tiny.pt pruned.pt --img-size 640 --batch-size 1 8 --threads 2
  yolo-prune benchmark --runtime ort --weights yolov7-tiny.onnx pruned.onnx --threads 2 --json speed.json
  yolo-prune benchmark --runtime ort --weights yolov7-tiny.pt pruned.pt   (checkpoints exported to a temporary ONNX)
  yolo-prune benchmark --runtime torch-compile --device 0 --fp16 --weights yolov7.pt pruned.pt --batch-size 1 32
runtimes: torch (eager, fused copy), torch-compile (torch.compile; CUDA graphs on CUDA), ort (ONNX Runtime: CPU,
or the CUDA provider with --device 0). Timed: the forward pass on one synthetic batch (no pre-processing, no NMS).
speed-up = the first model's median / this model's (same batch); GFLOPs ratio = the first model's GFLOPs / this
model's; speed-up / GFLOPs ratio = the share of the theoretical saving the runtime delivers (1.0: all of it).
exit codes: 0 ok, 2 bad input (nothing is timed and no JSON is written)."""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True, metavar="FILE",
                   help="checkpoints (.pt: yolo-prune or official YOLOv7) and/or ONNX files (.onnx, with --runtime "
                        "ort); the first one is the reference for the speed-up")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help="torch (default), torch-compile or ort")
    p.add_argument("--device", default="cpu", help="cpu (default), 0, cuda:0 ...")
    p.add_argument("--batch-size", nargs="+", type=positive_int, default=None, metavar="N",
                   help="batch sizes to time (default 1; a static-batch ONNX file uses its own)")
    p.add_argument("--img-size", "--img", dest="img_size", nargs="+", type=img_int, default=None, metavar="N",
                   help="input size: H W, or one value for both (default: the fixed size of the ONNX files given, "
                        "else 640; a fixed-size ONNX file always uses its own)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--iters", type=positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads (torch.set_num_threads / ORT intra_op_num_threads; default: the runtime's)")
    p.add_argument("--fp16", action="store_true", help="half precision (torch runtimes; for ort export with --fp16)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write every row (and run) here")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Input files readable; the JSON output writable, not a folder and not an input (before anything loads)."""
    for name in args.weights:
        input_file(name, "--weights")
    if args.json is not None:
        output_file(args.json, "--json", inputs=args.weights, example="speed.json")


def _img_size(values: list[int] | None) -> tuple[int, int] | None:
    """--img-size as (h, w), None when not given."""
    from yolo_prune.export.options import as_hw

    if values is None:
        return None
    if len(values) > 2:
        raise YoloPruneError(f"--img-size takes one or two values (H W), got {' '.join(map(str, values))}")
    return as_hw(values)


def _environment(device: Any, settings: Any) -> dict[str, Any]:
    """Versions and settings that a timing depends on (stored with the JSON rows)."""
    import os

    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                           "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                           "settings": settings.to_dict()}
    if settings.runtime == "ort":
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    return env


def run(args: argparse.Namespace) -> int:
    from yolo_prune.bench.measure import BenchSettings, measure
    from yolo_prune.bench.table import compare, format_table
    from yolo_prune.bench.targets import load_targets
    from yolo_prune.fileio import write_text_atomic
    from yolo_prune.pipeline.devices import select_device

    check_args(args)
    settings = BenchSettings(args.runtime, args.warmup, args.iters, args.threads, args.fp16)
    device = select_device(args.device)
    img = _img_size(args.img_size)
    targets = load_targets(args.weights, args.runtime, img)
    jobs = [(t, b) for t in targets for b in t.batches(args.batch_size)]

    rows, runtimes = [], []
    with tempfile.TemporaryDirectory(prefix="yolo-prune-bench-") as work:
        for i, (target, batch) in enumerate(jobs, 1):
            h, w = target.img_size
            print(f"[{i}/{len(jobs)}] {target.name}: {args.runtime}, batch {batch}, {h}x{w}, {args.warmup} warm-up "
                  f"+ {args.iters} timed runs ...", file=sys.stderr, flush=True)
            row, described = measure(target, batch, settings, device, Path(work))
            print(f"    median {row.stats.median_ms:.2f} ms, {row.stats.throughput:.1f} img/s", file=sys.stderr,
                  flush=True)
            rows.append(row)
            runtimes.append(described)

    comparisons = compare(rows)
    print(f"{'; '.join(dict.fromkeys(runtimes))}; {args.warmup} warm-up + {args.iters} timed runs per row; "
          f"speed-up and GFLOPs ratio against {targets[0].name}")
    if len({t.img_size for t in targets}) > 1:
        print("note: the models take different input sizes; GFLOPs are per image at each model's own size")
    print(format_table(comparisons))
    if args.json is not None:
        payload = {"environment": _environment(device, settings), "reference": targets[0].name,
                   "rows": [c.to_dict() for c in comparisons]}
        write_text_atomic(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {len(comparisons)} rows -> {args.json}")
    return 0
