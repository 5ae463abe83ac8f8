"""`yolo-prune test`: evaluate a model (optionally pruned on the fly), or run the pruning sensitivity analysis.

Takes YOLOv7 ``test.py``'s flags and forms (``--img``/``--img-size``, ``--batch``, ``--conf``, ``--iou``, ``--device
0|cpu``, ``--weights`` as a list, ``--task``, ``--no-trace``) and the published pruning code's (``--modification
prune-structured``, ``--pruning-params``, ``--criterion``, ``--prune-output``, ``--pruning-rate``). Every input is
checked before the model runs.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import replace
import sys
from pathlib import Path

from yolo_prune.cli.common import (V5_METRIC, OneWeights, add_unsupported_flags, fit_img, img_int, input_file,
                                   literal_numbers, non_negative_int, output_dir, positive_int, print_json,
                                   refuse_unsupported, threshold)
from yolo_prune.cli.prune import add_pruning_flags
from yolo_prune.errors import YoloPruneError

ANALYSIS = "pruning_sensitivity_analysis"
DEFAULT_RATES = "[0.25, 0.5, 0.75]"
SPEED_THRESHOLDS = (0.25, 0.45)  # test.py --task speed: conf, NMS IoU
MODIFICATIONS = ("prune-structured", "pruned-structured")  # the published README's table spells it "pruned-"


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=(
        "examples:\n  yolo-prune test --data data.yaml --weights best.pt --img 320 --verbose\n"
        "  yolo-prune test --data data.yaml --weights best.pt --task pruning_sensitivity_analysis \\\n"
        "      --pruning-rate '[0.25, 0.5, 0.75]' --criterion 0 --modification prune-structured --name sens"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data YAML (YOLOv7 format); only the split evaluated must exist")
    p.add_argument("--weights", required=True, nargs="+", action=OneWeights, metavar="FILE",
                   help="checkpoint (official YOLOv7 .pt, ours) or .onnx")
    p.add_argument("--img", "--img-size", dest="img", type=img_int, default=None,
                   help="image size (default 640; 1280 for P6 models, a Darknet cfg's width, an ONNX file's own size); "
                   "rounded up to the model's stride")
    p.add_argument("--batch", "--batch-size", dest="batch", type=positive_int, default=32, help="batch size")
    p.add_argument("--conf", "--conf-thres", dest="conf", type=threshold, default=0.001, help="confidence threshold")
    p.add_argument("--iou", "--iou-thres", dest="iou", type=threshold, default=0.65, help="NMS IoU threshold")
    p.add_argument("--device", default="", help="cpu, 0 or cuda:0 (default: CUDA if available)")
    p.add_argument("--task", default="val", choices=["val", "test", "train", "speed", "study", ANALYSIS],
                   help="split to evaluate (val, test, train); speed: the val split at conf 0.25, IoU 0.45 (test.py's "
                        "speed run); study: the val split at 256, 384, ..., 1536 px, written to "
                        "study_<data>_<weights>.txt and .png; or the sensitivity analysis")
    p.add_argument("--name", default="exp", help="run name (output/<name> for the analysis)")
    p.add_argument("--project", default=None, help="parent folder (default runs/test, or output for the analysis)")
    p.add_argument("--save-json", action="store_true",
                   help="write COCO-format predictions to <project>/<name>/<weights stem>_predictions.json (as "
                        "test.py: a new folder name2, name3... when name exists, unless --exist-ok)")
    p.add_argument("--coco-json", default=None,
                   help="COCO ground truth (instances_*.json) for the pycocotools mAPs (default: YOLOv7's "
                        "./coco/annotations/instances_val2017.json for a coco.yaml when it exists, else the labels)")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data loader worker processes (default 2)")
    p.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--half", action="store_true", help="fp16 inference on CUDA")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-trace", action="store_true", help="accepted for YOLOv7 commands (yolo-prune never traces)")
    add_unsupported_flags(p, {
        "--single-cls": (0, "single-class evaluation is not implemented (a data YAML with nc: 1 and labels of 0)"),
        "--augment": (0, "test-time augmentation is not implemented"),
        **dict.fromkeys(("--save-txt", "--save-hybrid", "--save-conf"), (
            0, "per-image .txt results are not written (--save-json writes COCO-format predictions)")),
        "--v5-metric": V5_METRIC,
    })
    p.add_argument("--modification", choices=MODIFICATIONS, default=None,
                   help="prune-structured: prune the model with --pruning-params before evaluating (implied by "
                        "--pruning-params; the analysis prunes each layer itself)")
    add_pruning_flags(p, required=False)
    p.set_defaults(criterion=None)  # given or not: a criterion without pruning is a usage error
    p.add_argument("--pruning-rate", default=None, help=f"analysis rates (default '{DEFAULT_RATES}')")
    p.add_argument("--prune-output", default=None, help="analysis output name: <stem>_<int(100*rate)>.txt "
                   "(default output.txt)")
    p.add_argument("--layers", default=None, help="analysis: only these conv layers, e.g. '[0, 5, 23]'")
    p.add_argument("--exist-ok", action="store_true", help="--save-json: write into an existing <project>/<name>; "
                   "analysis: replace an existing analysis of other settings")
    p.add_argument("--chunk-layers", type=positive_int, default=None, help="analysis: layers per stored chunk (4)")
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="analysis: print the plan (configurations, images, chunks, time per configuration measured "
                        "on the first batch, ETA) and stop; nothing is written")
    p.add_argument("--early-stop", nargs="?", const=0.5, type=float, default=None, metavar="RATIO",
                   help="analysis: stop a configuration whose mAP@.5 after --early-stop-after of the images is below "
                        "RATIO (default 0.5) x the unpruned model's on the same images (marked in the results)")
    p.add_argument("--early-stop-after", type=float, default=None, metavar="FRACTION",
                   help="analysis: image fraction scored before --early-stop decides (default 0.25)")
    p.add_argument("--stack-mib", type=non_negative_int, default=None, metavar="MIB",
                   help="analysis: memory for one pass over a layer's stacked rates (default: half the free GPU "
                        "memory, 1024 on CPU; 0: one pass per configuration)")
    p.add_argument("--cache-mib", type=non_negative_int, default=None, metavar="MIB",
                   help="analysis: memory for the unpruned model's activations kept across chunks of layers "
                        "(default: a quarter of the free GPU memory, on CPU of the available host memory; 0: re-run them "
                        "per chunk)")
    p.add_argument("--score-workers", type=non_negative_int, default=None, metavar="N",
                   help="analysis: processes that finish each configuration's COCOeval while the next chunk's "
                        "forwards run (default: 4 next to a GPU; on CPU 1 when a core is left besides torch's threads; "
                        "0: in this process)")
    p.set_defaults(func=run, parser=p)


# ------------------------------------------------------------------------------------------- checks
def _analysis_only(args: argparse.Namespace) -> None:
    """Analysis flags given for an evaluation are errors, never ignored."""
    given = [flag for flag, value in (("--pruning-rate", args.pruning_rate), ("--layers", args.layers),
                                      ("--prune-output", args.prune_output), ("--chunk-layers", args.chunk_layers),
                                      ("--dry-run", args.dry_run), ("--early-stop", args.early_stop),
                                      ("--early-stop-after", args.early_stop_after), ("--stack-mib", args.stack_mib),
                                      ("--cache-mib", args.cache_mib), ("--score-workers", args.score_workers))
             if value is not None]
    if given:
        raise YoloPruneError(f"{', '.join(given)}: only with --task {ANALYSIS}")


def _check_pruning(args: argparse.Namespace, onnx: bool) -> None:
    """--pruning-params implies --modification prune-structured; pruning flags without it are errors."""
    from yolo_prune.prune import parse_pruning_params

    if args.pruning_params is None:
        if args.modification:
            raise YoloPruneError(f"--modification {args.modification} needs --pruning-params (e.g. \"[(23, 0.5)]\"),"
                                 f" or --task {ANALYSIS}, which prunes every layer alone")
        extra = [f for f, v in (("--criterion", args.criterion), ("--round-to", args.round_to),
                                ("--pruning-config", args.pruning_config)) if v is not None]
        if extra:
            raise YoloPruneError(f"{', '.join(extra)}: only with --pruning-params or --task {ANALYSIS}")
        return
    if onnx:
        raise YoloPruneError("--pruning-params: an ONNX file cannot be pruned; give the PyTorch checkpoint")
    parse_pruning_params(args.pruning_params)
    if args.pruning_config:
        input_file(args.pruning_config, "--pruning-config")
    if not args.modification:
        print("note: --pruning-params given: evaluating the model pruned with them (--modification "
              "prune-structured)", file=sys.stderr)
    args.modification = MODIFICATIONS[0]


def _check_analysis(args: argparse.Namespace, onnx: bool) -> None:
    """Rates, layers and output name of the analysis; what it cannot take."""
    if onnx:
        raise YoloPruneError(f"--task {ANALYSIS} prunes PyTorch layers: give the .pt checkpoint, not an ONNX file")
    if args.pruning_params is not None or args.pruning_config is not None:
        flag = "--pruning-params" if args.pruning_params is not None else "--pruning-config"
        raise YoloPruneError(f"{flag}: the analysis prunes every layer alone at each --pruning-rate (its graph is "
                             "derived from the model); evaluate a pruned model without --task instead")
    args.rates = literal_numbers(args.pruning_rate or DEFAULT_RATES, "--pruning-rate", float, 0.0, 1.0,
                                 open_interval=True)
    args.layer_list = literal_numbers(args.layers, "--layers", int, 0) if args.layers else None
    name = args.prune_output or "output.txt"
    stem = Path(name).stem
    if Path(name).name != name or Path(name).suffix != ".txt" or not re.fullmatch(r"[\w.-]+", stem):
        raise YoloPruneError(f"--prune-output {args.prune_output}: expected a file name such as output.txt "
                             "(letters, digits, '.', '_', '-')")
    args.prefix = stem
    if args.early_stop_after is not None and args.early_stop is None:
        raise YoloPruneError("--early-stop-after: only with --early-stop")
    if args.early_stop is not None:
        from yolo_prune.analysis.planning import EarlyStop

        args.early = EarlyStop(args.early_stop, 0.25 if args.early_stop_after is None else args.early_stop_after)
    else:
        args.early = None


def _check_speed_or_study(args: argparse.Namespace, onnx: bool) -> None:
    """test.py's speed run fixes its thresholds and writes no predictions; a study evaluates at 11 sizes."""
    if args.task == "speed":
        if args.save_json:
            print("note: --save-json: --task speed writes no predictions (as test.py)", file=sys.stderr)
            args.save_json = False
        args.conf, args.iou = SPEED_THRESHOLDS
        return
    if onnx:
        raise YoloPruneError("--task study evaluates at 256..1536 px: an ONNX file has one fixed input size; give "
                             "the .pt checkpoint")
    if args.save_json:
        raise YoloPruneError("--save-json: not with --task study (one evaluation per image size); evaluate one "
                             "--img with --save-json instead")
    if args.img is not None:
        raise YoloPruneError(f"--img {args.img}: --task study evaluates at every size of 256, 384, ..., 1536 px")


