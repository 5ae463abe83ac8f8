"""Every export is checked: the graph is valid and ONNX Runtime reproduces PyTorch on real-looking images.

The error of an output is ``max |ORT - PyTorch| / max(1, max |PyTorch|)`` against the original (unfused, fp32)
model; above the tolerance (1e-3 fp32, 2e-2 fp16) a :class:`CheckFailed` is raised.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import box_convert

from yolo_prune.errors import CheckFailed
from yolo_prune.export.detections import borderline, match_detections, reference_detections, unpad
from yolo_prune.export.graph_checks import check_trt_plugin, cut_before, find_trt_plugin
from yolo_prune.export.options import ExportOptions
from yolo_prune.export.wrappers import assemble_head_maps
from yolo_prune.models.heads import HEAD_GROUPS

if TYPE_CHECKING:
    import onnxruntime

TOLERANCE = {False: 1e-3, True: 2e-2}  # keyed by fp16


@dataclass
class VerifyReport:
    """What was compared and the worst differences seen (``max_abs_diff`` over all compared tensors)."""

    mode: str
    batch: int
    lines: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0

    def __str__(self) -> str:
        head = f"verified {self.mode} export with ONNX Runtime on {self.batch} images"
        return "\n".join([head] + [f"  {line}" for line in self.lines])


def sample_images(img_size: Sequence[int], n: int, seed: int = 0) -> Tensor:
    """n different synthetic scenes [n, 3, H, W] RGB in 0..1 (rendered then cropped: no letterbox padding)."""
    from yolo_prune.data.synth import render_image

    h, w = img_size
    out = []
    for i in range(n):
        img = render_image(seed, "val", i, max(h, w), 8)[0]
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        crop = np.ascontiguousarray(img[top: top + h, left: left + w].transpose(2, 0, 1))
        out.append(torch.from_numpy(crop).float() / 255.0)
    return torch.stack(out)


def ort_session(model: str | Path | bytes) -> "onnxruntime.InferenceSession":
    """A CPU ONNX Runtime session of a file or serialized model (quiet logging)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def run_ort(session: "onnxruntime.InferenceSession", images: Tensor) -> list[Tensor]:
    """Run images [B, 3, H, W] (cast to the graph's input type) -> outputs as CPU tensors."""
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, {inp.name: images.numpy().astype(dtype)})]


