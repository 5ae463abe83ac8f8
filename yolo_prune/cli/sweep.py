"""`yolo-prune sweep`: Li et al.'s parameters-vs-accuracy curve over filter percentages, with retraining."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (img_int, input_file, literal_numbers, non_negative_int, output_dir, positive_int,
                                   seed_int)

EPILOG = """examples:
  yolo-prune sweep --arch scnnb --data digits --epochs 10 --retrain-epochs 3 --out runs/sweep/scnnb
  yolo-prune sweep --weights runs/classify/vgg/weights/best.pt --percents '[0, 0.25, 0.5, 0.75]' --retrain layerwise
  yolo-prune sweep --arch scnnb --scoring independent --out runs/sweep/independent   (Li et al.: vs greedy)
  (writes sweep.md / sweep.csv / sweep.png / sweep.json in --out; re-running resumes)"""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from yolo_prune.cli.prune import add_scoring_flag
    from yolo_prune.models.classify import ARCHS

    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=sorted(ARCHS), default=None, help="train this network first (default scnnb)")
    src.add_argument("--weights", default=None, help="a trained yolo-prune classifier checkpoint as the base")
    p.add_argument("--data", default="digits", help="digits (default), imagefolder:DIR, cifar10:DIR, fashion-mnist:DIR")
    p.add_argument("--width", type=float, default=1.0, help="--arch channel multiplier (default 1)")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None, help="input size (default 32)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs to train the base (default 10)")
    p.add_argument("--percents", default=None, help="filter fractions, default '[0, 0.1, ..., 0.9]'")
    p.add_argument("--retrain", choices=["once", "layerwise"], default="once",
                   help="prune every layer then retrain (once), or prune and retrain layer by layer")
    p.add_argument("--retrain-epochs", type=positive_int, default=3, help="retraining epochs per model (default 3)")
    p.add_argument("--criterion", default="l1", help="filter criterion (default l1: Li et al.'s smallest L1)")
    add_scoring_flag(p)
    p.add_argument("--layers", default=None, help="only these graph layers, e.g. '[0, 1]' (default: all prunable)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=64)
    p.add_argument("--lr0", type=float, default=0.05, help="base training LR (default 0.05)")
    p.add_argument("--retrain-lr0", type=float, default=0.01, help="retraining LR (default 0.01)")
    p.add_argument("--out", default="runs/sweep/exp", help="output folder (default runs/sweep/exp)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--workers", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from yolo_prune.pipeline.sweep import PERCENTS, SweepSettings, run_sweep

    percents = literal_numbers(args.percents, "--percents", float, 0.0, 1.0, high_open=True) if args.percents else list(PERCENTS)
    layers = literal_numbers(args.layers, "--layers", int, 0) if args.layers else None
    if args.weights:
        input_file(args.weights, "--weights")
    output_dir(args.out, "--out")
    settings = SweepSettings(
        data=args.data, arch=None if args.weights else (args.arch or "scnnb"), weights=args.weights,
        width=args.width, img_size=args.img, epochs=args.epochs, percents=percents, retrain=args.retrain,
        retrain_epochs=args.retrain_epochs, criterion=args.criterion, scoring=args.scoring, layers=layers, batch_size=args.batch_size,
        lr0=args.lr0, retrain_lr0=args.retrain_lr0, out=args.out, seed=args.seed, device=args.device,
        workers=args.workers)
    run_sweep(settings)
    print((Path(args.out) / "sweep.md").read_text(), end="")
    print(f"results in {args.out} (sweep.md, sweep.csv, sweep.png, sweep.json)")
    return 0
