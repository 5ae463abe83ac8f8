"""`yolo-prune layer-selection`: choose layers and rates from a sensitivity analysis."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (img_int, input_dir, input_file, non_negative_float, non_negative_int,
                                   output_dir, positive_float, positive_int, print_json)
from yolo_prune.errors import YoloPruneError


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        "examples:\n  yolo-prune layer-selection --output output/sens --params-layers 5 --flops-layers 5 --save\n"
        "  yolo-prune layer-selection --output output/sens --target-gflops 6.5 --cfg yolov7-tiny --nc 6\n"
        "  yolo-prune layer-selection --output output/sens --target-latency 12 --latency-table latency.json "
        "--weights best.pt"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="analysis directory (sensitivity.json or output_<rate>.txt files)")
    p.add_argument("--params", type=positive_float, default=None, help="parameters of the unpruned, fused model (read "
                   "from sensitivity.json when present; published default for output files: 36907898, yolov7)")
    p.add_argument("--flops", type=positive_float, default=None, help="GFLOPs of the unpruned, fused model (as "
                   "--params; published default 104.514)")
    p.add_argument("--params-layers", type=non_negative_int, default=6,
                   help="layers chosen by the params objective (default 6)")
    p.add_argument("--flops-layers", type=non_negative_int, default=5,
                   help="layers chosen by the FLOPs objective (default 5)")
    p.add_argument("--params-map", type=non_negative_float, default=20.0,
                   help="mAP exponent E of the params score (default 20)")
    p.add_argument("--flops-map", type=non_negative_float, default=20.0,
                   help="mAP exponent E of the FLOPs score (default 20)")
    p.add_argument("--save", action="store_true", help="write the selection diagrams (PNG and PDF)")
    p.add_argument("--save-dir", default=None, help="where --save writes sa_parameters, sa_flops and sa_map (.png "
                   "and .pdf; default graphs/SA_<output folder name>, as published)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-gflops", type=positive_float, default=None, help="budget mode: GFLOPs after pruning")
    budget.add_argument("--target-params", type=positive_float, default=None,
                        help="budget mode: parameters after pruning")
    budget.add_argument("--target-latency", type=positive_float, default=None, metavar="MS",
                        help="budget mode: latency (ms) after pruning, predicted by --latency-table")
    p.add_argument("--latency-table", default=None, help="with --target-latency: a table written by `yolo-prune "
                   "latency-table` for the analysed model; with --weights/--cfg the result is also measured")
    p.add_argument("--criterion", default="0", help="with --target-latency and a model: the criterion that prunes "
                   "it for the measurement (default 0, l2; latency does not depend on it)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--weights", help="budget mode: check the exact cost on this model")
    model.add_argument("--cfg", help="budget mode: check the exact cost on this cfg")
    p.add_argument("--nc", type=positive_int, default=None, help="with --cfg: number of classes")
    p.add_argument("--img", type=img_int, default=None, help="image size for exact GFLOPs (default: the analysis')")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run, parser=p)


PUBLISHED_BASELINE = (36_907_898, 104.514)  # yolov7, BN+RepConv fused: the published defaults


def _baseline(args: argparse.Namespace, table) -> tuple[float, float, float | None]:
    """Flags first, then the analysis' stored baseline, then the published yolov7 defaults (with a warning)."""
    import sys

    params = args.params if args.params is not None else (table.baseline.params if table.baseline else None)
    gflops = args.flops if args.flops is not None else (table.baseline.gflops if table.baseline else None)
    if params is None or gflops is None:
        params = PUBLISHED_BASELINE[0] if params is None else params
        gflops = PUBLISHED_BASELINE[1] if gflops is None else gflops
        print(f"warning: {table.source} has no baseline; using --params {params:g} --flops {gflops:g} "
              f"(the published yolov7 defaults). Pass the figures of your model.", file=sys.stderr)
    return params, gflops, table.baseline.map if table.baseline else None


def _save_dir(args: argparse.Namespace):
    """Where --save writes: --save-dir, else graphs/SA_<analysis folder name> (the published location)."""
    from pathlib import Path

    return Path(args.save_dir) if args.save_dir else Path("graphs") / f"SA_{Path(args.output).resolve().name}"


def check_args(args: argparse.Namespace) -> None:
    """Flags that only go together, input files and the diagram folder, before the analysis is read."""
    input_dir(args.output, "--output")
    budget = any(v is not None for v in (args.target_gflops, args.target_params, args.target_latency))
    if (args.target_latency is None) != (args.latency_table is None):
        raise YoloPruneError("--target-latency and --latency-table go together")
    if args.latency_table:
        input_file(args.latency_table, "--latency-table")
    if args.save_dir and not args.save:
        raise YoloPruneError("--save-dir: only with --save")
    if budget and args.save:
        raise YoloPruneError("--save: the diagrams show the published selection; not with a --target-* budget")
    if args.weights:
        input_file(args.weights, "--weights")
    if args.nc is not None and not args.cfg:
        raise YoloPruneError("--nc only applies with --cfg")
    if args.save:
        output_dir(_save_dir(args), "--save-dir")


def run(args: argparse.Namespace) -> int:
    from yolo_prune.analysis.table import read_table

    check_args(args)
    table = read_table(args.output)
    table.check_complete()
    base_params, base_gflops, base_map = _baseline(args, table)
    if args.target_latency is not None:
        return _run_latency(args, table, base_map)
    if args.target_gflops is not None or args.target_params is not None:
        return _run_budget(args, table, base_params, base_gflops, base_map)
    return _run_published(args, table, base_params, base_gflops)


