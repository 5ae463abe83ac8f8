"""NMS that exports to one ONNX node: TensorRT's ``EfficientNMS_TRT`` plugin or ONNX ``NonMaxSuppression``.

Both ``forward`` implementations compute the real result with torchvision, so the export modules give
detections in PyTorch too; during ``torch.onnx.export`` the ``symbolic`` replaces them with a single node.
Boxes are corners (x1, y1, x2, y2) in input pixels throughout.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

TRT_DOMAIN = "TRT"
TRT_PLUGIN = "EfficientNMS_TRT"
E2E_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


def nms_padded(boxes: Tensor, scores: Tensor, iou_thres: float, conf_thres: float, topk: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class NMS of boxes [B, N, 4] xyxy and scores [B, N, nc] (best class per box), padded to ``topk``.

    Returns num_dets [B, 1] int32, det_boxes [B, topk, 4], det_scores [B, topk], det_classes [B, topk] int32;
    rows beyond ``num_dets`` are zero. Detections are sorted by decreasing score.
    """
    b = boxes.shape[0]
    num = torch.zeros((b, 1), dtype=torch.int32, device=boxes.device)
    out_boxes = boxes.new_zeros((b, topk, 4))
    out_scores = scores.new_zeros((b, topk))
    out_classes = torch.zeros((b, topk), dtype=torch.int32, device=boxes.device)
    conf, cls = scores.max(2)
    for i in range(b):
        keep = (conf[i] > conf_thres).nonzero().view(-1)
        kept = keep[batched_nms(boxes[i, keep].float(), conf[i, keep].float(), cls[i, keep], iou_thres)][:topk]
        n = kept.numel()
        num[i, 0] = n
        out_boxes[i, :n], out_scores[i, :n], out_classes[i, :n] = boxes[i, kept], conf[i, kept], cls[i, kept].int()
    return num, out_boxes, out_scores, out_classes


class EfficientNMSTRT(torch.autograd.Function):
    """``TRT::EfficientNMS_TRT`` (box_coding 0 = corners, score_activation 0, background_class -1)."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float,
                max_output_boxes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return nms_padded(boxes, scores, iou_threshold, score_threshold, max_output_boxes)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, score_threshold: float, max_output_boxes: int):
        outs = g.op(f"{TRT_DOMAIN}::{TRT_PLUGIN}", boxes, scores, background_class_i=-1, box_coding_i=0,
                    iou_threshold_f=float(iou_threshold), max_output_boxes_i=int(max_output_boxes),
                    plugin_version_s="1", score_activation_i=0, score_threshold_f=float(score_threshold),
                    outputs=4)
        k, batch = int(max_output_boxes), boxes.type().sizes()[0] if boxes.type().sizes() else None
        for out, dtype, sizes in zip(outs, (torch.int32, None, None, torch.int32), ([batch, 1], [batch, k, 4],
                                                                                     [batch, k], [batch, k])):
            t = boxes.type().with_sizes(sizes)
            out.setType(t.with_dtype(dtype) if dtype is not None else t)
        return outs


class OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` over boxes [B, N, 4] xyxy and scores [B, 1, N] -> selected [K, 3] int64.

    Each selected row is (batch index, 0, box index); at most ``max_out`` rows per image, grouped by image
    and sorted by decreasing score within an image. Class-aware NMS is obtained by offsetting the boxes.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_out: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        rows = []
        for i in range(boxes.shape[0]):
            s = scores[i, 0]
            keep = (s > score_threshold).nonzero().view(-1)
            kept = keep[torch.ops.torchvision.nms(boxes[i, keep].float(), s[keep].float(), iou_threshold)][:max_out]
            rows.append(torch.stack((torch.full_like(kept, i), torch.zeros_like(kept), kept), 1))
        return torch.cat(rows, 0) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou_threshold: float, score_threshold: float):
        max_t = g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        score_t = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_t, iou_t, score_t, center_point_box_i=0)


def pad_selected(selected: Tensor, boxes: Tensor, conf: Tensor, cls: Tensor, topk: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Selected [K, 3] rows (batch, _, box) of boxes [B, N, 4], conf [B, N], cls [B, N] -> padded outputs.

    Same contract as :func:`nms_padded`. Uses Gather/TopK/Where only (no ScatterND), dynamic in B and K.
    """
    n = boxes.shape[1]
    b_idx, box_idx = selected[:, 0], selected[:, 2]                              # [K], [K]
    flat = b_idx * n + box_idx                                                   # [K] index into B*N
    sel_boxes = boxes.reshape(-1, 4)[flat]                                       # [K, 4]
    sel_conf, sel_cls = conf.reshape(-1)[flat], cls.reshape(-1)[flat]            # [K], [K]
    images = torch.arange(boxes.shape[0], device=boxes.device).unsqueeze(1)      # [B, 1]
    key = torch.where(b_idx.unsqueeze(0) == images, sel_conf.unsqueeze(0), -1.0)  # [B, K]; conf >= 0
    pad = (images.to(key.dtype) * 0.0 - 2.0).repeat(1, topk)                     # [B, topk] below any key
    top, idx = torch.cat((key, pad), 1).topk(topk, dim=1)                        # [B, topk]
    valid = top > -0.5                                                           # [B, topk]
    zero_rows = boxes.new_zeros((topk, 4))
    det_boxes = torch.cat((sel_boxes, zero_rows), 0)[idx]                        # [B, topk, 4]
    det_boxes = torch.where(valid.unsqueeze(2), det_boxes, 0.0)
    det_scores = torch.where(valid, top, 0.0)                                    # [B, topk]
    det_classes = torch.cat((sel_cls, zero_rows[:, 0].long()), 0)[idx]          # [B, topk]
    det_classes = torch.where(valid, det_classes, 0).int()
    return valid.sum(1, keepdim=True).int(), det_boxes, det_scores, det_classes
