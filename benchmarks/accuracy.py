"""Accuracy at a GFLOPs budget: layer-selected (knapsack over the sensitivity analysis) vs uniform pruning.

    python benchmarks/accuracy.py --device 0 --epochs 10 --budgets 0.5,0.35,0.7          # GPU
    python benchmarks/accuracy.py --device cpu --threads 1 --train-images 512 --epochs 4  # 2-core CPU

Starts from the shipped demo model (yolov7-tiny on the synthetic benchmark). The analysis runs on training
images (not the validation split, so selection does not see the images it is judged on). Every model --
the unpruned control included -- is fine-tuned with the same recipe and number of epochs on the same
training images, then evaluated on the 200 validation images (mAP@.5:.95 from pycocotools). Uniform
pruning uses one rate for every layer, found by bisection so its GFLOPs match the knapsack model's.
``--distill`` adds a knapsack run at the first budget fine-tuned with distillation from the unpruned model.

Resumable: each finished row is stored in ``<work>/rows.json`` and skipped when the command is re-run.
Writes ``<work>/accuracy.md`` (table) and ``<work>/accuracy.png`` (mAP@.5:.95 against GFLOPs).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from yolo_prune.analysis.budget import select_for_budget
from yolo_prune.analysis.table import read_table
from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.engine.train_state import TrainSettings
from yolo_prune.engine.trainer import train
from yolo_prune.fileio import write_text_atomic
from yolo_prune.models.complexity import count_gflops
from yolo_prune.models.fuse import fuse
from yolo_prune.pipeline.devices import select_device
from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, evaluate_on_data, sensitivity_on_data
from yolo_prune.prune import prune
from yolo_prune.prune.cost import CostModel, fused_cost_model

IMG = DEMO_SYNTH["img_size"]


def fused_gflops(model: torch.nn.Module) -> float:
    """GFLOPs of the re-parameterised model at the benchmark's image size (``model`` is not modified)."""
    return count_gflops(fuse(copy.deepcopy(model).float().cpu()), IMG)


def uniform_rate(model: torch.nn.Module, target: float) -> float:
    """The single rate whose uniform pruning lands at or just under ``target`` GFLOPs (bisection)."""
    layers = list(range(len(model.conv_modules())))
    costs = CostModel.of(model, IMG)
    lo, hi = 0.0, 0.95
    for _ in range(20):
        mid = (lo + hi) / 2
        cost = costs.cost([(i, mid) for i in layers]).gflops
        lo, hi = (mid, hi) if cost > target else (lo, mid)
    return hi


class Bench:
    """The shared state of one benchmark run: data, settings, finished rows (persisted after each)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, Path(args.work)
        self.device = select_device(args.device)
        synth = DEMO_SYNTH | {"n_train": args.train_images}
        self.data = generate_synthetic(self.work / "synth", **synth, exist_ok=True).data_yaml
        self.val = DataSettings(str(self.data), "val", IMG, 32, args.workers)
        self.rows_path = self.work / "rows.json"
        self.rows: dict[str, dict[str, Any]] = json.loads(self.rows_path.read_text()) if self.rows_path.exists() else {}

    def row(self, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored row ``name``, or compute, store and return it."""
        if name not in self.rows:
            started = time.time()
            self.rows[name] = make() | {"model": name, "seconds": round(time.time() - started, 1)}
            write_text_atomic(self.rows_path, json.dumps(self.rows, indent=1))
        r = self.rows[name]
        print(f"{name}: GFLOPs {r['gflops']:.3f}  mAP@.5 {r['map50']:.4f}  mAP@.5:.95 {r['map']:.4f}  "
              f"({r['seconds']:.0f} s)", flush=True)
        return r

    def evaluate(self, model: torch.nn.Module) -> dict[str, Any]:
        result = evaluate_on_data(model, self.val, device=self.device, progress=False)
        return {"gflops": fused_gflops(model), "map50": result.map50, "map": result.map}

    def finetune(self, name: str, model: torch.nn.Module | None = None,
                 distill_pairs: list[tuple[int, float]] | None = None) -> dict[str, Any]:
        """Fine-tune ``model`` (saved first) with the shared recipe, or, with ``distill_pairs``, prune the demo
        model by them inside ``train`` and distil from it (the unpruned model is the teacher)."""
        if distill_pairs is None:
            source = {"weights": str(save_checkpoint(model, self.work / "start" / f"{name}.pt"))}
        else:
            source = {"weights": str(DEMO_MODEL), "pruning_params": [list(p) for p in distill_pairs],
                      "criterion": "l2", "distill": True}
        settings = TrainSettings(**source, data=str(self.data), hyp="scratch.tiny", epochs=self.args.epochs,
                                 batch_size=self.args.batch_size, img_size=IMG, device=self.args.device,
                                 workers=self.args.workers, project=str(self.work / "runs"), name=name,
                                 exist_ok=True, seed=0, max_val_images=self.args.val_each_epoch, progress=False)
        tuned = load_checkpoint(train(settings).best).model
        return self.evaluate(tuned) | {"epochs": self.args.epochs}


