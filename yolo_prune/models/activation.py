"""Swap activations in a built model *and* in its cfg: SiLU -> LeakyReLU (what Vitis AI DPUs run) or ReLU.

DPUs run ReLU, ReLU6 and LeakyReLU with slope 26/256 = 0.1015625; SiLU, Hardswish, Mish and Sigmoid go to
the CPU. :func:`convert_activations` replaces the activation modules in place and rewrites ``Model.yaml`` /
``Model.specs`` to match, so a checkpoint saved afterwards rebuilds with the new activations wherever it is
loaded. Weights and channel counts (pruned or not) are untouched.

SPPCSPC and DownC rows have no activation argument (they always build SiLU), so when their activations change
they are written out as the equivalent plain rows - Conv, SP/MP, Concat - the way yolov7-tiny's cfg writes its
SPP. The same module objects move into those rows: weights, conv-layer indices (pruning graphs, published
parameters) and outputs stay the same, and the official YOLOv7 parser reads the result too; only the cfg layer
numbers after the block shift (reported).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.blocks import MP, SP, SPPCSPC, Concat, Conv, DownC, RepConv
from yolo_prune.models.builder import BuildContext, build_layers
from yolo_prune.models.model import Model
from yolo_prune.models.spec import ACTIVATIONS, ActivationSpec, parse_layers

DPU_LEAKY_SLOPE = 26 / 256  # the slope a Vitis AI DPU computes for LeakyReLU
DEFAULT_SLOPE = 0.1
TARGETS = {"leakyrelu": "LeakyReLU", "relu": "ReLU"}
CONVERTIBLE = {"silu": "SiLU", "hardswish": "Hardswish", "mish": "Mish", "leakyrelu": "LeakyReLU",
               "relu": "ReLU", "relu6": "ReLU6"}
_ROW_DEFAULTS = {"Conv": [None, 1, 1, None, 1], "RepConv": [None, 3, 1, None, 1]}  # args before ``act``
_BLOCK_CONVS = {SPPCSPC: ("cv1", "cv2", "cv3", "cv4", "cv5", "cv6", "cv7"), DownC: ("cv1", "cv2", "cv3")}


class ConversionError(YoloPruneError):
    """An activation target, slope or source list is invalid, or the model has an activation the cfg cannot name."""


def parse_slope(value: str | float) -> float:
    """``'dpu'`` -> 26/256; otherwise a number or fraction (``'0.1'``, ``'26/256'``) strictly between 0 and 1."""
    text = str(value).strip().lower()
    if text == "dpu":
        return DPU_LEAKY_SLOPE
    try:
        num, _, den = text.partition("/")
        slope = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise ConversionError(f"slope must be 'dpu' (26/256) or a number in (0, 1), got {value!r}") from None
    if not (math.isfinite(slope) and 0 < slope < 1):
        raise ConversionError(f"slope must be 'dpu' (26/256) or a number in (0, 1), got {value!r}")
    return slope


def resolve_target(to: str, slope: str | float | None = None) -> ActivationSpec:
    """``('leakyrelu', 'dpu')`` -> ``nn.LeakyReLU(0.1015625)``; ``('relu', None)`` -> ``nn.ReLU()``."""
    name = TARGETS.get(str(to).strip().lower())
    if name is None:
        raise ConversionError(f"unknown activation target {to!r}; known: {', '.join(TARGETS)}")
    if name == "LeakyReLU":
        return ActivationSpec(name, (parse_slope(DEFAULT_SLOPE if slope is None else slope),))
    if slope is not None:
        raise ConversionError(f"a slope applies to --to leakyrelu only, not {to!r}")
    return ActivationSpec(name)


def resolve_sources(target: ActivationSpec, sources: Iterable[str] | None = None) -> frozenset[str]:
    """Activation class names to replace: by default SiLU, and LeakyReLU of another slope for a LeakyReLU target."""
    if sources is None:
        return frozenset({"SiLU", "LeakyReLU"} if target.name == "LeakyReLU" else {"SiLU"})
    names = set()
    for s in sources:
        name = CONVERTIBLE.get(str(s).strip().lower())
        if name is None:
            raise ConversionError(f"cannot convert from {s!r}; known: {', '.join(CONVERTIBLE)}")
        names.add(name)
    return frozenset(names)


def _label(act: nn.Module) -> str:
    """``SiLU`` or ``LeakyReLU(0.1)``: how reports name an activation module."""
    name = type(act).__name__
    return f"{name}({float(act.negative_slope)!r})" if isinstance(act, nn.LeakyReLU) else name


def _spec_of(act: nn.Module, where: str) -> ActivationSpec:
    """The cfg activation that builds a module like ``act`` (for convs written out of SPPCSPC/DownC)."""
    name = type(act).__name__
    if ACTIVATIONS.get(name) is not type(act):
        raise ConversionError(f"{where}: activation {name} has no cfg name; known: {', '.join(sorted(ACTIVATIONS))}")
    return ActivationSpec(name, (float(act.negative_slope),) if isinstance(act, nn.LeakyReLU) else ())


def _is_activation(m: nn.Module) -> bool:
    return type(m) in ACTIVATIONS.values() and not isinstance(m, nn.Identity)


@dataclass
class ConversionReport:
    """What :func:`convert_activations` did. ``layers`` are cfg layer indices *before* conversion."""

    target: str
    converted: dict[str, int] = field(default_factory=dict)   # old activation -> count replaced
    unchanged: dict[str, int] = field(default_factory=dict)   # activation modules left as they were
    layers: list[int] = field(default_factory=list)
    expanded: list[dict[str, Any]] = field(default_factory=list)  # {"layer", "module", "rows": [first, last]}

    @property
    def total(self) -> int:
        return sum(self.converted.values())

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "converted": dict(self.converted), "unchanged": dict(self.unchanged),
                "layers": list(self.layers), "expanded": [dict(e) for e in self.expanded]}

    def history_entry(self) -> dict[str, Any]:
        """The checkpoint-history record of this conversion (plain primitives)."""
        return {"event": "convert-activation", **self.to_dict()}

    def format(self) -> str:
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(self.converted.items())) or "nothing to convert"
        lines = [f"converted {self.total} activation(s) to {self.target}: {counts}"]
        if self.layers:
            lines.append(f"{len(self.layers)} layers touched (cfg numbering before conversion): {_ranges(self.layers)}")
        kept = ", ".join(f"{k} x{v}" for k, v in sorted(self.unchanged.items())) or "none"
        lines.append(f"left unchanged: {kept} (the detection head has no activation layer; its sigmoid is part of "
                     "the box decode)")
        for e in self.expanded:
            first, last = e["rows"]
            lines.append(f"layer {e['layer']} ({e['module']}) is written out as plain rows {first}-{last}; later cfg "
                         "layer numbers shift, conv-layer indices and weights do not")
        return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, x in enumerate(indices):
        start = x if start is None else start
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


@dataclass
class _Layer:
    """What one cfg layer becomes. Row ``from`` values are placeholders until :func:`_renumber`: ``'x'`` = the
    layer's own input; in written-out blocks, ints are relative to the row within the block."""

    rows: list[list[Any]]
    modules: list[nn.Module]
    expanded: bool = False


