"""`yolo-prune info`: layer table, parameters and GFLOPs of a cfg or checkpoint."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (add_model_source, check_model_source, img_int, load_model_from_args, model_img,
                                   print_json)


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog="example: yolo-prune info --cfg yolov7-tiny --img 640 --fuse")
    add_model_source(p)
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None,
                   help="image size (default 640; 1280 for P6 models, a Darknet cfg's width; rounded up to the model's "
                   "max stride; a classifier is counted at its own input size)")
    p.add_argument("--fuse", action="store_true", help="fold BN into convs and merge RepConv branches first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.models.fuse import fuse
    from yolo_prune.models.summary import format_summary, summarize, summarize_ops

    check_model_source(args)
    model = load_model_from_args(args)
    if not hasattr(model, "stride"):  # a classifier: counted at its own input size
        summary = summarize_ops(model, model_img(model, args.img), model.ch_in)
        if args.json:
            print_json(summary.to_dict())
        else:
            print(format_summary(summary))
        return 0
    img = model_img(model, args.img)
    if args.fuse:
        fuse(model)
    summary = summarize(model, img)
    if args.json:
        print_json({"fused": args.fuse, **summary.to_dict()})
    else:
        print(format_summary(summary))
    return 0
