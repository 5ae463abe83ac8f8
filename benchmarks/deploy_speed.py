"""Deployment speed: measured speed-up of pruned YOLOv7 models in ONNX Runtime on CPU, against their GFLOPs saving.

Goal: for every pruned model with at least 2x fewer GFLOPs than its unpruned model, the measured speed-up is at
least 0.8 x the GFLOPs ratio (Torch-Pruning's uniform 50% yolov7-tiny reaches 0.74 in ONNX Runtime on 2 CPU
cores; it is measured here too, as the peer).

Models, per family (``--families``, default ``yolov7-tiny`` and ``yolov7``; training cfgs, nc=80, seeded random
weights: convolution time in ONNX Runtime's fp32 CPU kernels does not depend on the weight values):

* unpruned;
* uniform 25/50/75% (``--rates``): ``prune(model, rate, "l2", inplace=True, summarize=False)``, every prunable layer;
* layer-selected: yolov7 -- the published example pruning parameters ``[(8, 0.5), (18, 0.5), (28, 0.75), ...]``
  (28,852,698 params unfused, as published); yolov7-tiny -- no published selection and no data to run a
  sensitivity analysis on, so a data-free, cost-greedy selection: rate ``--select-rate`` (0.5) on the layers whose
  pruning alone saves the most GFLOPs, added in that order until the model is at ``--select-target`` (0.5) of its
  GFLOPs or below -- a non-uniform model (some layers keep every filter), unlike the uniform ones;
* peer (yolov7-tiny): Torch-Pruning's uniform 50% (``MagnitudePruner`` + ``MagnitudeImportance(p=2)``, head
  output convs ignored, implicit layers as unwrapped parameters, exactly as ``benchmarks/prune_speed.py`` calls it).

Each model is exported with ``export_onnx(model, path, ExportOptions(img_size=--img-size, opset=12))`` (raw head
outputs, batch 1, fused; verified against PyTorch in ONNX Runtime), its params/GFLOPs counted from the ONNX graph
(``yolo_prune.bench.onnx_cost``, checked equal to ``count_params``/``count_gflops`` of the fused PyTorch model),
and timed with ``yolo_prune.bench``: one ``onnxruntime.InferenceSession`` per model (CPUExecutionProvider,
``intra_op_num_threads=--threads`` for all; created for each timing block and dropped after it, so one session
exists at a time, as in deployment), a fixed random batch of 1, ``--rounds`` rounds that visit every model in turn (``--warmup`` untimed + ``--iters`` timed runs each), so slow drift of a shared machine hits every
model alike; median and p10-p90 over all timed runs. Speed-up = the family's unpruned median / the model's median.

``--cuda``: also PyTorch fp16 on the first CUDA device, eager and ``torch.compile`` (mode ``reduce-overhead``:
CUDA graphs), batch ``--cuda-batch``; skipped (and said so) when CUDA is not available.

    .venv/bin/python benchmarks/deploy_speed.py                  # print the tables (about 10 min on 2 CPU cores)
    .venv/bin/python benchmarks/deploy_speed.py --write          # ... and (re)write "## Deployment speed"
    .venv/bin/python benchmarks/deploy_speed.py --img-size 128 --iters 2 --warmup 1 --rounds 1   # smoke test

Exits with status 1 when one of our pruned models with >= 2x fewer GFLOPs misses the goal.
"""
from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _report import REPO, machine, provenance, write_section
from yolo_prune.bench import LatencyStats, ort_runner, time_callable, torch_runner, torch_threads
from yolo_prune.bench.onnx_cost import load_onnx, onnx_cost
from yolo_prune.bench.targets import checkpoint_cost
from yolo_prune.models import Model, build_model
from yolo_prune.prune import prune

SECTION = "## Deployment speed"
LIBS = ("onnxruntime", "onnx", "torch-pruning")
PUBLISHED_EXAMPLE = [(8, 0.5), (18, 0.5), (28, 0.75), (29, 0.75), (32, 0.75), (33, 0.75), (41, 0.5), (43, 0.5),
                     (45, 0.5), (46, 0.5)]


@dataclass
class Entry:
    """One model of the run: what it is, its ONNX file and cost, and its timings (ORT CPU, CUDA runtimes)."""

    family: str
    label: str
    role: str  # "base" | "ours" | "peer"
    model: Model
    how: str
    onnx: Path | None = None
    params: int = 0
    gflops: float = 0.0
    stats: LatencyStats | None = None
    cuda: dict[str, LatencyStats] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ models
def uniform(model: Model, rate: float) -> Model:
    return prune(copy.deepcopy(model), rate, "l2", inplace=True, summarize=False).model.eval()


