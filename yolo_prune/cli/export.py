"""`yolo-prune export`: ONNX (raw / --grid / --end2end), a TensorRT engine, or a power-of-two INT8 QDQ ONNX
for Vitis AI DPUs; every export verified.

Exit codes: 0 success; 1 a verification failed (nothing written); 2 bad input, ``--format engine``
where TensorRT is not installed (the verified ONNX is written and the trtexec command to run on the
target is printed), or ``--format vitis-int8`` without AMD Quark.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from yolo_prune.cli.common import (add_model_source, check_model_source, fit_img, img_int, input_dir, input_file,
                                   output_file, positive_int)
from yolo_prune.cli.export_int8 import (check_int8_flags, load_for_export, needs_calibration, register_vitis_flags,
                                        trt_qdq, vitis_qat)
from yolo_prune.errors import YoloPruneError

if TYPE_CHECKING:
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.export.tensorrt import EngineOptions

NMS_DEFAULTS = {"topk_all": 100, "iou_thres": 0.45, "conf_thres": 0.25}
ENGINE_FLAGS = {"calib_cache": "--calib-cache", "dla": "--dla", "workspace": "--workspace",
                "timing_cache": "--timing-cache"}
DEFAULT_OPSET = {"onnx": 12, "engine": 12, "vitis-int8": 13}
EPILOG = """examples:
  yolo-prune export --weights pruned.pt --img-size 640 --grid --simplify
  yolo-prune export --weights pruned.pt --end2end --max-wh 7680 --topk-all 100   (NMS runs in ONNX Runtime)
  yolo-prune export --weights pruned.pt --format engine --end2end --fp16 --dla 0   (EfficientNMS_TRT plugin)
  yolo-prune export --weights pruned.pt --format vitis-int8 --data data.yaml --calib-count 200 --img-size 640
      (power-of-two INT8 QDQ for Vitis AI; evaluate it with `yolo-prune test --weights pruned.int8.onnx`)
  yolo-prune export --weights qat.pt --format vitis-int8 --img-size 640   (a `train --qat dpu` checkpoint)
  yolo-prune export --weights pruned.pt --int8 --data data.yaml   (TensorRT Q/DQ ONNX: pruned.qdq.onnx)
  yolo-prune export --weights pruned.pt --format engine --int8 --qdq --data data.yaml   (explicit INT8 engine)
