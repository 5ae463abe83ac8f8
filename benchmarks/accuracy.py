"""Accuracy at a GFLOPs budget: one fixed protocol for every pruning method, criterion, schedule and distillation.

    python benchmarks/accuracy.py --quick --data data/synth/data.yaml            # tens of minutes on 2 cores
    python benchmarks/accuracy.py --data data/synth/data.yaml --write            # the full protocol (hours)

Protocol: the base model (``--base``; converged on the synthetic benchmark) is pruned by each method to at most
70 / 50 / 35 % of its GFLOPs (each method lands within a few tenths of a percent under the budget: bisection or
knapsack on the exact cost), then every model -- and the unpruned control -- is fine-tuned with the same recipe
(hyp, epochs, the same ``--train-images`` training images, batch, seed; best.pt chosen on ``--val-each-epoch``
validation images) and evaluated on the validation split (pycocotools mAP@.5:.95). Calibration images for
data-driven criteria, reconstruction and the sensitivity analysis come from the training subset, never from the
validation split. Methods are ``uniform|global|knapsack:<criterion>[+rec]`` (see ``_methods.py``).

Besides the budget table: the data-driven criteria table (each criterion, one rate for every layer, at 50 %:
mAP right after pruning, after fine-tuning, and the seconds the criterion took), schedules at 50 % (one-shot vs
K rounds of prune -> E/K epochs, same total epochs), and distillation at 50 % (none / output / output + neck
features). Resumable per row (``<work>/rows.json``); writes ``accuracy.md`` and ``accuracy.png`` into ``--work``
and, with ``--write``, the section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _finetune import Recipe, Rows, evaluate, finetune, load, subset_data  # noqa: E402
from _methods import Method, prune_to_budget  # noqa: E402

from yolo_prune.prune.cost import fused_cost_model  # noqa: E402
from yolo_prune.demo_data import BASE_MODEL  # noqa: E402

QUICK = {"train_images": 128, "epochs": 2, "budgets": "0.5", "methods": "uniform:l1,knapsack:taylor+rec",
         "seeds": 1, "val_images": 100, "criteria": "", "schedules": "", "distill": False}
FULL = {"train_images": 512, "epochs": 5, "budgets": "0.5,0.35,0.7",
        "methods": "uniform:l1,knapsack:l2,global:bn,uniform:taylor+rec,knapsack:taylor+rec", "seeds": 2,
        "val_images": None, "schedules": "3", "distill": True,
        "criteria": "l1,hac,pls-vip-single,pls-vip-multi,cca-cv-multi,pls-lc-multi,taylor,group-taylor"}


class Bench:
    """Data, recipe, base model and the stored rows of one benchmark run."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, Path(args.work)
        self.data = subset_data(self.work, args.data, args.train_images)
        self.recipe = Recipe(args.hyp, args.epochs, args.batch_size, args.img, val_images=args.val_each_epoch)
        self.base = Path(args.base)
        self.rows = Rows(self.work / "rows.json")

    def evaluate(self, model: torch.nn.Module) -> dict:
        return evaluate(model, self.data, self.args.img, self.args.val_images)

    def control(self, seed: int) -> dict:
        recipe = Recipe(**{**self.recipe.__dict__, "seed": seed})
        return self.rows.get(f"unpruned + fine-tune (seed {seed})", lambda: self.evaluate(load(finetune(
            self.base, f"control-{seed}", self.data, recipe, self.work))) | {"kind": "control", "seed": seed})

    def pruned(self, spec: str, budget: float, seed: int = 0, kind: str = "budget", **train_extra) -> dict:
        """Row: ``spec`` at ``budget``, mAP right after pruning and after the shared fine-tuning."""
        tag = "".join(f" {k}={v}" for k, v in train_extra.items())
        name = f"{spec} @{budget:g}" + (f" seed {seed}" if seed else "") + tag

        def make() -> dict:
            method = Method.parse(spec)
            p = prune_to_budget(load(self.base), method, budget, self.data, self.args.img, self.args.n_samples,
                                self.work, seed)
            after = self.evaluate(p.model)
            recipe = Recipe(**{**self.recipe.__dict__, "seed": seed})
            if train_extra:  # distillation: prune inside train so that the teacher is the unpruned model
                from yolo_prune.prune.options import CriterionOptions

                opts = CriterionOptions(n_samples=self.args.n_samples, reconstruct=method.reconstruct).to_dict()
                best = finetune(self.base, _slug(name), self.data, recipe, self.work, pruning_params=p.params,
                                criterion=method.criterion, criterion_options=opts, **train_extra)
            else:
                best = finetune(p.model, _slug(name), self.data, recipe, self.work)
            return self.evaluate(load(best)) | {"map_pruned": after["map"], "prune_s": round(p.seconds, 1),
                                                "spec": spec, "budget": budget, "seed": seed, "kind": kind}
        return self.rows.get(name, make)

    def iterative(self, spec: str, budget: float, rounds: int) -> dict:
        """Row: ``rounds`` x (prune to ``budget``^(k/rounds) of the base GFLOPs -> epochs/rounds fine-tuning)."""
        name = f"{spec} @{budget:g} iterative {rounds}x"

        def make() -> dict:
            method, current, seconds = Method.parse(spec), self.base, 0.0
            g0 = fused_cost_model(load(self.base), self.args.img).cost().gflops
            for k in range(1, rounds + 1):
                model = load(current)
                step = budget ** (k / rounds) * g0 / fused_cost_model(model, self.args.img).cost().gflops
                p = prune_to_budget(model, method, min(step, 0.999), self.data, self.args.img, self.args.n_samples,
                                    self.work / f"iter{rounds}-{k}", 0)
                seconds += p.seconds
                epochs = self.args.epochs // rounds + (1 if k > rounds - self.args.epochs % rounds else 0)
                recipe = Recipe(**{**self.recipe.__dict__, "epochs": epochs})
                current = finetune(p.model, f"{_slug(name)}-{k}", self.data, recipe, self.work)
            return self.evaluate(load(current)) | {"prune_s": round(seconds, 1), "spec": spec, "budget": budget,
                                                   "seed": 0, "kind": "schedule", "rounds": rounds}
        return self.rows.get(name, make)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run(args: argparse.Namespace) -> list[dict]:
    b = Bench(args)
    out = [b.rows.get("base (no fine-tune)", lambda: b.evaluate(load(b.base)) | {"kind": "base"})]
    out += [b.control(s) for s in range(args.seeds)]
    budgets = [float(x) for x in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    headline = args.headline or methods[-1]
    for budget in budgets:  # most important first: the rows are stored as they finish
        out += [b.pruned(spec, budget) for spec in methods]
        if budget == 0.5:
            out += [b.pruned(headline, 0.5, seed=s) for s in range(1, args.seeds)]
    if args.distill:
        out += [b.pruned(headline, 0.5, kind="distill", distill=True),
                b.pruned(headline, 0.5, kind="distill", distill=True, feature_distill="kept"),
                b.pruned(headline, 0.5, kind="distill", distill=True, feature_distill="adapter")]
    for rounds in [int(k) for k in args.schedules.split(",") if k]:
        out += [b.iterative(headline, 0.5, rounds), b.iterative("uniform:l1", 0.5, rounds)]
    for criterion in [c for c in args.criteria.split(",") if c]:
        spec = f"{'global' if criterion == 'pls-vip-single' else 'uniform'}:{criterion}"
        out.append(b.pruned(spec, 0.5, kind="criterion"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data YAML of the synthetic benchmark (`yolo-prune synth`)")
    p.add_argument("--base", default=str(BASE_MODEL), help="the converged base model")
    p.add_argument("--quick", action="store_true", help="the quick protocol (defaults below change to: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--budgets", default=None, help="fractions of the base GFLOPs (full: 0.7,0.5,0.35)")
    p.add_argument("--methods", default=None, help="comma-separated method specs")
    p.add_argument("--headline", default=None, help="the method repeated over seeds (default: the last method)")
    p.add_argument("--seeds", type=int, default=None, help="seeds for the control and the headline row")
    p.add_argument("--criteria", default=None, help="criteria table at 50%% (comma-separated; '' for none)")
    p.add_argument("--schedules", default=None, help="iterative rounds to compare with one-shot, e.g. '3'")
    p.add_argument("--distill", default=None, action=argparse.BooleanOptionalAction)
    p.add_argument("--val-images", type=int, default=None, help="evaluate on the first N validation images")
    p.add_argument("--hyp", default="finetune")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=64, help="calibration / analysis images from the training subset")
    p.add_argument("--val-each-epoch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench_accuracy")
    p.add_argument("--write", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    rows = run(args)
    from _accuracy_report import report

    report(rows, args)


if __name__ == "__main__":
    main()
