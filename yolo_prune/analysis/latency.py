"""Latency tables: the measured latency of every convolution of a model at each candidate width, and the latency
they predict for any pruning selection. ``yolo-prune latency-table`` (``bench.latency_table``) measures them on
ONNX Runtime; ``deploy/jetson/latency_table.py`` writes the same format with TensorRT.

File (JSON, ``format: yolo-prune-latency-table``, version 1)::

    runtime, runtime_version, provider, machine{...}, settings{img_size, batch, threads, warmup, repeats, rates,
    round_to}, model{source, fingerprint, params, gflops},
    base{median_ms, p10_ms, p90_ms, n}          whole unpruned model, end to end, as deployed
    rest_ms                                     base median minus the convolutions' own times (everything else)
    calibration{conv_scale, volume_ms, const_ms, points[{rate, measured_ms, conv_ms, volume}], note (optional)}
    nodes[{index, name, out, parts, prunable}], groups[[layer, ...]]   the pruning graph the widths refer to
    ops[{name, node, inputs[[producer, size, part, parts]], kernel, stride, groups, in_hw, act,
         ins[...], outs[...], ms[[...]], spread[[...]]}]   kernel time (median over repeats) at in x out channels
    layers[{layer, name, widths{w: {op_ms, model_ms}}}]  per prunable layer and candidate width: its own conv's
                                                          time and the predicted model latency with only it pruned
    noise{median_rel_spread, max_rel_spread, base_rel_spread}  (p90 - p10) / median

Prediction: latency = conv_scale x C + volume_ms x V + const_ms, where C is the sum over convolutions of their
time at the selection's (in, out) channels, interpolated bilinearly in the measured grid (exact at measured
points), and V the feature-map volume the convolutions write relative to the unpruned model (what the layers
between them -- concatenations, pooling, upsampling, activations -- move). The three coefficients are fitted
(non-negative least squares) to end-to-end measurements of the whole model, unpruned and pruned uniformly at every
rate. Widths follow the pruner: coupled layers share a width, layers read in chunks keep the same number per chunk.
"""
from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from yolo_prune.errors import ConfigError
from yolo_prune.prune.params import kept_count

FORMAT, VERSION = "yolo-prune-latency-table", 1


@dataclass(frozen=True)
class OpTiming:
    """One convolution: where its channels come from, its geometry, and its measured grid (ms[in][out])."""

    name: str
    node: int | None  # graph node whose filters are this op's outputs (None: fixed)
    inputs: tuple[tuple[int | None, int, int, int], ...]  # the node's input slots (producer, size, part, parts)
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    act: str
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]
    spread: tuple[tuple[float, ...], ...] = ()
    out_hw: tuple[int, int] = (1, 1)

    def at(self, ci: float, co: float) -> float:
        """Time at ``ci`` input and ``co`` output channels: bilinear between measured points, linear beyond."""
        i0, i1, fi = _bracket(self.ins, ci)
        o0, o1, fo = _bracket(self.outs, co)
        row0 = self.ms[i0][o0] + (self.ms[i0][o1] - self.ms[i0][o0]) * fo
        row1 = self.ms[i1][o0] + (self.ms[i1][o1] - self.ms[i1][o0]) * fo
        return row0 + (row1 - row0) * fi