def _run_published(args, table, base_params, base_gflops) -> int:
    from yolo_prune.analysis.selection import format_pairs, published_selection

    by_params, by_flops, merged = published_selection(table, base_params, base_gflops, args.params_layers,
                                                      args.flops_layers, args.params_map, args.flops_map)
    if args.save:
        from yolo_prune.analysis.plots import plot_selection

        save_dir = _save_dir(args)
        plot_selection(table, merged, base_params, base_gflops, save_dir)
        print(f"diagrams in {save_dir}")
    if args.json:
        print_json({"pruning_params": [[p.layer, p.rate] for p in merged],
                    "picks": [{"layer": p.layer, "rate": p.rate, "score": p.score, "objectives": list(p.objectives)}
                              for p in merged]})
        return 0
    for p in merged:
        print(f"layer {p.layer:>3} rate {p.rate:<5g} chosen by {' + '.join(p.objectives)}")
    print(format_pairs(merged))
    return 0


def _run_budget(args, table, base_params, base_gflops, base_map) -> int:
    from yolo_prune.analysis.budget import select_for_budget
    from yolo_prune.analysis.selection import format_rates

    metric = "gflops" if args.target_gflops is not None else "params"
    target = args.target_gflops if metric == "gflops" else args.target_params
    base_cost = base_gflops if metric == "gflops" else base_params
    if target >= base_cost:
        flag = "--target-gflops" if metric == "gflops" else "--target-params"
        raise YoloPruneError(f"{flag} {target:g}: the unpruned model already has {base_cost:g}; give a smaller target")
    costs = _cost_model(args, table) if args.weights or args.cfg else None
    # without a baseline, the best analysed mAP stands in for it (the argmin does not depend on it)
    reference = base_map if base_map is not None else max(e.map for e in table.entries.values())
    choice = select_for_budget(table, base_cost, reference, target, metric, costs)
    result = {"pruning_params": [list(p) for p in choice.pairs], "metric": metric, "target": target,
              "predicted": choice.predicted_cost, "exact": choice.exact_cost,
              "predicted_map": choice.predicted_map if base_map is not None else None}
    if args.json:
        print_json(result)
        return 0
    print(f"budget {metric} <= {target:g}: {len(choice.pairs)} layers; predicted {metric} {choice.predicted_cost:g}"
          + (f", exact {choice.exact_cost:g} ({100 * choice.exact_cost / target:.1f}% of the budget)"
             if choice.exact_cost is not None else " (give --weights/--cfg for the exact cost)")
          + (f", predicted mAP@.5:.95 {choice.predicted_map:.4f} (baseline {base_map:.4f})" if base_map is not None else ""))
    print(format_rates(choice.pairs))
    return 0


def _run_latency(args, table, base_map) -> int:
    from yolo_prune.analysis.budget import select_for_latency
    from yolo_prune.analysis.latency import read_latency_table
    from yolo_prune.analysis.selection import format_rates

    latency = read_latency_table(args.latency_table)
    reference = base_map if base_map is not None else max(e.map for e in table.entries.values())
    choice = select_for_latency(table, latency, reference, args.target_latency)
    measured = _measure_selection(args, latency, choice.pairs) if (args.weights or args.cfg) else None
    result = {"pruning_params": [list(p) for p in choice.pairs], "metric": "latency_ms", "target": args.target_latency,
              "predicted": choice.exact_cost, "measured": measured,
              "predicted_map": choice.predicted_map if base_map is not None else None,
              "table": {"runtime": f"{latency.runtime} {latency.runtime_version}", "provider": latency.provider,
                        "statistic": latency.settings.get("statistic"), "threads": latency.settings.get("threads"),
                        "img_size": latency.settings.get("img_size")}}
    if args.json:
        print_json(result)
        return 0
    line = (f"budget latency <= {args.target_latency:g} ms ({latency.runtime} {latency.runtime_version}, "
            f"{latency.settings.get('statistic')} of runs): {len(choice.pairs)} layers; predicted "
            f"{choice.exact_cost:.3f} ms (unpruned {latency.predict([]):.3f} ms)")
    if measured is not None:
        err = 100 * (choice.exact_cost - measured) / measured
        line += f", measured {measured:.3f} ms (prediction {err:+.1f}%)"
    if base_map is not None:
        line += f", predicted mAP@.5:.95 {choice.predicted_map:.4f} (baseline {base_map:.4f})"
    print(line)
    print(format_rates(choice.pairs))
    return 0


def _measure_selection(args, latency, pairs) -> float:
    """Prune the given model as selected and time it as the latency table timed whole models."""
    from yolo_prune.bench.latency_table import measured_latency
    from yolo_prune.cli.common import load_model_from_args
    from yolo_prune.errors import YoloPruneError
    from yolo_prune.graph import derive_graph
    from yolo_prune.prune import prune

    model = load_model_from_args(args)
    if derive_graph(model).fingerprint() != latency.model.get("fingerprint"):
        raise YoloPruneError(f"--latency-table {args.latency_table} was measured on another model than "
                             f"{args.weights or args.cfg} (graph fingerprints differ)")
    pruned = prune(model, pairs, args.criterion, round_to=latency.settings.get("round_to"), summarize=False).model \
        if pairs else model
    return measured_latency(pruned, latency.settings)[0]


def _cost_model(args, table):
    """The fused cost model of --weights/--cfg at the analysis' image size, checked against the analysis."""
    from yolo_prune.analysis.table import check_model_matches
    from yolo_prune.cli.common import fit_img, load_model_from_args
    from yolo_prune.prune.cost import fused_cost_model

    model = load_model_from_args(args)
    img = fit_img(args.img, int(model.stride.max())) if args.img else table.img or 640
    costs = fused_cost_model(model, img)
    check_model_matches(table, costs, f"--weights {args.weights}" if args.weights else f"--cfg {args.cfg}")
    return costs