exit codes: 0 ok, 1 verification failed (no file written), 2 bad input, TensorRT missing for --format engine
(the verified ONNX is then written and the trtexec command for the target is printed), or AMD Quark missing."""


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source(p)
    p.add_argument("--format", choices=tuple(DEFAULT_OPSET), default="onnx",
                   help="onnx (default), engine (TensorRT) or vitis-int8 (power-of-two INT8 QDQ ONNX, AMD Quark)")
    p.add_argument("--output", default=None,
                   help="output file (default: the weights/cfg name with .onnx, .engine or .int8.onnx)")
    p.add_argument("--img-size", "--img", dest="img_size", nargs="+", type=img_int, default=None, metavar="N",
                   help="input size: H W, or one value for both (default: 1280 for P6 models, a Darknet cfg's width, "
                   "else 640; rounded up to the model's stride)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis (engine profile 1..batch-size)")
    p.add_argument("--dynamic", action="store_true",
                   help="onnx: dynamic batch, height and width axes (YOLOv7's --dynamic; raw or --grid graphs); "
                        "verified at --img-size and at a second size")
    p.add_argument("--include-nms", action="store_true",
                   help="YOLOv7's name for the TensorRT end-to-end graph: --end2end with the EfficientNMS_TRT plugin")
    p.add_argument("--grid", action="store_true", help="output decoded predictions [B, N, 5+nc] instead of raw maps")
    p.add_argument("--end2end", action="store_true", help="append NMS: outputs num_dets, det_boxes (x1y1x2y2), "
                   "det_scores, det_classes; EfficientNMS_TRT plugin unless --max-wh is given")
    p.add_argument("--max-wh", type=positive_int, default=None,
                   help="with --end2end: use ONNX NonMaxSuppression (runs in ONNX Runtime), classes offset by this")
    p.add_argument("--topk-all", type=positive_int, default=None, help="with --end2end: detections per image (100)")
    p.add_argument("--iou-thres", type=float, default=None, help="with --end2end: NMS IoU threshold (0.45)")
    p.add_argument("--conf-thres", type=float, default=None, help="with --end2end: score threshold (0.25)")
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--fp16", action="store_true", help="onnx: half-precision graph; engine: FP16 TensorRT build")
    p.add_argument("--device", default="cpu", help="cpu, 0, cuda:0 ... (default cpu)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default 12; 13 for vitis-int8)")
    p.add_argument("--calib-images", type=Path, default=None,
                   help="engine --int8 / onnx --int8 / vitis-int8: folder of calibration images")
    _register_engine_flags(p)
    register_vitis_flags(p)
    p.set_defaults(func=run)


def _register_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TensorRT (--format engine)")
    g.add_argument("--int8", action="store_true",
                   help="engine: INT8 build (TensorRT calibrates on --calib-images or reads --calib-cache; with --qdq "
                   "or a `train --qat tensorrt` checkpoint: from Q/DQ, no calibrator); onnx: write the Q/DQ ONNX")
    g.add_argument("--qdq", action="store_true",
                   help="with --format engine --int8: explicit quantization, the engine built from a Q/DQ ONNX "
                   "calibrated here (--data / --calib-images)")
    g.add_argument("--calib-cache", type=Path, default=None, help="calibration cache to read/write")
    g.add_argument("--dla", type=int, default=None, metavar="CORE", help="run on this DLA core (GPU fallback on)")
    g.add_argument("--workspace", type=positive_int, default=None, metavar="MIB", help="workspace MiB (2048)")
    g.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file to reuse")


def _check_format_flags(args: argparse.Namespace) -> None:
    """Flags of one format given with another: an error, never silently ignored."""
    used = [flag for key, flag in ENGINE_FLAGS.items()
            if getattr(args, key) is not None and getattr(args, key) is not False]  # --dla 0 counts
    if used and args.format != "engine":
        raise YoloPruneError(f"{', '.join(used)}: only valid with --format engine")
    check_int8_flags(args)
    if args.format != "vitis-int8":
        return
    bad = [f for f, on in (("--grid", args.grid), ("--end2end", args.end2end), ("--fp16", args.fp16),
                           ("--dynamic-batch", args.dynamic_batch), ("--simplify", args.simplify)) if on]
    if bad:
        raise YoloPruneError(f"{', '.join(bad)}: not valid with --format vitis-int8 (the DPU graph has a fixed batch "
                             "and ends at the head convs; decoding and NMS run on the CPU)")
    if args.opset is not None and args.opset < 13:
        raise YoloPruneError(f"--opset {args.opset}: QDQ models need opset >= 13")


def _official_flags(args: argparse.Namespace) -> None:
    """YOLOv7 export.py's --include-nms (its EfficientNMS_TRT graph: our --end2end without --max-wh) and
    --dynamic, which a TensorRT engine or a DPU graph cannot take."""
    if args.include_nms:
        if args.max_wh is not None:
            raise YoloPruneError("--include-nms adds TensorRT's EfficientNMS_TRT plugin; --max-wh selects ONNX "
                                 "NonMaxSuppression instead: use --end2end --max-wh N for that")
        print("note: --include-nms: the end-to-end graph with TensorRT's EfficientNMS_TRT (as --end2end)",
              file=sys.stderr)
        args.end2end = True
    if args.dynamic and args.format != "onnx":
        raise YoloPruneError(f"--dynamic: only with --format onnx (a {args.format} graph has a fixed input size; "
                             "--dynamic-batch gives an engine a batch range)")
    if args.dynamic and args.end2end:
        raise YoloPruneError("--dynamic: not with --end2end/--include-nms (their outputs are sized for one input "
                             "size); use --dynamic-batch")


def export_options(args: argparse.Namespace) -> "ExportOptions":
    """ExportOptions from the flags; YoloPruneError for flags that would be silently ignored."""
    from yolo_prune.export.options import ExportOptions, as_hw

    _official_flags(args)
    nms = {k: getattr(args, k) for k in NMS_DEFAULTS}
    given = [f"--{k.replace('_', '-')}" for k, v in nms.items() if v is not None]
    if args.max_wh is not None:
        given.append("--max-wh")
    if given and not args.end2end:
        raise YoloPruneError(f"{', '.join(given)}: only valid with --end2end")
    _check_format_flags(args)
    nms = {k: NMS_DEFAULTS[k] if v is None else v for k, v in nms.items()}
    return ExportOptions(img_size=as_hw(args.img_size or [640]), batch_size=args.batch_size,
                         dynamic_batch=args.dynamic_batch, dynamic=args.dynamic, grid=args.grid,
                         end2end=args.end2end, max_wh=args.max_wh, simplify=args.simplify,
                         fp16=args.fp16 and args.format == "onnx", device=args.device, **nms,
                         opset=args.opset or (13 if args.int8 else DEFAULT_OPSET[args.format]))  # per-channel Q/DQ: 13


def output_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(ONNX path, engine path or None), checked writable. The ONNX an engine is built from is named after the
    engine (``m.engine.onnx``), so it never replaces an ``m.onnx`` the user did not name."""
    suffix = {"onnx": ".qdq.onnx" if args.int8 else ".onnx", "engine": ".engine", "vitis-int8": ".int8.onnx"}[args.format]
    default = Path(args.weights) if args.weights else Path(Path(args.cfg).name)
    out = Path(args.output) if args.output else default.with_suffix(suffix)
    if args.format in ("onnx", "vitis-int8"):
        if args.weights and out.resolve() == Path(args.weights).resolve():
            raise YoloPruneError(f"--output {out}: would overwrite the input weights")
        return out, None
    if out.suffix.lower() == ".onnx":
        raise YoloPruneError(f"--output {out}: with --format engine name the engine file (e.g. .engine)")
    return out.with_name(out.name + ".onnx"), out


