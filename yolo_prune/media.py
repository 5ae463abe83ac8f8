"""Images in, annotated images out, for the deployment runners (deploy/jetson, deploy/vitis).

Frames come from an image, a folder, a video, a camera index or a GStreamer pipeline (``cv2`` imported only
for video); detections are mapped back from the letterboxed network input with the evaluation code.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def add_frame_arguments(p: argparse.ArgumentParser, out: str, source_required: bool = True,
                        nms_scope: str = "") -> None:
    """The runners' shared flags: --source, --out, NMS thresholds (``nms_scope`` says when they apply), --max-frames,
    --no-save; one definition so deploy/jetson and deploy/vitis take the same flags with the same defaults."""
    p.add_argument("--source", required=source_required, default=None,
                   help="image, folder, video file, camera index or GStreamer pipeline")
    p.add_argument("--out", default=out, help=f"folder for annotated images/videos (default {out})")
    p.add_argument("--conf-thres", type=float, default=0.25, help=f"score threshold (default 0.25){nms_scope}")
    p.add_argument("--iou-thres", type=float, default=0.45, help=f"NMS IoU threshold (default 0.45){nms_scope}")
    p.add_argument("--max-det", type=int, default=300, help=f"detections per image (default 300){nms_scope}")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames of a video/camera (0: all)")
    p.add_argument("--no-save", action="store_true", help="only print detections and FPS")


def to_original(dets: np.ndarray, net_hw: tuple[int, int], img_hw: tuple[int, int], ratio_pad: tuple) -> np.ndarray:
    """Map [n, 6] boxes from the letterboxed network input back to the original image (clipped)."""
    from yolo_prune.data.letterbox import scale_boxes

    return scale_boxes(dets, net_hw, img_hw, ratio_pad).astype(np.float32)


def draw(img_rgb: np.ndarray, dets: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """A copy of the image with boxes and "name score" labels."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img_rgb)
    pen = ImageDraw.Draw(im)
    for x1, y1, x2, y2, score, cls in dets.tolist():
        colour = tuple(int(c) for c in np.random.default_rng(int(cls)).integers(64, 256, 3))
        label = f"{names[int(cls)] if int(cls) < len(names) else int(cls)} {score:.2f}"
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        pen.text((x1 + 2, max(0.0, y1 - 11)), label, fill=colour)
    return np.asarray(im)


def frames(source: str) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(name, RGB frame, is_stream) from an image, a folder of images, a video, a camera index or a pipeline.
    Images are decoded as evaluation decodes them (EXIF orientation applied, 16-bit greyscale's high byte)."""
    from yolo_prune.data.decode import load_image_rgb

    path = Path(source)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        for f in files:
            yield f.name, load_image_rgb(str(f)), False
        return
    import cv2

    cap = cv2.VideoCapture(int(source)) if source.isdigit() else (
        cv2.VideoCapture(source, cv2.CAP_GSTREAMER) if "!" in source else cv2.VideoCapture(source))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    name = f"camera{source}.mp4" if source.isdigit() else f"{path.stem}.mp4"
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        yield name, bgr[..., ::-1].copy(), True
    cap.release()


class Writer:
    """Saves annotated images as files and video/camera frames into one .mp4 per source."""

    def __init__(self, out: Path):
        self.out, self.videos = out, {}
        out.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, img_rgb: np.ndarray, stream: bool, fps: float = 30.0) -> None:
        if not stream:
            from PIL import Image

            Image.fromarray(img_rgb).save(self.out / name)
            return
        import cv2

        if name not in self.videos:
            h, w = img_rgb.shape[:2]
            self.videos[name] = cv2.VideoWriter(str(self.out / name), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        self.videos[name].write(img_rgb[..., ::-1])

    def close(self) -> None:
        for v in self.videos.values():
            v.release()




def run_on_frames(detect: Callable[[np.ndarray], np.ndarray], source: str, names: Sequence[str], out: str | None,
                  max_frames: int = 0) -> int:
    """Detect on every frame of ``source``, print counts and FPS, save annotated frames under ``out`` (None: don't).

    ``detect`` maps an RGB frame to [n, 6] detections in its pixels; returns the number of frames processed.
    """
    import time

    writer = None if out is None else Writer(Path(out))
    t0, n = time.perf_counter(), 0
    for n, (name, img, stream) in enumerate(frames(source), start=1):
        dets = detect(img)
        print(f"{name}: {len(dets)} detections, {n / (time.perf_counter() - t0):.1f} FPS (incl. pre/post-processing)")
        if writer is not None:
            writer.save(name, draw(img, dets, names), stream)
        if stream and max_frames and n >= max_frames:
            break
    if writer is not None:
        writer.close()
        print(f"saved to {out}")
    return n
