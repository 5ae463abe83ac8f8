"""`make demo`: the main job end to end on the built-in default, with no downloads (about 4 min on 2 quiet CPU cores).

synthetic benchmark -> shipped yolov7-tiny (trained on it to convergence) -> the recommended recipe: sensitivity
analysis on training images with the Taylor criterion and least-squares reconstruction, budget knapsack to half
the GFLOPs, prune (+ reconstruct), fine-tune with the fine-tuning hyp and distillation -> evaluate -> ONNX export
-> latency of the unpruned and the pruned model measured in turn over several rounds (median and spread, and a
warning when the spread says the machine is busy) -> a before/after table and a report (markdown + plots).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import BASE_MODEL, DEMO_SYNTH
from yolo_prune.engine.calibration import calibration_source
from yolo_prune.errors import YoloPruneError
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import fuse
from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, evaluate_on_data, sensitivity_on_data
from yolo_prune.prune.options import CriterionOptions

CPU = torch.device("cpu")


def banner(text: str) -> float:
    print(f"\n=== {text}", flush=True)
    return time.time()


def analyse(out: Path, data: Path, img: int, args: argparse.Namespace, options: CriterionOptions) -> None:
    """Sensitivity analysis of the shipped model on training images (resumes an interrupted demo)."""
    subset = DataSettings(str(data), "train", img, 16, 2, args.analysis_images)
    settings = AnalysisSettings([0.25, 0.5, 0.75], args.criterion, options=options)
    run = lambda replace: sensitivity_on_data(load_checkpoint(BASE_MODEL).model, subset, settings,  # noqa: E731
                                              out / "sensitivity", device=CPU, source=str(BASE_MODEL), exist_ok=replace)
    try:
        run(False)
    except YoloPruneError:
        run(True)  # an earlier demo with other settings: replace it


def select(out: Path, model: torch.nn.Module, img: int, budget: float) -> list[tuple[int, float]]:
    from yolo_prune.analysis.budget import select_for_budget
    from yolo_prune.analysis.table import read_table
    from yolo_prune.prune.cost import fused_cost_model

    table = read_table(out / "sensitivity")
    base = table.baseline
    choice = select_for_budget(table, base.gflops, base.map, budget * base.gflops, "gflops",
                               fused_cost_model(model, img))
    print(f"{len(choice.pairs)} layers: {choice.pairs}\nGFLOPs {base.gflops:.3f} -> {choice.exact_cost:.3f}")
    return choice.pairs


def fine_tune(data: Path, out: Path, pairs, args: argparse.Namespace, options: CriterionOptions) -> Path:
    """Prune inside ``train`` (the unpruned model is the distillation teacher) and fine-tune."""
    from yolo_prune.engine.train_state import TrainSettings
    from yolo_prune.engine.trainer import train

    settings = TrainSettings(weights=str(BASE_MODEL), data=str(data), epochs=args.epochs, batch_size=16,
                             img_size=DEMO_SYNTH["img_size"], device="cpu", workers=2, project=str(out),
                             name="finetune", exist_ok=True, seed=0, max_val_images=32, pruning_params=pairs,
                             criterion=args.criterion, criterion_options=options.to_dict(), distill=True)
    return Path(train(settings).best)


def latency(models: dict[str, torch.nn.Module], img: int, out: Path, rounds: int) -> dict[str, dict]:
    """PyTorch and ONNX Runtime latency (batch 1, CPU), every model visited in turn for ``rounds`` rounds."""
    from yolo_prune.bench import busy_warning, interleaved, ort_runner, torch_runner
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    results: dict[str, dict] = {name: {} for name in models}
    factories = {f"{name}|torch": (lambda m=m: torch_runner(m, 1, (img, img), CPU)) for name, m in models.items()}
    try:
        for name, m in models.items():
            path = out / f"{name.replace(' ', '_')}.onnx"
            export_onnx(m, path, ExportOptions(img_size=img, opset=12), verify=False)
            factories[f"{name}|ort"] = lambda p=path: ort_runner(p, 1, (img, img), CPU)
    except ImportError:
        print("onnxruntime not installed: PyTorch latency only")
    stats = interleaved(factories, rounds=rounds, warmup=3, iters=10)
    for key, s in stats.items():
        name, runtime = key.split("|")
        results[name][runtime] = {"median_ms": s.median_ms, "p10_ms": s.p10_ms, "p90_ms": s.p90_ms, "n": s.n}
    warning = busy_warning(stats)
    if warning:
        print(warning)
    for r in results.values():
        r["warning"] = warning
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--analysis-images", type=int, default=64,
                   help="training images of the sensitivity analysis (at 50 %% of the GFLOPs, 16 kept mAP@.5:.95 0.37 "
                        "right after pruning, 64 kept 0.51)")
    p.add_argument("--budget", type=float, default=0.5, help="target GFLOPs as a fraction of the unpruned model's")
    p.add_argument("--criterion", default="taylor")
    p.add_argument("--no-reconstruct", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="latency: rounds over the models")
    args = p.parse_args()
    out, img = Path(args.out), DEMO_SYNTH["img_size"]
    options = CriterionOptions(n_samples=args.analysis_images, reconstruct=not args.no_reconstruct)
    started = banner("1/7 synthetic benchmark (same seed as the shipped model's training data)")
    data = generate_synthetic(out / "synth", **(DEMO_SYNTH | {"n_train": args.train_images}), exist_ok=True).data_yaml
    banner(f"2/7 shipped model {BASE_MODEL.name}: evaluate on {DEMO_SYNTH['n_val']} validation images")
    model = load_checkpoint(BASE_MODEL).model.float()
    val = DataSettings(str(data), "val", img, 32, 2)
    before = evaluate_on_data(model, val, device=CPU, progress=False)
    print(f"mAP@.5 {before.map50:.4f}  mAP@.5:.95 {before.map:.4f}")
    banner(f"3/7 sensitivity analysis: every layer x rates 0.25/0.5/0.75, criterion {args.criterion}"
           f"{' + reconstruction' if options.reconstruct else ''}, {args.analysis_images} training images")
    analyse(out, data, img, args, options)
    banner(f"4/7 layer selection for {args.budget:.0%} of the GFLOPs (knapsack, exact cost checked) and prune")
    pairs = select(out, model, img, args.budget)
    from yolo_prune.prune import prune

    source = calibration_source(model, args.criterion, options, str(data), img)
    pruned = prune(model, pairs, args.criterion, options=options, source=source, img_size=img).model
    uniform = prune(model, _uniform_rate(model, pruned, img), "l1", img_size=img).model
    right_after = {name: evaluate_on_data(m, val, device=CPU, progress=False).map
                   for name, m in (("recipe", pruned), ("uniform L1", uniform))}
    print(f"mAP@.5:.95 right after pruning: recipe {right_after['recipe']:.4f}, "
          f"uniform L1 at the same GFLOPs {right_after['uniform L1']:.4f}")
    banner(f"5/7 fine-tune {args.epochs} epochs on {args.train_images} images (hyp finetune, distillation), evaluate")
    tuned = load_checkpoint(fine_tune(data, out, pairs, args, options)).model.float()
    after = evaluate_on_data(tuned, val, device=CPU, progress=False)
    banner(f"6/7 latency: unpruned and pruned in turn, {args.rounds} rounds (PyTorch and ONNX Runtime, CPU, batch 1)")
    timing = latency({"unpruned": model, "pruned": tuned}, img, out, args.rounds)
    banner("7/7 report")
    rows = [row("unpruned", model, before, img, timing["unpruned"]),
            row("pruned + fine-tuned", tuned, after, img, timing["pruned"])]
    report(out, rows, pairs, right_after, args, time.time() - started)


def _uniform_rate(model: torch.nn.Module, target_model: torch.nn.Module, img: int) -> float:
    """The single rate whose uniform pruning costs at most what ``target_model`` costs (bisection)."""
    from yolo_prune.prune.cost import CostModel

    costs = CostModel.of(model, img)
    target, layers = CostModel.of(target_model, img).cost().gflops, range(len(model.conv_modules()))
    lo, hi = 0.0, 0.95
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if costs.cost([(i, mid) for i in layers]).gflops > target else (lo, mid)
    return hi


def row(name: str, model, result, img: int, timing: dict) -> dict:
    fused = fuse(copy.deepcopy(model).float())
    return {"model": name, "params": count_params(fused), "gflops": count_gflops(fused, img), "map50": result.map50,
            "map": result.map, "latency": timing}


def _ms(t: dict | None) -> str:
    return "n/a" if not t else f"{t['median_ms']:.2f} ({t['p10_ms']:.2f}-{t['p90_ms']:.2f})"


def report(out: Path, rows: list[dict], pairs, right_after: dict, args, seconds: float) -> None:
    lines = ["| model | params (fused) | GFLOPs @256 | mAP@.5 | mAP@.5:.95 | PyTorch ms median (p10-p90) | "
             "ONNX Runtime ms median (p10-p90) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['gflops']:.3f} | {r['map50']:.4f} | {r['map']:.4f} | "
              f"{_ms(r['latency'].get('torch'))} | {_ms(r['latency'].get('ort'))} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    warning = rows[0]["latency"].get("warning")
    if warning:
        print(warning)
    text = (f"# yolo-prune demo report\n\nRecipe: criterion `{args.criterion}`"
            f"{' + least-squares reconstruction' if not args.no_reconstruct else ''}, knapsack to {args.budget:.0%} of "
            f"the GFLOPs, {args.epochs} fine-tuning epochs (hyp `finetune`, distillation). Pruned layers and rates: "
            f"`{pairs}`\n\nmAP@.5:.95 right after pruning: {right_after['recipe']:.4f} (uniform L1 at the same "
            f"GFLOPs: {right_after['uniform L1']:.4f}).\n\n{table}\n\nLatency: batch 1, {args.rounds} rounds visiting "
            f"both models in turn, {torch.get_num_threads()} threads.{' ' + warning if warning else ''} "
            f"Total time {seconds / 60:.1f} min.\n\n![sensitivity](sensitivity_map.png)\n")
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
