"""``DarknetModel``: a YOLOv7 ``Model`` built from a Darknet ``.cfg`` (YOLOv3/v4 and their -tiny variants).

Every Darknet layer keeps its index (routes and shortcuts refer to layers by number): layer ``i`` of the cfg is
``model.model[i]``, and one extra last layer is the detection head reading the ``[yolo]`` layers (ordered by
stride, finest first, as YOLOv7's heads are). The ``[convolutional]`` before each ``[yolo]`` is the head conv
of that level, so at its own index (and at the ``[yolo]``'s) the model just passes its input on. Body convs
are YOLOv7 ``Conv`` blocks (BatchNorm with Darknet's epsilon 1e-5, or a biased conv without BN), so the
pruning graph, the pruner, the trainer, the evaluator and the exporters work on it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.models.blocks import Concat, Conv
from yolo_prune.models.darknet.cfg import REQUIRED, DarknetCfg, Section, parse_darknet_cfg
from yolo_prune.models.darknet.head import DarknetDetect, YoloLevel
from yolo_prune.models.darknet.layers import (DarknetMaxPool, DarknetShortcut, RouteGroup, Sam, ScaleChannels,
                                              activation)
from yolo_prune.models.model import Model
from yolo_prune.models.spec import LayerSpec

DARKNET_BN_EPS = 1e-5  # AlexeyAB/darknet normalises with sqrt(var + .00001f)
# [convolutional] options this builder cannot reproduce, with the value that means "off"
UNSUPPORTED_CONV_OPTIONS = {**dict.fromkeys(("binary", "xnor", "antialiasing", "deform", "share_index", "sway", "rotate",
                                            "stretch", "stretch_sway", "assisted_excitation"), 0), "dilation": 1}


@dataclass(frozen=True)
class Shape:
    """A layer's output: channels and spatial size at the cfg's nominal input size."""

    c: int
    h: int
    w: int


@dataclass
class _Build:
    """Builder state: one entry per layer built so far, the width cursor and the head's pieces."""

    cfg: DarknetCfg
    nc: int
    widths: Sequence[int] | None
    shapes: list[Shape] = field(default_factory=list)
    specs: list[LayerSpec] = field(default_factory=list)
    modules: list[nn.Module] = field(default_factory=list)
    head_layers: set[int] = field(default_factory=set)
    levels: list[YoloLevel] = field(default_factory=list)
    head_convs: list[nn.Conv2d] = field(default_factory=list)
    cursor: int = 0

    def take(self, default: int) -> int:
        """Filters of the next body conv: the cfg's, or the pruned width list's."""
        if self.widths is not None and self.cursor >= len(self.widths):
            raise ConfigError(f"{self.cfg.source}: width list has {len(self.widths)} entries but the cfg has more "
                              f"convolutions")
        w = default if self.widths is None else int(self.widths[self.cursor])
        self.cursor += 1
        return w

    def source(self, s: Section, ref: int, key: str) -> int:
        """Absolute index of a referenced layer (negative = relative), checked."""
        i = s.index
        idx = i + ref if ref < 0 else ref
        if not 0 <= idx < i:
            raise ConfigError(f"{s.where(key)}: {key} refers to layer {idx}, which is not before layer {i}")
        if idx in self.head_layers:
            raise ConfigError(f"{s.where(key)}: reading the output of a detection layer ({idx}) is not supported")
        return idx

    def previous(self, s: Section) -> Shape:
        return self.shapes[-1] if s.index > 0 else Shape(self.cfg.net.int("channels", 3), *self.net_hw())

    def net_hw(self) -> tuple[int, int]:
        return self.cfg.net.int("height", 416), self.cfg.net.int("width", 416)


def _ref(b: _Build, s: Section, idx: int) -> int:
    """How a spec names layer ``idx``: -1 for the previous layer, else its absolute index."""
    return -1 if idx == s.index - 1 else idx


def _is_head_conv(b: _Build, s: Section) -> bool:
    nxt = s.index + 1
    return nxt < len(b.cfg.layers) and b.cfg.layers[nxt].kind == "yolo"