def convert_activations(model: Model, to: str = "leakyrelu", slope: str | float | None = None,
                        sources: Iterable[str] | None = None) -> ConversionReport:
    """Replace activations of ``model`` **in place** by ``to`` (``'leakyrelu'`` with ``slope``, or ``'relu'``).

    ``slope`` (leakyrelu only): a number in (0, 1) or ``'dpu'`` (26/256); ``None`` means 0.1. ``sources``:
    activation names to replace (``silu``, ``hardswish``, ``mish``, ``leakyrelu``, ``relu``, ``relu6``); default
    SiLU, plus LeakyReLU of another slope when the target is LeakyReLU. Modules already equal to the target are
    left alone. Everything is checked before anything changes; ``model.yaml``, ``specs`` and ``save`` are
    rewritten so ``save_checkpoint`` -> ``load_checkpoint`` rebuilds the converted model.
    """
    target = resolve_target(to, slope)
    wanted = resolve_sources(target, sources)

    def wants(act: nn.Module) -> bool:
        name = type(act).__name__
        return name in wanted and ACTIVATIONS.get(name) is type(act) and not _matches(act, target)

    if "backbone" not in model.yaml:
        raise ConversionError("activation conversion rewrites YOLOv7 cfg rows; this model was not built from one "
                              "(a Darknet .cfg: edit its activation= lines and convert the weights instead)")
    raw_rows = list(model.yaml["backbone"]) + list(model.yaml["head"])
    if not (len(raw_rows) == len(model.specs) == len(model.model)):
        raise ConversionError(f"the model's cfg has {len(raw_rows)} rows but the model has {len(model.model)} layers")
    report = ConversionReport(str(target))
    holders: list[nn.Module] = []
    layers: list[_Layer] = []
    nominal: list[nn.Module] | None = None
    for i, (row, m) in enumerate(zip(raw_rows, model.model)):
        owned = _act_holders(m)
        todo = [h for h in owned if wants(h.act)]
        for act in _stray_activations(m, owned, wants, i) + [h.act for h in owned if h not in todo]:
            _count(report.unchanged, act)
        for h in todo:
            _count(report.converted, h.act)
        if todo:
            report.layers.append(i)
        if todo and isinstance(m, (SPPCSPC, DownC)):
            nominal = nominal if nominal is not None else _nominal_layers(model)
            layers.append(_write_out(i, m, nominal[i], todo, target, model))
        else:
            layers.append(_Layer([_with_act(row, target) if todo else copy.deepcopy(list(row))], [m]))
        holders += todo
    cfg, modules = _renumber(model, raw_rows, layers, report)
    specs = tuple(parse_layers(cfg, "<converted cfg>"))
    if len(specs) != len(modules):  # pragma: no cover - a bug here, not bad input
        raise AssertionError("converted cfg and modules disagree")
    for h in holders:  # decided and checked: now change the model
        h.act = target.build()
    if report.expanded:
        model.model = nn.Sequential(*modules).train(model.training)
    model.replace_specs(cfg, specs)
    return report


