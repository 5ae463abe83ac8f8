"""`make demo`: the main job end to end on the built-in default, with no downloads (< 15 min on 2 CPU cores).

synthetic benchmark -> shipped yolov7-tiny (trained on it) -> sensitivity analysis on a validation subset
-> budget layer selection -> prune -> brief fine-tune -> evaluate -> ONNX export + ONNX Runtime latency
-> before/after table and a report (markdown + plots) in --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.errors import YoloPruneError
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, evaluate_on_data, sensitivity_on_data


def banner(text: str) -> float:
    print(f"\n=== {text}", flush=True)
    return time.time()


def cpu_latency_ms(model: torch.nn.Module, img: int, runs: int = 20) -> float:
    """Median PyTorch eager latency of the fused model, batch 1, CPU (``yolo-prune benchmark``'s runner)."""
    from yolo_prune.bench import time_callable, torch_runner

    runner = torch_runner(model, 1, (img, img), torch.device("cpu"), fp16=False, compiled=False)
    return time_callable(runner.run, 3, runs).median_ms


def onnx_latency_ms(model: torch.nn.Module, img: int, path: Path) -> float | None:
    """Export with `yolo-prune export` machinery when available and time ONNX Runtime; None if unavailable."""
    try:
        import onnxruntime  # noqa: F401 - the export extra

        from yolo_prune.cli import main as cli
    except ImportError:
        return None
    ckpt = path.with_suffix(".pt")
    save_checkpoint(model, ckpt)
    if cli(["export", "--weights", str(ckpt), "--format", "onnx", "--img-size", str(img), "--grid",
            "--output", str(path)]) != 0:
        return None
    from yolo_prune.bench import ort_runner, time_callable

    runner = ort_runner(path, 1, (img, img), torch.device("cpu"))  # one session alive at a time
    return time_callable(runner.run, 3, 20).median_ms


def fine_tune(weights: Path, data: Path, out: Path, epochs: int) -> Path:
    from yolo_prune.engine.train_state import TrainSettings
    from yolo_prune.engine.trainer import train

    settings = TrainSettings(weights=str(weights), data=str(data), hyp="scratch.tiny", epochs=epochs, batch_size=16,
                             img_size=DEMO_SYNTH["img_size"], device="cpu", workers=2, project=str(out), name="finetune",
                             exist_ok=True, seed=0, max_val_images=32)
    return Path(train(settings).best)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--analysis-images", type=int, default=16)
    p.add_argument("--budget", type=float, default=0.6, help="target GFLOPs as a fraction of the unpruned model's")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=256)
    args = p.parse_args()
    out = Path(args.out)
    started = banner("1/7 synthetic benchmark (same seed as the shipped model's training data)")
    synth = generate_synthetic(out / "synth", **(DEMO_SYNTH | {"n_train": args.train_images}), exist_ok=True)
    data, img = synth.data_yaml, DEMO_SYNTH["img_size"]
    banner(f"2/7 shipped model {DEMO_MODEL.name}: evaluate on {DEMO_SYNTH['n_val']} validation images")
    model = load_checkpoint(DEMO_MODEL).model
    full_val = DataSettings(str(data), "val", img, 32, 2)
    before = evaluate_on_data(model, full_val, device=torch.device("cpu"), progress=False)
    print(f"mAP@.5 {before.map50:.4f}  mAP@.5:.95 {before.map:.4f}")
    banner(f"3/7 sensitivity analysis: every layer x rates 0.25/0.5/0.75 on {args.analysis_images} images")
    subset = DataSettings(str(data), "val", img, 16, 2, args.analysis_images)
    analyse = lambda replace: sensitivity_on_data(  # noqa: E731
        load_checkpoint(DEMO_MODEL).model, subset, AnalysisSettings([0.25, 0.5, 0.75]), out / "sensitivity",
        device=torch.device("cpu"), source=str(DEMO_MODEL), exist_ok=replace)
    try:
        analyse(False)  # resumes an interrupted demo
    except YoloPruneError:
        analyse(True)  # an earlier demo with other settings: replace it
    banner(f"4/7 layer selection for {args.budget:.0%} of the GFLOPs (knapsack on exact costs)")
    pairs = select(out, model, img, args.budget)
    banner("5/7 prune")
    from yolo_prune.prune import format_result, prune

    result = prune(load_checkpoint(DEMO_MODEL).model, pairs, "l2", img_size=img)
    print(format_result(result))
    pruned_path = save_checkpoint(result.model, out / "pruned.pt", history=[result.history_entry()])
    banner(f"6/7 fine-tune {args.epochs} epochs on {args.train_images} images (CPU), then evaluate")
    tuned = load_checkpoint(fine_tune(pruned_path, data, out, args.epochs)).model
    after = evaluate_on_data(tuned, full_val, device=torch.device("cpu"), progress=False)
    banner("7/7 latency (PyTorch CPU, ONNX Runtime CPU; batch 1) and report")
    rows = [row("unpruned", model, before, img, out / "unpruned.onnx"),
            row("pruned + fine-tuned", tuned, after, img, out / "pruned.onnx")]
    report(out, rows, pairs, time.time() - started)


