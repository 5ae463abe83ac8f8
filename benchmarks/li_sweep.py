"""Li et al. (ICLR 2017) on the digits default: the parameters-vs-accuracy sweep, prune-then-retrain vs
layer-by-layer prune-retrain, and one-shot independent vs greedy scoring.

1. ``yolo-prune sweep`` (``run_sweep``): SCNNB (``--arch``) trained ``--epochs`` on scikit-learn's digits (32 px),
   every conv's filters pruned by the smallest L1 at 0, 10, ..., 90 %, evaluated right after pruning and after
   ``--retrain-epochs`` of retraining (``--retrain once``), plot and table.
2. The same base at ``--layerwise-percents`` with ``--retrain layerwise`` (one layer pruned and retrained at a
   time, the same total epochs), next to the one-shot rows.
3. One-shot pruning of every layer at each percentage with ``scoring="independent"`` (each layer on its own
   unpruned weights) and ``scoring="greedy"`` (kernels of channels removed upstream do not count), no retraining:
   top-1, and how many of the later layers' kept filters differ between the two.

Runs resume from ``--out`` (each trained model is kept there), so a re-run only re-measures.

    .venv/bin/python benchmarks/li_sweep.py --write       # about 40 min on 2 busy CPU cores
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from _report import REPO, machine, provenance, publish
from yolo_prune.pipeline.sweep import PERCENTS, SweepSettings, run_sweep

SECTION = "## Li et al. filter pruning on digits (sweep)"


def strategies(base: Path, percents: list[float]) -> list[str]:
    """Markdown rows: one-shot independent vs greedy scoring (no retraining)."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.pipeline.classify import evaluate_on_classification
    from yolo_prune.prune import prune

    model = load_model(base)
    graph = derive_graph(model)
    rows = []
    for p in percents:
        params = [(u[0], p) for u in graph.prunable_units]
        res = {s: prune(model, params, "l1", scoring=s) for s in ("independent", "greedy")}
        acc = {s: evaluate_on_classification(r.model, "digits").top1 for s, r in res.items()}
        differ = sum(a.kept != b.kept for a, b in zip(res["independent"].plan.layers, res["greedy"].plan.layers))
        rows.append(f"| {100 * p:.0f}% | {res['greedy'].params_after:,} | {acc['independent']:.4f} | "
                    f"{acc['greedy']:.4f} | {differ} of {len(params)} |")
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="scnnb")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--retrain-epochs", type=int, default=3)
    ap.add_argument("--layerwise-percents", default="0.5,0.7,0.9")
    ap.add_argument("--out", default="/tmp/yolo-prune-bench/li_sweep")
    ap.add_argument("--vgg-weights", default=None, help="also compare the strategies on this trained vgg16_bn "
                    "classifier checkpoint (digits, 32 px; e.g. the one benchmarks/fbs.py trains)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="(re)write the section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    once = SweepSettings(arch=args.arch, epochs=args.epochs, retrain_epochs=args.retrain_epochs,
                         out=str(out / "once"), device="cpu", progress=False)
    rows = run_sweep(once)
    base = out / "once" / "base" / "weights" / "last.pt"
    lw_percents = [float(p) for p in args.layerwise_percents.split(",")]
    lw = run_sweep(SweepSettings(weights=str(base), arch=None, percents=lw_percents, retrain="layerwise",
                                 retrain_epochs=args.retrain_epochs, out=str(out / "layerwise"), device="cpu",
                                 progress=False))
    plot = REPO / "benchmarks" / "results" / "li_sweep_digits.png"
    shutil.copyfile(out / "once" / "sweep.png", plot)
    by_p = {r["percent"]: r for r in rows}
    lines = [SECTION, "",
             f"SCNNB (two 3x3 conv-BN-ReLU-maxpool stages of 32/64 filters, FC 1280; {rows[0]['params']:,} "
             f"parameters) trained {args.epochs} epochs (SGD, lr 0.05 cosine, batch 64, random shifts) on scikit-learn's "
             f"digits (1,437 train / 360 val images, 8x8 resized to 32x32). Every conv loses p of its filters "
             f"(smallest L1, Li et al.'s criterion; the first Linear is sliced with the last conv), top-1 is measured "
             f"right away and after {args.retrain_epochs} epochs of retraining (lr 0.01). 0 % is the base retrained "
             f"the same epochs (the control).", "",
             (out / "once" / "sweep.md").read_text().strip(), "",
             f"![top-1 vs parameters](benchmarks/results/{plot.name})", "",
             "Prune-then-retrain (once) vs layer-by-layer prune-retrain (each conv pruned, then retrained "
             f"ceil({args.retrain_epochs}/2) epochs; later layers scored on retrained weights):", "",
             "| filters pruned | parameters | once: top-1 retrained | layerwise: top-1 after pruning the first conv | "
             "layerwise: top-1 retrained |", "|---|---|---|---|---|"]
    for r in lw:
        o = by_p.get(r["percent"])
        lines.append(f"| {100 * r['percent']:.0f}% | {r['params']:,} | "
                     f"{o['top1_retrained']:.4f} | {r['top1_pruned']:.4f} | {r['top1_retrained']:.4f} |"
                     if o else f"| {100 * r['percent']:.0f}% | {r['params']:,} | - | {r['top1_pruned']:.4f} | "
                     f"{r['top1_retrained']:.4f} |")
    lines += ["", "One-shot pruning of every conv, no retraining: independent (each layer on its unpruned weights) vs "
              "greedy (`--scoring greedy`: kernels of channels removed upstream do not count):", "",
              "| filters pruned | parameters | independent: top-1 | greedy: top-1 | layers whose kept filters differ |",
              "|---|---|---|---|---|"] + strategies(base, [p for p in PERCENTS if p > 0]) + [""]
    if args.vgg_weights:
        from yolo_prune.checkpoint import load_model

        vgg = load_model(args.vgg_weights)
        lines += [f"The same on vgg16_bn (width {vgg.spec.width}, 13 convs, `--vgg-weights`), no retraining:", "",
                  "| filters pruned | parameters | independent: top-1 | greedy: top-1 | layers whose kept filters differ |",
                  "|---|---|---|---|---|"] + strategies(Path(args.vgg_weights), [0.1, 0.2, 0.3, 0.4, 0.5]) + [""]
    env = machine()
    lines += [f"5-min load average when this section was written: {os.getloadavg()[1]:.1f} (2 cores shared with "
              f"other jobs while the runs trained and were timed; resumed runs reuse stored results): absolute "
              f"times are inflated, ratios come from runs interleaved in the same rounds.", ""]
    lines += provenance(argv, env)
    text = "\n".join(lines)
    publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
