"""Fake-quantized layers that keep the float model's parameter names (so checkpoints keep their layout).

:class:`QConv` replaces a re-parameterised ``Conv`` (BN folded into a biased conv, as the DPU and TensorRT fold
it): input image quantizer (first layer only), weight and bias quantized from the current values at every call,
activation, output quantizer. :class:`QHeadConv` replaces a head output conv (``Detect.m[i]``): its output channels
form groups (box, objectness, class) with one weight, bias and output scale each, which is what splitting the conv
into one conv per group computes (:meth:`QHeadConv.split_forward`, used by the exporter).

DPU compiler limits (AMD Quark's refinement pass enforces the same): with exponents ``e = log2(scale)`` of input
``ei``, weight ``ew``, bias ``eb`` and output ``eo``, ``shift_cut = eo - ew - ei`` must lie in [0, 16] and
``shift_bias = eb - ew - ei`` in [min_sb, 15] (min_sb 0 before a LeakyReLU, else ``min(0, shift_cut - 16)``);
the weight and bias exponents are clamped into those ranges.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.quant.fakequant import FakeQuantize, fake_quant, pow2_scale, weight_scale
from yolo_prune.quant.scheme import QuantScheme

SHIFT_CUT = (0, 16)
SHIFT_BIAS_MAX = 15


def _exp(scale: Tensor) -> Tensor:
    return torch.round(torch.log2(scale))


def dpu_weight_scale(ws: Tensor, in_q: FakeQuantize | None, out_scale: Tensor | None) -> Tensor:
    """Weight scale(s) clamped so that ``shift_cut = eo - ew - ei`` stays in [0, 16] (when ei, eo are known)."""
    if in_q is None or not in_q.enabled or out_scale is None:
        return ws
    ei, eo = _exp(in_q.scale), _exp(out_scale)
    return torch.exp2(torch.clamp(_exp(ws), eo - ei - SHIFT_CUT[1], eo - ei - SHIFT_CUT[0]))


def dpu_bias_scale(bias: Tensor, ws: Tensor, in_q: FakeQuantize | None, out_scale: Tensor | None,
                   leaky: bool) -> Tensor:
    """Bias scale: no overflow, clamped so that ``shift_bias = eb - ew - ei`` stays in the DPU's range."""
    bs = pow2_scale(bias.detach().abs().amax())
    if in_q is None or not in_q.enabled or out_scale is None:
        return bs
    ei, ew, eo = _exp(in_q.scale), _exp(ws), _exp(out_scale)
    low = torch.zeros_like(ew) if leaky else torch.clamp(eo - ew - ei - 16, max=0)
    return torch.exp2(torch.clamp(_exp(bs), ew + ei + low, ew + ei + SHIFT_BIAS_MAX))


class _QuantLayer(nn.Module):
    """Shared logic of :class:`QConv` / :class:`QRepConv`: a biased conv (``_qconv``), activation, output quantizer.

    ``input_quant`` is the quantizer that produced this layer's input (set by tracing; not a child module).
    ``image_quant`` quantizes the network input (first layer only). Train and eval modes compute the same.
    """

    scheme: QuantScheme
    act: nn.Module

    def _qconv(self) -> nn.Conv2d:
        raise NotImplementedError

    def _init_quant(self, scheme: QuantScheme) -> None:
        self.scheme = scheme
        self.out_quant = FakeQuantize(scheme.power_of_two)
        self.image_quant: FakeQuantize | None = None
        self.frozen_scales: tuple[Tensor, Tensor | None] | None = None
        self.__dict__["input_quant"] = None

    def param_scales(self) -> tuple[Tensor, Tensor | None]:
        """(weight scale(s), bias scale or None): frozen ones (export), else from the current values."""
        if self.frozen_scales is not None:
            return self.frozen_scales
        s, conv = self.scheme, self._qconv()
        axis = 0 if s.weight_per_channel else None
        ws = weight_scale(conv.weight, s.power_of_two, axis, s.weight_mse_steps)
        out = self.out_quant.scale if self.out_quant.enabled else None
        if s.power_of_two:
            ws = dpu_weight_scale(ws, self.input_quant, out)
        if conv.bias is None or not s.quantize_bias:
            return ws, None
        return ws, dpu_bias_scale(conv.bias, ws, self.input_quant, out, isinstance(self.act, nn.LeakyReLU))

    def quantized_params(self) -> tuple[Tensor, Tensor | None]:
        """(fake-quantized weight, bias) as the deployed layer uses them."""
        conv, (ws, bs) = self._qconv(), self.param_scales()
        wq = fake_quant(conv.weight, ws, 0 if self.scheme.weight_per_channel else None)
        return wq, conv.bias if bs is None else fake_quant(conv.bias, bs)

    def forward(self, x: Tensor) -> Tensor:
        if self.image_quant is not None:
            x = self.image_quant(x)
        w, b = self.quantized_params()
        return self.out_quant(self.act(self._qconv()._conv_forward(x, w, b)))


