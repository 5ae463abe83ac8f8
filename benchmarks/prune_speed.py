"""Pruning speed: yolo-prune vs Torch-Pruning on YOLOv7, CPU, end to end.

Both tools prune every prunable layer of the same model (training cfg ``yolov7``, nc=80, with its IDetect
head and implicit layers, unfused) by 50% with the L2 filter-magnitude criterion, in one step, leaving the
detect head's output convolutions alone. The model is built once, outside every timer; each timed run gets
its own ``copy.deepcopy`` of it (also outside the timer), so both tools start from the same state.

Timed:

* yolo-prune: ``prune(model, rate, "l2", inplace=True, summarize=False)`` -- deriving the connectivity graph,
  scoring and planning, and slicing the modules;
* Torch-Pruning: ``MagnitudePruner(model, example_inputs, MagnitudeImportance(p=2), pruning_ratio=rate,
  ignored_layers=<head convs>, unwrapped_parameters=<ImplicitA/ImplicitM params>)`` + ``pruner.step()`` --
  tracing the dependency graph, importance, and pruning. This follows Torch-Pruning's own YOLOv7 example
  (which registers the implicit layers' parameters as unwrapped parameters pruned along dim 1), so no
  implicit-layer folding is needed for either tool.

Runs alternate between the tools (one warm-up each, reported as "first run" and not in the median/min), then
both pruned models are checked: a forward pass at the image size, parameters and GFLOPs (yolo-prune's
``count_params``/``count_gflops``), and whether every tensor has the same shape in both. For reference only,
Torch-Pruning is also timed with a small example input (``--tp-small-input``, default 64), which makes its graph
trace cheap; the headline ratio uses the 640x640 input.

    .venv/bin/python benchmarks/prune_speed.py            # print the table
    .venv/bin/python benchmarks/prune_speed.py --write    # ... and (re)write "## Pruning speed" in BENCHMARKS.md

Exits with status 1 when yolo-prune's median is not at least ``--goal`` times faster than Torch-Pruning's.
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from _report import REPO, machine, provenance, write_section
from yolo_prune.graph.derive import derive_graph
from yolo_prune.models import ImplicitA, ImplicitM, Model, build_model
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.prune import apply_plan, make_plan, prune

SECTION = "## Pruning speed"


@dataclass
class Timings:
    """Wall-clock seconds of every run of one tool; ``first`` is the warm-up run."""

    first: float = 0.0
    runs: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)

    def add_part(self, name: str, seconds: float) -> None:
        self.parts.setdefault(name, []).append(seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def best(self) -> float:
        return min(self.runs)


# ------------------------------------------------------------------------------------------------ the two tools
def run_ours(model: Model, rate: float) -> tuple[Model, float]:
    gc.collect()
    t0 = time.perf_counter()
    result = prune(model, rate, "l2", inplace=True, summarize=False)
    return result.model, time.perf_counter() - t0


def ours_breakdown(model: Model, rate: float, timings: Timings) -> None:
    """The same work as ``prune()``, one stage at a time (not part of the headline numbers)."""
    gc.collect()
    t0 = time.perf_counter()
    graph = derive_graph(model)
    t1 = time.perf_counter()
    plan = make_plan(model, graph, rate, "l2")
    t2 = time.perf_counter()
    apply_plan(model, graph, plan)
    t3 = time.perf_counter()
    timings.add_part("derive graph", t1 - t0)
    timings.add_part("score + plan", t2 - t1)
    timings.add_part("apply (slice modules)", t3 - t2)


def tp_pruner_class():
    import torch_pruning as tp
    cls = getattr(tp.pruner, "MagnitudePruner", None)
    return cls if cls is not None else tp.pruner.MetaPruner


def tp_pruner_name() -> str:
    import torch_pruning as tp
    return "MagnitudePruner" if getattr(tp.pruner, "MagnitudePruner", None) is not None else "MetaPruner"


def run_tp(model: Model, rate: float, example_inputs: torch.Tensor, timings: Timings) -> tuple[Model, float]:
    import torch_pruning as tp
    pruner_cls = tp_pruner_class()
    gc.collect()
    t0 = time.perf_counter()
    ignored_layers = list(model.detect.head_convs())
    # Torch-Pruning 1.6 annotates this as a dict but iterates it as (param, dim) pairs; a list works in all 1.x.
    unwrapped = [(m.implicit, 1) for m in model.modules() if isinstance(m, (ImplicitA, ImplicitM))]
    pruner = pruner_cls(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                        pruning_ratio=rate, iterative_steps=1, ignored_layers=ignored_layers,
                        unwrapped_parameters=unwrapped)
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    timings.add_part("construct pruner (trace graph)", t1 - t0)
    timings.add_part("step (importance + prune)", t2 - t1)
    del pruner
    return model, t2 - t0


# ------------------------------------------------------------------------------------------------ checks
@dataclass
class Check:
    params: int
    gflops: float
    forward: str
    shape: tuple[int, ...]


def check_model(model: Model, img_size: int, expected_shape: tuple[int, ...] | None) -> Check:
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, img_size, img_size))
    pred = out[0] if isinstance(out, (tuple, list)) else out
    ok = torch.isfinite(pred).all().item() and (expected_shape is None or tuple(pred.shape) == expected_shape)
    forward = f"{'ok' if ok else 'FAILED'} {list(pred.shape)}"
    return Check(count_params(model), count_gflops(model, img_size), forward, tuple(pred.shape))


def shape_differences(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    return [f"{k}: {sa.get(k)} vs {sb.get(k)}" for k in sorted(sa.keys() | sb.keys()) if sa.get(k) != sb.get(k)]


# ------------------------------------------------------------------------------------------------ report
def report(args: argparse.Namespace, env: dict[str, str], ours: Timings, tp: Timings, tp_small: Timings,
           small_params: int, base: Check, ours_check: Check, tp_check: Check, diffs: list[str],
           argv: list[str]) -> str:
    def pct(n: int) -> str:
        return f"{n:,} ({100 * n / base.params:.1f}%)"

    def gf(g: float) -> str:
        return f"{g:.2f} ({100 * g / base.gflops:.1f}%)"

    speed_med, speed_min = tp.median / ours.median, tp.best / ours.best
    verdict = "met" if speed_med >= args.goal else "NOT met"
    n = len(ours.runs)
    lines = [
        SECTION,
        "",
        f"Structured pruning of every prunable layer of `{args.cfg}` (training cfg, nc={args.nc}, IDetect head with "
        f"implicit layers, unfused) at rate {args.rate} with the L2 filter-magnitude criterion, one step, on CPU "
        f"with `torch.set_num_threads({args.threads})`; end to end from the loaded model to the pruned model. "
        "The model is built once; every run prunes its own `copy.deepcopy` of it (copy outside the timer). "
        f"Runs alternate between the tools: {args.warmup} warm-up run each (\"first run\"), then {n} timed runs "
        "each (median and min).",
        "",
        f"- yolo-prune: `prune(model, {args.rate}, \"l2\", inplace=True, summarize=False)` (derive graph + plan + "
        "slice).",
        f"- Torch-Pruning {env['torch_pruning']}: `tp.pruner.{tp_pruner_name()}(model, torch.randn(1, 3, "
        f"{args.img_size}, {args.img_size}), importance=tp.importance.MagnitudeImportance(p=2), "
        f"pruning_ratio={args.rate}, iterative_steps=1, ignored_layers=<model.detect.m convs>, "
        "unwrapped_parameters=[(ImplicitA/ImplicitM.implicit, 1), ...])` + `pruner.step()`. The implicit "
        "layers are registered as unwrapped parameters pruned along dim 1, as in Torch-Pruning's YOLOv7 example; "
        "no folding (`fold_implicit`) was needed for either tool.",
        "",
        f"| tool | median (s) | min (s) | first run (s) | params | GFLOPs@{args.img_size} | forward @{args.img_size} |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| unpruned | | | | {base.params:,} | {base.gflops:.2f} | {base.forward} |",
        f"| yolo-prune | {ours.median:.3f} | {ours.best:.3f} | {ours.first:.3f} | {pct(ours_check.params)} | "
        f"{gf(ours_check.gflops)} | {ours_check.forward} |",
        f"| Torch-Pruning | {tp.median:.3f} | {tp.best:.3f} | {tp.first:.3f} | {pct(tp_check.params)} | "
        f"{gf(tp_check.gflops)} | {tp_check.forward} |",
        f"| **speed-up (TP / ours)** | **{speed_med:.1f}x** | {speed_min:.1f}x | {tp.first / ours.first:.1f}x | | | |",
        "",
        "Every timed run (s): yolo-prune " + ", ".join(f"{x:.3f}" for x in ours.runs)
        + "; Torch-Pruning " + ", ".join(f"{x:.3f}" for x in tp.runs) + ".",
        "",
        f"Goal (yolo-prune at least {args.goal:g}x faster, medians): **{verdict}**. "
        + ("Both pruned models have identical tensor shapes (every layer kept the same number of channels)."
           if not diffs else f"The pruned models differ in {len(diffs)} tensor shapes, e.g. `{diffs[0]}`."),
        "",
        "Where the time goes (medians, seconds; yolo-prune's stages are timed in separate runs of "
        "`derive_graph`, `make_plan`, `apply_plan`):",
        "",
        "| tool | stage | median (s) |",
        "|---|---|---:|",
    ]
    for tool, t in (("yolo-prune", ours), ("Torch-Pruning", tp)):
        for name, vals in t.parts.items():
            lines.append(f"| {tool} | {name} | {statistics.median(vals):.3f} |")
    if tp_small.runs:
        sz = args.tp_small_input
        lines += [
            "",
            f"For reference, Torch-Pruning with a {sz}x{sz} example input (its graph trace then costs little; "
            f"{small_params:,} params after pruning"
            + (", the same widths" if small_params == tp_check.params else ", NOT the same as at full size")
            + f") takes median {tp_small.median:.3f} s, "
            f"min {tp_small.best:.3f} s: yolo-prune is {tp_small.median / ours.median:.1f}x faster (medians) "
            "even against that.",
        ]
    lines += [
        "",
        "Torch-Pruning builds its dependency graph by tracing a real forward pass with the example input "
        f"({args.img_size}x{args.img_size} here, i.e. a full ~{base.gflops:.0f}-GFLOP inference on CPU) and its "
        "L2 group importance also reads the consumers' input-channel weights and BN parameters; yolo-prune derives "
        "its graph from the cfg's channel layout without running the network. The channel *choice* can therefore "
        "differ between the tools; the widths (and so params/GFLOPs) are what is compared above.",
        "",
        f"Caveat: with {args.threads} intra-op threads every tensor op is split across threads, and yolo-prune's "
        "run is a few hundred small ops (one `index_select` per sliced tensor), so when the host's CPUs are "
        "contended it slows down far more, relative to its size, than Torch-Pruning's forward-pass-dominated run "
        "(see `benchmarks/README.md`). Measure on a quiet machine; the per-run times above show whether a run "
        "was disturbed.",
        "",
        *provenance(argv, env, ("torch-pruning",)),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="yolov7", help="shipped cfg name or path (default: yolov7, training cfg)")
    ap.add_argument("--nc", type=int, default=80, help="number of classes (default: 80)")
    ap.add_argument("--rate", type=float, default=0.5, help="pruning rate for every prunable layer (default: 0.5)")
    ap.add_argument("--img-size", type=int, default=640, help="TP example input / forward check size (default: 640)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per tool, at least 3 (default: 5)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per tool, reported as 'first run'")
    ap.add_argument("--tp-small-input", type=int, default=64,
                    help="also time Torch-Pruning with this (smaller) example input size, for reference; 0: skip")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    ap.add_argument("--goal", type=float, default=5.0, help="required speed-up of yolo-prune (default: 5)")
    ap.add_argument("--write", action="store_true", help="(re)write the section in BENCHMARKS.md")
    ap.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="file --write updates")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error("--repeats must be at least 3")
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first run is reported)")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch-pruning is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = machine(("torch-pruning",))
    base_model = build_model(args.cfg, nc=args.nc).eval()
    base = check_model(copy.deepcopy(base_model), args.img_size, None)
    expected_shape = base.shape
    example_inputs = torch.randn(1, 3, args.img_size, args.img_size)

    ours, tp, tp_small = Timings(), Timings(), Timings()
    small_inputs = torch.randn(1, 3, args.tp_small_input, args.tp_small_input) if args.tp_small_input else None
    tools = ("ours", "tp", "tp_small") if small_inputs is not None else ("ours", "tp")
    ours_model = tp_model = None
    small_params = 0
    for i in range(args.warmup + args.repeats):
        for tool in tools:
            model = copy.deepcopy(base_model)
            if tool == "ours":
                pruned, secs = run_ours(model, args.rate)
                target, ours_model = ours, pruned
            elif tool == "tp":
                pruned, secs = run_tp(model, args.rate, example_inputs, tp)
                target, tp_model = tp, pruned
            else:
                pruned, secs = run_tp(model, args.rate, small_inputs, tp_small)
                target, small_params = tp_small, count_params(pruned)
            if i == 0:
                target.first = secs
            elif i >= args.warmup:
                target.runs.append(secs)
            print(f"run {i + 1}/{args.warmup + args.repeats} {tool:>8}: {secs:.3f} s"
                  + ("  (warm-up)" if i < args.warmup else ""), file=sys.stderr, flush=True)
            del model, pruned
    for _ in range(args.repeats):
        ours_breakdown(copy.deepcopy(base_model), args.rate, ours)
    tp.parts = {k: v[args.warmup:] for k, v in tp.parts.items()}  # same runs as the headline numbers

    ours_check = check_model(ours_model, args.img_size, expected_shape)
    tp_check = check_model(tp_model, args.img_size, expected_shape)
    diffs = shape_differences(ours_model, tp_model)
    section = report(args, env, ours, tp, tp_small, small_params, base, ours_check, tp_check, diffs, argv)
    print(section)
    if args.write:
        write_section(args.output, section, first=True)
        print(f"wrote '{SECTION}' in {args.output}", file=sys.stderr)
    ok = "FAILED" not in ours_check.forward + tp_check.forward
    return 0 if ok and tp.median / ours.median >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
