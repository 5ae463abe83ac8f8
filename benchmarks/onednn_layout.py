"""Where the sensitivity analysis' stacked downstream passes spend their time on CPU, and whether oneDNN's layout
reorders could be skipped with the results kept bit for bit (the exact floor of issue #15).

oneDNN runs a float32 convolution on an NCHW tensor in its blocked layout: it reorders the input into that layout,
runs the convolution kernel, and reorders the output back to NCHW. This script

* runs the analysis' stacked downstream passes on one batch (every ``--layer-step``-th prunable layer, its
  ``--rates`` stacked in one pass, exactly as ``run_sensitivity`` runs them) and splits their wall time into oneDNN
  convolution kernels and oneDNN reorders (the primitives' own execution times from ``ONEDNN_VERBOSE``, read from a
  child process so that the timed passes run without it) and the rest (batch norm, activations, concatenations,
  pools, the stacked filter: wall time minus both);
* probes the way around the reorders PyTorch offers, MKLDNN tensors (data kept in oneDNN's layout between ops):
  every op the YOLOv7 networks run between two convolutions is applied to an MKLDNN tensor and compared bit for bit
  with the same op on the dense tensor.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_layout.py                  # print the section
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_layout.py --write          # ... and write it
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from _report import machine, provenance, publish
from sensitivity_speed import load_model, make_data
from yolo_prune.host_allocator import keep_freed_memory

SECTION = "## oneDNN layout in the stacked analysis pass"
START, END = "=== passes start", "=== passes end"


def stacked_passes(args: argparse.Namespace) -> Callable[[], None]:
    """A callable running every chosen layer's stacked downstream pass on one cached batch, as the analysis does."""
    from yolo_prune.analysis.fastforward import last_uses, masked_stack, run_all, run_from_stacked
    from yolo_prune.analysis.sensitivity import _configs
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.models.conv_backend import onednn_convolutions
    from yolo_prune.pipeline.evaluation import DataSettings, cached_batches

    model, _ = load_model(args.model, args.cfg, args.classes, 0)
    graph = derive_graph(model)
    with tempfile.TemporaryDirectory() as tmp:  # the images are read into memory once
        data = make_data(Path(tmp) / "synth", args.batch, args.img_size, args.classes, 0)
        batches, _ = cached_batches(DataSettings(str(data), img_size=args.img_size, batch_size=args.batch,
                                                 workers=0), int(model.stride.max()), torch.device("cpu"))
    x = batches[0].inputs(torch.float32)
    layers = list(graph.prunable)[::args.layer_step]
    configs = _configs(model, graph, layers, args.rates, "l2", None, 0)
    last = last_uses(model)
    with torch.inference_mode():
        cache = run_all(model, x)

    def run() -> None:
        with torch.inference_mode(), onednn_convolutions(model):
            for layer in layers:
                group = [c for c in configs if c.layer == layer]
                first = model.model[group[0].downstream[0]] is model.conv_modules()[layer]
                with masked_stack(model, graph, layer, [c.removed for c in group], len(x)) as stack:
                    run_from_stacked(model, cache, group[0].downstream, x, len(group), stack if first else None, last)

    return run


def child(args: argparse.Namespace) -> None:
    """Under ONEDNN_VERBOSE: one warm-up, then the passes between markers on stdout."""
    run = stacked_passes(args)
    run()
    print(START, flush=True)
    run()
    print(END, flush=True)


def primitive_seconds(stdout: str) -> dict[str, float]:
    """Seconds per oneDNN primitive kind (``convolution``, ``reorder`` ...) executed between the markers."""
    inside, out = False, {}
    for line in stdout.splitlines():
        if line.startswith(START):
            inside = True
        elif line.startswith(END):
            break
        elif inside and line.startswith("onednn_verbose") and ",primitive,exec," in line:
            fields = line.split(",")
            kind = fields[fields.index("exec") + 2]  # onednn_verbose,v1,primitive,exec,cpu,<kind>,...
            out[kind] = out.get(kind, 0.0) + float(fields[-1]) / 1e3
    return out