def select(out: Path, model: torch.nn.Module, img: int, budget: float) -> list[tuple[int, float]]:
    from yolo_prune.analysis.budget import select_for_budget
    from yolo_prune.analysis.table import read_table
    from yolo_prune.prune.cost import fused_cost_model

    table = read_table(out / "sensitivity")
    base = table.baseline
    target = budget * base.gflops
    choice = select_for_budget(table, base.gflops, base.map, target, "gflops", fused_cost_model(model, img))
    print(f"{len(choice.pairs)} layers: {choice.pairs}\npredicted mAP@.5:.95 {choice.predicted_map:.4f} "
          f"(analysis subset baseline {base.map:.4f}); GFLOPs {base.gflops:.3f} -> {choice.exact_cost:.3f}")
    return choice.pairs


def row(name: str, model, result, img: int, onnx_path: Path) -> dict:
    from yolo_prune.models.fuse import fuse
    import copy

    fused = fuse(copy.deepcopy(model).float())
    return {"model": name, "params": count_params(fused), "gflops": count_gflops(fused, img),
            "map50": result.map50, "map": result.map, "torch_ms": cpu_latency_ms(fused, img),
            "onnx_ms": onnx_latency_ms(model, img, onnx_path)}


def report(out: Path, rows: list[dict], pairs, seconds: float) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| model | params (fused) | GFLOPs @256 | mAP@.5 | mAP@.5:.95 | PyTorch CPU ms | ONNX Runtime CPU ms |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['gflops']:.3f} | {r['map50']:.4f} | {r['map']:.4f} | "
              f"{fmt(r['torch_ms'])} | {fmt(r['onnx_ms'])} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    text = (f"# yolo-prune demo report\n\nPruned layers and rates: `{pairs}`\n\n{table}\n\n"
            f"Latency: median of 20 runs, batch 1, {torch.get_num_threads()} threads. Total time {seconds / 60:.1f} min.\n\n"
            "![selection](sensitivity_map.png)\n")
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    plot(out)
    print(f"\nreport: {out / 'report.md'} (+ report.json, sensitivity_map.png); total {seconds / 60:.1f} min")


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yolo_prune.analysis.table import read_table

    table = read_table(out / "sensitivity")
    fig, ax = plt.subplots(figsize=(9, 4))
    for rate in table.rates:
        ax.plot(table.layers, [table.entries[(l, rate)].map for l in table.layers], label=f"rate {rate:g}")
    ax.axhline(table.baseline.map, color="k", ls="--", lw=0.8, label="unpruned")
    ax.set_xlabel("conv layer")
    ax.set_ylabel("mAP@.5:.95 (analysis subset)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sensitivity_map.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
