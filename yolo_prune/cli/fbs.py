"""`yolo-prune fbs`: run-time channel gating (Feature Boosting and Suppression) with a density schedule, measured
against static pruning at equal MACs."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (img_int, input_file, literal_numbers, non_negative_int, output_dir, positive_int,
                                   seed_int)

EPILOG = """examples:
  yolo-prune fbs --weights runs/classify/vgg/weights/best.pt --data digits --density 0.5 --steps 3 --epochs 2
  yolo-prune fbs --weights best.pt --data data.yaml --img 256 --hyp scratch.tiny --density 0.6 --max-images 64
  (a YOLOv7 checkpoint: its backbone convs are gated; --layers '[0, 1, 2]' picks layers by graph index)"""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a trained checkpoint: yolo-prune classifier, ours or official "
                   "YOLOv7")
    p.add_argument("--data", default="digits", help="classification data (digits, imagefolder:DIR, ...) or, for a "
                   "detector, a data YAML")
    p.add_argument("--density", type=float, default=0.5, help="final fraction of channels computed per input")
    p.add_argument("--steps", type=positive_int, default=3, help="density steps from 1.0 down to --density (3)")
    p.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs per step (default 2)")
    p.add_argument("--saliency-l1", type=float, default=1e-3, help="weight of the L1 term on saliencies (1e-3)")
    p.add_argument("--layers", default=None, help="graph layers to gate, e.g. '[0, 1]' (default: every gateable conv "
                   "of a classifier; a YOLOv7 model's backbone)")
    p.add_argument("--out", default="runs/fbs/exp", help="output folder (re-running resumes; default runs/fbs/exp)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=64)
    p.add_argument("--lr0", type=float, default=0.01, help="classifier fine-tuning LR (default 0.01)")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None, help="detector image size")
    p.add_argument("--hyp", default="scratch.tiny", help="detector fine-tuning hyp (default scratch.tiny)")
    p.add_argument("--max-images", type=positive_int, default=None, help="detector: evaluate the first N val images")
    p.add_argument("--no-static", action="store_true", help="skip the static pruning comparison")
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 CPU latency measurements")
    p.add_argument("--latency-iters", type=positive_int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--device", default="cpu", help="training device (default cpu)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.pipeline.fbs import FbsSettings, run_fbs

    layers = literal_numbers(args.layers, "--layers", int, 0) if args.layers else None
    input_file(args.weights, "--weights")
    output_dir(args.out, "--out")
    result = run_fbs(FbsSettings(
        weights=args.weights, data=args.data, density=args.density, steps=args.steps, epochs=args.epochs,
        saliency_l1=args.saliency_l1, layers=layers, out=args.out, batch_size=args.batch_size, lr0=args.lr0,
        img_size=args.img, hyp=args.hyp, max_images=args.max_images, static=not args.no_static,
        latency=not args.no_latency, latency_iters=args.latency_iters, device=args.device, workers=args.workers,
        seed=args.seed))
    print((result.out / "fbs.md").read_text(), end="")
    print(f"results in {result.out} (fbs.json, fbs.csv, fbs.md)")
    return 0
