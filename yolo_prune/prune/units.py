"""What a graph node is in the model: the modules that hold its filters, what criteria see, how it is sliced.

Nodes name their module by path (``graph[i].name``): a YOLOv7 ``Conv``/``RepConv`` block, a plain ``Conv2d``
with the ``BatchNorm2d`` recorded beside it (``graph[i].bn``), a head output conv, or a classifier's ``Linear``
whose flattened input features are sliced ``spatial`` at a time. Slicing strategies are small functions in a
table keyed by node kind, so a new layer kind plugs in here without touching the planner or the surgery.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.node import ConvNode
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.prune.criteria import LayerFilters, score_dtype


def _take(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    """Replace parameter/buffer ``name`` by its selection along ``dim`` (keeps Parameter-ness and grad flag)."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device))  # a new tensor already
    setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new)


def slice_conv_out(conv: nn.Conv2d, index: torch.Tensor) -> None:
    _take(conv, "weight", index, 0)
    _take(conv, "bias", index, 0)
    conv.out_channels = len(index)


def slice_conv_in(conv: nn.Conv2d, index: torch.Tensor) -> None:
    _take(conv, "weight", index, 1)
    conv.in_channels = len(index)


def slice_bn(bn: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _take(bn, name, index, 0)
    bn.num_features = len(index)


def module_of(model: nn.Module, node: ConvNode) -> nn.Module:
    """The module graph node ``node`` names; a clear error when the graph was derived from another model."""
    from yolo_prune.models.gating import GatedConv

    try:
        m = model.get_submodule(node.name)
    except AttributeError:
        raise PruningError(f"layer {node.index}: the model has no module {node.name}; derive the graph from "
                           f"this model") from None
    if isinstance(m, GatedConv) or isinstance(getattr(m, "conv", None), GatedConv):
        raise PruningError(f"layer {node.index} ({node.name}) is FBS-gated: prune filters before gating")
    return m


def out_channels(model: nn.Module, node: ConvNode) -> int:
    """Current filter count of a prunable node's module (Conv/RepConv block or plain Conv2d)."""
    m = module_of(model, node)
    if isinstance(m, Conv):
        return m.conv.out_channels
    if isinstance(m, RepConv):
        return (m.rbr_reparam if m.rbr_reparam is not None else m.rbr_dense[0]).out_channels
    return m.out_channels


def layer_filters(model: nn.Module, node: ConvNode, generator: torch.Generator,
                  inputs: torch.Tensor | None = None, context: Any = None) -> LayerFilters:
    """The weights and BN scales a criterion sees (both RepConv branches; a plain conv's recorded BN), restricted
    to the input channels ``inputs`` (None: all; sequential scoring leaves out what earlier layers removed);
    ``context`` (a CriterionContext) for data-driven and gradient criteria, which look scores up by the layer."""
    m = module_of(model, node)
    if isinstance(m, Conv):
        convs, gammas = (m.conv,), ((m.bn.weight,) if isinstance(m.bn, nn.BatchNorm2d) else ())
    elif isinstance(m, RepConv):
        if m.rbr_reparam is not None:
            convs, gammas = (m.rbr_reparam,), ()
        else:
            branches = (m.rbr_dense, m.rbr_1x1)
            convs, gammas = tuple(b[0] for b in branches), tuple(b[1].weight for b in branches)
    else:
        bn = model.get_submodule(node.bn).weight if node.bn else None
        convs, gammas = (m,), ((bn,) if bn is not None else ())
    weights = tuple(c.weight if inputs is None else _input_slice(c.weight, inputs) for c in convs)
    return LayerFilters(weights, gammas, generator, node.name, inputs, score_dtype(convs[0].weight), node.index,
                        context)


def _input_slice(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``weight[:, inputs]`` as a contiguous tensor (through a 3-D view: several times faster for 3x3 kernels)."""
    out, _, kh, kw = weight.shape
    flat = weight.detach().reshape(out, weight.shape[1], kh * kw)
    return flat.index_select(1, inputs.to(weight.device)).view(out, len(inputs), kh, kw)


def _branches(m: RepConv) -> list[nn.Sequential | nn.Conv2d]:
    return [m.rbr_reparam] if m.rbr_reparam is not None else [m.rbr_dense, m.rbr_1x1]


def slice_out(model: nn.Module, node: ConvNode, index: torch.Tensor) -> None:
    """Remove output filters of a node (conv, bias, BN and its statistics, all RepConv branches)."""
    m = module_of(model, node)
    if isinstance(m, Conv):
        slice_conv_out(m.conv, index)
        if isinstance(m.bn, nn.BatchNorm2d):
            slice_bn(m.bn, index)
    elif isinstance(m, RepConv):
        for branch in _branches(m):
            if isinstance(branch, nn.Conv2d):
                slice_conv_out(branch, index)
            else:
                slice_conv_out(branch[0], index)
                slice_bn(branch[1], index)
        m.out_channels = len(index)
    else:
        slice_conv_out(m, index)
        if node.bn:
            slice_bn(model.get_submodule(node.bn), index)


def _slice_block_in(model: nn.Module, node: ConvNode, index: torch.Tensor) -> None:
    m = module_of(model, node)
    if isinstance(m, Conv):
        slice_conv_in(m.conv, index)
    elif isinstance(m, RepConv):
        for branch in _branches(m):
            slice_conv_in(branch if isinstance(branch, nn.Conv2d) else branch[0], index)
        m.in_channels = len(index)
    else:
        slice_conv_in(m, index)


def _slice_head_in(model: nn.Module, node: ConvNode, index: torch.Tensor) -> None:
    """Input channels of a head output conv, and of the ImplicitA in front of it."""
    from yolo_prune.models.heads import IDetect

    head_name, attr, level = node.name.rsplit(".", 2)
    head = model.get_submodule(head_name)
    slice_conv_in(getattr(head, attr)[int(level)], index)
    if isinstance(head, IDetect) and attr == "m" and len(head.ia) > 0:
        _take(head.ia[int(level)], "implicit", index, 1)


def _slice_linear_in(model: nn.Module, node: ConvNode, index: torch.Tensor) -> None:
    """Input features of a Linear reading flattened channels: channel c owns features [c*spatial, (c+1)*spatial)."""
    lin = module_of(model, node)
    features = (index.view(-1, 1) * node.spatial + torch.arange(node.spatial)).reshape(-1)
    _take(lin, "weight", features, 1)
    lin.in_features = len(features)


SLICE_IN: dict[str, Callable[[nn.Module, ConvNode, torch.Tensor], None]] = {
    "Conv": _slice_block_in, "RepConv": _slice_block_in, "conv": _slice_block_in,
    "head": _slice_head_in, "linear": _slice_linear_in,
}


def slice_in(model: nn.Module, node: ConvNode, index: torch.Tensor) -> None:
    """Remove input channels (``index`` = the ones kept) of any consumer node."""
    SLICE_IN[node.kind](model, node, index)