def _conv(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    for key, off in UNSUPPORTED_CONV_OPTIONS.items():
        if s.int(key, off) != off:
            raise ConfigError(f"{s.where(key)}: {key}={s.options[key]} is not supported")
    size, stride = s.int("size", 1), s.int("stride", 1)
    if s.int("stride_x", stride) != stride or s.int("stride_y", stride) != stride:
        raise ConfigError(f"{s.where()}: different stride_x/stride_y are not supported")
    padding = size // 2 if s.int("pad", 0) else s.int("padding", 0)
    groups, bn, act = s.int("groups", 1), s.int("batch_normalize", 0), s.value("activation", "logistic")
    inp = b.previous(s)
    out_hw = ((inp.h + 2 * padding - size) // stride + 1, (inp.w + 2 * padding - size) // stride + 1)
    if _is_head_conv(b, s):
        return _head_conv(b, s, inp, size, stride, padding, groups, bn, act)
    filters = b.take(s.int("filters", 1))
    if inp.c % groups or filters % groups:
        raise ConfigError(f"{s.where('groups')}: {inp.c} input and {filters} output channels are not divisible "
                          f"by groups={groups}")
    m = Conv(inp.c, filters, size, stride, padding, groups, activation(act, s.where("activation")))
    if bn:
        m.bn.eps = DARKNET_BN_EPS
    else:
        m.conv = nn.Conv2d(inp.c, filters, size, stride, padding, groups=groups, bias=True)
        m.bn = nn.Identity()
    return m, -1, Shape(filters, *out_hw)


def _head_conv(b: _Build, s: Section, inp: Shape, size: int, stride: int, padding: int, groups: int, bn: int,
               act: str) -> tuple[nn.Module, Any, Shape]:
    """The conv before a [yolo]: it becomes the head's conv of that level; at its index the input passes on."""
    yolo = b.cfg.layers[s.index + 1]
    new_coords = bool(yolo.int("new_coords", 0))
    wanted = "logistic" if new_coords else "linear"
    if bn or act != wanted or stride != 1 or groups != 1:
        raise ConfigError(f"{s.where()}: the conv before a [yolo] layer must have batch_normalize=0, stride=1, "
                          f"groups=1 and activation={wanted} (new_coords={int(new_coords)})")
    na = len(yolo.ints("mask", list(range(yolo.int("num", 1)))))
    filters = na * (b.nc + 5)
    if b.nc == yolo.int("classes", 20) and s.int("filters", 1) != filters:
        raise ConfigError(f"{s.where('filters')}: filters={s.int('filters', 1)} but the [yolo] layer after it needs "
                          f"{na} x (classes {b.nc} + 5) = {filters}")
    b.head_convs.append(nn.Conv2d(inp.c, filters, size, stride, padding, bias=True))
    b.head_layers.add(s.index)
    return nn.Identity(), -1, inp


def _route(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    idx = [b.source(s, r, "layers") for r in s.ints("layers", REQUIRED)]
    if not idx:
        raise ConfigError(f"{s.where('layers')}: no layers given")
    groups, group_id = s.int("groups", 1), s.int("group_id", 0)
    if not 0 <= group_id < groups:
        raise ConfigError(f"{s.where('group_id')}: group_id={group_id} must be in 0..{groups - 1}")
    shapes = [b.shapes[i] for i in idx]
    if any((x.h, x.w) != (shapes[0].h, shapes[0].w) for x in shapes):
        raise ConfigError(f"{s.where('layers')}: layers {idx} have different sizes "
                          f"{[(x.h, x.w) for x in shapes]}")
    if any(x.c % groups for x in shapes):
        raise ConfigError(f"{s.where('groups')}: channels {[x.c for x in shapes]} of layers {idx} are not divisible "
                          f"by groups={groups}")
    refs = [_ref(b, s, i) for i in idx]
    out = Shape(sum(x.c for x in shapes) // groups, shapes[0].h, shapes[0].w)
    if groups > 1:
        module: nn.Module = RouteGroup(groups, group_id)
    else:
        module = nn.Identity() if len(idx) == 1 else Concat(1)
    return module, refs[0] if len(refs) == 1 else tuple(refs), out


def _pair(b: _Build, s: Section, same: bool) -> tuple[int, Shape, Shape]:
    """The ``from`` layer of [shortcut]/[sam]/[scale_channels] and the shapes of it and the previous layer."""
    refs = s.ints("from", REQUIRED)
    if len(refs) != 1:
        raise ConfigError(f"{s.where('from')}: exactly one 'from' layer is supported, got {refs}")
    idx = b.source(s, refs[0], "from")
    prev, other = b.previous(s), b.shapes[idx]
    if same and prev != other:
        raise ConfigError(f"{s.where('from')}: layer {idx} outputs {other.c}x{other.h}x{other.w} but the previous "
                          f"layer {prev.c}x{prev.h}x{prev.w}; only equal shapes are supported")
    return idx, prev, other


def _shortcut(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    if s.value("weights_type", "none") != "none":
        raise ConfigError(f"{s.where('weights_type')}: weighted shortcuts are not supported")
    idx, prev, _ = _pair(b, s, same=True)
    act = activation(s.value("activation", "linear"), s.where("activation"))
    return DarknetShortcut(act), (-1, _ref(b, s, idx)), prev


def _sam(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    idx, prev, _ = _pair(b, s, same=True)
    return Sam(activation(s.value("activation", "linear"), s.where("activation"))), (-1, _ref(b, s, idx)), prev


def _scale_channels(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    if s.int("scale_wh", 0):
        raise ConfigError(f"{s.where('scale_wh')}: scale_wh=1 is not supported")
    idx, prev, other = _pair(b, s, same=False)
    if (prev.h, prev.w) != (1, 1) or prev.c != other.c:
        raise ConfigError(f"{s.where('from')}: needs per-channel scales ({other.c}x1x1) from the previous layer, "
                          f"got {prev.c}x{prev.h}x{prev.w}")
    act = activation(s.value("activation", "linear"), s.where("activation"))
    return ScaleChannels(act), (_ref(b, s, idx), -1), other


def _maxpool(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    stride = s.int("stride", 1)
    size = s.int("size", stride)
    if s.int("stride_x", stride) != stride or s.int("stride_y", stride) != stride:
        raise ConfigError(f"{s.where()}: different stride_x/stride_y are not supported")
    if s.int("maxpool_depth", 0) or s.int("antialiasing", 0):
        raise ConfigError(f"{s.where()}: maxpool_depth/antialiasing are not supported")
    padding = s.int("padding", size - 1)
    inp = b.previous(s)
    out = Shape(inp.c, (inp.h + padding - size) // stride + 1, (inp.w + padding - size) // stride + 1)
    return DarknetMaxPool(size, stride, padding), -1, out


def _upsample(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    stride = s.int("stride", 2)
    if stride < 1 or s.float("scale", 1.0) != 1.0:
        raise ConfigError(f"{s.where('stride')}: only upsampling by a positive stride (scale=1) is supported")
    inp = b.previous(s)
    return nn.Upsample(scale_factor=stride, mode="nearest"), -1, Shape(inp.c, inp.h * stride, inp.w * stride)


def _avgpool(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    inp = b.previous(s)
    return nn.AdaptiveAvgPool2d(1), -1, Shape(inp.c, 1, 1)


def _dropout(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    return nn.Dropout(s.float("probability", 0.5)), -1, b.previous(s)


def _yolo(b: _Build, s: Section) -> tuple[nn.Module, Any, Shape]:
    if s.index - 1 not in b.head_layers:
        raise ConfigError(f"{s.where()}: a [yolo] layer must follow the [convolutional] that feeds it")
    num = s.int("num", 1)
    anchors = s.floats("anchors", REQUIRED)
    mask = s.ints("mask", list(range(num)))
    if len(anchors) != 2 * num or any(not 0 <= k < num for k in mask):
        raise ConfigError(f"{s.where('anchors')}: needs num={num} anchor pairs and mask indices below num "
                          f"(got {len(anchors)} values, mask {mask})")
    pairs = tuple((anchors[2 * k], anchors[2 * k + 1]) for k in mask)
    b.levels.append(YoloLevel(pairs, s.float("scale_x_y", 1.0), bool(s.int("new_coords", 0)), s.index, s.index - 1))
    b.head_layers.add(s.index)
    return nn.Identity(), -1, b.previous(s)


SectionBuilder = Callable[[_Build, Section], tuple[nn.Module, Any, Shape]]
SECTIONS: dict[str, SectionBuilder] = {
    "convolutional": _conv, "conv": _conv, "route": _route, "shortcut": _shortcut, "sam": _sam,
    "scale_channels": _scale_channels, "maxpool": _maxpool, "max": _maxpool, "upsample": _upsample,
    "avgpool": _avgpool, "avg": _avgpool, "dropout": _dropout, "yolo": _yolo,
}


def yolo_classes(cfg: DarknetCfg) -> int:
    """The class count of the cfg's [yolo] layers (they must agree)."""
    counts = {s.int("classes", 20) for s in cfg.layers if s.kind == "yolo"}
    if not counts:
        raise ConfigError(f"{cfg.source}: no [yolo] layer: only Darknet YOLO detectors are supported")
    if len(counts) > 1:
        raise ConfigError(f"{cfg.source}: [yolo] layers disagree on classes: {sorted(counts)}")
    return counts.pop()


def _build(cfg: DarknetCfg, nc: int, widths: Sequence[int] | None) -> _Build:
    b = _Build(cfg, nc, widths)
    for s in cfg.layers:
        fn = SECTIONS.get(s.kind)
        if fn is None:
            raise ConfigError(f"{s.where()}: layer type [{s.kind}] is not supported; known: {', '.join(SECTIONS)}")
        module, from_, shape = fn(b, s)
        kind = f"{s.kind} (head)" if s.index in b.head_layers else s.kind  # its work is done by the head layer
        b.specs.append(LayerSpec(s.index, from_, 1, kind, ()))
        b.modules.append(module)
        b.shapes.append(shape)
    if widths is not None and b.cursor != len(widths):
        raise ConfigError(f"{cfg.source}: width list has {len(widths)} entries but the cfg has {b.cursor} convolutions")
    return b


class DarknetModel(Model):
    """A Darknet YOLO detector as a ``Model``; ``darknet`` is the parsed cfg (its text is ``yaml['darknet']``).

    ``widths`` overrides the filters of the body convs (module order), as for pruned YOLOv7 models; ``nc``
    overrides the [yolo] layers' class count (the head convs follow). ``header``: the weights file's
    (major, minor, revision, seen), kept so a written file carries it again.
    """

    def __init__(self, cfg: DarknetCfg | str, nc: int | None = None, widths: Sequence[int] | None = None,
                 header: Sequence[int] | None = None):
        nn.Module.__init__(self)
        self.darknet = parse_darknet_cfg(cfg) if isinstance(cfg, str) else cfg
        nc = yolo_classes(self.darknet) if nc is None else int(nc)
        b = _build(self.darknet, nc, widths)
        order = sorted(range(len(b.levels)), key=lambda k: b.shapes[b.levels[k].yolo_layer].w, reverse=True)
        levels = [b.levels[k] for k in order]
        if len({len(lv.anchors) for lv in levels}) != 1:
            raise ConfigError(f"{self.darknet.source}: every [yolo] layer must use the same number of anchors (mask)")
        head = DarknetDetect(nc, levels, [b.head_convs[k] for k in order])
        n = len(b.modules)
        spec = LayerSpec(n, tuple(lv.yolo_layer for lv in levels), 1, "DarknetDetect", ())
        self._shapes = b.shapes
        self.header = tuple(int(v) for v in header) if header is not None else None
        cfg_dict = {"darknet": self.darknet.text(), "nc": nc, "source": self.darknet.source,
                    "header": list(self.header) if self.header else None}
        self._adopt(cfg_dict, b.specs + [spec], b.modules + [head], self.darknet.net.int("channels", 3))

    def _layer_strides(self) -> list[float]:
        """Strides from the shapes traced at the cfg's nominal input size (exact for every Darknet layer)."""
        h = self.darknet.net.int("height", 416)
        return [h / s.h for s in self._shapes] + [0.0]

    @property
    def default_img_size(self) -> int:
        """The cfg's ``[net] width`` (Darknet trains and runs the network at that size)."""
        return self.darknet.net.int("width", 416)

    @property
    def conv_layers(self) -> list[int]:
        """Cfg layer index of every body conv, in module order (``widths()`` order)."""
        head = {lv.conv_layer for lv in self.detect.levels}
        return [s.index for s in self.darknet.layers if s.kind in ("convolutional", "conv") and s.index not in head]


def build_darknet(cfg: DarknetCfg | str | dict, nc: int | None = None, widths: Sequence[int] | None = None) -> DarknetModel:
    """A DarknetModel from a parsed cfg, cfg text, or the dict a checkpoint stores (``yaml`` of a DarknetModel)."""
    if isinstance(cfg, dict):
        parsed = parse_darknet_cfg(cfg["darknet"], cfg.get("source", "<cfg>"))
        return DarknetModel(parsed, nc if nc is not None else cfg.get("nc"), widths, cfg.get("header"))
    return DarknetModel(cfg, nc, widths)
