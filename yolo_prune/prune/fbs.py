"""FBS on pruning graphs: which convs to gate, the MACs a gated network really executes per image, and the
static (pruned) network of equal MACs to compare it with.

Gated: prunable convs that are not coupled by a residual add and have a BatchNorm (its affine is what the gate
replaces): plain conv + BN pairs, YOLOv7 ``Conv`` blocks. Executed MACs count what the gathered-weights
implementation computes: a gated conv's active output channels x the active channels of its input slots (from
the producers' gates, through concatenations), every other layer in full, plus the saliency predictors.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv
from yolo_prune.models.complexity import count_gflops, op_costs
from yolo_prune.models.gating import GatedConv, gate_modules


def gate_pair(model: nn.Module, graph: PruningGraph, index: int) -> tuple[str, str] | str:
    """(conv path, BN path) to gate for layer ``index``, or the reason it cannot be gated."""
    if not 0 <= index < len(graph):
        return f"out of range (the model has layers 0..{len(graph) - 1})"
    node = graph[index]
    if index >= graph.nconv or not node.prunable:
        return f"not a prunable conv ({node.reason})"
    if len(graph.group_of(index)) > 1:
        return f"coupled by a residual add (group {list(graph.group_of(index))})"
    m = model.get_submodule(node.name)
    if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
        return f"{node.name}.conv", f"{node.name}.bn"
    if isinstance(m, nn.Conv2d) and node.bn:
        return node.name, node.bn
    return "no BatchNorm after it (fused model, RepConv or a conv without BN)"


def gateable(model: nn.Module, graph: PruningGraph) -> list[int]:
    """Every layer FBS can gate."""
    return [i for i in range(graph.nconv) if isinstance(gate_pair(model, graph, i), tuple)]


def backbone_layers(model: nn.Module, graph: PruningGraph) -> list[int]:
    """Gateable layers in a YOLOv7 model's backbone rows (``len(cfg["backbone"])``)."""
    rows = len(getattr(model, "yaml", {}).get("backbone", []))
    return [i for i in gateable(model, graph) if int(graph[i].name.split(".")[1]) < rows]


def gate_network(model: nn.Module, graph: PruningGraph, layers: Sequence[int] | None = None,
                 density: float = 1.0) -> nn.Module:
    """A copy of ``model`` with ``layers`` (default: every gateable one) replaced by FBS gated convs."""
    layers = gateable(model, graph) if layers is None else list(layers)
    pairs = []
    for i in layers:
        pair = gate_pair(model, graph, i)
        if isinstance(pair, str):
            raise PruningError(f"layer {i} cannot be gated: {pair}")
        pairs.append(pair)
    if not pairs:
        raise PruningError("no layer to gate")
    return gate_modules(copy.deepcopy(model), pairs, density)


def gate_of(model: nn.Module, graph: PruningGraph, index: int) -> GatedConv | None:
    """The gated conv of layer ``index`` in a gated model (None when the layer is not gated)."""
    m = model.get_submodule(graph[index].name)
    return m if isinstance(m, GatedConv) else m.conv if isinstance(getattr(m, "conv", None), GatedConv) else None


class MacCounter:
    """Executed multiply-accumulates per image of a gated network, from the gates of its last forward pass."""

    def __init__(self, model: nn.Module, graph: PruningGraph, img_size: int | tuple[int, int], ch: int = 3) -> None:
        self.model, self.graph = model, graph
        self.gates = {i: g for i in range(len(graph)) if (g := gate_of(model, graph, i)) is not None}
        if not self.gates:
            raise PruningError("the model has no FBS gated conv")
        names = {id(m): n for n, m in model.named_modules()}
        inner = {names[id(g.conv)]: i for i, g in self.gates.items()}
        costs = op_costs(model, img_size, ch)
        self.scaled = {inner[c.name]: c.macs for c in costs if c.name in inner}
        self.fixed = sum(c.macs for c in costs if c.name not in inner)
        self.dense = sum(c.macs for c in costs)

    def per_image(self) -> torch.Tensor:
        """MACs [B] of the images of the last forward (float64)."""
        active = {i: g.active.double().cpu() for i, g in self.gates.items()}
        total = torch.full_like(next(iter(active.values())), float(self.fixed))
        for i, macs in self.scaled.items():
            node = self.graph[i]
            inputs = sum(active[p] if p in active else torch.tensor(float(s)) for p, s, *_ in node.inputs)
            total += macs * (active[i] / node.out_channels) * (inputs / sum(s.size for s in node.inputs))
        return total


def static_at_macs(model: nn.Module, graph: PruningGraph, layers: Sequence[int], macs: float,
                   img_size: int | tuple[int, int], ch: int = 3, criterion: str = "l1") -> tuple[float, nn.Module]:
    """The uniform rate over ``layers`` whose structurally pruned model has MACs closest to ``macs`` (bisection
    over the rate), and that pruned model."""
    from yolo_prune.prune import prune

    def pruned(rate: float) -> nn.Module:
        return prune(model, [(i, rate) for i in layers], criterion, summarize=False).model

    def cost(rate: float) -> float:
        return count_gflops(pruned(rate), img_size, ch) / 2 * 1e9 if rate > 0 else count_gflops(model, img_size, ch) / 2 * 1e9

    lo, hi = 0.0, 0.95
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) > macs else (lo, mid)
    rate = min((lo, hi), key=lambda r: abs(cost(r) - macs)) if lo > 0 else hi
    return rate, pruned(rate)
