"""The INT8 paths of `yolo-prune export`: Vitis AI DPU graphs (AMD Quark PTQ, or a `train --qat dpu` checkpoint)
and TensorRT explicit-quantization Q/DQ ONNX (yolo-prune PTQ, or a `train --qat tensorrt` checkpoint)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolo_prune.cli.common import positive_int
from yolo_prune.errors import YoloPruneError

if TYPE_CHECKING:
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.quant.prepare import Prepared

CALIB_FLAGS = {"data": "--data", "calib_count": "--calib-count", "calib_images": "--calib-images"}
VITIS_FLAGS = {"keep_head_float": "--keep-head-float", "dpu": "--dpu", "no_split_head": "--no-split-head",
               "quark_algo": "--quark-algo", "calib_method": "--calib-method"}


def register_vitis_flags(p: argparse.ArgumentParser) -> None:
    """Flags of --format vitis-int8 and the calibration flags shared with the TensorRT Q/DQ path."""
    from yolo_prune.export.vitis import CALIB_METHODS, QUARK_ALGORITHMS
    from yolo_prune.export.vitis_checks import DPU_MAXPOOL_KERNEL

    g = p.add_argument_group("INT8: Vitis AI (--format vitis-int8) and TensorRT Q/DQ (--int8)")
    g.add_argument("--data", default=None, help="data YAML whose --calib-split images calibrate (or --calib-images)")
    g.add_argument("--calib-split", default="train", help="split of --data to calibrate on (default train)")
    g.add_argument("--calib-count", type=positive_int, default=None, help="calibration images (default 100)")
    g.add_argument("--keep-head-float", action="store_true",
                   help="vitis-int8: leave the detection head's output convs in float (they then run on the CPU)")
    g.add_argument("--no-split-head", action="store_true",
                   help="vitis-int8: one conv (one output scale) per head level instead of one per box / obj / cls")
    g.add_argument("--quark-algo", nargs="+", choices=QUARK_ALGORITHMS, default=None, metavar="ALGO",
                   help=f"vitis-int8: AMD Quark PTQ algorithms to add ({', '.join(QUARK_ALGORITHMS)})")
    g.add_argument("--calib-method", choices=CALIB_METHODS, default=None,
                   help="vitis-int8: Quark's power-of-two calibration (default minmse)")
    g.add_argument("--quantizer", choices=("yolo-prune", "modelopt"), default=None,
                   help="--int8 (TensorRT Q/DQ) PTQ: yolo-prune's MSE calibration (default) or NVIDIA ModelOpt's "
                   "INT8_DEFAULT_CFG (extra modelopt)")
    g.add_argument("--dpu", choices=tuple(DPU_MAXPOOL_KERNEL), default=None,
                   help="DPU family for the report of CPU-bound operators (default DPUCZDX8G: Zynq US+ / Kria)")


def _given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    return [flag for key, flag in flags.items() if getattr(args, key, None) not in (None, False)]


def check_int8_flags(args: argparse.Namespace) -> None:
    """Each INT8 flag only where it takes effect; YoloPruneError (exit 2) otherwise."""
    if args.int8 and args.format not in ("engine", "onnx"):
        raise YoloPruneError("--int8: only valid with --format engine or --format onnx (Q/DQ for TensorRT)")
    if args.qdq and not (args.format == "engine" and args.int8):
        raise YoloPruneError("--qdq: only valid with --format engine --int8")
    if args.quantizer and not (args.int8 and (args.format == "onnx" or args.qdq)):
        raise YoloPruneError("--quantizer: only valid with --format onnx --int8 or --format engine --int8 --qdq")
    used = _given(args, VITIS_FLAGS)
    if used and args.format != "vitis-int8":
        raise YoloPruneError(f"{', '.join(used)}: only valid with --format vitis-int8")
    explicit = args.format == "onnx" and args.int8 or args.qdq
    calib = [f for f in _given(args, CALIB_FLAGS) if not (f == "--calib-images" and args.format == "engine")]
    if calib and not (explicit or args.format == "vitis-int8"):
        raise YoloPruneError(f"{', '.join(calib)}: only valid with --format vitis-int8, --format onnx --int8 or "
                             "--format engine --int8 --qdq")
    if args.format == "onnx" and args.int8:
        bad = [f for f, on in (("--fp16", args.fp16), ("--simplify", args.simplify)) if on]
        if bad:
            raise YoloPruneError(f"{', '.join(bad)}: not valid with --int8 (the Q/DQ graph is float32 and must "
                                 "keep every Q/DQ node)")


def load_for_export(args: argparse.Namespace) -> tuple[Any, "Prepared | None"]:
    """(float model, its fake-quantized twin when --weights is a `train --qat` checkpoint, else None)."""
    from yolo_prune.cli.common import load_model_from_args

    if not getattr(args, "weights", None):
        return load_model_from_args(args), None
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.quant.state import restore, stored_scheme

    loaded = load_checkpoint(args.weights)
    if stored_scheme(loaded.extra) is None:
        return loaded.model, None
    return loaded.model, restore(loaded.model, loaded.extra, args.weights)


def needs_calibration(args: argparse.Namespace, qat: "Prepared | None") -> bool:
    """Whether this INT8 export calibrates (PTQ); a QAT checkpoint brings its scales, calibration flags then error."""
    if qat is None:
        if args.data is None and args.calib_images is None:
            raise YoloPruneError(f"--format {args.format}{' --int8' if args.int8 else ''} needs calibration images: "
                                 "give --data YAML (its --calib-split images) or --calib-images FOLDER")
        if args.data is not None and args.calib_images is not None:
            raise YoloPruneError("give --data or --calib-images, not both")
        return True
    given = _given(args, CALIB_FLAGS)
    if given:
        raise YoloPruneError(f"{', '.join(given)}: {args.weights} is a quantization-aware-trained checkpoint; it "
                             "carries its own scales (no calibration)")
    return False


def vitis_qat(args: argparse.Namespace, model: Any, qat: "Prepared", opts: "ExportOptions", path: Path) -> int:
    """Write the DPU graph of a `train --qat dpu` checkpoint (no Quark, no calibration)."""
    from yolo_prune.export.qdq import export_qdq
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.export.vitis_checks import dpu_warnings

    if qat.scheme.name != "dpu":
        raise YoloPruneError(f"{args.weights} was trained with --qat {qat.scheme.name}; export it with --int8 "
                             "(--format onnx or engine)")
    if args.keep_head_float or args.quark_algo or args.no_split_head or args.calib_method:
        raise YoloPruneError("--keep-head-float, --no-split-head, --quark-algo, --calib-method: PTQ settings; a QAT "
                             "checkpoint is exported as trained")
    eopts = ExportOptions(img_size=opts.img_size, conv_maps=True, split_head=qat.scheme.split_head,
                          opset=max(13, opts.opset))
    result = export_qdq(qat.model, path, eopts, "dpu", {"tool": "yolo-prune", "source": "qat",
                                                         "scheme": qat.scheme.to_dict()})
    print(f"exported Vitis AI INT8 QDQ ONNX from the QAT checkpoint (opset {eopts.opset}, outputs "
          f"{', '.join(result.metadata['outputs'])}) -> {path}")
    print(result)
    for warning in dpu_warnings(qat.model, args.dpu or "DPUCZDX8G"):
        print(f"warning: {warning}")
    return 0


def trt_qdq(args: argparse.Namespace, model: Any, qat: "Prepared | None", opts: "ExportOptions", path: Path,
            calib_files: list[Path]) -> dict[str, Any]:
    """Write the TensorRT explicit-quantization Q/DQ ONNX (PTQ on ``calib_files`` or the QAT scales); returns
    its metadata."""
    import dataclasses

    from yolo_prune.export.qdq import export_qdq

    if qat is not None and qat.scheme.name != "tensorrt":
        raise YoloPruneError(f"{args.weights} was trained with --qat {qat.scheme.name}; export it with "
                             "--format vitis-int8")
    if qat is not None and args.quantizer:
        raise YoloPruneError(f"--quantizer: {args.weights} is quantization-aware trained; nothing to calibrate")
    meta: dict[str, Any] = {"tool": args.quantizer or "yolo-prune", "source": "qat" if qat else "ptq"}
    if qat is not None:
        qmodel, meta["scheme"] = qat.model, qat.scheme.to_dict()
    elif args.quantizer == "modelopt":
        from yolo_prune.quant.modelopt import modelopt_ptq

        qmodel, meta["calib_images"] = modelopt_ptq(model, calib_files, opts.img_size)
        meta["config"] = "modelopt INT8_DEFAULT_CFG (per-channel weights, per-tensor conv inputs, max calibration)"
        print(f"calibrated with NVIDIA ModelOpt on {meta['calib_images']} images")
    else:
        from yolo_prune.quant.ptq import calibrated

        prepared, report = calibrated(model, "tensorrt", calib_files, opts.img_size, progress=True)
        qmodel, meta["calib_images"], meta["scheme"] = prepared.model, report.images, prepared.scheme.to_dict()
        print(report)
    opts = dataclasses.replace(opts, opset=max(13, opts.opset), fp16=False)
    result = export_qdq(qmodel, path, opts, "tensorrt", meta, propagate=args.quantizer != "modelopt")
    print(f"exported TensorRT Q/DQ ONNX ({opts.mode}, opset {opts.opset}, per-channel int8 weights, per-tensor "
          f"activations) -> {path}")
    print(result)
    return result.metadata