def _bracket(grid: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and the fraction of the way from the first to the second."""
    if len(grid) == 1:
        return 0, 0, 0.0
    k = min(max(bisect_left(grid, x), 1), len(grid) - 1)
    lo, hi = grid[k - 1], grid[k]
    return k - 1, k, (x - lo) / (hi - lo)


@dataclass
class LatencyTable:
    """A measured latency table (see the module docstring for the file layout)."""

    runtime: str
    runtime_version: str
    provider: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    model: dict[str, Any]
    base: dict[str, Any]
    rest_ms: float
    nodes: list[dict[str, Any]]
    groups: list[list[int]]
    ops: list[OpTiming]
    calibration: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    noise: dict[str, float] = field(default_factory=dict)

    # --------------------------------------------------------------------------------------- prediction
    def group_of(self, layer: int) -> list[int]:
        return next((g for g in self.groups if layer in g), [layer])

    def widths(self, pairs: Iterable[tuple[int, float]] = (), round_to: int | None = None) -> list[int]:
        """Every node's width after pruning ``pairs`` with the pruner's rounding (groups share, chunks even)."""
        widths = [int(n["out"]) for n in self.nodes]
        for layer, rate in pairs:
            if not 0 <= layer < len(self.nodes) or not self.nodes[layer]["prunable"]:
                raise ConfigError(f"layer {layer} is not a prunable layer of the latency table's model")
            members = self.group_of(layer)
            parts = max(int(self.nodes[m]["parts"]) for m in members)
            width = kept_count(widths[layer] // parts, rate, round_to) * parts
            for m in members:
                widths[m] = width
        return widths

    def op_channels(self, op: OpTiming, widths: Sequence[int]) -> tuple[float, float]:
        """(in, out) channels of ``op`` for node widths ``widths``."""
        ci = sum(size if p is None else widths[p] * size / int(self.nodes[p]["out"]) for p, size, _, _ in op.inputs)
        co = widths[op.node] if op.node is not None else op.outs[-1]
        return ci, co

    def terms(self, pairs: Iterable[tuple[int, float]] = (), round_to: int | None = None) -> tuple[float, float]:
        """(C, V): summed convolution time (ms) and relative feature-map volume of the model with ``pairs`` pruned."""
        widths = self.widths(pairs, self.settings.get("round_to") if round_to is None else round_to)
        conv, volume = 0.0, 0.0
        for op in self.ops:
            ci, co = self.op_channels(op, widths)
            conv += op.at(ci, co)
            volume += co * op.out_hw[0] * op.out_hw[1]
        full = sum(op.outs[-1] * op.out_hw[0] * op.out_hw[1] for op in self.ops)
        return conv, volume / full

    def predict(self, pairs: Iterable[tuple[int, float]] = (), round_to: int | None = None) -> float:
        """Predicted latency (ms) of the model with ``pairs`` pruned."""
        conv, volume = self.terms(pairs, round_to)
        c = self.calibration or {"conv_scale": 1.0, "volume_ms": 0.0, "const_ms": self.rest_ms}
        return c["conv_scale"] * conv + c["volume_ms"] * volume + c["const_ms"]

    # --------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return out

    def save(self, path: str | Path) -> Path:
        """Write the table atomically (JSON)."""
        from yolo_prune.fileio import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")


class LatencyCosts:
    """A latency table as the budget search's pricer: the interface of ``prune.cost.CostModel`` (``base_widths``,
    ``graph.group_of``, ``widths(pairs)``, ``metric(widths[K, n], "latency")``), vectorised over selections."""

    def __init__(self, table: LatencyTable):
        self.table, self.graph = table, table
        n = len(table.nodes)
        self.base_widths = np.array([int(node["out"]) for node in table.nodes], dtype=np.int64)
        self._in = np.zeros((len(table.ops), n))  # ci = widths @ _in[k] + _in_const[k]
        self._in_const = np.zeros(len(table.ops))
        for k, op in enumerate(table.ops):
            for p, size, _, _ in op.inputs:
                if p is None:
                    self._in_const[k] += size
                else:
                    self._in[k, p] += size / float(table.nodes[p]["out"])
        self._area = np.array([op.out_hw[0] * op.out_hw[1] for op in table.ops], dtype=np.float64)

    def widths(self, pairs: Iterable[tuple[int, float]] = (), round_to: int | None = None) -> np.ndarray:
        return np.array(self.table.widths(pairs, round_to), dtype=np.int64)

    def metric(self, widths: np.ndarray, name: str = "latency") -> np.ndarray:
        """Predicted latency (ms) of each width vector [K, n]."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        ci = w @ self._in.T + self._in_const  # [K, ops]
        conv = np.zeros(len(w))
        volume = np.zeros(len(w))
        for k, op in enumerate(self.table.ops):
            co = w[:, op.node] if op.node is not None else np.full(len(w), float(op.outs[-1]))
            conv += _bilinear(op, ci[:, k], co)
            volume += co * self._area[k]
        full = float(sum(op.outs[-1] * a for op, a in zip(self.table.ops, self._area)))
        c = self.table.calibration or {"conv_scale": 1.0, "volume_ms": 0.0, "const_ms": self.table.rest_ms}
        return c["conv_scale"] * conv + c["volume_ms"] * volume / full + c["const_ms"]


def _axis(grid: Sequence[int], x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`_bracket`: lower and upper grid indices and fractions for every value of ``x``."""
    g = np.asarray(grid, dtype=np.float64)
    if len(g) == 1:
        zero = np.zeros(len(x), dtype=np.int64)
        return zero, zero, np.zeros(len(x))
    k = np.clip(np.searchsorted(g, x, side="left"), 1, len(g) - 1)
    return k - 1, k, (x - g[k - 1]) / (g[k] - g[k - 1])


def _bilinear(op: OpTiming, ci: np.ndarray, co: np.ndarray) -> np.ndarray:
    """``op.at`` for arrays of (in, out) channel counts."""
    ms = np.asarray(op.ms, dtype=np.float64)
    i0, i1, fi = _axis(op.ins, ci)
    o0, o1, fo = _axis(op.outs, co)
    row0 = ms[i0, o0] + (ms[i0, o1] - ms[i0, o0]) * fo
    row1 = ms[i1, o0] + (ms[i1, o1] - ms[i1, o0]) * fo
    return row0 + (row1 - row0) * fi


def read_latency_table(path: str | Path) -> LatencyTable:
    """Read a latency table; a wrong or damaged file is a ConfigError naming it and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"latency table not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a latency table (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a latency table (expected format '{FORMAT}'; write one with "
                          f"`yolo-prune latency-table`)")
    if int(data.get("version", 0)) > VERSION:
        raise ConfigError(f"{path}: latency table version {data['version']} is newer than this yolo-prune reads")
    try:
        ops = [OpTiming(o["name"], o["node"], tuple(tuple(s) for s in o["inputs"]), o["kernel"], o["stride"],
                        o["groups"], tuple(o["in_hw"]), o["act"], tuple(o["ins"]), tuple(o["outs"]),
                        tuple(tuple(r) for r in o["ms"]), tuple(tuple(r) for r in o.get("spread", ())),
                        tuple(o.get("out_hw", (1, 1))))
               for o in data["ops"]]
        fields = {k: data[k] for k in ("runtime", "runtime_version", "provider", "machine", "settings", "model",
                                        "base", "rest_ms", "nodes", "groups")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed latency table ({type(exc).__name__}: {exc})") from None
    for op in ops:
        if len(op.ms) != len(op.ins) or any(len(row) != len(op.outs) for row in op.ms):
            raise ConfigError(f"{path}: op {op.name}: grid of {len(op.ms)} rows does not match ins/outs")
    return LatencyTable(ops=ops, calibration=data.get("calibration", {}), layers=data.get("layers", []),
                        noise=data.get("noise", {}), **fields)
