"""`yolo-prune graph`: derive a model's pruning connectivity graph, or check a hand-written one."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import add_model_source, check_model_source, load_model_from_args, output_file, print_json
from yolo_prune.errors import CheckFailed


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        "examples:\n  yolo-prune graph --cfg yolov7-tiny --out pruning_config/yolov7-tiny_pruning_cfg.yaml\n"
        "  yolo-prune graph --cfg yolov7 --check my_graph.yaml\n  yolo-prune graph --weights best.pt --print"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", help="write the derived graph (published pruning_config YAML format)")
    action.add_argument("--check", metavar="FILE", help="check a pruning_config YAML against the model")
    action.add_argument("--print", action="store_true", help="print the graph, one conv per line")
    p.add_argument("--json", action="store_true", help="with --print/--check: JSON output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.graph import check_against, derive_graph, read_published

    check_model_source(args)
    published = read_published(args.check) if args.check else None
    if args.out:
        output_file(args.out, "--out", example="graph.yaml")
    model = load_model_from_args(args)
    graph = derive_graph(model)
    if args.out:
        graph.save(args.out, title=f"pruning connectivity graph of {args.cfg or args.weights}")
        print(f"wrote {args.out}: {graph!r}")
        return 0
    if args.print:
        if args.json:
            print_json({"nconv": graph.nconv, "nodes": [vars(n) | {"sizes": n.sizes} for n in graph.nodes]})
        else:
            print(graph.describe())
        return 0
    problems = check_against(published, graph)
    if args.json:
        print_json({"file": args.check, "ok": not problems, "problems": problems})
    if problems:
        raise CheckFailed(f"{args.check} does not match the model ({len(problems)} differences); first: {problems[0]}")
    if not args.json:
        print(f"{args.check}: matches the model ({graph.nconv} convs + {len(graph) - graph.nconv} head convs)")
    return 0
