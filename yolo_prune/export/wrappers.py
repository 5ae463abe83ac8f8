"""Export modules: wrap an eval-mode model to choose what the graph outputs (the model itself is untouched).

Every wrapper takes images [B, 3, H, W] (RGB, 0..1) and is put in eval mode on construction; the wrapped
model must return ``(pred [B, N, 5 + nc], raw maps)`` in eval mode, ``pred`` holding (cx, cy, w, h) in
input pixels, objectness and class scores (after sigmoid).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from yolo_prune.engine.boxes import xywh2xyxy
from yolo_prune.export.nms_onnx import E2E_OUTPUTS, EfficientNMSTRT, OnnxNMS, pad_selected
from yolo_prune.export.options import ExportOptions
from yolo_prune.models.heads import HEAD_GROUPS


def boxes_and_scores(pred: Tensor) -> tuple[Tensor, Tensor]:
    """pred [B, N, 5 + nc] -> (boxes [B, N, 4] x1 y1 x2 y2, scores [B, N, nc] = obj * cls); no in-place ops."""
    return xywh2xyxy(pred[..., :4]), pred[..., 5:] * pred[..., 4:5]


class _Wrapper(nn.Module):
    """Holds the model; subclasses pick outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()


class RawOutputs(_Wrapper):
    """-> tuple of nl raw maps [B, na, ny, nx, 5 + nc] (pre-sigmoid), as the official export without --grid."""

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(x)[1])


class ConvMaps(_Wrapper):
    """-> tuple of nl head-conv outputs [B, na * (5 + nc), ny, nx] (pre-sigmoid, before any reshape).

    Where a DPU graph ends: reshape, decode and NMS run on the CPU (``Detect.reshape`` then ``decode``).
    """

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        head = self.model.detect
        return tuple(head.level(i, f) for i, f in enumerate(self.model.head_inputs(x)[: head.nl]))


class SplitConvMaps(_Wrapper):
    """-> nl x len(groups) maps: each head conv split into one conv per channel group (same weights, exact in
    float), ``[B, len(group), ny, nx]`` each, level-major. A fake-quantized head conv splits itself
    (``split_forward``: one per-tensor scale per group); a float one is split by its weight rows.
    """

    def __init__(self, model: nn.Module, groups: list[Tensor]):
        super().__init__(model)
        self.groups = groups

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        head, outs = self.model.detect, []
        for i, f in enumerate(self.model.head_inputs(x)[: head.nl]):
            conv = head.m[i]
            if hasattr(conv, "split_forward"):
                outs += conv.split_forward(f)
                continue
            outs += [F.conv2d(f, conv.weight[idx], conv.bias[idx], conv.stride, conv.padding, conv.dilation,
                              conv.groups) for idx in self.groups]
        return tuple(outs)


def assemble_head_maps(outputs: list[Tensor], groups: list[list[int]], nl: int) -> list[Tensor]:
    """Split-head outputs (level-major, one per group) -> nl head conv maps [B, na * no, ny, nx]."""
    if len(outputs) != nl * len(groups):
        raise ValueError(f"{len(outputs)} split-head outputs for {nl} levels x {len(groups)} groups")
    maps = []
    for i in range(nl):
        parts = outputs[i * len(groups): (i + 1) * len(groups)]
        b, _, h, w = parts[0].shape
        out = parts[0].new_zeros((b, sum(len(g) for g in groups), h, w))
        for idx, part in zip(groups, parts):
            out[:, torch.as_tensor(idx, dtype=torch.long)] = part
        maps.append(out)
    return maps


class GridOutput(_Wrapper):
    """-> output [B, N, 5 + nc] decoded (xywh pixels, obj, cls), as the official export with --grid."""

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[0]


class End2EndTRT(_Wrapper):
    """-> num_dets [B, 1] int32, det_boxes [B, topk, 4] xyxy, det_scores [B, topk], det_classes [B, topk] int32.

    NMS is one ``TRT::EfficientNMS_TRT`` node (TensorRT plugin) fed with xyxy boxes and obj * cls scores.
    """

    def __init__(self, model: nn.Module, iou_thres: float, conf_thres: float, topk: int):
        super().__init__(model)
        self.iou_thres, self.conf_thres, self.topk = iou_thres, conf_thres, topk

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, scores = boxes_and_scores(self.model(x)[0])
        return EfficientNMSTRT.apply(boxes, scores, self.iou_thres, self.conf_thres, self.topk)


class End2EndORT(End2EndTRT):
    """Same outputs as :class:`End2EndTRT` from standard ONNX ``NonMaxSuppression`` (runs in ONNX Runtime).

    Per-class NMS by offsetting boxes by ``class * max_wh``; the best class per box; computed in float32.
    """

    def __init__(self, model: nn.Module, iou_thres: float, conf_thres: float, topk: int, max_wh: int):
        super().__init__(model, iou_thres, conf_thres, topk)
        self.max_wh = float(max_wh)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, scores = boxes_and_scores(self.model(x)[0].float())
        conf, cls = scores.max(2)                                        # [B, N], [B, N]
        shifted = boxes + cls.unsqueeze(2).float() * self.max_wh         # [B, N, 4] classes never overlap
        selected = OnnxNMS.apply(shifted, conf.unsqueeze(1), self.topk, self.iou_thres, self.conf_thres)
        return pad_selected(selected, boxes, conf, cls, self.topk)


def export_module(model: nn.Module, opts: ExportOptions) -> nn.Module:
    """The wrapper for ``opts.mode`` around ``model`` (not copied; prepare a copy first)."""
    if opts.mode == "raw":
        return RawOutputs(model)
    if opts.mode == "conv" and opts.split_head:
        return SplitConvMaps(model, list(model.detect.channel_groups().values()))
    if opts.mode == "conv":
        return ConvMaps(model)
    if opts.mode == "grid":
        return GridOutput(model)
    if opts.mode == "trt_nms":
        return End2EndTRT(model, opts.iou_thres, opts.conf_thres, opts.topk_all)
    return End2EndORT(model, opts.iou_thres, opts.conf_thres, opts.topk_all, int(opts.max_wh))


def output_names(opts: ExportOptions, nl: int) -> list[str]:
    """Graph output names: ``raw0..``/``conv0..`` per level (``conv0_box, conv0_obj, conv0_cls, ..`` with a split
    head), ``output``, or the four end-to-end names."""
    if opts.split_head:
        return [f"conv{i}_{g}" for i in range(nl) for g in HEAD_GROUPS]
    if opts.mode in ("raw", "conv"):
        return [f"{opts.mode}{i}" for i in range(nl)]
    if opts.mode == "grid":
        return ["output"]
    return list(E2E_OUTPUTS)