def cost_greedy_pairs(model: Model, rate: float, target: float, img_size: int) -> list[tuple[int, float]]:
    """Layers at ``rate``, largest single-layer GFLOPs saving first, until GFLOPs <= ``target`` x unpruned."""
    from yolo_prune.prune.cost import CostModel

    costs = CostModel.of(model, img_size)
    base = costs.cost().gflops
    saving = {c: base - costs.cost([(c, rate)]).gflops for c in costs.graph.prunable}
    order = sorted(saving, key=lambda c: (-saving[c], c))
    lo, hi = 1, len(order)  # smallest prefix meeting the target (cost falls as layers are added)
    while lo < hi:
        mid = (lo + hi) // 2
        if costs.cost([(c, rate) for c in order[:mid]]).gflops <= target * base:
            hi = mid
        else:
            lo = mid + 1
    return sorted((c, rate) for c in order[:lo])


def torch_pruning_uniform(model: Model, rate: float, img_size: int) -> Model:
    """Torch-Pruning's uniform ``rate`` pruning, called as benchmarks/prune_speed.py calls it."""
    from prune_speed import Timings, run_tp

    pruned, _ = run_tp(copy.deepcopy(model), rate, torch.randn(1, 3, img_size, img_size), Timings())
    return pruned.eval()


def build_entries(args: argparse.Namespace, log) -> list[Entry]:
    """Every model of the run, unpruned first in each family."""
    entries = []
    for family in args.families:
        torch.manual_seed(0)
        base = build_model(family, nc=80).eval()
        log(f"{family}: building the pruned models")
        entries.append(Entry(family, "unpruned", "base", base, "-"))
        for rate in args.rates:
            entries.append(Entry(family, f"uniform {rate:.0%}", "ours", uniform(base, rate),
                                 f'`prune(model, {rate}, "l2")`'))
        if family == "yolov7":
            pruned = prune(copy.deepcopy(base), PUBLISHED_EXAMPLE, "l2", inplace=True, summarize=False).model
            entries.append(Entry(family, "layer-selected (published)", "ours", pruned.eval(),
                                 "published example pruning parameters, L2"))
        else:
            pairs = cost_greedy_pairs(base, args.select_rate, args.select_target, args.img_size)
            pruned = prune(copy.deepcopy(base), pairs, "l2", inplace=True, summarize=False).model
            entries.append(Entry(family, "layer-selected (cost-greedy)", "ours", pruned.eval(),
                                 f"{len(pairs)} layers at {args.select_rate}: "
                                 + ", ".join(str(c) for c, _ in pairs)))
        if family == "yolov7-tiny" and args.peer:
            entries.append(Entry(family, "Torch-Pruning uniform 50%", "peer",
                                 torch_pruning_uniform(base, 0.5, args.img_size), "MagnitudePruner, p=2"))
    return entries


# ------------------------------------------------------------------------------------------------ export + cost
def export_all(entries: list[Entry], folder: Path, img_size: int, log) -> None:
    """Export every model; params/GFLOPs from the ONNX graph, checked against the fused PyTorch model."""
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    for i, e in enumerate(entries):
        e.onnx = folder / f"{i:02d}-{e.family}-{e.label.split(' ')[0]}.onnx"
        log(f"export {e.family} {e.label} -> {e.onnx.name}")
        export_onnx(e.model, e.onnx, ExportOptions(img_size=img_size, opset=12))
        cost = onnx_cost(load_onnx(e.onnx))
        params, gflops = checkpoint_cost(e.model, (img_size, img_size))
        if cost.params != params or abs(cost.gflops - gflops) > 1e-6 * gflops:
            raise SystemExit(f"{e.onnx.name}: ONNX count {cost.params:,} / {cost.gflops:.4f} GFLOPs differs from "
                             f"the PyTorch count {params:,} / {gflops:.4f}")
        e.params, e.gflops = cost.params, cost.gflops


# ------------------------------------------------------------------------------------------------ timing
def time_rounds(runners: list[tuple[Entry, Any]], args: argparse.Namespace, key: str | None, log) -> None:
    """``--rounds`` rounds over every runner; timings merged into ``entry.stats`` (key None) or ``entry.cuda``.

    A runner may be a factory (no ``run`` attribute): it is then called for each timing block and dropped after
    it, so only one ONNX Runtime session exists at a time -- idle sessions' spinning worker threads otherwise
    compete with the timed one (measured here: up to 2x slower small models on 2 cores).
    """
    for r in range(args.rounds):
        for e, made in runners:
            runner = made if hasattr(made, "run") else made()
            stats = time_callable(runner.run, args.warmup, args.iters, 1, runner.sync)
            del runner
            gc.collect()
            old = e.stats if key is None else e.cuda.get(key)
            merged = stats if old is None else old.merged(stats)
            if key is None:
                e.stats = merged
            else:
                e.cuda[key] = merged
            log(f"round {r + 1}/{args.rounds} {key or 'ort-cpu'} {e.family} {e.label}: median {stats.median_ms:.1f} ms")


