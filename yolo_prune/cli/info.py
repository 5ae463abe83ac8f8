"""`yolo-prune info`: layer table, parameters and GFLOPs of a cfg or checkpoint."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import add_model_source, load_model_from_args, positive_int, print_json


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog="example: yolo-prune info --cfg yolov7-tiny --img 640 --fuse")
    add_model_source(p)
    p.add_argument("--img", "--img-size", dest="img", type=positive_int, default=None,
                   help="image size (default 640; 1280 for P6 models, a Darknet cfg's width, a classifier's own input "
                   "size)")
    p.add_argument("--fuse", action="store_true", help="fold BN into convs and merge RepConv branches first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.models.fuse import fuse
    from yolo_prune.models.summary import format_summary, summarize, summarize_ops

    args.img_given, args.img = args.img is not None, args.img or 640
    model = load_model_from_args(args)
    if not hasattr(model, "stride"):  # a classifier: its own input size unless --img is given
        img = args.img if args.img_given else model.img_size
        summary = summarize_ops(model, img, model.ch_in)
        if args.json:
            print_json(summary.to_dict())
        else:
            print(format_summary(summary))
        return 0
    if not args.img_given:  # 1280 for P6 models, a Darknet cfg's width, else 640
        args.img = getattr(model, "default_img_size", 640)
    stride = int(model.stride.max())
    if args.img % stride:
        args.parser.error(f"--img {args.img} is not a multiple of the model's max stride {stride}")
    if args.fuse:
        fuse(model)
    summary = summarize(model, args.img)
    if args.json:
        print_json({"fused": args.fuse, **summary.to_dict()})
    else:
        print(format_summary(summary))
    return 0
