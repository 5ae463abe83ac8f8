"""Exact params and GFLOPs of a model for any per-layer widths, in closed form: no pruned model is built.

Every counted quantity is bilinear in the widths: a convolution holds ``out x in/groups x kh x kw`` weights
and does that many multiply-accumulates per output pixel, where ``out`` is its layer's width and ``in`` the
sum of the widths in its input layout (the graph's slots); a BatchNorm holds 2 per output channel, an
``ImplicitA`` one per input channel, an ``nn.Upsample`` one op per output element. ``CostModel`` records
those coefficients once (one meta-device forward for the spatial sizes) and then prices any set of widths,
or a whole batch of them, with two small matrix products. It counts as ``models.complexity`` does
(``count_params`` / ``count_gflops``), to the unit, for the model it was built from (fused or not).
Traced networks (classifiers) are priced the same way: a plain conv's recorded BatchNorm follows its width, a
``linear`` node holds ``out x in_channels x spatial`` weights, other Linears are constant; pruning one member of
a coupled group prices every member at the same width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.derive import trace_layouts
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.complexity import op_costs
from yolo_prune.models.heads import ImplicitA
from yolo_prune.prune.plan import pruned_width


@dataclass(frozen=True)
class SelectionCost:
    """Params and GFLOPs of one selection."""

    params: int
    gflops: float

    def metric(self, name: str) -> float:
        """``gflops`` or ``params`` (as float)."""
        return self.gflops if name == "gflops" else float(self.params)


class _Terms:
    """Collects ``coef x width[out] x input_width[layout]`` terms (index -1: the factor is 1)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []  # (out node, layout, params coef, macs coef)
        self.const_params = 0
        self.const_macs = 0

    def add(self, out: int, layout: int, params: int = 0, macs: int = 0) -> None:
        self.rows.append((out, layout, params, macs))


