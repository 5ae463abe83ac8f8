"""Derive the connectivity graph of a model by tracing channel layouts through its layers.

Each tensor is described by its *layout*: the list of slots (producer conv, channels) that make up its
channels in order. Concatenation joins layouts, pooling/upsampling keep them, a conv starts a new one.
Every conv records the layout it reads, which yields both the published ``[consumers, slices, sizes]``
entries and the exact input offsets the pruner needs. A residual add ties the channels at equal positions of
its inputs: their producers become one *coupled group*, pruned with the same indices (an add of layouts whose
slots do not line up, or of the input image, leaves its producers unprunable, with the reason).

YOLOv7 ``Model``s are walked through their cfg rows; any other network (the classification CNNs) is traced
with ``torch.fx`` (:mod:`.fx_trace`) through the same table of tracers.
"""
from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.graph.node import NodeDraft, Slot
from yolo_prune.models.blocks import MP, SP, SPPCSPC, Concat, Conv, DownC, ReOrg, RepConv, Shortcut
from yolo_prune.models.darknet.layers import DarknetMaxPool, DarknetShortcut, RouteGroup, Sam, ScaleChannels
from yolo_prune.models.gating import GatedConv
from yolo_prune.models.heads import Detect, IAuxDetect
from yolo_prune.models.model import Model, conv_out_channels

Layout = list[Slot]