@torch.no_grad()
def torch_reference(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(pred [B, N, 5 + nc], raw maps) of a float32 eval-mode CPU copy of ``model`` (the model is untouched)."""
    ref = copy.deepcopy(model).float().cpu().eval()
    pred, raw = ref(images.float())
    return pred, list(raw)


def compare(name: str, got: Tensor, ref: Tensor, tol: float, report: VerifyReport) -> None:
    """Append ``name``'s max abs / scaled difference to ``report``; CheckFailed when the scaled one exceeds tol."""
    if tuple(got.shape) != tuple(ref.shape):
        raise CheckFailed(f"{name}: ONNX Runtime shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
    diff = float((got.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    scaled = diff / max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    report.max_abs_diff = max(report.max_abs_diff, diff)
    report.lines.append(f"{name}: max abs diff {diff:.3g} (scaled {scaled:.3g}, tolerance {tol:g})")
    if not scaled <= tol:
        raise CheckFailed(f"ONNX Runtime differs from PyTorch on {name}: max abs diff {diff:.4g} "
                          f"(scaled {scaled:.4g} > tolerance {tol:g})")


def _verify_maps(session: Any, images: Tensor, ref: tuple[Tensor, list[Tensor]], tol: float,
                 report: VerifyReport, head: nn.Module | None = None) -> None:
    """Per-level maps: raw [B, na, ny, nx, no], or, with ``head``, head conv outputs [B, na * no, ny, nx]
    reshaped by the head's own ``reshape`` before comparing."""
    outs = run_ort(session, images)
    if head is not None and len(outs) == len(ref[1]) * len(HEAD_GROUPS):  # split head: one output per group
        outs = assemble_head_maps(outs, [g.tolist() for g in head.channel_groups().values()], len(ref[1]))
    if len(outs) != len(ref[1]):
        raise CheckFailed(f"graph has {len(outs)} outputs, the model {len(ref[1])} detection levels")
    for i, (got, want) in enumerate(zip(outs, ref[1])):
        if head is None:
            compare(f"raw{i} {tuple(want.shape)}", got, want, tol, report)
        else:
            compare(f"conv{i} {tuple(got.shape)}", head.reshape(got), want, tol, report)


def _verify_grid(session: Any, images: Tensor, ref: tuple[Tensor, list[Tensor]], tol: float,
                 report: VerifyReport) -> None:
    """Decoded output [B, N, 5 + nc]: boxes and confidences compared separately."""
    got, want = run_ort(session, images)[0], ref[0]
    compare(f"output boxes {tuple(want.shape)}", got[..., :4], want[..., :4], tol, report)
    compare("output obj/cls", got[..., 4:], want[..., 4:], tol, report)


def _verify_ort_nms(session: Any, images: Tensor, ref: tuple[Tensor, list[Tensor]], opts: ExportOptions,
                    tol: float, report: VerifyReport) -> None:
    """Detections equal the PyTorch pipeline (torchvision NMS, same thresholds) image by image."""
    got = unpad(*run_ort(session, images))
    want = reference_detections(ref[0], opts.conf_thres, opts.iou_thres, opts.topk_all, opts.max_wh)
    box_tol = tol * max(1.0, float(ref[0][..., :4].abs().max()))
    total, worst_box, worst_score = 0, 0.0, 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        m = match_detections(g, w, box_tol, tol)
        bad_got = m.only_got[~borderline(m.only_got, g, opts.conf_thres, opts.topk_all, tol)]
        bad_ref = m.only_ref[~borderline(m.only_ref, w, opts.conf_thres, opts.topk_all, tol)]
        if len(bad_got) or len(bad_ref):
            raise CheckFailed(f"image {i}: ONNX Runtime end-to-end detections differ from PyTorch + torchvision "
                              f"NMS: {len(g)} vs {len(w)} detections, {m.matched} matched; only in ONNX: "
                              f"{bad_got[:3].tolist()}; only in PyTorch: {bad_ref[:3].tolist()}")
        total, worst_box, worst_score = total + m.matched, max(worst_box, m.box_diff), max(worst_score, m.score_diff)
    report.max_abs_diff = max(report.max_abs_diff, worst_box, worst_score)
    report.lines.append(f"detections: {total} matched PyTorch + torchvision NMS "
                        f"(per image {[len(g) for g in got]}; max box diff {worst_box:.3g} px, "
                        f"max score diff {worst_score:.3g})")


def _verify_trt_nms(path: Path, images: Tensor, ref: tuple[Tensor, list[Tensor]], opts: ExportOptions,
                    tol: float, report: VerifyReport) -> None:
    """Plugin node and outputs checked; the graph up to the plugin's inputs run in ORT against PyTorch."""
    import onnx

    proto = onnx.load(str(path))
    attrs = check_trt_plugin(proto, opts)
    shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in attrs.items()}
    report.lines.append(f"EfficientNMS_TRT attributes {shown}; outputs "
                        f"{[o.name for o in proto.graph.output]} checked")
    pre = cut_before(proto, find_trt_plugin(proto))
    boxes, scores = run_ort(ort_session(pre.SerializeToString()), images)
    pred = ref[0]
    compare("plugin input boxes (x1y1x2y2)", boxes, box_convert(pred[..., :4], "cxcywh", "xyxy"), tol, report)
    compare("plugin input scores (obj*cls)", scores, pred[..., 5:] * pred[..., 4:5], tol, report)


def verify_onnx(path: str | Path, model: nn.Module, opts: ExportOptions, images: Tensor | None = None
                ) -> VerifyReport:
    """Check the ONNX file at ``path`` exported from ``model`` with ``opts``; raises CheckFailed on mismatch.

    ``images`` [B, 3, H, W] default to synthetic scenes: ``batch_size`` of them, at least 2 with a dynamic batch.
    """
    if images is None:
        n = opts.batch_size if not opts.dynamic_batch and not opts.dynamic else max(2, opts.batch_size)
        images = sample_images(opts.img_size, n)
    report = VerifyReport(opts.mode, len(images))
    _verify_at(path, model, opts, images, report)
    if opts.dynamic:  # also at another height and width than traced: the axes really are dynamic
        stride = int(model.detect.stride.max())
        other = sample_images((opts.img_size[0] + stride, opts.img_size[1] + 2 * stride), 1, seed=1)
        report.lines.append(f"dynamic axes, at {other.shape[2]}x{other.shape[3]} on {len(other)} image:")
        _verify_at(path, model, opts, other, report)
    return report


def _verify_at(path: str | Path, model: nn.Module, opts: ExportOptions, images: Tensor,
               report: VerifyReport) -> None:
    """The checks of ``opts.mode`` on ``images``; lines and the worst difference go to ``report``."""
    tol = TOLERANCE[opts.fp16]
    ref = torch_reference(model, images)
    if opts.mode == "trt_nms":
        _verify_trt_nms(Path(path), images, ref, opts, tol, report)
    elif opts.mode == "ort_nms":
        _verify_ort_nms(ort_session(path), images, ref, opts, tol, report)
    elif opts.mode == "grid":
        _verify_grid(ort_session(path), images, ref, tol, report)
    else:
        _verify_maps(ort_session(path), images, ref, tol, report, model.detect if opts.mode == "conv" else None)