def _matches(act: nn.Module, target: ActivationSpec) -> bool:
    """Is ``act`` already the target (same class, same slope)?"""
    if type(act) is not ACTIVATIONS[target.name]:
        return False
    return not isinstance(act, nn.LeakyReLU) or act.negative_slope == target.args[0]


def _count(book: dict[str, int], act: nn.Module) -> None:
    if _is_activation(act):
        book[_label(act)] = book.get(_label(act), 0) + 1


def _act_holders(m: nn.Module) -> list[nn.Module]:
    """The Conv/RepConv modules of a layer whose ``act`` the cfg controls (or, for blocks, that rows will)."""
    if isinstance(m, (Conv, RepConv)):
        return [m]
    names = next((v for k, v in _BLOCK_CONVS.items() if isinstance(m, k)), ())
    return [getattr(m, n) for n in names]


def _stray_activations(m: nn.Module, owned: list[nn.Module], wants: Callable[[nn.Module], bool],
                       index: int) -> list[nn.Module]:
    """Activations of layer ``m`` no cfg row sets; converting one would be lost on reload, so that is refused."""
    known = {id(h.act) for h in owned}
    stray = [(name, sub) for name, sub in m.named_modules() if _is_activation(sub) and id(sub) not in known]
    for name, sub in stray:
        if wants(sub):
            raise ConversionError(f"layer {index} ({type(m).__name__}): activation {name or type(sub).__name__} "
                                  f"({type(sub).__name__}) is not set by the cfg, so it cannot be converted")
    return [sub for _, sub in stray]


def _with_act(row: list[Any], target: ActivationSpec) -> list[Any]:
    """A Conv/RepConv row with its activation argument (index 5) set to ``target``."""
    f, n, module, args = copy.deepcopy(list(row))
    args = list(args)
    defaults = _ROW_DEFAULTS[str(module)]
    args += defaults[len(args):]
    args[5:6] = [str(target)]
    return ["x", n, module, args]


def _context(model: Model) -> BuildContext:
    """The builder's width rules for ``model``'s cfg (width_multiple, head width), without a width list."""
    cfg = model.yaml
    anchors = cfg["anchors"]
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else int(anchors)
    return BuildContext(float(cfg.get("width_multiple", 1.0)), na * (cfg["nc"] + 5))


def _nominal_layers(model: Model) -> list[nn.Module]:
    """The unpruned layers the cfg describes, on the meta device (their widths are the cfg's defaults)."""
    with torch.device("meta"):
        modules, _ = build_layers(list(parse_layers(model.yaml)), model.ch_in, _context(model))
    return modules


def _raw_width(model: Model, nominal: int, where: str) -> int | float:
    """A cfg channel number that ``width_multiple`` turns into ``nominal`` (``nominal`` itself when it is 1)."""
    ctx = _context(model)
    gw = ctx.width_multiple
    for cand in (nominal, round(nominal / gw, 6), round((nominal - 4) / gw, 6)):
        if ctx.scale(cand) == nominal:
            return int(cand) if float(cand).is_integer() else cand
    raise ConversionError(f"{where}: width {nominal} cannot be written as a cfg row under width_multiple {gw}")


