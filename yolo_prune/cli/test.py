"""`yolo-prune test`: evaluate a model (optionally pruned on the fly), or run the pruning sensitivity analysis."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

from yolo_prune.cli.common import positive_int, print_json
from yolo_prune.cli.prune import add_pruning_flags
from yolo_prune.errors import YoloPruneError


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        "examples:\n  yolo-prune test --data data.yaml --weights best.pt --img 320 --verbose\n"
        "  yolo-prune test --data data.yaml --weights best.pt --task pruning_sensitivity_analysis \\\n"
        "      --pruning-rate '[0.25, 0.5, 0.75]' --criterion 0 --modification prune-structured --name sens"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data YAML (YOLOv7 format)")
    p.add_argument("--weights", required=True, help="checkpoint (official YOLOv7 .pt, ours) or .onnx")
    p.add_argument("--img", "--img-size", dest="img", type=positive_int, default=640, help="image size (default 640)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=positive_int, default=32, help="batch size")
    p.add_argument("--conf", "--conf-thres", dest="conf", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou", "--iou-thres", dest="iou", type=float, default=0.65, help="NMS IoU threshold")
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--task", default="val", choices=["val", "test", "pruning_sensitivity_analysis"])
    p.add_argument("--name", default="exp", help="run name (output/<name> for the analysis)")
    p.add_argument("--project", default=None, help="parent folder (default runs/test, or output for the analysis)")
    p.add_argument("--save-json", action="store_true", help="write COCO-format predictions.json")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes (default 2)")
    p.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--half", action="store_true", help="fp16 inference on CUDA")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--modification", choices=["prune-structured"], default=None,
                   help="prune the model before evaluating (with --pruning-params)")
    add_pruning_flags(p, required=False)
    p.add_argument("--pruning-rate", default="[0.25, 0.5, 0.75]", help="analysis rates, e.g. '[0.25, 0.5, 0.75]'")
    p.add_argument("--prune-output", default="output.txt", help="analysis output name: <stem>_<int(100*rate)>.txt")
    p.add_argument("--layers", default=None, help="analysis: only these conv layers, e.g. '[0, 5, 23]'")
    p.add_argument("--exist-ok", action="store_true", help="analysis: replace an existing analysis of other settings")
    p.add_argument("--chunk-layers", type=positive_int, default=4, help="analysis: layers per stored chunk")
    p.set_defaults(func=run, parser=p)


def _literal_list(text: str, flag: str, kind: type) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise YoloPruneError(f"{flag}: cannot parse {text!r}; expected a list such as [0.25, 0.5]") from None
    value = value if isinstance(value, (list, tuple)) else [value]
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise YoloPruneError(f"{flag}: expected a non-empty list of numbers, got {text!r}")
    return [kind(v) for v in value]


def _load(args: argparse.Namespace):
    from yolo_prune.checkpoint import load_model

    if str(args.weights).endswith(".onnx"):
        from yolo_prune.export.ort_model import OrtDetector  # evaluated through ONNX Runtime
        return OrtDetector(args.weights)
    model = load_model(args.weights)
    if args.modification == "prune-structured":
        if not args.pruning_params:
            args.parser.error("--modification prune-structured needs --pruning-params")
        from yolo_prune.cli.prune import criterion_options
        from yolo_prune.engine.calibration import calibration_source
        from yolo_prune.prune import prune

        options = criterion_options(args)
        source = calibration_source(model, args.criterion, options, args.data, args.img, args.seed)
        model = prune(model, args.pruning_params, args.criterion, round_to=args.round_to, seed=args.seed,
                      inplace=True, summarize=False, scoring=args.scoring, options=options, source=source).model
    return model


def run(args: argparse.Namespace) -> int:
    from yolo_prune.pipeline.devices import select_device
    from yolo_prune.pipeline.evaluation import DataSettings

    if not Path(args.data).is_file():
        raise YoloPruneError(f"--data {args.data}: file not found")
    device = select_device(args.device)
    split = "test" if args.task == "test" else "val"
    data = DataSettings(args.data, split, args.img, args.batch, args.workers, args.max_images)
    model = _load(args)
    if args.task == "pruning_sensitivity_analysis":
        return _analyse(args, model, data, device)
    return _evaluate(args, model, data, device)


def _evaluate(args, model, data, device) -> int:
    from yolo_prune.engine.evaluator import format_results
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.pipeline.evaluation import evaluate_on_data

    out_dir = Path(args.project or "runs/test") / args.name
    result = evaluate_on_data(model, data, device=device, conf_thres=args.conf, iou_thres=args.iou,
                              half=args.half, save_json=str(out_dir / "predictions.json") if args.save_json else None,
                              verbose=False, progress=not args.json)
    is_torch = hasattr(model, "parameters")
    params = count_params(model) if is_torch else None
    gflops = count_gflops(model.cpu(), args.img) if is_torch else None
    if args.json:
        print_json({"mp": result.mp, "mr": result.mr, "map50": result.map50, "map": result.map,
                    "per_class": result.class_ap, "speed": list(result.speed), "params": params, "gflops": gflops,
                    "n_images": result.n_images})
        return 0
    format_results(result, model.names if hasattr(model, "names") else None, verbose=args.verbose)
    if is_torch:
        print(f"Model: {params:,} parameters, {gflops:.3f} GFLOPs @{args.img}")
    return 0


def _analyse(args, model, data, device) -> int:
    from yolo_prune.cli.prune import criterion_options
    from yolo_prune.pipeline.evaluation import AnalysisSettings, sensitivity_on_data

    rates = _literal_list(args.pruning_rate, "--pruning-rate", float)
    bad = [r for r in rates if not 0 < r < 1]
    if bad:
        raise YoloPruneError(f"--pruning-rate: rates must lie in (0, 1), got {bad}")
    layers = _literal_list(args.layers, "--layers", int) if args.layers else None
    out_dir = Path(args.project or "output") / args.name
    analysis = AnalysisSettings(rates, args.criterion, args.round_to, args.seed, layers, args.conf, args.iou,
                                args.chunk_layers, Path(args.prune_output).stem, criterion_options(args))
    store = sensitivity_on_data(model, data, analysis, out_dir, device=device, half=args.half,
                                exist_ok=args.exist_ok, source=str(args.weights), progress=not args.json)
    if args.json:
        print_json({"output": str(out_dir), "baseline": store.baseline, "n_results": len(store.results)})
    else:
        base = store.baseline
        print(f"analysis in {out_dir}: {len(store.results)} configurations; baseline mAP@.5:.95 "
              f"{base['map']:.4f}, mAP@.5 {base['map50']:.4f}" if base else f"analysis in {out_dir}")
    return 0