def check_args(args: argparse.Namespace) -> None:
    """Every input of the command, before anything is loaded or written."""
    from yolo_prune.prune.criteria import criterion_name

    refuse_unsupported(args)
    input_file(args.data, "--data")
    onnx = input_file(args.weights, "--weights").suffix.lower() == ".onnx"
    if args.task == ANALYSIS:
        _check_analysis(args, onnx)
        if args.coco_json is not None:
            raise YoloPruneError("--coco-json: only for an evaluation; the analysis scores every configuration "
                                 "against the labels")
    else:
        _analysis_only(args)
        _check_pruning(args, onnx)
        if args.coco_json is not None:
            input_file(args.coco_json, "--coco-json")
    if args.task in ("speed", "study"):
        _check_speed_or_study(args, onnx)
    if args.criterion is not None:
        criterion_name(args.criterion)
    args.criterion = args.criterion or "0"
    from yolo_prune.cli.prune import criterion_options

    criterion_options(args)  # bad values of the criterion flags fail before any work
    args.out_dir = Path(args.project or ("output" if args.task == ANALYSIS else "runs/test")) / args.name
    if args.task == ANALYSIS or args.save_json:
        output_dir(args.out_dir, "--project/--name")


# ------------------------------------------------------------------------------------------- model
def _load_onnx(args: argparse.Namespace):
    """The ONNX file as a detector; corrupt files and another --img than its fixed size are usage errors."""
    from yolo_prune.export.ort_model import OrtDetector

    try:
        model = OrtDetector(args.weights)
    except YoloPruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - protobuf / ONNX Runtime raise many types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise YoloPruneError(f"--weights {args.weights}: not a readable ONNX model ({reason[:120]})") from None
    exported = model.img_size
    if model.input_hw is None:  # `export --dynamic`: any size (rectangular batches, as for a .pt)
        args.img = fit_img(args.img or int(max(exported)), int(model.stride.max()))
        return model
    if args.img is not None and (args.img, args.img) != tuple(exported):
        raise YoloPruneError(f"--img {args.img}: the ONNX input of {args.weights} is fixed at {exported[0]}x"
                             f"{exported[1]}; use --img {exported[0]}, or re-export with `yolo-prune export "
                             f"--img-size {args.img}` (or --dynamic)")
    args.img = int(exported[0])
    return model