class CostModel:
    """Prices widths of the graph's conv layers: ``cost(pairs)``, ``evaluate(widths[K, n])``."""

    def __init__(self, graph: PruningGraph, layouts: np.ndarray, layout_const: np.ndarray, terms: _Terms):
        self.graph = graph
        self.base_widths = np.array([n.out_channels for n in graph.nodes], dtype=np.int64)
        self._layouts, self._layout_const = layouts, layout_const
        rows = np.array(terms.rows, dtype=np.int64).reshape(-1, 4)
        self._out, self._in, self._p, self._m = rows.T
        self._const = (terms.const_params, terms.const_macs)

    @classmethod
    def of(cls, model: nn.Module, img_size: int | tuple[int, int] = 640) -> "CostModel":
        """The cost model of ``model`` as it is (fused or not), at ``img_size``; ``model`` is not changed."""
        graph, layer_inputs = trace_layouts(model)
        builder = _Builder(graph)
        hw = {c.name: c.out_hw for c in op_costs(model, img_size, model.ch_in)}
        for name, module in model.named_modules():
            builder.module(name, module, hw, layer_inputs)
        return cls(graph, *builder.layout_matrix(), builder.terms)

    def widths(self, pairs: Iterable[tuple[int, float]], round_to: int | None = None) -> np.ndarray:
        """Per-layer widths after pruning ``pairs`` (layer, rate) with the pruner's rounding (coupled layers share
        the width, layers read in chunks keep the same number per chunk)."""
        w = self.base_widths.copy()
        for layer, rate in pairs:
            w[list(self.graph.group_of(layer))] = pruned_width(self.graph, layer, rate, round_to)
        return w

    def evaluate(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Params and MACs for a batch of width vectors [K, n], exactly (float64 sums of integers, rounded)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        inputs = w @ self._layouts.T + self._layout_const  # [K, layouts]: channels each layout carries
        one = np.ones((len(w), 1))
        prod = np.concatenate([w, one], 1)[:, self._out] * np.concatenate([inputs, one], 1)[:, self._in]
        params, macs = prod @ self._p + self._const[0], prod @ self._m + self._const[1]
        return np.rint(params).astype(np.int64), np.rint(macs).astype(np.int64)

    def metric(self, widths: np.ndarray, name: str) -> np.ndarray:
        """GFLOPs (``gflops``) or params of a batch of width vectors [K, n] (the budget search's pricer)."""
        params, macs = self.evaluate(widths)
        return 2 * macs / 1e9 if name == "gflops" else params.astype(float)

    def cost(self, pairs: Iterable[tuple[int, float]] = (), round_to: int | None = None) -> SelectionCost:
        """Params and GFLOPs of the model with ``pairs`` pruned."""
        params, macs = self.evaluate(self.widths(pairs, round_to))
        return SelectionCost(int(params[0]), 2 * int(macs[0]) / 1e9)


class _Builder:
    """Maps every counted module of a model to cost terms over the graph's widths and layouts."""

    def __init__(self, graph: PruningGraph) -> None:
        self.graph = graph
        self.by_name = {n.name: n.index for n in graph.nodes}
        self.by_bn = {n.bn: n.index for n in graph.nodes if n.bn}  # plain convs' BatchNorms
        self.layouts: list[Sequence[tuple[int | None, int]]] = [n.inputs for n in graph.nodes]
        self.terms = _Terms()

    def owner(self, name: str) -> int | None:
        """The graph node whose module contains ``name`` (longest dotted prefix), if any."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            node = self.by_name.get(".".join(parts[:end]))
            if node is not None:
                return node
        return None

    def layout_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Layouts as multiples of each node's output (SPP repeats count twice, a chunk slot 1/parts) plus fixed
        channels."""
        mat = np.zeros((len(self.layouts), len(self.graph)))
        const = np.zeros(len(self.layouts))
        for k, layout in enumerate(self.layouts):
            for slot in layout:
                if slot.producer is None:
                    const[k] += slot.size
                else:
                    mat[k, slot.producer] += 1.0 / slot.parts
        return mat, const

    def module(self, name: str, m: nn.Module, hw: dict, layer_inputs: list) -> None:
        own = sum(p.numel() for p in m.parameters(recurse=False))
        node = self.by_bn.get(name, self.owner(name))
        if isinstance(m, nn.Linear) and node is not None:
            self.linear(name, m, node)
        elif isinstance(m, nn.Conv2d) and node is not None:
            self.conv(name, m, node, hw[name])
        elif isinstance(m, nn.BatchNorm2d) and node is not None:
            self.check(name, m.num_features, self.graph[node].out_channels)
            self.terms.add(node, -1, params=own // m.num_features)
        elif isinstance(m, ImplicitA) and node is None:
            self.implicit(name, m)
        elif isinstance(m, nn.Upsample):
            self.upsample(name, m, hw[name], layer_inputs)
        elif own and node is not None:
            raise PruningError(f"cost model: {name} ({type(m).__name__}) of conv layer {node} has parameters whose "
                               f"shape may follow the layer's width; teach prune/cost.py about it")
        else:
            self.terms.const_params += own
            if isinstance(m, nn.Conv2d):
                self.terms.const_macs += _conv_macs(m, hw[name])
            elif isinstance(m, nn.Linear):
                self.terms.const_macs += m.in_features * m.out_features

    def conv(self, name: str, m: nn.Conv2d, node: int, out_hw: tuple[int, int]) -> None:
        n = self.graph[node]
        self.check(name, m.in_channels, sum(slot.size for slot in n.inputs))
        self.check(name, m.out_channels, n.out_channels)
        k = m.kernel_size[0] * m.kernel_size[1]
        if m.groups != 1:  # grouped: neither side is prunable (the graph ties them)
            self.terms.const_params += sum(p.numel() for p in m.parameters(recurse=False))
            self.terms.const_macs += _conv_macs(m, out_hw)
            return
        out, scale = (node, 1) if n.kind != "head" else (-1, n.out_channels)
        self.terms.add(out, node, params=k * scale, macs=k * scale * out_hw[0] * out_hw[1])
        if m.bias is not None:
            self.terms.add(out, -1, params=scale)

    def linear(self, name: str, m: nn.Linear, node: int) -> None:
        """A classifier's first Linear: ``out x spatial`` weights (and MACs) per input channel, bias constant."""
        n = self.graph[node]
        self.check(name, m.in_features, n.spatial * sum(s.size for s in n.inputs))
        self.terms.add(-1, node, params=m.out_features * n.spatial, macs=m.out_features * n.spatial)
        if m.bias is not None:
            self.terms.const_params += m.out_features

    def implicit(self, name: str, m: ImplicitA) -> None:
        """IDetect's ImplicitA ``<head>.ia.<i>`` has one value per input channel of head conv ``<head>.m.<i>``."""
        head, attr, level = name.rsplit(".", 2)
        node = self.by_name.get(f"{head}.m.{level}") if attr == "ia" else None
        if node is None:
            raise PruningError(f"cost model: cannot tell which head conv {name} sits in front of")
        self.check(name, m.implicit.shape[1], sum(slot.size for slot in self.graph[node].inputs))
        self.terms.add(-1, node, params=1)

    def upsample(self, name: str, m: nn.Upsample, out_hw: tuple[int, int], layer_inputs: list) -> None:
        parts = name.split(".")
        if len(parts) != 2 or parts[0] != "model":
            raise PruningError(f"cost model: {name}: only top-level nn.Upsample layers are supported")
        self.layouts.append(layer_inputs[int(parts[1])][0])
        self.terms.add(-1, len(self.layouts) - 1, macs=out_hw[0] * out_hw[1])

    @staticmethod
    def check(name: str, got: int, expected: int) -> None:
        if got != expected:
            raise PruningError(f"cost model: {name} has {got} channels where the graph says {expected}")


def _conv_macs(m: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    return m.out_channels * out_hw[0] * out_hw[1] * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)


def fused_cost_model(model: nn.Module, img_size: int | tuple[int, int] = 640) -> CostModel:
    """The cost model of ``model`` with BN and RepConv fused (the figures the sensitivity analysis reports)."""
    import copy

    from yolo_prune.models.fuse import fuse

    return CostModel.of(fuse(copy.deepcopy(model).to("meta"), conv_bn=True, repconv=True, implicit=False), img_size)