def check_args(args: argparse.Namespace) -> tuple["ExportOptions", Path, Path | None]:
    """Options, output paths and input files, all checked before the model is loaded."""
    check_model_source(args)
    opts = export_options(args)
    onnx_path, engine_path = output_paths(args)
    for path in (onnx_path, engine_path):
        if path is not None:
            output_file(path, "--output", inputs=[args.weights], example=path.name)
    if args.data is not None:
        input_file(args.data, "--data")
    if args.calib_images is not None:
        input_dir(args.calib_images, "--calib-images")
    return opts, onnx_path, engine_path


def engine_options(args: argparse.Namespace) -> "EngineOptions":
    """EngineOptions from the flags."""
    from yolo_prune.export.tensorrt import EngineOptions

    explicit = bool(args.qdq)
    return EngineOptions(fp16=args.fp16, int8=args.int8, explicit=explicit, calib_cache=args.calib_cache,
                         calib_images=None if explicit else args.calib_images, dla_core=args.dla,
                         workspace_mib=args.workspace or 2048, timing_cache=args.timing_cache)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from yolo_prune.export.onnx_export import export_onnx, max_stride

    opts, onnx_path, engine_path = check_args(args)
    model, qat = load_for_export(args)
    if not hasattr(model, "detect"):
        return _classifier(args, model, onnx_path)
    if qat is not None and args.format == "engine" and args.int8:
        args.qdq = True  # the QAT scales are the quantization: an explicit (Q/DQ) engine
    eopts = engine_options(args) if args.format == "engine" else None
    stride = max_stride(model)
    sizes = opts.img_size if args.img_size else (getattr(model, "default_img_size", 640),) * 2
    opts = replace(opts, img_size=tuple(fit_img(v, stride, "--img-size") for v in sizes))
    if args.format == "vitis-int8":
        needs_calibration(args, qat)
        return vitis_qat(args, model, qat, opts, onnx_path) if qat is not None else _vitis(args, model, opts, onnx_path)
    if args.int8 and (args.format == "onnx" or args.qdq):
        files = calibration_source(args, args.calib_count or 100) if needs_calibration(args, qat) else []
        meta = trt_qdq(args, model, qat, opts, onnx_path, files)
        if engine_path is not None:
            _engine(onnx_path, engine_path, eopts, opts, meta)
        return 0
    if opts.max_wh is not None and opts.max_wh < 2 * max(opts.img_size):
        print(f"note: --max-wh {opts.max_wh} < 2 x the image side: boxes reaching past the image edge can overlap "
              "boxes of the next class after the class offset (YOLOv7's PyTorch NMS uses 7680)")
    result = export_onnx(model, onnx_path, opts)
    b = "batch" if opts.dynamic_batch or opts.dynamic else opts.batch_size
    hw = "height, width" if opts.dynamic else f"{opts.img_size[0]}, {opts.img_size[1]}"
    print(f"exported {opts.mode} ONNX (opset {opts.opset}, input {result.input_name} [{b}, 3, {hw}], "
          f"outputs {', '.join(result.outputs)}) -> {onnx_path}")
    print(result.report)
    if engine_path is not None:
        _engine(onnx_path, engine_path, eopts, opts, result.metadata)
    return 0


