"""Turn a float model into its fake-quantized twin: what the int8 deployment computes, trainable (QAT).

The copy is re-parameterised first (BN folded into the convs with the running statistics, RepConv branches and
IDetect's implicit layers merged: what the DPU compiler and TensorRT do), so the quantized weights are the
deployed ones; activations become the scheme's (DPU: LeakyReLU 26/256); every Conv/RepConv becomes a
:class:`~yolo_prune.quant.modules.QConv`/``QRepConv`` and every head output conv a ``QHeadConv``; quantizers are
linked across concatenations (:mod:`.trace`). The result is still a ``Model`` (same ``yaml``/``widths``, a
fused float state dict), so the trainer, the evaluator and the checkpoint writer take it as is.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.fuse import fuse
from yolo_prune.models.heads import Detect
from yolo_prune.models.pools import stack_large_pools
from yolo_prune.quant.fakequant import FakeQuantize
from yolo_prune.quant.modules import QConv, QHeadConv, QRepConv
from yolo_prune.quant.scheme import QuantScheme, get_scheme
from yolo_prune.quant.trace import link_quantizers


@dataclass
class Prepared:
    """A fake-quantized model (not calibrated yet) and what preparing it changed."""

    model: nn.Module
    scheme: QuantScheme
    quantizers: int
    converted_activations: dict[str, int] = field(default_factory=dict)


def head_groups(head: Detect, split: bool) -> tuple[list[str], list[torch.Tensor]]:
    """Output-channel groups of a head conv: box / obj / cls when ``split``, else one group of all channels."""
    if not split:
        return ["all"], [torch.arange(head.na * head.no)]
    groups = head.channel_groups()
    return list(groups), list(groups.values())


def _swap_convs(model: nn.Module, scheme: QuantScheme) -> None:
    """Replace every fused Conv / merged RepConv (any depth) by its quantized twin, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (QConv, QRepConv)):
                continue
            if isinstance(child, Conv):
                setattr(parent, name, QConv(child.conv, child.act, scheme))
            elif isinstance(child, RepConv):
                setattr(parent, name, QRepConv(child.rbr_reparam, child.act, scheme))


def _swap_head(head: Detect, scheme: QuantScheme) -> None:
    """Head output convs -> QHeadConv with the scheme's channel groups (aux heads of IAuxDetect stay float)."""
    names, groups = head_groups(head, scheme.split_head)
    head.m = nn.ModuleList(QHeadConv(conv, scheme, groups, names) for conv in head.m)


def _convert_activations(model: nn.Module, scheme: QuantScheme) -> dict[str, int]:
    """The scheme's LeakyReLU slope everywhere (DPU); returns what was converted."""
    if scheme.leaky_slope is None:
        return {}
    from yolo_prune.models.activation import convert_activations

    return dict(convert_activations(model, "leakyrelu", scheme.leaky_slope).converted)


def quantize_model(model: nn.Module, scheme: str | QuantScheme, img_size: int = 64) -> Prepared:
    """A fake-quantized copy of ``model`` (not modified) for ``scheme``; quantizers off until calibrated.

    ``img_size`` is the side of the zero image the quantizers are linked on (any multiple of the max stride).
    YoloPruneError when the model has layers without an int8 form (e.g. residual adds, ReOrg).
    """
    scheme = get_scheme(scheme)
    q = fuse(copy.deepcopy(model).float().eval(), conv_bn=True, repconv=True, implicit=True)
    converted = _convert_activations(q, scheme)
    if scheme.max_pool_kernel is not None:
        stack_large_pools(q, scheme.max_pool_kernel)
    _swap_convs(q, scheme)
    first = q.model[0]
    if not isinstance(first, (QConv, QRepConv)):
        raise YoloPruneError(f"cannot quantize this model: its first layer is {type(first).__name__}, not a conv")
    first.image_quant = FakeQuantize(scheme.power_of_two)
    _swap_head(q.detect, scheme)
    stride = int(q.detect.stride.max())
    size = max(stride, -(-img_size // stride) * stride)
    count = link_quantizers(q, torch.zeros(1, 3, size, size))
    for p in q.parameters():
        p.requires_grad_(True)
    return Prepared(q, scheme, count, converted)


def activation_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """Every distinct activation quantizer by its first module name (image, layer outputs, head outputs)."""
    out: dict[str, FakeQuantize] = {}
    seen: set[int] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, FakeQuantize) and id(m) not in seen:
            seen.add(id(m))
            out[name] = m
    return out
