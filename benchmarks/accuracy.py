"""Accuracy at a GFLOPs budget: layer-selected (knapsack over the sensitivity analysis) vs uniform pruning.

    python benchmarks/accuracy.py --device 0 --epochs 10 --budgets 0.5 --write

Starts from the shipped demo model (yolov7-tiny on the synthetic benchmark). The analysis runs on training
images (not the validation split, so selection does not see the images it is judged on). Every model --
the unpruned control included -- is fine-tuned for the same number of epochs, then evaluated on the 200
validation images (mAP@.5:.95 from pycocotools). Uniform pruning uses one rate for every layer, found by
bisection so its GFLOPs match the budget.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from yolo_prune.analysis.budget import model_cost, select_for_budget
from yolo_prune.analysis.table import read_table
from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.engine.train_state import TrainSettings
from yolo_prune.engine.trainer import train
from yolo_prune.models.complexity import count_gflops
from yolo_prune.models.fuse import fuse
from yolo_prune.pipeline.devices import select_device
from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, evaluate_on_data, sensitivity_on_data
from yolo_prune.prune import prune


def uniform_rate(model, target: float, img: int) -> float:
    """The single rate whose uniform pruning lands closest to ``target`` GFLOPs (bisection)."""
    layers = [i for i in range(len(model.conv_modules()))]
    lo, hi = 0.01, 0.95
    for _ in range(25):
        mid = (lo + hi) / 2
        cost = model_cost(model, [(i, mid) for i in layers], "gflops", img)
        lo, hi = (mid, hi) if cost > target else (lo, mid)
    return hi


def finetune_and_eval(name: str, model, work: Path, data: Path, args, val: DataSettings, device) -> dict:
    path = save_checkpoint(model, work / f"{name}.pt")
    settings = TrainSettings(weights=str(path), data=str(data), hyp="scratch.tiny", epochs=args.epochs,
                             batch_size=64, img_size=DEMO_SYNTH["img_size"], device=args.device, workers=args.workers,
                             project=str(work), name=name, exist_ok=True, seed=0, progress=False)
    tuned = load_checkpoint(train(settings).best).model
    result = evaluate_on_data(tuned, val, device=device, progress=False)
    fused = fuse(tuned.float().cpu())
    return {"model": name, "gflops": count_gflops(fused, DEMO_SYNTH["img_size"]), "map50": result.map50,
            "map": result.map}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--budgets", default="0.5", help="comma-separated fractions of the unpruned GFLOPs")
    p.add_argument("--analysis-images", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--work", default="runs/bench_accuracy")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    device, work, img = select_device(args.device), Path(args.work), DEMO_SYNTH["img_size"]
    data = generate_synthetic(work / "synth", **DEMO_SYNTH, exist_ok=True).data_yaml
    val = DataSettings(str(data), "val", img, 32, 2)
    base = load_checkpoint(DEMO_MODEL).model
    t0 = time.time()
    start = evaluate_on_data(base, val, device=device, progress=False)
    rows = [{"model": "shipped (no fine-tune)", "gflops": count_gflops(fuse(load_checkpoint(DEMO_MODEL).model), img),
             "map50": start.map50, "map": start.map}]
    rows.append(finetune_and_eval("unpruned+ft", load_checkpoint(DEMO_MODEL).model, work, data, args, val, device))
    analysis = DataSettings(str(data), "train", img, 32, 2, args.analysis_images)
    sensitivity_on_data(load_checkpoint(DEMO_MODEL).model, analysis, AnalysisSettings([0.25, 0.5, 0.75]),
                        work / "sensitivity", device=device, progress=False)
    table = read_table(work / "sensitivity")
    g0 = count_gflops(fuse(load_checkpoint(DEMO_MODEL).model), img)
    for budget in [float(b) for b in args.budgets.split(",")]:
        model = load_checkpoint(DEMO_MODEL).model
        choice = select_for_budget(table, table.baseline.gflops, table.baseline.map, budget * table.baseline.gflops,
                                   "gflops", lambda pairs: model_cost(model, pairs, "gflops", img))
        selected = prune(model, choice.pairs, "l2", inplace=True, summarize=False).model
        rows.append(finetune_and_eval(f"knapsack-{budget:g}", selected, work, data, args, val, device))
        rate = uniform_rate(load_checkpoint(DEMO_MODEL).model, budget * g0, img)
        uniform = prune(load_checkpoint(DEMO_MODEL).model, rate, "l2", inplace=True, summarize=False).model
        rows.append(finetune_and_eval(f"uniform-{rate:.3f}", uniform, work, data, args, val, device))
    print(f"| model | GFLOPs @{img} | GFLOPs ratio | mAP@.5 | mAP@.5:.95 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['gflops']:.3f} | {r['gflops'] / g0:.2f} | {r['map50']:.4f} | {r['map']:.4f} |")
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else platform.processor()}), "
          f"{args.epochs} fine-tuning epochs each, {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
