"""Per-layer summary of a model: routing, channels, parameters and GFLOPs (what ``yolo-prune info`` prints)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from yolo_prune.models.complexity import count_params, op_costs
from yolo_prune.models.model import Model


@dataclass(frozen=True)
class LayerRow:
    """One cfg layer: index, module name, ``from``, input/output channels, parameters, GFLOPs."""

    index: int
    module: str
    from_: int | tuple[int, ...]
    c_in: int
    c_out: int
    params: int
    gflops: float


@dataclass(frozen=True)
class ModelSummary:
    """Layer rows and totals at an image size."""

    layers: list[LayerRow]
    params: int
    gflops: float
    img_size: int
    n_convs: int
    n_head_convs: int

    def to_dict(self) -> dict:
        d = asdict(self)
        for row in d["layers"]:
            row["from"] = row.pop("from_")
        return d


def summarize(model: Model, img_size: int = 640) -> ModelSummary:
    """Summarise ``model`` (unchanged) for one ``img_size`` x ``img_size`` image."""
    macs_by_layer: dict[int, int] = {}
    for cost in op_costs(model, img_size, model.ch_in):
        idx = int(cost.name.split(".")[1])  # names look like "model.<layer>.<...>"
        macs_by_layer[idx] = macs_by_layer.get(idx, 0) + cost.macs
    rows = []
    channels = model.layer_channels()
    for spec, module in zip(model.specs, model.model):
        c_in = sum(model.ch_in if s == -1 else channels[s] for s in spec.sources())
        c_out = channels[spec.index] or model.detect.na * model.detect.no
        rows.append(LayerRow(spec.index, spec.module, spec.from_, c_in, c_out, count_params(module),
                             2 * macs_by_layer.get(spec.index, 0) / 1e9))
    total_macs = sum(macs_by_layer.values())
    return ModelSummary(rows, count_params(model), 2 * total_macs / 1e9, img_size,
                        len(model.conv_modules()), len(model.detect.head_convs()))


def format_summary(summary: ModelSummary) -> str:
    """A fixed-width table plus totals."""
    width = max([12] + [len(r.module) for r in summary.layers])
    lines = [f"{'idx':>4} {'module':<{width}} {'from':<18} {'c_in':>6} {'c_out':>6} {'params':>12} {'GFLOPs':>9}"]
    for r in summary.layers:
        lines.append(f"{r.index:>4} {r.module:<{width}} {str(r.from_):<18} {r.c_in:>6} {r.c_out:>6} "
                     f"{r.params:>12,} {r.gflops:>9.3f}")
    convs = (f"{summary.n_convs} Conv/RepConv + {summary.n_head_convs} head convs" if summary.n_head_convs
             else f"{summary.n_convs} convs")
    lines.append(f"total: {summary.params:,} parameters, {summary.gflops:.3f} GFLOPs @{summary.img_size}, {convs}")
    return "\n".join(lines)


def summarize_ops(model: nn.Module, img_size: int, ch: int) -> ModelSummary:
    """Summary of a network without cfg rows (classifiers): one row per Conv2d/Linear, named by module path."""
    rows = []
    modules = dict(model.named_modules())
    for i, cost in enumerate(op_costs(model, img_size, ch)):
        rows.append(LayerRow(i, cost.name, -1, cost.in_channels, cost.out_channels,
                             count_params(modules[cost.name]), 2 * cost.macs / 1e9))
    convs = sum(isinstance(m, nn.Conv2d) for m in modules.values())
    return ModelSummary(rows, count_params(model), sum(r.gflops for r in rows), img_size, convs, 0)
