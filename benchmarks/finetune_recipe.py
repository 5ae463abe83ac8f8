"""Fine-tuning recipe: does fine-tuning lose accuracy on a converged model, and how fast does a pruned one recover?

    python benchmarks/finetune_recipe.py --base runs/base/best.pt --data data/synth/data.yaml --write

For every hyp in ``--hyps`` (a shipped name, a path, or ``name:key=value,...``), the same base model is fine-tuned
unpruned and pruned (uniform L1 at ``--budget`` of its GFLOPs, one rate for every layer found by bisection) with
the same epochs, images and seed; every model is evaluated on the validation split (pycocotools mAP@.5:.95).
The recipe wanted: unpruned never below the base, pruned recovering the most. Resumable per row
(``<work>/rows.json``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _finetune import Recipe, Rows, evaluate, finetune, hyp_variant, load, subset_data  # noqa: E402
from _report import provenance, machine, write_section  # noqa: E402

from yolo_prune.demo_data import BASE_MODEL  # noqa: E402


def uniform_pruned(model: torch.nn.Module, budget: float, img: int) -> torch.nn.Module:
    """``model`` pruned uniformly (L1, one rate for every layer) to at most ``budget`` of its GFLOPs."""
    from _methods import Method, prune_to_budget

    return prune_to_budget(model, Method.parse("uniform:l1"), budget, Path("unused"), img, 2, Path("unused")).model


def run(args: argparse.Namespace) -> list[dict]:
    work = Path(args.work)
    data = subset_data(work, args.data, args.train_images)
    rows = Rows(work / "rows.json")
    base = Path(args.base)
    out = [rows.get("base", lambda: evaluate(load(base), data, args.img))]
    pruned = uniform_pruned(load(base), args.budget, args.img)
    out.append(rows.get(f"pruned {args.budget:g} (L1 uniform), no fine-tune", lambda: evaluate(pruned, data, args.img)))
    for spec in args.hyps.split(";"):
        recipe = Recipe(hyp_variant(spec, work), args.epochs, args.batch_size, args.img, val_images=args.val_each_epoch)
        tag = spec.replace(":", " ").replace(",", " ")
        out.append(rows.get(f"unpruned + {tag}", lambda: evaluate(load(finetune(
            base, f"unpruned-{len(out)}", data, recipe, work)), data, args.img) | {"hyp": spec}))
        out.append(rows.get(f"pruned {args.budget:g} + {tag}", lambda: evaluate(load(finetune(
            pruned, f"pruned-{len(out)}", data, recipe, work)), data, args.img) | {"hyp": spec}))
    return out


def report(rows: list[dict], args: argparse.Namespace) -> str:
    base = rows[0]["map"]
    lines = ["| model | GFLOPs | mAP@.5 | mAP@.5:.95 | vs base | s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['gflops']:.3f} | {r['map50']:.4f} | {r['map']:.4f} | {100 * (r['map'] - base):+.1f} pt | "
              f"{r['seconds']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(BASE_MODEL), help="the (converged) model to fine-tune")
    p.add_argument("--data", required=True, help="data YAML (the synthetic benchmark)")
    p.add_argument("--hyps", default="scratch.tiny;finetune;finetune:lr0=0.001;finetune:lr0=0.005",
                   help="';'-separated hyps: shipped names, paths, or name:key=value,key=value")
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img", type=int, default=256)
    p.add_argument("--budget", type=float, default=0.5, help="pruned model: this fraction of the base GFLOPs")
    p.add_argument("--val-each-epoch", type=int, default=64, help="validation images for best.pt selection")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench_recipe")
    p.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args)
    table = report(rows, args)
    print(table)
    if args.write:
        text = ["## Fine-tuning recipe", "", f"Base model `{args.base}`; every row fine-tuned {args.epochs} epochs on "
                f"{args.train_images} training images (batch {args.batch_size}, {args.img} px, seed 0, best.pt on "
                f"{args.val_each_epoch} validation images), evaluated on the whole validation split.", "", table, "",
                *provenance(sys.argv[1:], machine())]
        write_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "\n".join(text))


if __name__ == "__main__":
    main()
