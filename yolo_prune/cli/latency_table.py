"""`yolo-prune latency-table`: measure each prunable layer's latency at each candidate width (ONNX Runtime CPU)."""
from __future__ import annotations

import argparse

from yolo_prune.cli.common import (add_model_source, check_model_source, fit_img, img_int, int_at_least,
                                   literal_numbers, load_model_from_args, non_negative_int, output_file, positive_int,
                                   print_json)
from yolo_prune.errors import YoloPruneError

EPILOG = """examples:
  yolo-prune latency-table --weights best.pt --img-size 640 --threads 2 --output latency.json
  yolo-prune latency-table --cfg yolov7-tiny --img-size 320 --rates '[0.25, 0.5, 0.75]' --output tiny320.json
  yolo-prune layer-selection --output output/sens --target-latency 20 --latency-table latency.json --weights best.pt
An interrupted run resumes from <output>.partial.json (same model and settings)."""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    p.add_argument("--output", required=True, help="the table to write (JSON)")
    p.add_argument("--img-size", "--img", dest="img_size", type=img_int, default=None,
                   help="square input size (default: 1280 for P6 models, a Darknet cfg's width, else 640)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed runs before timing each point (default 5)")
    p.add_argument("--repeats", type=int_at_least(3), default=20, help="timed runs per point (default 20, at least 3)")
    p.add_argument("--rates", default="[0.25, 0.5, 0.75]",
                   help="pruning rates whose widths are measured (default '[0.25, 0.5, 0.75]', as the analysis)")
    p.add_argument("--round-to", type=positive_int, default=None, help="the pruner's --round-to, if you use one")
    p.add_argument("--statistic", choices=("min", "median"), default="min",
                   help="of the timed runs, store the fastest (default; robust where other work shares the CPU) or "
                   "the median")
    p.add_argument("--timing", choices=("profile", "wall"), default="profile",
                   help="whole models: sum of the nodes' kernel times from ONNX Runtime's profiler (default; robust "
                   "on a busy machine) or session.run wall time (on a dedicated machine)")
    p.add_argument("--json", action="store_true", help="print the per-layer summary as JSON")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from yolo_prune.bench.latency_table import TableSettings, build_latency_table

    check_model_source(args)
    rates = tuple(literal_numbers(args.rates, "--rates", float, 0.0, 1.0, open_interval=True))
    output_file(args.output, "--output")
    model = load_model_from_args(args).float().eval()
    if not hasattr(model, "stride"):
        raise YoloPruneError("latency-table: only detection models (YOLOv7 cfgs, checkpoints, Darknet) are supported")
    img = fit_img(args.img_size or getattr(model, "default_img_size", 640), int(model.stride.max()), "--img-size")
    settings = TableSettings((img, img), args.batch_size, args.threads, args.warmup, args.repeats, rates,
                             args.round_to, args.statistic, args.timing)
    with tqdm(desc="latency table", unit="conv", disable=args.json) as bar:
        def progress(done: int, total: int, name: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(name)
            bar.refresh()

        table = build_latency_table(model, settings, args.output, args.weights or args.cfg, progress)
    table.save(args.output)
    if args.json:
        print_json({"output": args.output, "base": table.base, "rest_ms": table.rest_ms, "noise": table.noise,
                    "layers": table.layers})
        return 0
    print(f"{table.runtime} {table.runtime_version} ({table.provider}), {table.machine['processor']}, "
          f"{settings.threads or 'default'} threads, {img}x{img}, batch {settings.batch}; warm-up {settings.warmup}, "
          f"{settings.repeats} repeats per point")
    c = table.calibration
    b = table.base
    print(f"whole model: {b['ms']:.3f} ms ({settings.timing}, {settings.statistic} of {b['n']} runs; wall clock min "
          f"{b['wall_min_ms']:.3f}, median {b['wall_median_ms']:.3f}, p10-p90 {b['wall_p10_ms']:.3f}-"
          f"{b['wall_p90_ms']:.3f}); convolutions {b['ms'] - table.rest_ms:.3f} ms, rest {table.rest_ms:.3f} ms")
    print(f"noise (p10-p90 / median): {100 * table.noise['median_rel_spread']:.1f}% per point (median), "
          f"{100 * table.noise['max_rel_spread']:.1f}% (max), {100 * table.noise['base_rel_spread']:.1f}% whole model "
          f"(kernel sums)")
    print(f"calibration: latency = {c['conv_scale']:.3f} x conv + {c['volume_ms']:.3f} ms x volume + "
          f"{c['const_ms']:.3f} ms; " + ", ".join(f"rate {p['rate']:g}: measured {p['measured_ms']:.3f} predicted "
                                                  f"{p['predicted_ms']:.3f}" for p in c["points"]))
    if c.get("note"):
        print(f"calibration note: {c['note']}")
    print(f"{'layer':>5} {'name':<18} " + " ".join(f"{'rate ' + format(r, 'g'):>18}" for r in (0.0, *rates)))
    for row in table.layers:
        cells = [f"{w:>5} {v['model_ms']:>8.3f} ms" for w, v in row["widths"].items()]
        print(f"{row['layer']:>5} {row['name']:<18} " + " ".join(f"{c:>18}" for c in cells))
    print(f"saved {args.output}")
    return 0
