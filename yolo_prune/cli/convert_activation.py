"""`yolo-prune convert-activation`: swap SiLU for LeakyReLU (what Vitis AI DPUs run) or ReLU, save a checkpoint."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import add_model_source, check_model_source, load_model_and_history, output_file, print_json

EPILOG = """examples:
  yolo-prune convert-activation --weights yolov7.pt --to leakyrelu --output yolov7-leaky.pt
  yolo-prune convert-activation --weights yolov7-tiny.pt --to leakyrelu --slope dpu --output tiny-dpu.pt
  yolo-prune convert-activation --weights pruned.pt --to relu --output pruned-relu.pt
  yolo-prune convert-activation --cfg yolov7 --nc 3 --to leakyrelu --slope 0.1 --output yolov7-leaky-init.pt
  yolo-prune convert-activation --weights model.pt --to leakyrelu --from silu,hardswish --output out.pt

--slope dpu is 26/256 = 0.1015625, the LeakyReLU slope a Vitis AI DPU computes. By default SiLU is replaced,
and for --to leakyrelu also LeakyReLU of another slope; --from names the activations to replace instead.
Accuracy drops until the model is fine-tuned:
  yolo-prune train --weights yolov7-leaky.pt --data data.yaml --epochs 30"""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    p.add_argument("--to", required=True, type=str.lower, choices=["leakyrelu", "relu"],
                   help="activation to put in: leakyrelu or relu")
    p.add_argument("--slope", default=None, metavar="0.1|dpu|X",
                   help="LeakyReLU negative slope: a number in (0, 1), or dpu = 26/256 (default 0.1)")
    p.add_argument("--from", dest="sources", default=None, metavar="NAME[,NAME]",
                   help="activations to replace: silu, hardswish, mish, leakyrelu, relu, relu6 "
                        "(default: silu, plus leakyrelu of another slope for --to leakyrelu)")
    p.add_argument("--output", required=True, help="where to write the converted checkpoint (.pt)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _check_paths(args: argparse.Namespace) -> None:
    """The input is a readable file; the output is writable, not a folder and not the input (before any work)."""
    check_model_source(args)
    output_file(args.output, "--output", inputs=[args.weights])


def run(args: argparse.Namespace) -> int:
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.models.activation import convert_activations, resolve_sources, resolve_target

    target = resolve_target(args.to, args.slope)  # bad --slope / --from fail before anything is loaded
    sources = None if args.sources is None else [s for s in args.sources.split(",") if s.strip()]
    resolve_sources(target, sources)
    _check_paths(args)
    model, history = load_model_and_history(args)
    report = convert_activations(model, args.to, args.slope, sources)
    save_checkpoint(model, args.output, history=history + [report.history_entry()])
    if args.json:
        print_json({"output": args.output, **report.to_dict()})
        return 0
    print(report.format())
    print(f"saved {args.output}")
    if report.total:
        print(f"note: accuracy drops until the model is fine-tuned: yolo-prune train --weights {args.output} "
              "--data data.yaml ...")
    return 0
