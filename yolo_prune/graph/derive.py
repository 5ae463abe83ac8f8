"""Derive the connectivity graph of a model by tracing channel layouts through its layers.

Each tensor is described by its *layout*: the list of slots (producer conv, channels) that make up its
channels in order. Concatenation joins layouts, pooling/upsampling keep them, a conv starts a new one.
Every conv records the layout it reads, which yields both the published ``[consumers, slices, sizes]``
entries and the exact input offsets the pruner needs. Residual adds tie channels, so their producers are
marked not prunable (with the reason).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.graph.node import NodeDraft, Slot
from yolo_prune.models.blocks import MP, SP, SPPCSPC, Concat, Conv, DownC, ReOrg, RepConv, Shortcut
from yolo_prune.models.heads import Detect, IAuxDetect
from yolo_prune.models.model import Model, conv_out_channels

Layout = list[Slot]


class _Tracer:
    """Allocates conv indices in module order and connects each conv to the layout it reads."""

    def __init__(self) -> None:
        self.nodes: list[NodeDraft] = []

    def allocate(self, name: str, kind: str, out_channels: int) -> int:
        self.nodes.append(NodeDraft(len(self.nodes), name, kind, out_channels))
        return len(self.nodes) - 1

    def connect(self, index: int, layout: Layout) -> Layout:
        """Record that conv ``index`` reads ``layout``; return the layout of its output."""
        node = self.nodes[index]
        node.inputs = list(layout)
        for slot, (producer, _) in enumerate(layout):
            if producer is not None:
                self.nodes[producer].consumers.append((index, slot))
        return [(index, node.out_channels)]

    def tie(self, layout: Layout, reason: str) -> None:
        """Channels of ``layout`` are tied to other channels (residual add): their producers stay whole."""
        for producer, _ in layout:
            if producer is not None and reason not in self.nodes[producer].reasons:
                self.nodes[producer].reasons.append(reason)


def _conv(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    (layout,) = inp
    kind = "RepConv" if isinstance(m, RepConv) else "Conv"
    idx = t.allocate(name, kind, conv_out_channels(m))
    conv = m.conv if isinstance(m, Conv) else (m.rbr_reparam or m.rbr_dense[0])
    if conv.groups != 1:
        t.nodes[idx].reasons.append(f"grouped convolution (groups={conv.groups})")
        t.tie(layout, f"feeds grouped convolution {name}")
    out = t.connect(idx, layout)
    if isinstance(m, RepConv) and m.rbr_identity is not None:
        t.nodes[idx].reasons.append("RepConv identity branch ties output to input channels")
        t.tie(layout, f"feeds the identity branch of RepConv {name}")
    return out


def _sppcspc(t: _Tracer, name: str, m: SPPCSPC, inp: list[Layout]) -> Layout:
    (layout,) = inp
    cv = {k: t.allocate(f"{name}.{k}", "Conv", getattr(m, k).conv.out_channels)
          for k in ("cv1", "cv2", "cv3", "cv4", "cv5", "cv6", "cv7")}  # registration order
    x1 = t.connect(cv["cv4"], t.connect(cv["cv3"], t.connect(cv["cv1"], layout)))
    y1 = t.connect(cv["cv6"], t.connect(cv["cv5"], x1 * (len(m.m) + 1)))
    y2 = t.connect(cv["cv2"], layout)
    return t.connect(cv["cv7"], y1 + y2)


def _downc(t: _Tracer, name: str, m: DownC, inp: list[Layout]) -> Layout:
    (layout,) = inp
    cv = {k: t.allocate(f"{name}.{k}", "Conv", getattr(m, k).conv.out_channels) for k in ("cv1", "cv2", "cv3")}
    return t.connect(cv["cv2"], t.connect(cv["cv1"], layout)) + t.connect(cv["cv3"], layout)


def _concat(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    return [slot for layout in inp for slot in layout]


def _shortcut(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    for layout in inp:
        t.tie(layout, f"residual add at {name}")
    return inp[0]


def _reorg(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    (layout,) = inp
    return layout * 4


def _same(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    (layout,) = inp
    return layout


def _head(t: _Tracer, name: str, m: Detect, inp: list[Layout]) -> Layout:
    convs = [(f"{name}.m.{i}", c) for i, c in enumerate(m.m)]
    if isinstance(m, IAuxDetect):
        convs += [(f"{name}.m2.{i}", c) for i, c in enumerate(m.m2)]
    for (conv_name, conv), layout in zip(convs, inp):
        t.connect(t.allocate(conv_name, "head", conv.out_channels), layout)
    return []


Tracer = Callable[[_Tracer, str, nn.Module, list[Layout]], Layout]
TRACERS: dict[type, Tracer] = {
    Conv: _conv, RepConv: _conv, SPPCSPC: _sppcspc, DownC: _downc, Concat: _concat, Shortcut: _shortcut,
    ReOrg: _reorg, MP: _same, SP: _same, nn.Upsample: _same, nn.MaxPool2d: _same,
}


def _tracer_for(m: nn.Module, index: int) -> Tracer:
    if isinstance(m, Detect):
        return _head
    for cls, fn in TRACERS.items():
        if type(m) is cls:
            return fn
    raise PruningError(f"layer {index}: cannot derive a pruning graph through {type(m).__name__}; "
                       f"supported: {', '.join(c.__name__ for c in TRACERS)}, Detect heads")


def trace_layouts(model: Model) -> tuple[PruningGraph, list[list[Layout]]]:
    """The graph, and for every cfg layer the layouts of its inputs (the slots each input tensor is made of)."""
    t = _Tracer()
    outputs: list[Layout] = []
    inputs: list[list[Layout]] = []
    image: Layout = [(None, model.ch_in)]
    for spec, m in zip(model.specs, model.model):
        inputs.append([image if s == -1 else outputs[s] for s in spec.sources()])
        outputs.append(_tracer_for(m, spec.index)(t, f"model.{spec.index}", m, inputs[-1]))
    nodes = tuple(n.freeze() for n in t.nodes)
    return PruningGraph(nodes, sum(1 for n in nodes if n.kind != "head")), inputs


def derive_graph(model: Model) -> PruningGraph:
    """The connectivity graph of ``model`` (its current, possibly pruned, widths); the model is not changed."""
    return trace_layouts(model)[0]