def demo_model() -> torch.nn.Module:
    return load_checkpoint(DEMO_MODEL).model.float()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    b = Bench(args)
    rows = [b.row("shipped (no fine-tune)", lambda: b.evaluate(demo_model()))]
    rows.append(b.row("unpruned + fine-tune", lambda: b.finetune("unpruned", demo_model())))
    analysis = DataSettings(str(b.data), "train", IMG, 16, args.workers, args.analysis_images)
    sensitivity_on_data(demo_model(), analysis, AnalysisSettings([0.25, 0.5, 0.75]), b.work / "sensitivity",
                        device=b.device, progress=True)
    table = read_table(b.work / "sensitivity")
    g0 = rows[0]["gflops"]
    budgets = [float(x) for x in args.budgets.split(",")]
    for budget in budgets:
        model = demo_model()
        choice = select_for_budget(table, table.baseline.gflops, table.baseline.map, budget * table.baseline.gflops,
                                   "gflops", fused_cost_model(model, IMG))
        selected = prune(model, choice.pairs, "l2", inplace=True, summarize=False).model
        rows.append(b.row(f"knapsack {budget:g}", lambda: b.finetune(f"knapsack-{budget:g}", selected)))
        if not args.no_uniform:
            rate = uniform_rate(demo_model(), rows[-1]["gflops"])
            rows.append(b.row(f"uniform {budget:g} (rate {rate:.3f})", lambda: b.finetune(
                f"uniform-{budget:g}", prune(demo_model(), rate, "l2", inplace=True, summarize=False).model)))
        if args.distill and budget == budgets[0]:
            rows.append(b.row(f"knapsack {budget:g} + distill", lambda: b.finetune(
                f"knapsack-{budget:g}-distill", distill_pairs=choice.pairs)))
    report(rows, g0, args, b)
    return rows


def report(rows: list[dict[str, Any]], g0: float, args: argparse.Namespace, b: Bench) -> None:
    """Markdown table and plot into the work folder; the table is printed too."""
    device = torch.cuda.get_device_name(0) if b.device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} thread(s))"
    lines = [f"| model | GFLOPs @{IMG} | GFLOPs ratio | mAP@.5 | mAP@.5:.95 | fine-tune s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['gflops']:.3f} | {r['gflops'] / g0:.2f} | {r['map50']:.4f} | {r['map']:.4f} | "
              f"{r['seconds']:.0f} |" for r in rows]
    lines.append(f"\n{device}; {args.epochs} fine-tuning epochs on {args.train_images} training images, batch "
                 f"{args.batch_size}; analysis on {args.analysis_images} training images; validation: "
                 f"{DEMO_SYNTH['n_val']} images.")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text_atomic(b.work / "accuracy.md", text)
    plot(rows, b.work / "accuracy.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for prefix, marker in (("knapsack", "o-"), ("uniform", "s--")):
        pts = sorted((r["gflops"], r["map"]) for r in rows if r["model"].startswith(prefix)
                     and "distill" not in r["model"])
        if pts:
            ax.plot(*zip(*pts), marker, label=f"{prefix} + fine-tune")
    for r in rows:
        if r["model"].startswith("unpruned") or "distill" in r["model"]:
            ax.plot([r["gflops"]], [r["map"]], "*", markersize=12, label=r["model"])
    ax.set_xlabel(f"GFLOPs @{IMG}")
    ax.set_ylabel("mAP@.5:.95 (200 validation images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-images", type=int, default=DEMO_SYNTH["n_train"])
    p.add_argument("--budgets", default="0.5,0.35,0.7", help="comma-separated fractions of the unpruned GFLOPs")
    p.add_argument("--analysis-images", type=int, default=64)
    p.add_argument("--val-each-epoch", type=int, default=64, help="validation images for best.pt selection")
    p.add_argument("--distill", action="store_true", help="also the first budget's knapsack model with distillation")
    p.add_argument("--no-uniform", action="store_true", help="skip the uniform-pruning rows")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="runs/bench_accuracy")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
