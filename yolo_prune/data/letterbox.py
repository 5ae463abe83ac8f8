"""Letterbox resizing and box mapping, shared by training, evaluation, export calibration and deployment.

Every function here is pure (inputs are never modified) and deterministic: the same image always gives
the same bytes, so calibration and deployment see exactly what evaluation saw.
Images are HWC RGB ``uint8`` numpy arrays; shapes are ``(h, w)``; boxes are pixel ``xyxy`` unless named
otherwise (``xywhn`` = centre x, centre y, width, height normalised to 0..1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, TypeVar, Union

import numpy as np

if TYPE_CHECKING:
    import torch

ShapeLike = Union[int, Sequence[int]]
Boxes = TypeVar("Boxes")  # numpy array or torch tensor; torch is imported only when used (keeps imports light)

LINEAR = "linear"  # cv2.INTER_LINEAR: YOLOv7's interpolation for enlarging, augmenting and letterboxing
AREA = "area"  # cv2.INTER_AREA: YOLOv7's interpolation for shrinking images it evaluates


def as_hw(shape: ShapeLike) -> tuple[int, int]:
    """Normalise an int or ``(h, w)`` sequence to an ``(h, w)`` tuple of ints."""
    if isinstance(shape, (int, np.integer)):
        return int(shape), int(shape)
    h, w = shape
    return int(h), int(w)


def round_up_to_stride(size: int, stride: int) -> int:
    """The smallest multiple of ``stride`` >= ``size``: YOLOv7's rule for image sizes (``check_img_size``)."""
    return -(-int(size) // int(stride)) * int(stride)


def resize(img: np.ndarray, size_wh: tuple[int, int], interpolation: str = LINEAR) -> np.ndarray:
    """Resize an HWC uint8 image to ``(w, h)`` with OpenCV, as YOLOv7 does; returns the input if unchanged.

    The pixels matter: test.py's P and R are read at the best-F1 confidence, which moves with small input
    changes (Pillow's antialiased shrinking shifted them by several points on a real validation set).
    """
    if (img.shape[1], img.shape[0]) == tuple(size_wh):
        return img
    import cv2

    flag = {LINEAR: cv2.INTER_LINEAR, AREA: cv2.INTER_AREA}[interpolation]
    out = cv2.resize(np.ascontiguousarray(img), tuple(int(v) for v in size_wh), interpolation=flag)
    return out if out.ndim == img.ndim else out[..., None]  # OpenCV drops a single channel axis


def letterbox(
    img: np.ndarray,
    new_shape: ShapeLike = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping aspect ratio and pad to ``new_shape`` (h, w) exactly as YOLOv7.

    Returns ``(img HWC uint8, (ratio_w, ratio_h), (dw, dh))`` where ``dw``/``dh`` are the half-pads
    (left/top pad is ``round(dw - 0.1)``). ``auto`` pads only to a multiple of ``stride``; ``scaleup=False``
    never enlarges (better mAP on val).
    """
    h0, w0 = img.shape[:2]
    nh, nw = as_hw(new_shape)
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    dw, dh = nw - new_w, nh - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    img = resize(img, (new_w, new_h))
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = np.empty((new_h + top + bottom, new_w + left + right, img.shape[2]), dtype=img.dtype)
    out[...] = np.asarray(color, dtype=img.dtype)[: img.shape[2]]
    out[top : top + new_h, left : left + new_w] = img
    return out, (r, r), (dw, dh)


def preprocess(
    img_rgb: np.ndarray, img_size: ShapeLike, stride: int = 32, *, auto: bool = False
) -> tuple["torch.Tensor", tuple[float, float], tuple[float, float]]:
    """Letterbox an HWC RGB uint8 image for inference; returns (float tensor [1, 3, H, W] in 0..1, ratio, (dw, dh)).

    ``auto=False`` (default) gives the fixed ``img_size`` shape that exported/static models need; ``auto=True``
    gives YOLOv7 detect.py's minimal stride-multiple rectangle.
    """
    if img_rgb.ndim != 3 or img_rgb.shape[2] != 3 or img_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HWC RGB uint8 image, got shape {img_rgb.shape} dtype {img_rgb.dtype}")
    import torch

    img, ratio, pad = letterbox(img_rgb, img_size, auto=auto, scaleup=True, stride=stride)
    tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
    return tensor.unsqueeze(0), ratio, pad


def scale_boxes(
    boxes_xyxy: Boxes,
    from_shape: Sequence[int],
    to_shape: Sequence[int],
    ratio_pad: tuple[Sequence[float] | float, Sequence[float]] | None = None,
) -> Boxes:
    """Map pixel xyxy boxes ``[..., >=4]`` from the letterboxed image (``from_shape`` h, w) back to the original
    image (``to_shape`` h0, w0) and clip to it; returns a new array/tensor (extra columns are kept).

    ``ratio_pad`` is ``(ratio, (dw, dh))`` as in YOLOv7: ``shapes[1]`` from the dataset, whose ratio is
    ``(gain_y, gain_x)``, or ``(ratio, pad)`` from :func:`preprocess` (both gains equal). Unlike YOLOv7, which
    uses ``ratio[0]`` for both axes, x uses ``ratio[1]`` (exact when resizing truncated one side). Without
    ``ratio_pad`` the gain and pad are recomputed from the shapes.
    """
    if ratio_pad is None:
        gain_y = gain_x = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = ((from_shape[1] - to_shape[1] * gain_x) / 2, (from_shape[0] - to_shape[0] * gain_y) / 2)
    else:
        ratio, pad = ratio_pad
        gain_y, gain_x = (float(ratio),) * 2 if np.ndim(ratio) == 0 else (float(ratio[0]), float(ratio[1]))
    if _is_tensor(boxes_xyxy):
        out = boxes_xyxy.clone() if boxes_xyxy.is_floating_point() else boxes_xyxy.float()
    else:
        out = np.array(boxes_xyxy, dtype=np.float64)
    out[..., [0, 2]] = (out[..., [0, 2]] - pad[0]) / gain_x
    out[..., [1, 3]] = (out[..., [1, 3]] - pad[1]) / gain_y
    return clip_boxes(out, to_shape)


def clip_boxes(boxes_xyxy: Boxes, shape: Sequence[int]) -> Boxes:
    """Clip pixel xyxy boxes ``[..., >=4]`` in place to an image of ``shape`` (h, w); returns them."""
    h, w = float(shape[0]), float(shape[1])
    if _is_tensor(boxes_xyxy):
        boxes_xyxy[..., [0, 2]] = boxes_xyxy[..., [0, 2]].clamp(0, w)
        boxes_xyxy[..., [1, 3]] = boxes_xyxy[..., [1, 3]].clamp(0, h)
    else:
        boxes_xyxy[..., [0, 2]] = boxes_xyxy[..., [0, 2]].clip(0, w)
        boxes_xyxy[..., [1, 3]] = boxes_xyxy[..., [1, 3]].clip(0, h)
    return boxes_xyxy


def _is_tensor(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "clamp")


def xywhn_to_xyxy(xywhn: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Convert normalised ``[n, 4]`` cx, cy, w, h to pixel xyxy in a ``w`` x ``h`` image offset by the pads."""
    out = np.empty_like(xywhn, dtype=np.float64)
    out[:, 0] = w * (xywhn[:, 0] - xywhn[:, 2] / 2) + padw
    out[:, 1] = h * (xywhn[:, 1] - xywhn[:, 3] / 2) + padh
    out[:, 2] = w * (xywhn[:, 0] + xywhn[:, 2] / 2) + padw
    out[:, 3] = h * (xywhn[:, 1] + xywhn[:, 3] / 2) + padh
    return out


def xyxy_to_xywhn(xyxy: np.ndarray, w: float, h: float) -> np.ndarray:
    """Convert pixel ``[n, 4]`` xyxy boxes in a ``w`` x ``h`` image to normalised cx, cy, w, h."""
    out = np.empty_like(xyxy, dtype=np.float64)
    out[:, 0] = (xyxy[:, 0] + xyxy[:, 2]) / 2 / w
    out[:, 1] = (xyxy[:, 1] + xyxy[:, 3]) / 2 / h
    out[:, 2] = (xyxy[:, 2] - xyxy[:, 0]) / w
    out[:, 3] = (xyxy[:, 3] - xyxy[:, 1]) / h
    return out