def _conv_row(src: Any, conv: Conv, nominal: Conv, act: str, model: Model, where: str) -> list[Any]:
    """A plain Conv row rebuilding ``conv`` (its default width is the unpruned ``nominal`` one)."""
    k, s = conv.conv.kernel_size[0], conv.conv.stride[0]
    if conv.conv.padding[0] != k // 2 or conv.conv.groups != 1:
        raise ConversionError(f"{where}: unexpected padding/groups; cannot write it as a Conv row")
    return [src, 1, "Conv", [_raw_width(model, nominal.conv.out_channels, where), k, s, None, 1, act]]


def _write_out(i: int, m: nn.Module, nominal: nn.Module, todo: list[nn.Module], target: ActivationSpec,
               model: Model) -> _Layer:
    """SPPCSPC / DownC as the plain rows that compute the same thing with the same module objects."""
    where = f"layer {i} ({type(m).__name__})"

    def conv(name: str, src: Any) -> list[Any]:
        c = getattr(m, name)
        act = str(target) if c in todo else str(_spec_of(c.act, f"{where}.{name}"))
        return _conv_row(src, c, getattr(nominal, name), act, model, f"{where}.{name}")

    if isinstance(m, SPPCSPC):  # cv7(cat(cv6(cv5(cat(x1, pools(x1)))), cv2(x))), x1 = cv4(cv3(cv1(x)))
        pools = list(m.m)
        if not all(isinstance(p, nn.MaxPool2d) and p.stride in (1, (1, 1)) for p in pools):
            raise ConversionError(f"{where}: its pools are not plain stride-1 max-pools; cannot write it out")
        ks = [p.kernel_size if isinstance(p.kernel_size, int) else p.kernel_size[0] for p in pools]
        n = len(ks)
        rows = [conv("cv1", "x"), conv("cv2", "x"), conv("cv3", -2), conv("cv4", -1)]
        rows += [[-1 - j, 1, "SP", [k]] for j, k in enumerate(ks)]
        rows += [[list(range(-n - 1, 0)), 1, "Concat", [1]], conv("cv5", -1), conv("cv6", -1),
                 [[-1, -(n + 6)], 1, "Concat", [1]], conv("cv7", -1)]
        mods = [m.cv1, m.cv2, m.cv3, m.cv4, *[SP(k, 1) for k in ks], Concat(1), m.cv5, m.cv6, Concat(1), m.cv7]
    else:  # DownC: cat(cv2(cv1(x)), cv3(maxpool(x)))
        k = m.mp.kernel_size
        rows = [conv("cv1", "x"), conv("cv2", -1), ["x", 1, "MP", [k]], conv("cv3", -1), [[-3, -1], 1, "Concat", [1]]]
        mods = [m.cv1, m.cv2, MP(k), m.cv3, Concat(1)]
    for sub in mods:
        sub.train(m.training)
    return _Layer(rows, mods, expanded=True)


def _renumber(model: Model, raw_rows: list, layers: list[_Layer], report: ConversionReport) -> tuple[dict, list]:
    """Assign new row numbers, rewrite every ``from`` (absolute stays absolute, relative stays relative)."""
    last, start = [], 0
    for lay in layers:
        start += len(lay.rows)
        last.append(start - 1)
    rows_out: list[list[Any]] = []
    modules: list[nn.Module] = []
    for i, (orig, lay) in enumerate(zip(raw_rows, layers)):
        j0 = len(rows_out)
        for k, row in enumerate(lay.rows):
            j = j0 + k
            f = _remap(orig[0], i, j, last) if row[0] == "x" or not lay.expanded else row[0]
            rows_out.append([f, *row[1:]])
        modules += lay.modules
        if lay.expanded:
            report.expanded.append({"layer": i, "module": type(model.model[i]).__name__,
                                    "rows": [j0, j0 + len(lay.rows) - 1]})
    nb = len(model.yaml["backbone"])
    cut = last[nb - 1] + 1 if nb else 0
    cfg = copy.deepcopy(model.yaml)
    cfg["backbone"], cfg["head"] = rows_out[:cut], rows_out[cut:]
    return cfg, modules


def _remap(f: Any, i: int, j: int, last: list[int]) -> Any:
    """Original ``from`` of layer ``i`` -> the same source seen from new row ``j``."""
    if isinstance(f, (list, tuple)):
        return [_remap(x, i, j, last) for x in f]
    if f >= 0:
        return last[f]
    s = i + f
    if s < 0:  # the image
        if j != 0:
            raise ConversionError(f"layer {i} reads the image and cannot be written out as several rows")
        return f
    return last[s] - j