def _load(args: argparse.Namespace, data):
    """(model to evaluate, pruned when asked; the float model its parameters and GFLOPs are counted on), the class
    count checked against the data. A `train --qat` checkpoint is evaluated fake-quantized, as it was trained."""
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.pipeline.evaluation import check_model_classes

    if args.weights.lower().endswith(".onnx"):
        model = _load_onnx(args)
        check_model_classes(model, data, args.weights)
        return model, model
    loaded = load_checkpoint(args.weights)
    model = loaded.model
    args.img = fit_img(args.img or getattr(model, "default_img_size", 640), int(model.stride.max()))
    check_model_classes(model, data, args.weights)
    if args.task == ANALYSIS and args.layer_list:
        _check_layers(model, args.layer_list)
    if args.task != ANALYSIS and not args.modification:
        from yolo_prune.quant.state import restore, stored_scheme

        if stored_scheme(loaded.extra) is not None:
            if not args.json:
                print(f"{args.weights}: quantization-aware trained checkpoint, evaluated fake-quantized (int8)")
            return restore(model, loaded.extra, str(args.weights)).model, model
    if args.modification and args.task != ANALYSIS:
        from yolo_prune.cli.prune import criterion_options
        from yolo_prune.engine.calibration import calibration_source
        from yolo_prune.graph import read_published
        from yolo_prune.prune import prune

        given = read_published(args.pruning_config) if args.pruning_config else None
        options = criterion_options(args)
        source = calibration_source(model, args.criterion, options, args.data, args.img, args.seed)
        model = prune(model, args.pruning_params, args.criterion, round_to=args.round_to, seed=args.seed,
                      graph=given, inplace=True, summarize=False, scoring=args.scoring, options=options,
                      source=source).model
    return model, model


