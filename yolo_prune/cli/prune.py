"""`yolo-prune prune`: structured pruning of a checkpoint or cfg, saved in our checkpoint format."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (add_model_source, check_model_source, img_int, input_file,
                                   load_model_and_history, model_img, output_file, positive_int, print_json, seed_int)
from yolo_prune.errors import YoloPruneError


def add_pruning_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Flags shared by prune, test --modification and train: params, criterion, rounding, graph, seed."""
    p.add_argument("--pruning-params", required=required, help='"[(layer, rate), ...]" or one rate for every '
                   'prunable layer, e.g. "[(8, 0.5), (18, 0.25)]" or 0.3')
    p.add_argument("--criterion", default="0", help="importance criterion: 0 l2, 1 l2-largest, 2 l1, 3 l1-largest, "
                   "4 bn, 5 bn-l1, 6 random, l0, linf; weights only: hac; on calibration images (--data): "
                   "pls-vip-single, pls-vip-multi, cca-cv-multi, pls-lc-multi, taylor, taylor-weight, group-taylor "
                   "(default 0)")
    p.add_argument("--round-to", type=positive_int, default=None,
                   help="keep a multiple of N filters per layer (8 suits TensorRT); default: published rounding")
    p.add_argument("--pruning-config", default=None,
                   help="published-format graph YAML to check against the model (derived automatically if omitted)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for the random criterion and the calibration "
                   "subset (default 0)")
    add_scoring_flag(p)
    add_criterion_flags(p)


def add_scoring_flag(p: argparse.ArgumentParser) -> None:
    """--scoring: how a multi-layer plan scores its layers (prune, test, train, iterate)."""
    p.add_argument("--scoring", choices=("sequential", "greedy", "independent"), default="sequential",
                   help="sequential (default; alias greedy): layers in ascending order, each scored without the input "
                        "channels earlier listed layers removed, as the published pruner; independent: every layer "
                        "on its unpruned weights")


def add_criterion_flags(p: argparse.ArgumentParser) -> None:
    """Selection mode and the data-driven criteria's settings (Pruning-Darknet's flags)."""
    from yolo_prune.prune.options import MEASURES, POOL_TYPES, SELECTIONS

    p.add_argument("--selection", choices=SELECTIONS, default="layer", help="rank filters within each layer, or "
                   "across all layers (global: one rate = the share of all filters removed); default layer")
    p.add_argument("--reconstruct", action="store_true", help="fold a least-squares reconstruction of the removed "
                   "channels into the layers that read them (needs --data)")
    p.add_argument("--n-samples", type=positive_int, default=None,
                   help="calibration: training images sampled (seeded; default 128)")
    p.add_argument("--perc-samples", type=float, default=None, help="calibration: share of the training images")
    p.add_argument("--pool-type", choices=POOL_TYPES, default="max", help="pooling of feature maps (default max)")
    p.add_argument("--n-components", type=positive_int, default=2, help="PLS / CCA components (default 2)")
    p.add_argument("--measure", choices=MEASURES, default="pearson", help="HAC: correlation of filter weights "
                   "(default pearson)")


def criterion_options(args: argparse.Namespace):
    """The CriterionOptions the flags describe (validated there)."""
    from yolo_prune.prune.options import CriterionOptions

    return CriterionOptions(pool_type=args.pool_type, n_components=args.n_components, n_samples=args.n_samples,
                            perc_samples=args.perc_samples, measure=args.measure, selection=args.selection,
                            reconstruct=args.reconstruct)


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        'examples:\n  yolo-prune prune --weights yolov7.pt --pruning-params "[(8, 0.5), (18, 0.5)]" '
        "--criterion 0 --output pruned.pt\n(the published prune.py form, --name yolov7-pruned.pt, also works)\n"
        "  yolo-prune prune --weights best.pt --data data.yaml --pruning-params 0.3 --criterion taylor "
        "--reconstruct --img 640 --output pruned.pt"), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    add_pruning_flags(p)
    p.add_argument("--output", "--name", dest="output", default=None,
                   help="where to write the pruned checkpoint (.pt); --name as in the published prune.py; for a model "
                   "read from a Darknet .cfg, a .weights path writes Darknet files (the .cfg beside it)")
    p.add_argument("--data", default=None, help="data YAML whose training split calibrates data-driven criteria")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None,
                   help="image size for the GFLOPs summary (default 640; a Darknet cfg's width, 1280 for P6 models; "
                   "a classifier's own input size)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Every input before the model is loaded: source, parameters, criterion, graph file, output location."""
    from yolo_prune.prune import parse_pruning_params
    from yolo_prune.prune.criteria import criterion_name

    check_model_source(args)
    parse_pruning_params(args.pruning_params)
    criterion_name(args.criterion)
    if args.pruning_config:
        input_file(args.pruning_config, "--pruning-config")
    if args.data:
        input_file(args.data, "--data")
    criterion_options(args)  # bad values of the criterion flags fail before any work
    if not args.output:
        raise YoloPruneError("--output is required: where to write the pruned checkpoint (--name, as in the "
                             "published prune.py, works too)")
    output_file(args.output, "--output", inputs=[args.weights])


def run(args: argparse.Namespace) -> int:
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.graph import read_published
    from yolo_prune.prune import format_result, prune

    from yolo_prune.engine.calibration import calibration_source

    check_args(args)
    options = criterion_options(args)
    given = read_published(args.pruning_config) if args.pruning_config else None
    model, history = load_model_and_history(args)
    img = model_img(model, args.img)
    source = calibration_source(model, args.criterion, options, args.data, img, args.seed)
    result = prune(model, args.pruning_params, args.criterion, round_to=args.round_to, seed=args.seed,
                   graph=given, inplace=True, img_size=img, scoring=args.scoring, options=options, source=source)
    if str(args.output).endswith(".weights"):
        from pathlib import Path

        from yolo_prune.checkpoint.darknet import save_darknet

        save_darknet(result.model, Path(args.output).with_suffix(".cfg"), args.output)
    else:
        save_checkpoint(result.model, args.output, history=history + [result.history_entry()])
    if args.json:
        print_json({"output": args.output, **result.to_dict()})
    else:
        print(format_result(result))
        print(f"saved {args.output}")
    return 0
