"""`yolo-prune iterate`: the published prune / fine-tune loop in one resumable command."""
from __future__ import annotations

import argparse
from pathlib import Path

from yolo_prune.cli.common import (fit_img, img_int, input_file, literal_numbers, non_negative_float,
                                   non_negative_int, output_dir, positive_float, positive_int, seed_int)
from yolo_prune.cli.prune import add_criterion_flags, add_scoring_flag, criterion_options


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        "example: yolo-prune iterate --weights best.pt --data data.yaml --iterations 3 --epochs 20 \\\n"
        "           --pruning-rate '[0.25, 0.5, 0.75]' --max-images 128 --target-gflops 6.0 --out runs/iterate"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="starting checkpoint (official YOLOv7 .pt or ours)")
    p.add_argument("--data", required=True, help="data YAML")
    p.add_argument("--out", default="runs/iterate/exp", help="output folder (resumes if it holds finished iterations "
                   "made with the same settings; other settings are refused)")
    p.add_argument("--iterations", type=positive_int, default=3, help="number of iterations (default 3)")
    p.add_argument("--epochs", type=non_negative_int, default=10, help="fine-tuning epochs per iteration (default 10)")
    p.add_argument("--hyp", default="finetune", help="hyp YAML or shipped name (default finetune)")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=640,
                   help="image size (default 640; rounded up to the model's max stride)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=positive_int, default=16)
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--pruning-rate", default="[0.25, 0.5, 0.75]", help="analysis rates")
    p.add_argument("--criterion", default="taylor", help="importance criterion (number or name; data-driven ones "
                   "sample --data's training split). Default taylor with --reconstruct: the most accurate at every "
                   "budget of BENCHMARKS.md's accuracy protocol; --criterion 0 --no-reconstruct is the published L2 norm")
    p.add_argument("--round-to", type=positive_int, default=None)
    p.add_argument("--seed", type=seed_int, default=0)
    add_scoring_flag(p)
    add_criterion_flags(p)
    p.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                   help="prune without the least-squares reconstruction (on by default here)")
    p.set_defaults(reconstruct=True)
    p.add_argument("--max-images", type=positive_int, default=None, help="analysis: validation subset size")
    p.add_argument("--eval-images", type=positive_int, default=None, help="evaluation after fine-tuning: subset size")
    p.add_argument("--params-layers", type=non_negative_int, default=5)
    p.add_argument("--flops-layers", type=non_negative_int, default=5)
    p.add_argument("--params-map", type=non_negative_float, default=1.0)
    p.add_argument("--flops-map", type=non_negative_float, default=1.0)
    p.add_argument("--target-gflops", type=positive_float, default=None,
                   help="budget selection: reach this many GFLOPs by the last iteration (geometric steps)")
    p.set_defaults(func=run)


def trainer_fn(args: argparse.Namespace):
    """Fine-tuning with ``yolo-prune train`` settings taken from the iterate flags."""
    from yolo_prune.engine.trainer import TrainSettings, train

    def fine_tune(weights: Path, run_dir: Path, epochs: int, iteration: int) -> Path:
        if (run_dir / "weights" / "last.pt").exists():  # an interrupted fine-tune continues where it stopped
            return Path(train(TrainSettings(resume=str(run_dir), device=args.device, workers=args.workers)).best)
        settings = TrainSettings(weights=str(weights), data=args.data, hyp=args.hyp, epochs=epochs,
                                 batch_size=args.batch, img_size=args.img, device=args.device, workers=args.workers,
                                 project=str(run_dir.parent), name=run_dir.name, exist_ok=True, seed=args.seed,
                                 max_val_images=args.eval_images)
        return Path(train(settings).best)

    return fine_tune


def check_args(args: argparse.Namespace) -> list[float]:
    """Every flag and file before anything runs: a bad rate or hyp must not surface after the analysis."""
    from yolo_prune.data import load_data_config
    from yolo_prune.engine.hyp import load_hyp
    from yolo_prune.prune.criteria import criterion_name

    input_file(args.weights, "--weights")
    input_file(args.data, "--data")
    rates = literal_numbers(args.pruning_rate, "--pruning-rate", float, 0.0, 1.0, open_interval=True)
    args.criterion = criterion_name(args.criterion)
    criterion_options(args)  # bad values of the criterion flags fail before the analysis
    if args.epochs > 0:
        load_hyp(args.hyp)
        load_data_config(args.data)  # fine-tuning needs the train split too
    output_dir(args.out, "--out")
    return rates


def run(args: argparse.Namespace) -> int:
    from yolo_prune.checkpoint import load_model
    from yolo_prune.pipeline.devices import select_device
    from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings
    from yolo_prune.pipeline.iterate import IterateSettings, SelectionSettings, run_iterations
    from yolo_prune.prune.plan import scoring_name

    rates = check_args(args)
    device = select_device(args.device)
    args.img = fit_img(args.img, int(load_model(args.weights).stride.max()))
    settings = IterateSettings(
        weights=args.weights, out_dir=args.out, iterations=args.iterations,
        data=DataSettings(args.data, "val", args.img, args.batch, args.workers, args.max_images),
        analysis=AnalysisSettings(rates, args.criterion, args.round_to, args.seed, options=criterion_options(args)),
        selection=SelectionSettings(args.params_layers, args.flops_layers, args.params_map, args.flops_map,
                                    args.target_gflops),
        epochs=args.epochs, hyp=args.hyp, eval_images=args.eval_images, scoring=scoring_name(args.scoring))
    rows = run_iterations(settings, trainer_fn(args), device)
    print((Path(args.out) / "summary.md").read_text())
    print(f"summary: {Path(args.out) / 'summary.md'}, .csv, .png; last model: {rows[-1].weights}")
    return 0