def _check_layers(model, layers: list[int]) -> None:
    """--layers must name prunable conv layers of this model."""
    from yolo_prune.graph.derive import derive_graph

    prunable = set(derive_graph(model).prunable)
    bad = [layer for layer in layers if layer not in prunable]
    if bad:
        raise YoloPruneError(f"--layers: {bad} are not prunable conv layers of the model (prunable: "
                             f"{min(prunable)}..{max(prunable)}; `yolo-prune graph --weights ... --print` lists them)")


def run(args: argparse.Namespace) -> int:
    from yolo_prune.pipeline.devices import select_device
    from yolo_prune.pipeline.evaluation import DataSettings

    check_args(args)
    device = select_device(args.device)
    split = args.task if args.task in ("train", "test") else "val"
    data = DataSettings(args.data, split, args.img, args.batch, args.workers, args.max_images,
                        _coco_json(args, split))
    model, counted = _load(args, data)
    data = replace(data, img_size=args.img)  # the size fitted to the model's stride
    if args.task == ANALYSIS:
        return _analyse(args, model, data, device)
    if args.task == "study":
        return _study(args, model, data, device)
    return _evaluate(args, model, data, device, counted)


def _coco_json(args: argparse.Namespace, split: str) -> str | None:
    """--coco-json, else YOLOv7's COCO ground truth for its coco.yaml (announced), else None (the labels)."""
    from yolo_prune.pipeline.evaluation import official_coco_json

    if args.coco_json is not None or args.task == ANALYSIS:
        return args.coco_json
    found = official_coco_json(args.data, split)
    if found and not args.json:
        print(f"pycocotools ground truth: {found} (YOLOv7's for coco.yaml; --coco-json to choose another)")
    return found