def verbose_run(argv: list[str]) -> dict[str, float]:
    """Run this script's child mode with ONEDNN_VERBOSE=1 and sum its primitives' execution times."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    done = subprocess.run([sys.executable, __file__, *argv, "--child"], env=env, capture_output=True, text=True,
                          check=True)
    seconds = primitive_seconds(done.stdout)
    if not seconds:
        raise SystemExit("ONEDNN_VERBOSE printed no primitive executions: this torch build does not run oneDNN on CPU")
    return seconds


def layout_ops() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The ops YOLOv7 networks run between two convolutions (eval mode), on a 4-D activation."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(32).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return {
        "batch norm (eval)": bn,
        "LeakyReLU(0.1)": lambda t: F.leaky_relu(t, 0.1),
        "SiLU": F.silu,
        "Concat": lambda t: torch.cat([t, t], 1),
        "max pool 2x2 (MP)": lambda t: F.max_pool2d(t, 2, 2),
        "max pool 5x5 stride 1 (SP, SPPCSPC)": lambda t: F.max_pool2d(t, 5, 1, 2),
        "nearest upsample x2": lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"),
        "add (ImplicitA, RepConv branches)": lambda t: t + t,
        "mul (ImplicitM)": lambda t: t * t,
        "channel slice (stacked filter, FBS)": lambda t: t.narrow(1, 0, 16),
    }


def probe_mkldnn() -> list[tuple[str, str]]:
    """Each op of :func:`layout_ops` on an MKLDNN tensor: ``exact``, ``differs by <max |diff|>`` or ``unsupported``."""
    x = torch.randn(4, 32, 24, 24)
    rows = []
    with torch.inference_mode():
        for name, op in layout_ops().items():
            try:
                got = op(x.to_mkldnn())
                got = got.to_dense() if got.is_mkldnn else got
            except (RuntimeError, NotImplementedError) as e:
                rows.append((name, f"unsupported ({str(e).splitlines()[0][:70]})"))
                continue
            want = op(x)
            rows.append((name, "exact" if torch.equal(got, want) else
                         f"differs by up to {(got - want).abs().max().item():.1e}"))
    return rows


def probe_conv() -> list[tuple[str, str]]:
    """A 3x3 and a 1x1 convolution on an MKLDNN tensor and in channels-last layout, each against oneDNN on NCHW
    tensors (the analysis' kernel, :func:`onednn_convolutions`), bit for bit."""
    torch.manual_seed(0)
    x, rows = torch.randn(4, 64, 24, 24), []
    cl = torch.channels_last
    with torch.inference_mode():
        for k in (3, 1):
            w, b = torch.randn(64, 64, k, k), torch.randn(64)
            conv = lambda a, wt: torch.mkldnn_convolution(a, wt, b, [k // 2] * 2, [1, 1], [1, 1], 1)  # noqa: E731
            want = conv(x, w)
            for name, got in ((f"{k}x{k} convolution on an MKLDNN tensor", conv(x.to_mkldnn(), w.to_mkldnn()).to_dense()),
                              (f"{k}x{k} convolution in channels-last layout",
                               conv(x.contiguous(memory_format=cl), w.contiguous(memory_format=cl)))):
                rows.append((name, "exact" if torch.equal(got, want) else
                             f"differs by up to {(got - want).abs().max().item():.1e}"))
    return rows


def report(args: argparse.Namespace, argv: list[str], wall: list[float], prims: dict[str, float],
           probe: list[tuple[str, str]], conv_probe: list[tuple[str, str]], env: dict[str, str]) -> str:
    """The BENCHMARKS.md section."""
    t = statistics.median(wall)
    conv, reorder = prims.get("convolution", 0.0), prims.get("reorder", 0.0)
    rest = max(t - conv - reorder, 0.0)
    lines = [SECTION, "",
             f"The sensitivity analysis' stacked downstream passes of `{args.cfg}` ({args.model} weights), every "
             f"{args.layer_step}th prunable layer with its rates {list(args.rates)} stacked in one pass, one batch of "
             f"{args.batch} images at {args.img_size} px, {torch.get_num_threads()} thread(s); wall time the median of "
             f"{len(wall)} runs ({', '.join(f'{w:.2f}' for w in wall)} s); oneDNN primitive times from `ONEDNN_VERBOSE` "
             "in a child process running the same passes.", "",
             "| part | seconds | share |", "|---|---:|---:|",
             f"| oneDNN convolution kernels (blocked layout) | {conv:.2f} | {conv / t:.0%} |",
             f"| oneDNN reorders (NCHW -> blocked input, blocked -> NCHW output, weights) | {reorder:.2f} | "
             f"{reorder / t:.0%} |",
             f"| the rest (batch norm, activations, concatenations, pools, stacked filter) | {rest:.2f} | "
             f"{rest / t:.0%} |",
             f"| wall time | {t:.2f} | 100% |", "",
             "Skipping the reorders keeps the convolution kernel (the same blocked kernel, so the same sums) only if "
             "the data stays in oneDNN's layout between convolutions. PyTorch's way to do that is an MKLDNN tensor; "
             "the ops the networks run between two convolutions on one, against the dense result, and the "
             "convolutions themselves (against oneDNN on NCHW tensors, the analysis' kernel):", "",
             "| op | on an MKLDNN tensor |", "|---|---|",
             *[f"| {name} | {verdict} |" for name, verdict in probe], "",
             "| convolution | against oneDNN on NCHW |", "|---|---|",
             *[f"| {name} | {verdict} |" for name, verdict in conv_probe], ""]
    blocked = [name for name, verdict in probe if verdict != "exact"]
    if blocked:
        lines += [f"So the reorders cannot be skipped with the results kept: {', '.join(blocked)} either do not run "
                  "on MKLDNN tensors or give other values, and every convolution of the networks is followed by "
                  "batch norm and an activation. The reorders' share is therefore part of the exact floor of a "
                  "downstream pass on CPU; channels-last avoids them but runs another kernel, which sums in another "
                  "order (the table above; see the Sensitivity analysis speed section).", ""]
    return "\n".join(lines + provenance(argv, env)) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default="yolov7-tiny", help="model cfg (default: yolov7-tiny)")
    p.add_argument("--model", default="demo", help="demo (the shipped demo weights), random, or a checkpoint")
    p.add_argument("--classes", type=int, default=6, help="classes of the synthetic data and a random model")
    p.add_argument("--batch", type=int, default=8, help="images in the batch (default 8)")
    p.add_argument("--img-size", type=int, default=256, help="image size (default 256)")
    p.add_argument("--layer-step", type=int, default=4, help="every n-th prunable layer (default 4)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="pruning rates stacked per pass")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the passes (default 3)")
    p.add_argument("--write", action="store_true", help="(re)write the section in BENCHMARKS.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layer_step < 1 or args.batch < 1 or args.repeats < 1:
        p.error("--layer-step, --batch and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    keep_freed_memory()  # as a yolo-prune process runs
    if args.child:
        child(args)
        return
    run = stacked_passes(args)
    run()  # warm-up
    wall = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        wall.append(time.perf_counter() - t0)
    shown = [a for a in argv if a != "--write"]
    prims = verbose_run(shown)
    env = machine()
    publish(report(args, argv, wall, prims, probe_mkldnn(), probe_conv(), env), args.write)
    print(json.dumps({"wall_s": wall, "primitives_s": prims}), file=sys.stderr)


if __name__ == "__main__":
    main()