def _classifier(args: argparse.Namespace, model, path: Path) -> int:
    """A classification CNN: logits ONNX at its own input size (detector-only flags are refused)."""
    from yolo_prune.export.classifier import export_classifier_onnx

    detector_only = [f for f, on in (("--format", args.format != "onnx"), ("--grid", args.grid),
                                     ("--end2end", args.end2end), ("--fp16", args.fp16),
                                     ("--dynamic-batch", args.dynamic_batch), ("--dynamic", args.dynamic),
                                     ("--simplify", args.simplify)) if on]
    if detector_only:
        raise YoloPruneError(f"{', '.join(detector_only)}: detector export options; a classifier exports plain "
                             f"ONNX (images -> logits)")
    worst = export_classifier_onnx(model, path, args.batch_size, args.opset or 12)
    print(f"exported classifier ONNX (input images [{args.batch_size}, {model.ch_in}, {model.img_size}, "
          f"{model.img_size}], output logits [{args.batch_size}, {model.nc}]) -> {path}; ONNX Runtime agrees with "
          f"PyTorch to {worst:.1e}")
    return 0


def _engine(onnx_path: Path, engine_path: Path, eopts: "EngineOptions", opts: "ExportOptions", meta: dict) -> None:
    """Build the engine here, or raise TensorRTUnavailable carrying the trtexec command for the target."""
    from yolo_prune.export.onnx_export import INPUT_NAME
    from yolo_prune.export.tensorrt import (InputShape, TensorRTUnavailable, build_engine, build_warnings,
                                            import_tensorrt, unavailable_message)

    shape = InputShape(INPUT_NAME, opts.img_size, opts.batch_size, opts.dynamic_batch)
    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        raise TensorRTUnavailable(unavailable_message(onnx_path, engine_path, eopts, shape, str(exc))) from None
    for warning in build_warnings(eopts):
        print(f"warning: {warning}")
    built = build_engine(onnx_path, engine_path, eopts, shape, meta)
    print(f"built TensorRT {built['tensorrt']} engine -> {engine_path} (bindings and version in "
          f"{engine_path.with_suffix('.json')})")


def calibration_source(args: argparse.Namespace, limit: int) -> list[Path]:
    """Calibration image files from --data (its --calib-split) or --calib-images; errors name the flag."""
    if args.calib_images is not None:
        from yolo_prune.data.calibration import calibration_files

        return calibration_files(args.calib_images, limit)
    from yolo_prune.pipeline.evaluation import DataSettings, split_images

    paths, _ = split_images(DataSettings(args.data, args.calib_split, max_images=limit))
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise YoloPruneError(f"--data {args.data}: {len(missing)} calibration image(s) missing, e.g. {missing[0]}")
    return [Path(p) for p in paths]


def _vitis(args: argparse.Namespace, model, opts: "ExportOptions", path: Path) -> int:
    """Quantize with AMD Quark, check, report what the DPU leaves on the CPU."""
    from yolo_prune.export.vitis import VitisOptions, export_vitis_int8

    vopts = VitisOptions(calib_count=args.calib_count or 100, keep_head_float=args.keep_head_float,
                         target=args.dpu or "DPUCZDX8G", split_head=not args.no_split_head,
                         algorithms=tuple(args.quark_algo or ()), calib_method=args.calib_method or "minmse")
    files = calibration_source(args, vopts.calib_count)
    result = export_vitis_int8(model, path, opts.img_size, files, vopts)
    outputs = (f"conv0_box..conv{model.detect.nl - 1}_cls = box / objectness / class head convs" if vopts.split_head
               else f"conv0..conv{model.detect.nl - 1} = head convs")
    print(f"exported Vitis AI INT8 QDQ ONNX (opset 13, input images [1, 3, {opts.img_size[0]}, {opts.img_size[1]}], "
          f"outputs {outputs} before decoding) -> {path}")
    print(result)
    for warning in result.warnings:
        print(f"warning: {warning}")
    if not vopts.keep_head_float and not vopts.split_head:
        print("note: the head's output convs share one power-of-two scale per level for box, objectness and class "
              "logits; without --no-split-head each group gets its own conv and scale (see BENCHMARKS.md)")
    print(f"next: yolo-prune test --weights {path} --data DATA.yaml --img {opts.img_size[0]}   (mAP of the INT8 "
          "model); deploy/vitis/compile.sh for the board")
    return 0