def _evaluate(args, model, data, device, counted) -> int:
    from yolo_prune.engine.evaluator import format_results, official_metrics
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.pipeline.evaluation import evaluate_on_data

    json_path = _predictions_path(args) if args.save_json else None
    result = evaluate_on_data(model, data, device=device, conf_thres=args.conf, iou_thres=args.iou,
                              half=args.half, progress=not args.json, verbose=False, source=args.weights,
                              save_json=json_path)
    is_torch = hasattr(model, "parameters")
    params = count_params(counted) if is_torch else None
    gflops = count_gflops(counted.cpu(), args.img) if is_torch else None
    if args.json:  # top-level map50/map: pycocotools; "official": test.py's own P, R, mAP@.5, mAP@.5:.95
        print_json({"mp": result.mp, "mr": result.mr, "map50": result.map50, "map": result.map,
                    "official": official_metrics(result), "per_class": result.class_ap, "speed": list(result.speed),
                    "params": params, "gflops": gflops, "n_images": result.n_images,
                    "predictions_json": None if json_path is None else str(json_path)})
        return 0
    nc = len(result.class_ap)
    per_class = args.verbose or 1 < nc < 50  # test.py prints the class rows by itself below 50 classes
    format_results(result, model.names if hasattr(model, "names") else None, verbose=per_class)
    if json_path is not None:
        print(f"COCO-format predictions saved to {json_path}")
    if is_torch:
        print(f"Model: {params:,} parameters, {gflops:.3f} GFLOPs @{args.img}")
    return 0


def _study(args, model, data, device) -> int:
    """test.py's --task study: the val split at each size, rows written to study_<data>_<weights>.txt (+ .png)."""
    from yolo_prune.pipeline.study import STUDY_SIZES, plot_study, run_study, save_study, study_file

    path = study_file(args.data, args.weights)
    log = (lambda text: print(text, file=sys.stderr)) if args.json else print
    log(f"study: {len(STUDY_SIZES)} evaluations of {args.weights} at {STUDY_SIZES[0]}..{STUDY_SIZES[-1]} px "
        f"-> {path}")

    def show(size: int, row: list[float]) -> None:
        log(f"  {size:5d} px: P {row[0]:.3g}  R {row[1]:.3g}  mAP@.5 {row[2]:.3g}  mAP@.5:.95 {row[3]:.3g}  "
            f"{row[9]:.1f} ms/img")

    rows = run_study(model, data, STUDY_SIZES, device=device, conf_thres=args.conf, iou_thres=args.iou,
                     half=args.half, on_size=show)
    save_study(rows, path)
    plot = plot_study(rows, STUDY_SIZES, Path(args.weights).stem, path.with_suffix(".png"))
    if args.json:
        print_json({"file": str(path), "plot": str(plot), "sizes": list(STUDY_SIZES), "rows": rows.tolist()})
    else:
        print(f"Study saved to {path} and {plot}")
    return 0


def _predictions_path(args: argparse.Namespace) -> Path:
    """test.py's --save-json file: ``<weights stem>_predictions.json`` in a new run folder (exp, exp2, ...), or in
    ``exp`` itself with --exist-ok. Nothing is created here: the folder appears with the file, after evaluating."""
    from yolo_prune.engine.train_state import run_dir_names

    names = run_dir_names(args.out_dir.parent, args.out_dir.name)
    run_dir = args.out_dir if args.exist_ok else next((p for p in names if not p.exists()), None)
    if run_dir is None:
        raise YoloPruneError(f"--project/--name {args.out_dir}: no free run name (tried {args.out_dir.name} .. "
                             f"{args.out_dir.name}9999); use --exist-ok or another --name")
    return run_dir / f"{Path(args.weights).stem}_predictions.json"


def _analyse(args, model, data, device) -> int:
    from yolo_prune.cli.prune import criterion_options
    from yolo_prune.pipeline.evaluation import AnalysisSettings, sensitivity_on_data

    analysis = AnalysisSettings(args.rates, args.criterion, args.round_to, args.seed, args.layer_list, args.conf,
                                args.iou, args.chunk_layers or 4, args.prefix, criterion_options(args),
                                early_stop=args.early,
                                stack_bytes=None if args.stack_mib is None else args.stack_mib << 20,
                                cache_bytes=None if args.cache_mib is None else args.cache_mib << 20,
                                score_workers=args.score_workers)
    log = (lambda text: print(text, file=sys.stderr)) if args.json else print
    store = sensitivity_on_data(model, data, analysis, args.out_dir, device=device, half=args.half,
                                exist_ok=args.exist_ok, source=str(args.weights), progress=not args.json,
                                dry_run=bool(args.dry_run), log=log)
    if args.dry_run:
        return 0
    if args.json:
        print_json({"output": str(args.out_dir), "baseline": store.baseline, "n_results": len(store.results)})
    else:
        base = store.baseline
        print(f"analysis in {args.out_dir}: {len(store.results)} configurations; baseline mAP@.5:.95 "
              f"{base['map']:.4f}, mAP@.5 {base['map50']:.4f}" if base else f"analysis in {args.out_dir}")
    return 0
