"""Export settings: one validated, serialisable dataclass (the library never sees argparse)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from yolo_prune.data.letterbox import as_hw as letterbox_hw
from yolo_prune.errors import YoloPruneError

MODES = ("raw", "grid", "trt_nms", "ort_nms")
MIN_OPSET = 11  # NonMaxSuppression, Resize


def max_opset() -> int:
    """The highest opset torch's TorchScript-based exporter (the one used here) writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # older/newer torch: its documented floor for this exporter
        return 17


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or one/two-element sequence -> ``(h, w)``; YoloPruneError for other lengths."""
    values = [size] if isinstance(size, int) else [int(v) for v in size]
    if len(values) not in (1, 2):
        raise YoloPruneError(f"image size takes one or two values (H W), got {values}")
    return letterbox_hw(values[0] if len(values) == 1 else values)


def check_img_size(img_size: tuple[int, int], stride: int, name: str = "img_size") -> None:
    """Raise a YoloPruneError (exit 2) naming ``name`` unless H and W are positive multiples of ``stride``."""
    h, w = img_size
    if h < 1 or w < 1 or h % stride or w % stride:
        raise YoloPruneError(f"{name} {h} {w}: height and width must be positive multiples of the model's "
                             f"max stride {stride} (e.g. {max(stride, h // stride * stride)})")


@dataclass(frozen=True)
class ExportOptions:
    """What to export: input shape, output mode, NMS settings (end-to-end graphs only) and precision.

    Modes (``mode``): ``raw`` per-level maps ``[B, na, ny, nx, 5 + nc]`` (pre-sigmoid); ``conv`` the head convs'
    outputs ``[B, na * (5 + nc), ny, nx]`` (pre-sigmoid, no reshape: where DPU graphs end); ``grid`` decoded
    ``output [B, N, 5 + nc]`` (xywh pixels, obj, cls); ``trt_nms`` TensorRT ``EfficientNMS_TRT`` plugin;
    ``ort_nms`` ONNX ``NonMaxSuppression`` (``max_wh`` set). Both NMS modes output ``num_dets [B, 1]``,
    ``det_boxes [B, topk, 4]`` (x1, y1, x2, y2 pixels), ``det_scores [B, topk]``, ``det_classes [B, topk]``.
    """

    img_size: tuple[int, int] = (640, 640)
    batch_size: int = 1
    dynamic_batch: bool = False
    dynamic: bool = False  # batch, height and width axes (YOLOv7 export.py --dynamic)
    grid: bool = False
    conv_maps: bool = False
    split_head: bool = False
    end2end: bool = False
    max_wh: int | None = None
    topk_all: int = 100
    iou_thres: float = 0.45
    conf_thres: float = 0.25
    simplify: bool = False
    fp16: bool = False
    opset: int = 12
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", as_hw(self.img_size))
        problems = _problems(self)
        if problems:
            raise YoloPruneError("invalid export options: " + "; ".join(problems))

    @property
    def mode(self) -> str:
        """``raw`` | ``conv`` | ``grid`` | ``trt_nms`` | ``ort_nms`` (see the class docstring)."""
        if self.end2end:
            return "trt_nms" if self.max_wh is None else "ort_nms"
        if self.conv_maps:
            return "conv"
        return "grid" if self.grid else "raw"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (stored in the ONNX metadata and the engine JSON)."""
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        d["mode"] = self.mode
        return d


def _problems(o: ExportOptions) -> list[str]:
    """Human-readable reasons why ``o`` is invalid (empty when valid)."""
    p = []
    if min(o.img_size) < 1:
        p.append(f"img_size must be positive, got {o.img_size}")
    if o.batch_size < 1:
        p.append(f"batch_size must be >= 1, got {o.batch_size}")
    if o.topk_all < 1:
        p.append(f"topk_all must be >= 1, got {o.topk_all}")
    if not 0.0 <= o.conf_thres < 1.0:
        p.append(f"conf_thres must be in [0, 1), got {o.conf_thres}")
    if not 0.0 < o.iou_thres <= 1.0:
        p.append(f"iou_thres must be in (0, 1], got {o.iou_thres}")
    if o.max_wh is not None and o.max_wh <= 0:
        p.append(f"max_wh must be > 0, got {o.max_wh}")
    if o.max_wh is not None and not o.end2end:
        p.append("max_wh only applies to end2end graphs (ONNX Runtime NMS)")
    if o.conv_maps and (o.grid or o.end2end):
        p.append("conv_maps (head conv outputs) excludes grid and end2end")
    if o.dynamic and (o.end2end or o.conv_maps):
        p.append("dynamic (batch, height and width axes) applies to raw and grid graphs; end-to-end and head-conv "
                 "graphs take a dynamic batch only")
    if o.split_head and not o.conv_maps:
        p.append("split_head applies to conv_maps (head conv output) graphs only")
    if not MIN_OPSET <= o.opset <= max_opset():
        p.append(f"opset must be from {MIN_OPSET} (NonMaxSuppression, Resize) to {max_opset()} (the highest this "
                 f"torch exports), got {o.opset}")
    return p
