"""Build layers from LayerSpecs through a table of module builders (no eval, no string keys in paths).

Each builder receives the input channel counts and a ``take(default)`` callback that returns the output
width of the next convolution in module order — the default, or an override from a pruned width list.
That one callback is how pruned architectures rebuild exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.models.blocks import MP, SP, SPPCSPC, Concat, Conv, DownC, ReOrg, RepConv, Shortcut
from yolo_prune.models.heads import HEADS
from yolo_prune.models.spec import ActivationSpec, LayerSpec, make_divisible


@dataclass
class BuildContext:
    """What a module builder may read: width multiplier, head width, and the conv-width cursor."""

    width_multiple: float
    no: int
    widths: Sequence[int] | None = None
    cursor: int = field(default=0)

    def take(self, default: int) -> int:
        """Output width of the next conv in module order (override if a width list was given)."""
        w = default if self.widths is None or self.cursor >= len(self.widths) else int(self.widths[self.cursor])
        self.cursor += 1
        return w

    def scale(self, c2: int) -> int:
        """Apply width_multiple as the official parser does (head output widths are left alone)."""
        return c2 if c2 == self.no else make_divisible(c2 * self.width_multiple, 8)


def _act(value: Any) -> Any:
    return value.build() if isinstance(value, ActivationSpec) else value


def _arg(args: Sequence[Any], i: int, default: Any) -> Any:
    return args[i] if len(args) > i else default


def _one_input(spec: LayerSpec, c1s: list[int]) -> int:
    if len(c1s) != 1:
        raise ConfigError(f"layer {spec.index} ({spec.module}) takes one input, got 'from' {spec.from_!r}")
    return c1s[0]


def build_conv(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    a = spec.args
    c2 = ctx.take(ctx.scale(a[0]))
    m = Conv(_one_input(spec, c1s), c2, _arg(a, 1, 1), _arg(a, 2, 1), _arg(a, 3, None), _arg(a, 4, 1),
             _act(_arg(a, 5, True)))
    return m, c2


def build_repconv(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    a = spec.args
    c2 = ctx.take(ctx.scale(a[0]))
    m = RepConv(_one_input(spec, c1s), c2, _arg(a, 1, 3), _arg(a, 2, 1), _arg(a, 3, None), _arg(a, 4, 1),
                _act(_arg(a, 5, True)), bool(_arg(a, 6, False)))
    return m, c2


def build_sppcspc(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    # official signature after parse: SPPCSPC(c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13))
    a = spec.args
    c2 = ctx.scale(a[0])
    e, k = _arg(a, 4, 0.5), tuple(_arg(a, 5, (5, 9, 13)))
    hidden = int(2 * c2 * e)
    widths = [ctx.take(hidden) for _ in range(6)] + [ctx.take(c2)]
    return SPPCSPC(_one_input(spec, c1s), widths, k), widths[-1]


def build_downc(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    # official: DownC(c1, c2, n=1, k=2): cv1 c1->c1, cv2 -> c2//2 (stride k), cv3 -> c2//2
    a = spec.args
    c1 = _one_input(spec, c1s)
    c2 = ctx.scale(a[0])
    k = _arg(a, 1, 2)
    widths = [ctx.take(c1), ctx.take(c2 // 2), ctx.take(c2 // 2)]
    return DownC(c1, widths, k), widths[1] + widths[2]


def build_concat(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    return Concat(_arg(spec.args, 0, 1)), sum(c1s)


def build_shortcut(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    if len(c1s) != 2 or c1s[0] != c1s[1]:
        raise ConfigError(f"layer {spec.index} (Shortcut) needs two inputs of equal width, got {c1s}")
    return Shortcut(_arg(spec.args, 0, 0)), c1s[0]


def build_reorg(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    return ReOrg(), 4 * _one_input(spec, c1s)


def build_mp(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    return MP(*spec.args), _one_input(spec, c1s)


def build_sp(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    return SP(*spec.args), _one_input(spec, c1s)


def build_upsample(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    size, scale, mode = (list(spec.args) + [None, None, "nearest"][len(spec.args):])[:3]
    return nn.Upsample(size=size, scale_factor=scale, mode=mode), _one_input(spec, c1s)


def build_head(ctx: BuildContext, spec: LayerSpec, c1s: list[int]) -> tuple[nn.Module, int]:
    nc, anchors = spec.args[0], spec.args[1]
    if isinstance(anchors, int):  # number of anchors per level, official: list(range(n * 2)) placeholders
        anchors = [list(range(anchors * 2))] * len(c1s)
    return HEADS[spec.module](nc, anchors, c1s), 0


ModuleBuilder = Callable[[BuildContext, LayerSpec, list[int]], tuple[nn.Module, int]]

MODULES: dict[str, ModuleBuilder] = {
    "Conv": build_conv,
    "RepConv": build_repconv,
    "SPPCSPC": build_sppcspc,
    "DownC": build_downc,
    "Concat": build_concat,
    "Shortcut": build_shortcut,
    "ReOrg": build_reorg,
    "MP": build_mp,
    "SP": build_sp,
    "nn.Upsample": build_upsample,
    "Upsample": build_upsample,
    "Detect": build_head,
    "IDetect": build_head,
    "IAuxDetect": build_head,
}


def build_layers(specs: list[LayerSpec], ch: int, ctx: BuildContext, source: str = "<cfg>") -> tuple[list[nn.Module], list[int]]:
    """Instantiate every layer; returns the modules and each layer's output channel count."""
    outs: list[int] = []
    modules: list[nn.Module] = []
    for spec in specs:
        builder = MODULES.get(spec.module)
        if builder is None:
            raise ConfigError(f"{source}: unknown module '{spec.module}' at layer {spec.index}; "
                              f"known: {', '.join(sorted(MODULES))}")
        c1s = [ch if s == -1 else outs[s] for s in spec.sources()]
        if spec.repeats > 1 and builder in (build_conv, build_repconv):
            raise ConfigError(f"{source}: layer {spec.index}: repeated {spec.module} (number > 1) is not supported")
        try:
            module, c2 = builder(ctx, spec, c1s)
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"{source}: layer {spec.index} ({spec.module}): bad args {list(spec.args)!r}: {exc}") from exc
        modules.append(module)
        outs.append(c2)
    return modules, outs
