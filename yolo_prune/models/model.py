"""The YOLOv7 ``Model``: a routed sequence of layers built from an official-format cfg dict."""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.models.blocks import MP, SPPCSPC, Concat, Conv, DownC, ReOrg, RepConv
from yolo_prune.models.builder import BuildContext, build_layers
from yolo_prune.models.heads import Detect, IAuxDetect
from yolo_prune.models.spec import LayerSpec, parse_layers

PRUNABLE_TYPES = (Conv, RepConv)


class Model(nn.Module):
    """YOLOv7 detector. ``yaml`` keeps the cfg dict (official attribute name); ``widths`` rebuilds pruned models.

    Input: float [B, 3, H, W] RGB in 0..1, H and W multiples of the max stride.
    Train mode returns raw maps; eval mode ``(predictions [B, N, nc+5], raw maps)`` (see ``heads``).
    """

    def __init__(self, cfg: dict, ch: int = 3, nc: int | None = None, widths: Sequence[int] | None = None,
                 source: str = "<cfg>"):
        super().__init__()
        cfg = copy.deepcopy(cfg)
        if nc is not None and nc != cfg.get("nc"):
            cfg["nc"] = int(nc)
        specs = parse_layers(cfg, source)
        anchors = cfg["anchors"]
        na = (len(anchors[0]) // 2) if isinstance(anchors, list) else int(anchors)
        ctx = BuildContext(float(cfg.get("width_multiple", 1.0)), na * (cfg["nc"] + 5), widths)
        modules, _ = build_layers(specs, ch, ctx, source)
        if widths is not None and ctx.cursor != len(widths):
            raise ConfigError(f"{source}: width list has {len(widths)} entries but the model has {ctx.cursor} convolutions")
        if not isinstance(modules[-1], Detect):
            raise ConfigError(f"{source}: the last layer must be a detection head (Detect/IDetect/IAuxDetect)")
        self._adopt(cfg, specs, modules, ch)

    def _adopt(self, cfg: dict[str, Any], specs: Sequence[LayerSpec], modules: Sequence[nn.Module], ch: int) -> None:
        """Take built layers (the last one a detection head) with their rows; set up strides and anchors.
        Model families built from other formats (Darknet) construct their layers and call this."""
        self.yaml: dict[str, Any] = cfg
        self.model = nn.Sequential(*modules)
        self.specs: tuple[LayerSpec, ...] = tuple(specs)
        self.save = sorted(_saved_layers(specs))
        self.names = [str(i) for i in range(self.detect.nc)]
        self.ch_in = ch
        self._init_head()

    def replace_specs(self, cfg: dict[str, Any], specs: Sequence[LayerSpec]) -> None:
        """Adopt a rewritten cfg whose rows describe the current modules (e.g. after an activation swap); the
        layers whose outputs are kept for later rows follow from the new rows."""
        self.yaml, self.specs, self.save = cfg, tuple(specs), sorted(_saved_layers(specs))

    # ----------------------------------------------------------------------------------- construction
    def _layer_strides(self) -> list[float]:
        """Downsampling factor of every layer's output, derived from the modules (no forward pass)."""
        strides: list[float] = []
        for spec, m in zip(self.specs, self.model):
            inp = [1.0 if s == -1 else strides[s] for s in spec.sources()]
            strides.append(inp[0] * _module_stride(m))
        return strides

    def _init_head(self) -> None:
        head = self.detect
        strides = self._layer_strides()
        head_inputs = self.specs[-1].sources()[: head.nl]
        level_strides = [strides[s] for s in head_inputs]
        head.stride = torch.tensor(level_strides, dtype=torch.float32, device="cpu")
        _check_anchor_order(head)
        head.anchors /= head.stride.view(-1, 1, 1).to(head.anchors.device)
        self.stride = head.stride
        for convs in ([head.m] + ([head.m2] if isinstance(head, IAuxDetect) else [])):
            for conv, s in zip(convs, level_strides):
                b = conv.bias.detach().view(head.na, -1)
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (head.nc - 0.99))

    # ----------------------------------------------------------------------------------- queries
    @property
    def detect(self) -> Detect:
        """The detection head (last layer)."""
        return self.model[-1]

    @property
    def nc(self) -> int:
        return self.detect.nc

    @property
    def is_p6(self) -> bool:
        """A P6 model (yolov7-w6/e6/d6/e6e): outputs down to stride 64, trained at 1280 with ``scratch.p6``."""
        return float(self.stride.max()) >= 64

    @property
    def default_img_size(self) -> int:
        """Image size used when none is given: 1280 for P6 models (as the official P6 recipe), else 640."""
        return 1280 if self.is_p6 else 640

    def conv_modules(self) -> list[nn.Module]:
        """Conv/RepConv modules in module order: the published conv-layer indexing (head convs excluded)."""
        return [m for m in self.model.modules() if isinstance(m, PRUNABLE_TYPES)]

    def layer_channels(self) -> list[int]:
        """Output channels of every cfg layer, read from the current modules (0 for the head)."""
        out: list[int] = []
        for spec, m in zip(self.specs, self.model):
            inp = [self.ch_in if s == -1 else out[s] for s in spec.sources()]
            out.append(_layer_out_channels(m, inp))
        return out

    def widths(self) -> list[int]:
        """Output channels of every Conv/RepConv in module order (what a pruned checkpoint records)."""
        return [conv_out_channels(m) for m in self.conv_modules()]

    # ----------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor):
        return self.detect(self.head_inputs(x))

    def head_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps the detection head reads (one per level; exporters end DPU graphs at its convs)."""
        outputs: list[torch.Tensor | None] = []
        save = set(self.save)
        for i, (spec, m) in enumerate(zip(self.specs, self.model)):
            f = spec.from_
            if f != -1:
                x = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
            if i == len(self.model) - 1:
                return x if isinstance(x, list) else [x]
            x = m(x)
            outputs.append(x if i in save else None)
        raise AssertionError("a model ends with its detection head")


def _saved_layers(specs: Sequence[LayerSpec]) -> set[int]:
    """Layers whose output is read later by an explicit index (official ``save`` list; literal -1 is not)."""
    saved: set[int] = set()
    for spec in specs:
        fs = (spec.from_,) if isinstance(spec.from_, int) else spec.from_
        saved.update(f % spec.index for f in fs if f != -1 and spec.index > 0)
    return saved


def conv_out_channels(m: nn.Module) -> int:
    """Output channels of a Conv or RepConv (fused or not)."""
    if isinstance(m, Conv):
        return m.conv.out_channels
    conv = m.rbr_reparam if m.rbr_reparam is not None else m.rbr_dense[0]
    return conv.out_channels


def _layer_out_channels(m: nn.Module, inp: list[int]) -> int:
    """Output channels of one layer given its inputs' channels."""
    if isinstance(m, PRUNABLE_TYPES):
        return conv_out_channels(m)
    if isinstance(m, SPPCSPC):
        return m.cv7.conv.out_channels
    if isinstance(m, DownC):
        return m.cv2.conv.out_channels + m.cv3.conv.out_channels
    if isinstance(m, Concat):
        return sum(inp)
    if isinstance(m, ReOrg):
        return 4 * inp[0]
    if isinstance(m, Detect):
        return 0
    if hasattr(m, "out_channels_for"):  # layers of other model families (Darknet route groups)
        return m.out_channels_for(inp)
    return inp[0]  # pooling, upsampling, Shortcut


