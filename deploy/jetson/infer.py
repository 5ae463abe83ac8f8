"""Run a yolo-prune TensorRT engine on images, videos or a camera; draw and save the detections (Jetson).

    python3 deploy/jetson/infer.py --engine yolov7-tiny.engine --source images/ --out runs/jetson
    python3 deploy/jetson/infer.py --engine yolov7-tiny.engine --source 0            # USB camera 0
    python3 deploy/jetson/infer.py --engine yolov7-tiny.engine --source clip.mp4

The engine needs its JSON (written by `yolo-prune export --format engine` or build_engine.sh); engines built by
another TensorRT version are refused. Pre-processing (letterbox), NMS and box mapping are imported from
yolo_prune, exactly what evaluation uses. End-to-end engines (--end2end) carry their NMS; --grid engines are
post-processed with yolo_prune's NMS. ``tensorrt``, ``cuda-python``, ``torch`` and ``cv2`` are imported lazily.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yolo_prune.media import add_frame_arguments, draw, frames, run_on_frames, to_original  # noqa: F401 - shared with deploy/vitis


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", required=True, help="TensorRT engine (its .json must sit next to it)")
    add_frame_arguments(p, "runs/jetson", nms_scope=", --grid engines")
    return p.parse_args(argv)


def _cudart() -> Any:
    """cuda-python's runtime module (``cuda.cudart`` in 11.x/12.x, ``cuda.bindings.runtime`` later)."""
    try:
        from cuda import cudart
    except ImportError:
        from cuda.bindings import runtime as cudart
    return cudart


def _ok(result: tuple) -> Any:
    """Unwrap a cuda-python ``(err, value...)`` tuple, raising on an error code."""
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TrtDetector:
    """An engine with device buffers: ``run(batch [B, 3, H, W]) -> {output name: array}`` (TensorRT >= 8.5 API)."""

    def __init__(self, engine_path: str | Path):
        from yolo_prune.export.tensorrt import load_engine

        self.engine, self.meta = load_engine(engine_path)  # clear errors: no TensorRT, no JSON, other version
        import tensorrt as trt

        self.cudart = _cudart()
        self.context = self.engine.create_execution_context()
        self.stream = _ok(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input = next(n for n in names if is_input[n])
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = list(self.engine.get_tensor_shape(self.input))
        self.batch = 1 if shape[0] < 0 else int(shape[0])  # dynamic batch: one frame at a time
        self.img_size = (int(shape[2]), int(shape[3]))
        self.device: dict[str, int] = {}  # name -> device pointer
        self.sizes: dict[str, int] = {}  # name -> bytes allocated

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name`` (grown when needed)."""
        if nbytes > self.sizes.get(name, 0):
            if name in self.device:
                _ok(self.cudart.cudaFree(self.device[name]))
            self.device[name], self.sizes[name] = _ok(self.cudart.cudaMalloc(nbytes)), nbytes
        return self.device[name]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Copy in, execute, copy out (synchronous)."""
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        x = np.ascontiguousarray(batch, dtype=self.dtypes[self.input])
        self.context.set_input_shape(self.input, x.shape)
        ptr = self._buffer(self.input, x.nbytes)
        _ok(self.cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        self.context.set_tensor_address(self.input, ptr)
        host = {n: np.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n]) for n in self.outputs}
        for n, arr in host.items():
            self.context.set_tensor_address(n, self._buffer(n, max(arr.nbytes, 1)))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for n, arr in host.items():
            _ok(self.cudart.cudaMemcpyAsync(arr.ctypes.data, self.device[n], arr.nbytes, d2h, self.stream))
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return host


def detections(outputs: dict[str, np.ndarray], mode: str, conf: float, iou: float, max_det: int) -> list[np.ndarray]:
    """Engine outputs -> per image [n, 6] (x1, y1, x2, y2, score, class) in network-input pixels."""
    if mode in ("trt_nms", "ort_nms"):
        rows = np.concatenate([outputs["det_boxes"].astype(np.float32),
                               outputs["det_scores"][..., None].astype(np.float32),
                               outputs["det_classes"][..., None].astype(np.float32)], 2)
        return [r[: int(n)] for r, n in zip(rows, outputs["num_dets"].reshape(-1))]
    if mode != "grid":
        raise SystemExit(f"engine mode {mode!r}: export with --grid or --end2end for deployment")
    import torch

    from yolo_prune.engine.postprocess import non_max_suppression

    pred = torch.from_numpy(outputs["output"].astype(np.float32))
    return [d.numpy() for d in non_max_suppression(pred, conf, iou, max_det=max_det)]


def detect(det: TrtDetector, img_rgb: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """One frame -> [n, 6] detections in the frame's pixels."""
    from yolo_prune.data.letterbox import preprocess

    x, ratio, pad = preprocess(img_rgb, det.img_size, int(max(det.meta["export"]["stride"])))
    batch = np.zeros((det.batch, *x.shape[1:]), dtype=np.float32)  # a static batch is padded with zeros
    batch[0] = x[0].numpy()
    mode = det.meta["export"]["options"]["mode"]
    dets = detections(det.run(batch), mode, args.conf_thres, args.iou_thres, args.max_det)[0]
    return to_original(dets, det.img_size, img_rgb.shape[:2], (ratio, pad))


def main(argv: Sequence[str] | None = None) -> int:
    from yolo_prune.errors import YoloPruneError

    args = parse_args(argv)
    try:
        det = TrtDetector(args.engine)
    except YoloPruneError as exc:
        print(f"infer.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    names = det.meta["export"].get("names", [])
    run_on_frames(lambda img: detect(det, img, args), args.source, names, None if args.no_save else args.out,
                  args.max_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