class _Tracer:
    """Allocates conv indices in module order and connects each conv to the layout it reads."""

    def __init__(self) -> None:
        self.nodes: list[NodeDraft] = []
        self.parent: dict[int, int] = {}  # union-find over coupled layers
        self.bn_of: dict[str, str] = {}  # plain conv -> the BatchNorm2d that reads only its output (fx tracing)

    def allocate(self, name: str, kind: str, out_channels: int) -> int:
        self.nodes.append(NodeDraft(len(self.nodes), name, kind, out_channels))
        return len(self.nodes) - 1

    def root(self, i: int) -> int:
        while self.parent.get(i, i) != i:
            i = self.parent[i]
        return i

    def couple(self, layouts: list[Layout], where: str) -> Layout:
        """Element-wise add of ``layouts``: producers at equal positions become one coupled group."""
        first = layouts[0]
        for other in layouts[1:]:
            if [s.size for s in other] != [s.size for s in first] or any(s.parts > 1 for s in first + other):
                for layout in (first, other):
                    self.tie(layout, f"residual add at {where} of inputs whose channel slices do not line up")
                continue
            for a, b in ((x.producer, y.producer) for x, y in zip(first, other)):
                if a is None or b is None:
                    self.tie([Slot(a, 0), Slot(b, 0)], f"residual add at {where} with the network input")
                elif self.root(a) != self.root(b):
                    self.parent[self.root(b)] = self.root(a)
        return first

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Coupled groups (sorted, size >= 2); a reason that fixes one member fixes all of them."""
        members: dict[int, list[int]] = {}
        for i in range(len(self.nodes)):
            members.setdefault(self.root(i), []).append(i)
        groups = tuple(sorted(tuple(g) for g in members.values() if len(g) > 1))
        for group in groups:
            fixed = [i for i in group if self.nodes[i].reasons]
            for i in group:
                for j in fixed:
                    if j != i:
                        self.nodes[i].reasons.append(f"coupled with layer {j} ({self.nodes[j].name}), which is fixed")
        return groups

    def freeze(self) -> PruningGraph:
        """The finished graph; convs must come before the head/linear layers (the published indexing)."""
        groups = self.groups()
        nodes = tuple(n.freeze() for n in self.nodes)
        nconv = sum(1 for n in nodes if n.kind not in ("head", "linear"))
        if any(n.kind in ("head", "linear") for n in nodes[:nconv]):
            late = next(n for n in nodes[nconv:] if n.kind not in ("head", "linear"))
            raise PruningError(f"{late.name}: a convolution after the network's output layers is not supported")
        return PruningGraph(nodes, nconv, groups)

    def connect(self, index: int, layout: Layout) -> Layout:
        """Record that conv ``index`` reads ``layout``; return the layout of its output."""
        node = self.nodes[index]
        node.inputs = list(layout)
        for slot, s in enumerate(layout):
            if s.producer is not None:
                producer = self.nodes[s.producer]
                producer.consumers.append((index, slot))
                producer.parts = math.lcm(producer.parts, s.parts)
        return [Slot(index, node.out_channels)]

    def tie(self, layout: Layout, reason: str) -> None:
        """Channels of ``layout`` are tied to other channels (residual add): their producers stay whole."""
        for s in layout:
            if s.producer is not None and reason not in self.nodes[s.producer].reasons:
                self.nodes[s.producer].reasons.append(reason)


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
    return t.couple(inp, name)


def _reorg(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    (layout,) = inp
    return layout * 4


def chunk(t: _Tracer, layout: Layout, part: int, parts: int, where: str) -> Layout:
    """Chunk ``part`` of ``parts`` equal chunks of a layout's channels. One producer's channels (or an equal chunk
    of them) cut into equal pieces become a part-slot of that producer: it is pruned evenly per chunk, so the cut
    stays where it was. A concatenation is cut at a fixed fraction of its total, which moves when one of its
    inputs is pruned alone, so its producers stay whole."""
    if parts == 1:
        return layout
    size = sum(s.size for s in layout) // parts
    if len(layout) == 1 and layout[0].producer is not None:
        (s,) = layout
        return [Slot(s.producer, size, s.part * parts + part, s.parts * parts)]
    t.tie(layout, f"{where} splits a concatenation (the cut moves when one of its inputs is pruned)")
    lo, hi, out, offset = part * size, (part + 1) * size, [], 0
    for s in layout:
        start, stop = max(offset, lo), min(offset + s.size, hi)
        offset += s.size
        if start < stop:
            out.append(Slot(s.producer, stop - start))
    return out


def _route_group(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    """Darknet ``[route] groups=G group_id=J``: chunk J of every input, concatenated."""
    return [slot for layout in inp for slot in chunk(t, layout, m.group_id, m.groups, f"route {name}")]


def _same(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    return inp[0]


def _plain_conv(t: _Tracer, name: str, m: nn.Conv2d, inp: list[Layout]) -> Layout:
    """A bare Conv2d (torchvision networks); its BatchNorm, when it reads only this conv, is sliced with it."""
    idx = t.allocate(name, "conv", m.out_channels)
    t.nodes[idx].bn = t.bn_of.get(name, "")
    if m.groups != 1:
        t.nodes[idx].reasons.append(f"grouped convolution (groups={m.groups})")
        t.tie(inp[0], f"feeds grouped convolution {name}")
    return t.connect(idx, inp[0])


def _batch_norm(t: _Tracer, name: str, m: nn.Module, inp: list[Layout]) -> Layout:
    if name not in t.bn_of.values():
        t.tie(inp[0], f"BatchNorm {name} is not directly after the conv that produces its channels")
    return inp[0]


def _linear(t: _Tracer, name: str, m: nn.Linear, inp: list[Layout]) -> Layout:
    """A Linear reading flattened conv channels (channel-major, ``spatial`` features each) is sliced with them."""
    (layout,) = inp
    if all(s.producer is None for s in layout):
        return [Slot(None, m.out_features)]
    channels = sum(s.size for s in layout)
    if m.in_features % channels:
        t.tie(layout, f"{name} reads {m.in_features} features, not a multiple of its {channels} input channels")
        return [Slot(None, m.out_features)]
    idx = t.allocate(name, "linear", m.out_features)
    t.nodes[idx].spatial = m.in_features // channels
    t.connect(idx, layout)
    return [Slot(None, m.out_features)]


def _head(t: _Tracer, name: str, m: Detect, inp: list[Layout]) -> Layout:
    convs = [(f"{name}.m.{i}", c) for i, c in enumerate(m.m)]
    if isinstance(m, IAuxDetect):
        convs += [(f"{name}.m2.{i}", c) for i, c in enumerate(m.m2)]
    for (conv_name, conv), layout in zip(convs, inp):
        t.connect(t.allocate(conv_name, "head", conv.out_channels), layout)
    return []


Tracer = Callable[[_Tracer, str, nn.Module, list[Layout]], Layout]
# Modules (and, for fx-traced networks, functions) that keep channel positions and map zero channels to zero.
SAME_LAYOUT = (nn.Upsample, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout,
               nn.Identity, nn.Flatten, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU)
TRACERS: dict[type, Tracer] = {
    Conv: _conv, RepConv: _conv, SPPCSPC: _sppcspc, DownC: _downc, Concat: _concat, Shortcut: _shortcut,
    ReOrg: _reorg, MP: _same, SP: _same, RouteGroup: _route_group, DarknetMaxPool: _same, DarknetShortcut: _shortcut,
    Sam: _shortcut, ScaleChannels: _shortcut, nn.Conv2d: _plain_conv, nn.BatchNorm2d: _batch_norm, nn.Linear: _linear,
    GatedConv: _plain_conv,
    **{cls: _same for cls in SAME_LAYOUT},
}


def _tracer_for(m: nn.Module, index: int) -> Tracer:
    if isinstance(m, Detect):
        return _head
    for cls, fn in TRACERS.items():
        if type(m) is cls:
            return fn
    raise PruningError(f"layer {index}: cannot derive a pruning graph through {type(m).__name__}; "
                       f"supported: {', '.join(c.__name__ for c in TRACERS)}, Detect heads")


def trace_layouts(model: nn.Module) -> tuple[PruningGraph, list[list[Layout]]]:
    """The graph, and for every cfg layer the layouts of its inputs (the slots each input tensor is made of);
    a cfg-built ``Model`` (Darknet models included) is walked row by row, any other network is traced with
    ``torch.fx`` and has no per-layer inputs ([])."""
    if not isinstance(model, Model):
        from yolo_prune.graph.fx_trace import trace_network

        return trace_network(model, _Tracer(), TRACERS), []
    t = _Tracer()
    outputs: list[Layout] = []
    inputs: list[list[Layout]] = []
    image: Layout = [Slot(None, model.ch_in)]
    for spec, m in zip(model.specs, model.model):
        inputs.append([image if s == -1 else outputs[s] for s in spec.sources()])
        outputs.append(_tracer_for(m, spec.index)(t, f"model.{spec.index}", m, inputs[-1]))
    return t.freeze(), inputs


def derive_graph(model: nn.Module) -> PruningGraph:
    """The connectivity graph of ``model`` (its current, possibly pruned, widths); the model is not changed.

    A YOLOv7 ``Model`` (Darknet models included) is walked row by row; any other network is traced with ``torch.fx``.
    """
    return trace_layouts(model)[0]