def _module_stride(m: nn.Module) -> float:
    """How much a layer downsamples (0.5 for a 2x upsample)."""
    if isinstance(m, Conv):
        return float(m.conv.stride[0])
    if isinstance(m, RepConv):
        conv = m.rbr_reparam if m.rbr_reparam is not None else m.rbr_dense[0]
        return float(conv.stride[0])
    if isinstance(m, MP):
        return float(m.m.stride)
    if isinstance(m, DownC):
        return float(m.mp.stride)
    if isinstance(m, ReOrg):
        return 2.0
    if isinstance(m, nn.Upsample):
        return 1.0 / float(m.scale_factor)
    if isinstance(m, nn.Sequential):  # a repeated block
        s = 1.0
        for sub in m:
            s *= _module_stride(sub)
        return s
    return 1.0  # SP, SPPCSPC, Concat, Shortcut, heads


def _check_anchor_order(head: Detect) -> None:
    """Flip anchors if their order disagrees with the stride order (official check_anchor_order); models built
    on the meta device (for counting, or a checkpoint's dry run) keep the cfg's order."""
    if head.anchor_grid.is_meta:
        return
    a = head.anchor_grid.prod(-1).view(-1)
    da, ds = a[-1] - a[0], head.stride[-1] - head.stride[0]
    if da.sign() != ds.sign():
        head.anchors[:] = head.anchors.flip(0)
        head.anchor_grid[:] = head.anchor_grid.flip(0)
