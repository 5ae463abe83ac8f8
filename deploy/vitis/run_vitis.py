"""Run a yolo-prune Vitis AI INT8 model on a DPU board through ONNX Runtime's Vitis AI Execution Provider.

    python3 run_vitis.py --model yolov7-tiny.int8.onnx --source images/ --out runs/vitis
    python3 run_vitis.py --model yolov7-tiny.int8.onnx --source 0 --max-frames 300 --no-save   # camera, FPS
    python3 run_vitis.py --model yolov7-tiny.int8.onnx --compile-only --cache-dir compiled --cache-key m
    python3 run_vitis.py --model yolov7-tiny.int8.onnx --source images/ --cpu     # CPU EP: check on a PC

The DPU runs the graph up to the detection head's convs; reshape, box decoding (sigmoid, grid, anchors) and
NMS run on the CPU with the code yolo_prune evaluates with (imported, not copied): letterbox pre-processing,
``OrtDetector`` decoding from the model's stored strides and anchors, ``non_max_suppression``, box mapping.
The Vitis AI EP compiles the DPU subgraphs when the session is created (minutes, once) and caches them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

VITIS_EP = "VitisAIExecutionProvider"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from yolo_prune.media import add_frame_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="MODEL.int8.onnx from yolo-prune export --format vitis-int8")
    p.add_argument("--config-file", default="/etc/vaip_config.json", help="Vitis AI EP vaip_config.json")
    p.add_argument("--cache-dir", default=None, help="Vitis AI EP cache folder for the compiled model")
    p.add_argument("--cache-key", default=None, help="cache key (default: the model's md5)")
    p.add_argument("--cpu", action="store_true", help="ONNX Runtime CPU provider instead of the DPU (for checks)")
    p.add_argument("--compile-only", action="store_true", help="create the session (compiles and caches), exit")
    add_frame_arguments(p, "runs/vitis", source_required=False)
    args = p.parse_args(argv)
    if args.source is None and not args.compile_only:
        p.error("--source is required unless --compile-only")
    return args


def providers(args: argparse.Namespace) -> list[Any]:
    """ONNX Runtime providers: the Vitis AI EP with its options, or the CPU provider with --cpu."""
    if args.cpu:
        return ["CPUExecutionProvider"]
    options = {"config_file": args.config_file}
    if args.cache_dir:
        options["cacheDir"] = str(args.cache_dir)
    if args.cache_key:
        options["cacheKey"] = str(args.cache_key)
    return [(VITIS_EP, options), "CPUExecutionProvider"]


def detect(detector: Any, img_rgb: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """One frame -> [n, 6] (x1, y1, x2, y2, score, class) in the frame's pixels."""
    import torch

    from yolo_prune.data.letterbox import preprocess
    from yolo_prune.engine.postprocess import non_max_suppression
    from yolo_prune.media import to_original

    x, ratio, pad = preprocess(img_rgb, detector.img_size, int(max(detector.meta["stride"])))
    with torch.no_grad():
        pred, _ = detector(x)
    dets = non_max_suppression(pred, args.conf_thres, args.iou_thres, max_det=args.max_det)[0].numpy()
    return to_original(dets, detector.img_size, img_rgb.shape[:2], (ratio, pad))


def load(args: argparse.Namespace) -> Any:
    """The OrtDetector of --model on the chosen providers; exits 2 with a message when it cannot be made."""
    from yolo_prune.errors import YoloPruneError
    from yolo_prune.export.ort_model import OrtDetector

    if not Path(args.model).is_file():
        print(f"run_vitis.py: error: no such model file: {args.model}", file=sys.stderr)
        raise SystemExit(2)
    import onnxruntime as ort

    if not args.cpu and VITIS_EP not in ort.get_available_providers():
        print(f"run_vitis.py: error: {VITIS_EP} is not available in this onnxruntime: install the Vitis AI "
              "onnxruntime package on the board (see deploy/vitis/README.md), or pass --cpu", file=sys.stderr)
        raise SystemExit(2)
    try:
        detector = OrtDetector(args.model, providers=providers(args))
    except YoloPruneError as exc:
        print(f"run_vitis.py: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if detector.meta.get("options", {}).get("mode") != "conv":
        print(f"run_vitis.py: note: {args.model} is not a vitis-int8 export; running it anyway", file=sys.stderr)
    return detector


def main(argv: Sequence[str] | None = None) -> int:
    from yolo_prune.media import run_on_frames

    args = parse_args(argv)
    started = time.perf_counter()
    try:
        detector = load(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    print(f"session ready in {time.perf_counter() - started:.1f} s on {detector.session.get_providers()[0]}")
    if args.compile_only:
        return 0
    run_on_frames(lambda img: detect(detector, img, args), args.source, detector.names,
                  None if args.no_save else args.out, args.max_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
