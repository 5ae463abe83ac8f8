"""`yolo-prune darknet-prune`: the Pruning-Darknet workflow (iterative pruning + fine-tuning of .cfg/.weights)."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import float_in, img_int, input_file, output_dir, positive_int, print_json

EPILOG = """examples (Pruning-Darknet's flags):
  yolo-prune darknet-prune --cfg yolo.cfg --weights yolo.weights --technique L1 --pruning-rate 0.6 --pruning-iter 2 \\
      --output pruned/                                                   # prune only: pruned/final.cfg + .weights
  yolo-prune darknet-prune --cfg yolo.cfg --weights yolo.weights --data yolo.data --names yolo.names --img-size 416 \\
      --technique L2 --pruning-rate 0.6 --pruning-iter 2 --lr 0.005 --tuning --tuning-iter 30000 --output pruned/
Each iteration writes iter_<k>/pruned.cfg + pruned.weights (and tuned.* after --tuning); Darknet reads them.
Re-running the same command skips finished iterations."""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="Darknet .cfg")
    p.add_argument("--weights", required=True, help="Darknet .weights")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--technique", "--method", dest="technique", default="L2",
                   help="L0, L1, L2, L-Inf, Random, From-Scratch, PLS-VIP-Single, PLS-VIP-Multi, CCA-CV-Multi, "
                   "PLS-LC-Multi, HAC (the data-driven ones where their criteria are installed); default L2")
    p.add_argument("--pruning-rate", type=float_in(0.0, 1.0, low_open=True, high_open=True), required=True,
                   help="share of every prunable layer's filters removed, in (0, 1)")
    p.add_argument("--pruning-iter", type=positive_int, default=1, help="pruning iterations (default 1)")
    p.add_argument("--tuning", action="store_true", help="fine-tune after every pruning iteration")
    p.add_argument("--tuning-iter", type=positive_int, default=30000,
                   help="fine-tuning length in Darknet iterations of 64 images (default 30000), as epochs here")
    p.add_argument("--lr", type=float, default=0.005, help="fine-tuning learning rate (hyp lr0; default 0.005)")
    p.add_argument("--from-scratch", action="store_true", help="re-initialise the pruned model's weights before tuning")
    p.add_argument("--data", default=None, help="Darknet .data file (classes/train/valid/names) or a data YAML")
    p.add_argument("--names", default=None, help="class names file (overrides the .data file's names=)")
    p.add_argument("--img-size", "--img", dest="img_size", type=img_int, default=416,
                   help="fine-tuning image size (default 416)")
    p.add_argument("--pool-type", default="max", choices=("max", "avg"), help="data-driven techniques: pooling")
    p.add_argument("--n-components", type=positive_int, default=2, help="projection techniques: components")
    p.add_argument("--num-classes", type=positive_int, default=3, help="projection techniques: output classes")
    p.add_argument("--perc-samples", type=float, default=1.0, help="data-driven techniques: share of images used")
    p.add_argument("--measure", default="Pearson", help="HAC: correlation measure")
    p.add_argument("--network", default=None, help="accepted for compatibility; not needed (the cfg is kept)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="fine-tuning batch size (default 16)")
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--workers", type=int, default=2, help="data loader workers (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed (random technique, training)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.pipeline.darknet_workflow import DarknetPruneSettings, run_darknet_workflow

    for flag, value in (("--cfg", args.cfg), ("--weights", args.weights), ("--data", args.data),
                        ("--names", args.names)):
        if value:
            input_file(value, flag)
    output_dir(args.output, "--output")
    settings = DarknetPruneSettings(
        cfg=args.cfg, weights=args.weights, output=args.output, technique=args.technique,
        pruning_rate=args.pruning_rate, pruning_iter=args.pruning_iter, tuning=args.tuning, tuning_iter=args.tuning_iter,
        lr=args.lr, data=args.data, names=args.names, img_size=args.img_size, from_scratch=args.from_scratch,
        pool_type=args.pool_type, n_components=args.n_components, num_classes=args.num_classes,
        perc_samples=args.perc_samples, measure=args.measure, batch_size=args.batch_size, device=args.device,
        workers=args.workers, seed=args.seed)
    summary = run_darknet_workflow(settings, progress=not args.json)
    if args.json:
        print_json(summary)
        return 0
    for row in summary["iterations"]:
        tuned = (f", fine-tuned {row['epochs']} epochs (mAP@.5:.95 {row.get('map') or 0.0:.4f})"
                 if "epochs" in row else "")
        print(f"iteration {row['iteration']}: rate {row['rate']:.3f} of the current filters, {row['params']:,} "
              f"parameters{tuned} -> {row['cfg']}")
    print(f"saved {summary['cfg']} and {summary['weights']}")
    return 0