def time_ort(entries: list[Entry], args: argparse.Namespace, log) -> str:
    """ONNX Runtime CPU, batch 1, same thread count for every model; returns the runtime's description."""
    cpu = torch.device("cpu")
    size = (args.img_size, args.img_size)
    factories = [(e, functools.partial(ort_runner, e.onnx, 1, size, cpu, args.threads)) for e in entries]
    time_rounds(factories, args, None, log)
    return ort_runner(entries[0].onnx, 1, size, cpu, args.threads).description


def time_cuda(entries: list[Entry], args: argparse.Namespace, log) -> str | None:
    """PyTorch fp16 eager / torch.compile on CUDA; None (nothing timed) without a CUDA device."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda:0")
    size = (args.img_size, args.img_size)
    for runtime in args.cuda_runtimes:
        log(f"CUDA {runtime}: preparing {len(entries)} models")
        runners = [(e, torch_runner(e.model, args.cuda_batch, size, dev, fp16=True,
                                    compiled=runtime == "torch-compile")) for e in entries]
        time_rounds(runners, args, runtime, log)
        del runners
        torch.cuda.empty_cache()
    return torch.cuda.get_device_name(dev)


# ------------------------------------------------------------------------------------------------ report
def ratios(e: Entry, base: Entry, stats: LatencyStats, base_stats: LatencyStats) -> tuple[float, float, float]:
    speedup = base_stats.median_ms / stats.median_ms
    gratio = base.gflops / e.gflops
    return speedup, gratio, speedup / gratio


def verdict(e: Entry, gratio: float, eff: float, args: argparse.Namespace) -> str:
    if e.role == "base":
        return ""
    if gratio < args.min_ratio:
        return f"n/a (< {args.min_ratio:g}x)"
    ok = eff >= args.goal
    return ("met" if ok else "**NOT met**") + (" (peer)" if e.role == "peer" else "")


def ort_table(entries: list[Entry], args: argparse.Namespace) -> tuple[list[str], bool]:
    lines = ["| family | model | params | GFLOPs | median ms | p10-p90 ms | speed-up | GFLOPs ratio | "
             f"speed-up / GFLOPs ratio | goal (>= {args.goal:g}) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    ok = True
    base = {}
    for e in entries:
        base.setdefault(e.family, e)
        b, s = base[e.family], e.stats
        speedup, gratio, eff = ratios(e, b, s, b.stats)
        v = verdict(e, gratio, eff, args)
        ok &= not (e.role == "ours" and v.startswith("**NOT"))
        lines.append(f"| {e.family} | {e.label} | {e.params:,} | {e.gflops:.2f} | {s.median_ms:.1f} | "
                     f"{s.p10_ms:.1f}-{s.p90_ms:.1f} | {speedup:.2f}x | {gratio:.2f}x | {eff:.2f} | {v} |")
    return lines, ok


def cuda_table(entries: list[Entry], args: argparse.Namespace) -> list[str]:
    lines = ["| family | model | runtime | median ms | p10-p90 ms | img/s | speed-up | GFLOPs ratio | "
             "speed-up / GFLOPs ratio |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for runtime in args.cuda_runtimes:
        base = {}
        for e in entries:
            base.setdefault(e.family, e)
            b, s = base[e.family], e.cuda[runtime]
            speedup, gratio, eff = ratios(e, b, s, b.cuda[runtime])
            lines.append(f"| {e.family} | {e.label} | {runtime} fp16 | {s.median_ms:.2f} | {s.p10_ms:.2f}-"
                         f"{s.p90_ms:.2f} | {s.throughput:.0f} | {speedup:.2f}x | {gratio:.2f}x | {eff:.2f} |")
    return lines


def report(args: argparse.Namespace, env: dict[str, str], entries: list[Entry], ort_desc: str,
           gpu: str | None, argv: list[str]) -> tuple[str, bool]:
    n = args.rounds * args.iters
    table, ok = ort_table(entries, args)
    lines = [
        SECTION, "",
        f"Pruned YOLOv7 models in {ort_desc} (same for every model), batch 1, {args.img_size}x{args.img_size}, fp32; "
        f"{args.rounds} round(s) visiting every model in turn, each a fresh session (one alive at a time: idle "
        f"sessions' spinning threads would compete), {args.warmup} warm-up + {args.iters} timed "
        f"`session.run` calls ({n} timed runs per model). Models: training cfgs, nc=80, seeded random weights, "
        f"exported with `export_onnx(..., ExportOptions(img_size={args.img_size}, opset=12))` (raw outputs, fused, "
        "verified in ONNX Runtime); params and GFLOPs counted from the ONNX graphs (equal to the fused PyTorch "
        "count). Speed-up and GFLOPs ratio are against the family's unpruned model.", "",
        f"Goal: speed-up >= {args.goal:g} x GFLOPs ratio for models with at least {args.min_ratio:g}x fewer GFLOPs: "
        f"**{'met' if ok else 'NOT met'}** (the peer row is for reference).", "",
        *table, "",
        "How each model was made:", "",
    ]
    lines += [f"- {e.family} {e.label}: {e.how}" for e in entries if e.role != "base"]
    lines.append("")
    if args.cuda:
        if gpu is None:
            lines += ["CUDA part (`--cuda`): skipped, no CUDA device on this machine.", ""]
        else:
            lines += [f"CUDA ({gpu}), PyTorch fp16, batch {args.cuda_batch}, fused models; `torch-compile` is "
                      "`torch.compile(mode=\"reduce-overhead\")` (CUDA graphs):", "", *cuda_table(entries, args), ""]
    lines += provenance(argv, env, LIBS)
    return "\n".join(lines), ok


def rows_json(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"family": e.family, "model": e.label, "role": e.role, "params": e.params, "gflops": e.gflops,
             "ort_cpu": e.stats.to_dict() if e.stats else None,
             "cuda": {k: v.to_dict() for k, v in e.cuda.items()}} for e in entries]


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["yolov7-tiny", "yolov7"], choices=["yolov7-tiny", "yolov7"])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="uniform pruning rates")
    ap.add_argument("--select-rate", type=float, default=0.5, help="yolov7-tiny cost-greedy selection: rate (0.5)")
    ap.add_argument("--select-target", type=float, default=0.5,
                    help="yolov7-tiny cost-greedy selection: GFLOPs fraction to reach (0.5)")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip Torch-Pruning's uniform 50%% model")
    ap.add_argument("--img-size", type=int, default=640, help="input size, multiple of 32 (default 640)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra_op_num_threads, all models (2)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs per model per round (default 5)")
    ap.add_argument("--iters", type=int, default=20, help="timed runs per model per round (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all models (default 3)")
    ap.add_argument("--goal", type=float, default=0.8, help="required speed-up / GFLOPs ratio (default 0.8)")
    ap.add_argument("--min-ratio", type=float, default=2.0, help="the goal applies from this GFLOPs ratio (2)")
    ap.add_argument("--cuda", action="store_true", help="also PyTorch fp16 on CUDA (skipped without a GPU)")
    ap.add_argument("--cuda-runtimes", nargs="+", default=["torch", "torch-compile"],
                    choices=["torch", "torch-compile"], help="CUDA runtimes (default both)")
    ap.add_argument("--cuda-batch", type=int, default=1, help="CUDA batch size (default 1)")
    ap.add_argument("--onnx-dir", type=Path, default=None, help="keep the exported ONNX files here (default: temp)")
    ap.add_argument("--json", type=Path, default=None, help="also write every row and timed run here")
    ap.add_argument("--write", action="store_true", help="(re)write the section in BENCHMARKS.md")
    ap.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="file --write updates")
    args = ap.parse_args(argv)
    if args.img_size < 32 or args.img_size % 32:
        ap.error(f"--img-size {args.img_size}: must be a positive multiple of 32")
    if min(args.threads, args.iters, args.rounds, args.cuda_batch) < 1 or args.warmup < 0:
        ap.error("--threads, --iters, --rounds and --cuda-batch must be >= 1, --warmup >= 0")
    if not all(0 < r < 1 for r in [*args.rates, args.select_rate, args.select_target]):
        ap.error("--rates, --select-rate and --select-target must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.peer:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("torch-pruning is not installed: pip install -e '.[bench]' (or --no-peer)", file=sys.stderr)
            return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = machine(LIBS)
    with torch_threads(args.threads), tempfile.TemporaryDirectory(prefix="deploy-speed-") as tmp:
        folder = args.onnx_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        entries = build_entries(args, log)
        export_all(entries, folder, args.img_size, log)
        ort_desc = time_ort(entries, args, log)
        gpu = time_cuda(entries, args, log) if args.cuda else None
    section, ok = report(args, env, entries, ort_desc, gpu, argv)
    print(section)
    if args.json:
        from yolo_prune.fileio import write_text_atomic

        write_text_atomic(args.json, json.dumps({"environment": env, "rows": rows_json(entries)}, indent=2) + "\n")
    if args.write:
        write_section(args.output, section)
        log(f"wrote '{SECTION}' in {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
