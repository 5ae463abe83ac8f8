#!/usr/bin/env python3
"""Measure a latency table on the Jetson with TensorRT (trtexec): the same file `yolo-prune latency-table` writes
with ONNX Runtime, so `yolo-prune layer-selection --target-latency MS --latency-table FILE` selects for the device.

usage: latency_table.py (--weights CKPT | --cfg CFG) --output FILE [--img-size N] [--rates '[0.25, 0.5, 0.75]']
                        [--fp16] [--dla N] [--warmup-ms MS] [--repeats N]

Every convolution of the deployed model is exported as a one-layer ONNX graph at each candidate (in, out) width
and timed by trtexec (GPU compute time per iteration, ``--exportTimes``); whole models (unpruned and pruned
uniformly at each rate) likewise, for the calibration. The fastest iteration is stored (``statistic: min``).
Needs yolo_prune (for the model, the graph and the ONNX export) and trtexec (JetPack:
/usr/src/tensorrt/bin/trtexec, or set TRTEXEC). Lock the clocks first: sudo nvpmodel -m 0 && sudo jetson_clocks
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def trtexec() -> str:
    exe = os.environ.get("TRTEXEC") or shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not os.access(exe, os.X_OK):
        sys.exit("latency_table.py: trtexec not found (JetPack installs it at /usr/src/tensorrt/bin/trtexec; "
                 "or set TRTEXEC)")
    return exe


def trt_timer(fp16: bool, dla: int | None, warmup_ms: int):
    """A yolo_prune latency-table timer running trtexec on every graph (sequentially: one engine at a time)."""
    from yolo_prune.bench.latency_table import Timing

    def time(sources, shapes, settings, rounds):
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for k, (src, shape) in enumerate(zip(sources, shapes)):
                onnx = Path(tmp) / f"g{k}.onnx"
                onnx.write_bytes(src) if isinstance(src, bytes) else shutil.copy(src, onnx)
                times = Path(tmp) / f"g{k}.times.json"
                cmd = [trtexec(), f"--onnx={onnx}", f"--warmUp={warmup_ms}", f"--iterations={rounds or settings.repeats}",
                       "--duration=0", f"--exportTimes={times}", "--useSpinWait"]
                cmd += ["--fp16"] if fp16 else []
                cmd += [f"--useDLACore={dla}", "--allowGPUFallback"] if dla is not None else []
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                compute = [float(it["computeMs"]) for it in json.loads(times.read_text())]
                out.append(Timing(tuple(compute), tuple({"engine": ms} for ms in compute)))
        return out

    return time


def trt_version() -> str:
    text = subprocess.run([trtexec(), "--help"], capture_output=True, text=True).stdout
    m = re.search(r"TensorRT v(\d+)", text)
    return m.group(1) if m else "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights")
    src.add_argument("--cfg")
    p.add_argument("--output", required=True)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--rates", default="[0.25, 0.5, 0.75]")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--dla", type=int, default=None)
    p.add_argument("--warmup-ms", type=int, default=200)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()

    from yolo_prune.bench.latency_table import Runtime, TableSettings, build_latency_table
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.cfgs import build_model

    model = (load_model(args.weights) if args.weights else build_model(args.cfg)).float().eval()
    img = args.img_size or getattr(model, "default_img_size", 640)
    settings = TableSettings((img, img), 1, None, 0, args.repeats, tuple(ast.literal_eval(args.rates)), None, "min",
                             "profile")
    provider = f"TensorRT {'DLA ' + str(args.dla) if args.dla is not None else 'GPU'} {'fp16' if args.fp16 else 'fp32'}"
    runtime = Runtime("tensorrt", trt_version(), provider, trt_timer(args.fp16, args.dla, args.warmup_ms))
    table = build_latency_table(model, settings, args.output, args.weights or args.cfg, runtime=runtime)
    table.save(args.output)
    print(f"{runtime.name} {runtime.version} ({provider}): whole model {table.base['ms']:.3f} ms; saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