class QConv(_QuantLayer, Conv):
    """A fused ``Conv`` (conv with bias, ``bn`` Identity), fake-quantized; state-dict keys as the fused Conv."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, scheme: QuantScheme):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = conv, nn.Identity(), act
        self._init_quant(scheme)

    def _qconv(self) -> nn.Conv2d:
        return self.conv


class QRepConv(_QuantLayer, RepConv):
    """A merged ``RepConv`` (``rbr_reparam``), fake-quantized; state-dict keys as the merged RepConv."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, scheme: QuantScheme):
        nn.Module.__init__(self)
        self.groups, self.in_channels, self.out_channels = conv.groups, conv.in_channels, conv.out_channels
        self.act, self.rbr_reparam = act, conv
        self.rbr_identity = self.rbr_dense = self.rbr_1x1 = None
        self._init_quant(scheme)

    def _qconv(self) -> nn.Conv2d:
        return self.rbr_reparam


class QHeadConv(nn.Conv2d):
    """A head output conv whose channels fall in groups, each with its own weight, bias and output scale.

    ``groups_idx``: list of LongTensors of output-channel indices (one per group, together all channels).
    With ``quantize_output`` off (TensorRT) the output stays float. Parameter names stay ``weight``/``bias``.
    """

    def __init__(self, conv: nn.Conv2d, scheme: QuantScheme, groups_idx: list[Tensor], names: list[str]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            self.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(self.bias))
        self.scheme, self.group_names = scheme, list(names)
        self.groups_idx = [g.clone() for g in groups_idx]
        self.out_quant = FakeQuantize(scheme.power_of_two, self.out_channels, axis=1, groups=self.groups_idx,
                                      domain="sigmoid") if scheme.quantize_head_output else None
        self.frozen_scales: tuple[Tensor, Tensor | None] | None = None
        self.__dict__["input_quant"] = None

    def group_scales(self, values: Tensor) -> Tensor:
        """Per-channel vector holding each group's scalar from ``values`` [n_groups]."""
        out = torch.empty(self.out_channels, device=values.device)
        for g, idx in enumerate(self.groups_idx):
            out[idx.to(values.device)] = values[g]
        return out

    def _out_scale(self, idx: Tensor) -> Tensor | None:
        q = self.out_quant
        return q.scale[idx[0]] if q is not None and q.enabled else None

    def param_scales(self) -> tuple[Tensor, Tensor | None]:
        """Power-of-two (weight, bias) scale per group: MSE-chosen weights, bias without overflow, both within
        the DPU shift limits of the group's output scale; bias scales None when biases stay float. Float schemes:
        (per-channel weight scales, None). Frozen ones (export) when set."""
        if self.frozen_scales is not None:
            return self.frozen_scales
        s, ws_all, bs_all = self.scheme, [], []
        if not s.power_of_two:
            return weight_scale(self.weight, False, 0 if s.weight_per_channel else None), None
        for idx in self.groups_idx:
            ws = dpu_weight_scale(weight_scale(self.weight[idx], True, None, s.weight_mse_steps), self.input_quant,
                                  self._out_scale(idx))
            ws_all.append(ws)
            if s.quantize_bias:
                bs_all.append(dpu_bias_scale(self.bias[idx], ws, self.input_quant, self._out_scale(idx), leaky=False))
        return torch.stack(ws_all), (torch.stack(bs_all) if bs_all else None)

    def quantized_params(self) -> tuple[Tensor, Tensor]:
        """(fake-quantized weight, bias): per group (DPU) or per channel with a float bias (TensorRT)."""
        s = self.scheme
        if not s.power_of_two:
            ws, _ = self.param_scales()
            axis = 0 if s.weight_per_channel else None
            return fake_quant(self.weight, ws, axis), self.bias
        gws, gbs = self.param_scales()
        wq = fake_quant(self.weight, self.group_scales(gws), 0)
        return wq, self.bias if gbs is None else fake_quant(self.bias, self.group_scales(gbs), 0)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.quantized_params()
        y = self._conv_forward(x, w, b)
        return self.out_quant(y) if self.out_quant is not None else y

    def split_forward(self, x: Tensor) -> list[Tensor]:
        """One output per group, each from its own conv (rows of the weight) with per-tensor scales: the graph the
        DPU runs (power-of-two schemes only)."""
        gws, gbs = self.param_scales()
        outs = []
        for g, idx in enumerate(self.groups_idx):
            w = fake_quant(self.weight[idx], gws[g])
            b = self.bias[idx] if gbs is None else fake_quant(self.bias[idx], gbs[g])
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
            out = self._out_scale(idx)
            outs.append(y if out is None else fake_quant(y, out))
        return outs


@torch.no_grad()
def freeze_scales(model: nn.Module) -> nn.Module:
    """Fix every quantized layer's weight/bias scales at their current values (in place; returns ``model``).

    Exporters trace a frozen copy: the graph then holds constant scales instead of the ops that derive them.
    """
    for m in model.modules():
        if isinstance(m, (_QuantLayer, QHeadConv)):
            m.frozen_scales = None
            m.frozen_scales = tuple(None if t is None else t.detach().clone() for t in m.param_scales())
    return model
