"""`yolo-prune mask`: kernel-level (2-D kernel) pruning masks with one global threshold, saved with the checkpoint;
fine-tuning (`train`, `classify train`) keeps the masked weights at zero."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (add_model_source, check_model_source, load_model_and_history, output_file,
                                   print_json)

EPILOG = """examples:
  yolo-prune mask --weights yolov7-tiny.pt --percent 0.5 --output tiny_k50.pt
  yolo-prune mask --weights runs/classify/scnnb/weights/best.pt --percent 0.7 --score l1 --output scnnb_k70.pt
  yolo-prune train --weights tiny_k50.pt --data data.yaml --epochs 10        # masks hold while fine-tuning
  yolo-prune mask --weights runs/train/exp/weights/best.pt --report           # per-layer sparsity of any model"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from yolo_prune.prune.masks import KERNEL_SCORES

    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--percent", type=_fraction, help="fraction of all convolution parameters to mask (0..1): "
                        "whole 2-D kernels, lowest scores first, one global threshold")
    action.add_argument("--report", action="store_true", help="only print the per-layer sparsity of the model")
    p.add_argument("--score", choices=sorted(KERNEL_SCORES), default="max-abs",
                   help="kernel score: max-abs (largest |w| in the kernel, default) or l1 (sum of |w|)")
    p.add_argument("--output", default=None, help="where to write the masked checkpoint (with --percent)")
    p.add_argument("--json", action="store_true", help="print the per-layer sparsity as JSON")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.prune.masks import apply_masks, format_sparsity, kernel_masks, mask_units, sparsity_report

    if args.percent is not None and not args.output:
        args.parser.error("--percent needs --output (where the masked checkpoint goes)")
    check_model_source(args)
    if args.output:
        output_file(args.output, "--output", inputs=[args.weights])
    model, history = load_model_and_history(args)
    if args.percent is not None:
        masks = kernel_masks(model, args.percent, args.score)
        apply_masks(model, masks)
        rows = sparsity_report(model)
        zero = sum(r.zero_params for r in rows)
        entry = {"event": "kernel-mask", "percent": args.percent, "score": args.score, "zero_params": zero,
                 "conv_params": sum(r.params for r in rows)}
        save_checkpoint(model, args.output, history=history + [entry], masks=masks)
    rows = sparsity_report(model)
    if args.json:
        print_json({"output": args.output, "layers": [vars(r) | {"fraction": r.fraction} for r in rows]})
        return 0
    print(format_sparsity(rows))
    for reason in mask_units(model)[1]:
        print(f"left dense: {reason}")
    if args.output:
        print(f"saved {args.output} (masks stored with the weights; fine-tuning keeps them at zero)")
    return 0
