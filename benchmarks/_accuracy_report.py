"""The accuracy benchmark's report: tables, the goals, the plot (mAP@.5:.95 vs GFLOPs, one line per method)."""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from _finetune import machine_line
from _report import machine, provenance, write_section

from yolo_prune.fileio import write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def _mean(rows: list[dict], key: str = "map") -> tuple[float, str]:
    """Mean over seeds and the spread as text (single value: no spread)."""
    values = [r[key] for r in rows]
    if len(values) == 1:
        return values[0], ""
    return statistics.fmean(values), f" (±{(max(values) - min(values)) / 2:.4f} over {len(values)} seeds: " \
        + ", ".join(f"{v:.4f}" for v in values) + ")"


def _budget_table(rows: list[dict], control: float, g0: float) -> list[str]:
    lines = ["| method | budget | GFLOPs (ratio) | mAP@.5:.95 after pruning | after fine-tune | vs control | "
             "prune s | fine-tune s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r.get('budget', 1.0):g} | {r['gflops']:.3f} ({r['gflops'] / g0:.3f}) | "
                     f"{r.get('map_pruned', float('nan')):.4f} | {r['map']:.4f} | {100 * (r['map'] - control):+.1f} pt | "
                     f"{r.get('prune_s', 0):.0f} | {r['seconds'] - r.get('prune_s', 0):.0f} |")
    return lines


def _method(row: dict) -> str:
    """A row's method and settings without its seed: rows of one method over seeds share it."""
    return re.sub(r" seed \d+", "", row["name"])


def goals(rows: list[dict], control: float, headline: str) -> list[str]:
    """The issue's goals, each met or not, from the rows."""
    best = {}
    for r in rows:
        if r.get("kind") in ("budget", "schedule", "distill") and r.get("seed", 0) == 0:
            b = r["budget"]
            if b not in best or r["map"] > best[b]["map"]:
                best[b] = r
    out = []
    if 0.5 in best:
        method = _method(best[0.5])
        m, spread = _mean([r for r in rows if _method(r) == method])
        gap = 100 * (control - m)
        out.append(f"- 50 % GFLOPs, best method within 1.0 pt of the control: best {method} "
                   f"{m:.4f}{spread}, control {control:.4f}, gap {gap:.2f} pt: **{'met' if gap <= 1.0 else 'NOT met'}**")
    if 0.35 in best:
        gap = 100 * (control - best[0.35]["map"])
        out.append(f"- 35 % GFLOPs, within 3.0 pt of the control: best {best[0.35]['name']} {best[0.35]['map']:.4f}, "
                   f"gap {gap:.2f} pt: **{'met' if gap <= 3.0 else 'NOT met'}**")
        uniform = [r for r in rows if r.get("spec") == "uniform:l1" and r.get("budget") == 0.35 and r.get("seed", 0) == 0
                   and r.get("kind") == "budget"]
        if uniform:
            lead = 100 * (best[0.35]["map"] - uniform[0]["map"])
            out.append(f"- 35 % GFLOPs, at least 3 pt above uniform L1 ({uniform[0]['map']:.4f}): +{lead:.2f} pt: "
                       f"**{'met' if lead >= 3.0 else 'NOT met'}**")
    return out


def plot(rows: list[dict], control: float, g0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    specs = sorted({r["spec"] for r in rows if r.get("kind") == "budget"})
    for spec in specs:
        pts = sorted((r["gflops"], r["map"]) for r in rows if r.get("spec") == spec and r.get("kind") == "budget"
                     and r.get("seed", 0) == 0)
        ax.plot(*zip(*pts), "o-", label=spec)
    ax.plot([g0], [control], "k*", markersize=12, label="unpruned + same fine-tune")
    for r in rows:
        if r.get("kind") in ("schedule", "distill"):
            ax.plot([r["gflops"]], [r["map"]], "x", label=r["name"])
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel("mAP@.5:.95 (validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: no point hidden
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    """accuracy.md / accuracy.png in the work folder (and BENCHMARKS.md with --write)."""
    base = rows[0]
    control, control_spread = _mean([r for r in rows if r.get("kind") == "control"])
    g0 = base["gflops"]
    by_kind = lambda kind: [r for r in rows if r.get("kind") == kind]  # noqa: E731
    text = [f"Base `{args.base}`: mAP@.5:.95 {base['map']:.4f} without fine-tuning; unpruned control fine-tuned "
            f"with the same recipe: {control:.4f}{control_spread}.", "",
            f"Recipe for every row: hyp `{args.hyp}`, {args.epochs} epochs on {args.train_images} training images, "
            f"batch {args.batch_size}, {args.img} px, best.pt on {args.val_each_epoch} validation images; evaluation "
            f"on {args.val_images or 'all'} validation images; calibration/analysis: {args.n_samples} training "
            f"images. {machine_line(args.threads)}.", "", "### Budgets", ""]
    text += _budget_table(by_kind("budget"), control, g0) + ["", "Goals:", ""]
    text += goals(rows, control, args.headline) + [""]
    for kind, title in (("criterion", "Data-driven criteria (one rate for every layer, PLS-VIP-Single global)"),
                        ("schedule", "Schedules (same total epochs)"), ("distill", "Distillation")):
        if by_kind(kind):
            text += [f"### {title}", ""] + _budget_table(by_kind(kind), control, g0) + [""]
    body = "\n".join(text)
    work = Path(args.work)
    write_text_atomic(work / "accuracy.md", body + "\n")
    plot(rows, control, g0, work / "accuracy.png")
    print(body)
    if args.write:
        import shutil

        shutil.copy(work / "accuracy.png", REPO / "benchmarks" / "results" / "accuracy_cpu.png")
        section = ["## Accuracy at a GFLOPs budget", "", body, "", "Plot: `benchmarks/results/accuracy_cpu.png`.", "",
                   *provenance(sys.argv[1:], machine())]
        write_section(REPO / "BENCHMARKS.md", "\n".join(section))
