"""``yolo-prune latency-table``: measure every convolution of a model at each candidate width on ONNX Runtime.

For each convolution of the deployed model (BN, RepConv and implicit layers folded; P6 auxiliary heads left out)
a one-layer ONNX graph (the conv and its activation, exported by PyTorch as the whole model is) is run at every
combination of candidate input and output channel counts: the widths the pruner gives its producers and its own
filters at each rate (all at the same rate for inputs), unpruned included. Kernel times come from ONNX Runtime's
profiler (the node's own time, no ``session.run`` overhead), after warm-up runs, over repeats: the median is
stored with the p10-p90 spread. The whole model is then timed end to end (as ``yolo-prune benchmark --runtime ort``
does), unpruned and pruned uniformly at every rate, in interleaved rounds so drifting machine load hits all of them
alike; those measurements calibrate how the convolution times and the feature-map volume add up to the model's
latency (:class:`~yolo_prune.analysis.latency.LatencyTable`). Finished convolutions are kept in
``<out>.partial.json``, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import copy
import math
import io
import json
import os
import platform
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.analysis.latency import LatencyTable, OpTiming
from yolo_prune.errors import YoloPruneError
from yolo_prune.graph.derive import derive_graph
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.aux import aux_only_layers, has_aux_heads
from yolo_prune.models.fuse import fuse
from yolo_prune.prune.plan import pruned_width
from yolo_prune.prune.pruner import prune


STATISTICS = ("min", "median")
TIMINGS = ("profile", "wall")


def statistic(times: list[float] | tuple[float, ...], name: str) -> float:
    """The stored statistic of timed runs (ms)."""
    return float(np.min(times) if name == "min" else np.median(times))


@dataclass(frozen=True)
class TableSettings:
    """Input size, batch, ONNX Runtime intra-op threads (None: its default), warm-up and timed runs, the pruning
    rates whose widths are measured, the pruner's rounding, the statistic of the timed runs that is stored (``min``:
    the fastest, timeit's advice where other work shares the CPU; or ``median``), and how whole models are timed:
    ``profile`` (the sum of the nodes' kernel times from ONNX Runtime's profiler: robust on a busy machine) or
    ``wall`` (``session.run`` end to end: use it on a dedicated machine)."""

    img_size: tuple[int, int] = (640, 640)
    batch: int = 1
    threads: int | None = None
    warmup: int = 5
    repeats: int = 20
    rates: tuple[float, ...] = (0.25, 0.5, 0.75)
    round_to: int | None = None
    statistic: str = "min"
    timing: str = "profile"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise YoloPruneError(f"--statistic {self.statistic!r}: choose one of {', '.join(STATISTICS)}")
        if self.timing not in TIMINGS:
            raise YoloPruneError(f"--timing {self.timing!r}: choose one of {', '.join(TIMINGS)}")
        if self.warmup < 0 or self.repeats < 3:
            raise YoloPruneError(f"--warmup must be >= 0 and --repeats >= 3, got {self.warmup} and {self.repeats}")
        if not self.rates or any(not 0 < r < 1 for r in self.rates):
            raise YoloPruneError(f"--rates must be in (0, 1), got {list(self.rates)}")
        if self.threads is not None and self.threads < 1:
            raise YoloPruneError(f"--threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class ConvOp:
    """A convolution of the deployed model as it runs: its module, activation and input size."""

    name: str
    conv: nn.Conv2d
    act: nn.Module
    in_hw: tuple[int, int]


def machine() -> dict[str, Any]:
    """Where the table was measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def conv_ops(model: nn.Module, img_size: tuple[int, int]) -> list[ConvOp]:
    """The convolutions of the deployed form of ``model`` (names as in ``model``), with their input sizes."""
    fused = fuse(copy.deepcopy(model).float().eval(), conv_bn=True, repconv=True, implicit=True)
    skip = {f"model.{i}." for i in aux_only_layers(model)} if has_aux_heads(model) else set()
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(inp[0].shape[-2:])))
             for n, m in fused.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        fused.to("meta")(torch.empty(1, getattr(model, "ch_in", 3), *img_size, device="meta"))
    for h in hooks:
        h.remove()
    ops = []
    for name, m in fused.named_modules():
        if not isinstance(m, nn.Conv2d) or ".m2." in name or any(name.startswith(s) for s in skip):
            continue
        parent = fused.get_submodule(name.rsplit(".", 1)[0])
        act = parent.act if hasattr(parent, "act") and name.rsplit(".", 1)[1] in ("conv", "rbr_reparam") else None
        ops.append(ConvOp(name, m, act if act is not None else nn.Identity(), shapes[name]))
    return ops


def _owner(graph: PruningGraph, name: str) -> int | None:
    """The graph node whose module holds conv ``name`` (longest dotted prefix)."""
    by_name = {n.name: n.index for n in graph.nodes}
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in by_name:
            return by_name[".".join(parts[:end])]
    return None


def _grid(graph: PruningGraph, node: int | None, op: ConvOp, s: TableSettings) -> tuple[list[int], list[int]]:
    """Input and output channel counts to measure: unpruned, and every rate (producers all at that rate)."""
    def width(i: int, rate: float | None) -> int:
        return graph[i].out_channels if rate is None or not graph[i].prunable else pruned_width(graph, i, rate,
                                                                                                s.round_to)

    rates: list[float | None] = [None, *s.rates]
    if node is None:
        return [op.conv.in_channels], [op.conv.out_channels]
    n = graph[node]
    ins = sorted({sum(size if p is None else width(p, r) * size // graph[p].out_channels for p, size, *_ in n.inputs)
                  for r in rates}) if op.conv.groups == 1 else [op.conv.in_channels]
    outs = sorted({width(node, r) for r in rates})
    return ins, outs


def _op_onnx(op: ConvOp, ci: int, co: int, batch: int) -> bytes:
    """One conv (+ activation) at ``ci`` -> ``co`` channels as ONNX, exported as the whole model is."""
    c = op.conv
    conv = nn.Conv2d(ci, co, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, bias=True)
    net = nn.Sequential(conv, copy.deepcopy(op.act)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices, as export_onnx
        torch.onnx.export(net, (torch.rand(batch, ci, *op.in_hw),), buf, dynamo=False, opset_version=12,
                          input_names=["x"], output_names=["y"])
    return buf.getvalue()


@dataclass(frozen=True)
class Timing:
    """Timed runs of one graph: the wall time of every ``session.run`` and, from ONNX Runtime's profiler, every
    node's kernel time in every run (ms)."""

    wall_ms: tuple[float, ...]
    nodes_ms: tuple[dict[str, float], ...]

    def kernel_sums(self) -> list[float]:
        return [sum(run.values()) for run in self.nodes_ms]

    def value(self, timing: str, stat: str) -> float:
        """``wall``: the statistic of the wall times; ``profile``: with ``min``, every node's fastest run summed
        (a run interrupted by other work on the CPU loses only that node's time), else the median kernel sum."""
        if timing == "wall":
            return statistic(self.wall_ms, stat)
        if stat == "min":
            names = set().union(*self.nodes_ms)
            return sum(min(run.get(n, math.inf) for run in self.nodes_ms) for n in names)
        return float(np.median(self.kernel_sums()))

    def spread(self) -> float:
        """(p90 - p10) / median of the per-run kernel sums."""
        sums = self.kernel_sums()
        med = float(np.median(sums))
        return float((np.percentile(sums, 90) - np.percentile(sums, 10)) / med) if med > 0 else 0.0


Timer = Callable[[list, list, "TableSettings", "int | None"], "list[Timing]"]


@dataclass(frozen=True)
class Runtime:
    """Where tables are measured: name, version and provider recorded in the file, and the function that times
    graphs (ONNX models as bytes or paths, their input shapes, settings, rounds) -> one :class:`Timing` each.
    ONNX Runtime's CPU provider by default (:func:`ort_runtime`); ``deploy/jetson/latency_table.py`` times with
    TensorRT's ``trtexec`` instead and writes the same format."""

    name: str
    version: str
    provider: str
    time: Timer


def ort_runtime() -> Runtime:
    """ONNX Runtime, CPU execution provider, profiled (:func:`time_graphs`)."""
    import onnxruntime as ort

    return Runtime("onnxruntime", ort.__version__, "CPUExecutionProvider", time_graphs)


def _session(source: bytes | str, s: TableSettings, prefix: str) -> Any:
    """A profiling ONNX Runtime CPU session (all graph optimisations, ``s.threads`` intra-op threads)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if s.threads is not None:
        so.intra_op_num_threads, so.inter_op_num_threads = s.threads, 1
    so.enable_profiling, so.profile_file_prefix = True, prefix
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _node_times(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per ``model_run`` event (in time order): kernel time (ms) of each node that ran inside it."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    nodes = [(e["ts"], e["name"], e["dur"]) for e in events
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    out = []
    for a, b in runs:
        run: dict[str, float] = {}
        for t, name, dur in nodes:
            if a <= t <= b:
                run[name] = run.get(name, 0.0) + dur / 1000.0
        out.append(run)
    return out


def time_graphs(sources: list[bytes | str], shapes: list[tuple[int, ...]], s: TableSettings,
                rounds: int | None = None) -> list[Timing]:
    """Time graphs in interleaved rounds (one run of each per round, after ``s.warmup`` untimed rounds), so slow
    drifts of the machine's load affect them alike; profiled."""
    import time

    rounds = rounds or s.repeats
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [_session(src, s, str(Path(tmp) / f"g{k}")) for k, src in enumerate(sources)]
        feeds = [{sess.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
                 for sess, shape in zip(sessions, shapes)]
        wall: list[list[float]] = [[] for _ in sessions]
        for round_ in range(s.warmup + rounds):
            for k, (sess, feed) in enumerate(zip(sessions, feeds)):
                t0 = time.perf_counter()
                sess.run(None, feed)
                if round_ >= s.warmup:
                    wall[k].append((time.perf_counter() - t0) * 1000.0)
        runs = [_node_times(json.loads(Path(sess.end_profiling()).read_text()))[s.warmup:] for sess in sessions]
    return [Timing(tuple(w), tuple(r)) for w, r in zip(wall, runs)]


def measure_op(graph: PruningGraph, op: ConvOp, s: TableSettings, runtime: Runtime | None = None) -> OpTiming:
    """The op's kernel time at every grid point."""
    runtime = runtime or ort_runtime()
    node = _owner(graph, op.name)
    node = node if node is not None and graph[node].kind != "linear" else None
    ins, outs = _grid(graph, node, op, s)
    ms, spread = [], []
    for ci in ins:
        timings = runtime.time([_op_onnx(op, ci, co, s.batch) for co in outs],
                               [(s.batch, ci, *op.in_hw)] * len(outs), s, None)
        ms.append(tuple(t.value("profile", s.statistic) for t in timings))
        spread.append(tuple(t.spread() for t in timings))
    inputs = tuple(tuple(slot) for slot in graph[node].inputs) if node is not None else ((None, op.conv.in_channels, 0, 1),)
    c = op.conv
    out_hw = tuple((size + 2 * p - d * (k - 1) - 1) // st + 1
                   for size, p, d, k, st in zip(op.in_hw, c.padding, c.dilation, c.kernel_size, c.stride))
    return OpTiming(op.name, node, inputs, c.kernel_size[0], c.stride[0], c.groups, op.in_hw, type(op.act).__name__,
                    tuple(ins), tuple(outs), tuple(ms), tuple(spread), out_hw)


def measure_models(models: list[nn.Module], s: TableSettings, runtime: Runtime | None = None) -> list[Timing]:
    """Each deployed model end to end in ONNX Runtime (exported as ``yolo-prune export`` does), timed in
    interleaved rounds; ``Timing.value(s.timing, s.statistic)`` is its latency."""
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, model in enumerate(models):
            paths.append(str(Path(tmp) / f"model{k}.onnx"))
            export_onnx(model, paths[-1], ExportOptions(img_size=s.img_size, batch_size=s.batch, opset=12),
                        verify=False)
        timer = (runtime or ort_runtime()).time
        return timer(paths, [(s.batch, 3, *s.img_size)] * len(paths), s, max(s.repeats, 10))


def measured_latency(model: nn.Module, settings: dict[str, Any]) -> tuple[float, Any]:
    """A model's latency measured as a table's whole-model points were (``settings`` of the table): the stored
    statistic and all the timed runs."""
    s = TableSettings(**{**settings, "img_size": tuple(settings["img_size"]), "rates": tuple(settings["rates"])})
    (timing,) = measure_models([model], s)
    return timing.value(s.timing, s.statistic), timing


MIN_CONV_SCALE = 0.01  # a fit that keeps under 1 % of the measured conv times (NNLS leaves ~1e-16, not 0) is noise


def calibrate(table: LatencyTable, points: list[tuple[float, list[tuple[int, float]], Any]]) -> dict[str, Any]:
    """Fit latency = conv_scale x C + volume_ms x V + const_ms (non-negative least squares) to measured models
    ``(rate, pairs, stats)``, each measured by the table's statistic. A fit without a conv term (conv_scale below
    MIN_CONV_SCALE: timings too noisy to fall with pruning) keeps conv_scale = 1 and says so in ``note``."""
    from scipy.optimize import nnls

    rows, measured, info = [], [], []
    for rate, pairs, timing in points:
        conv, volume = table.terms(pairs)
        rows.append([conv, volume, 1.0])
        measured.append(timing.value(table.settings["timing"], table.settings["statistic"]))
        wall = sorted(timing.wall_ms)
        info.append({"rate": rate, "measured_ms": measured[-1], "wall_min_ms": wall[0],
                     "wall_median_ms": float(np.median(wall)), "conv_ms": conv, "volume": volume})
    a, y = np.array(rows), np.array(measured)
    (scale, volume_ms, const_ms), _ = nnls(a, y)
    fit: dict[str, Any] = {}
    if scale < MIN_CONV_SCALE:  # noise flattened the whole-model timings: the fit would price pruning at ~zero
        (volume_ms, const_ms), _ = nnls(a[:, 1:], y - a[:, 0])
        scale = 1.0
        fit["note"] = ("the whole-model timings did not fall with the conv times (noise?): conv times taken as "
                       "measured, volume and constant fitted to the rest")
    fit.update({"conv_scale": float(scale), "volume_ms": float(volume_ms), "const_ms": float(const_ms),
                "points": info})
    for row, point in zip(rows, info):
        point["predicted_ms"] = float(scale * row[0] + volume_ms * row[1] + const_ms)
    return fit


def _partial(out: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Finished ops of an interrupted run with the same key (else nothing)."""
    path = out.with_name(out.name + ".partial.json")
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data["ops"]
    return {}


def _save_partial(out: Path, key: dict[str, Any], done: dict[str, Any]) -> None:
    from yolo_prune.fileio import write_text_atomic

    write_text_atomic(out.with_name(out.name + ".partial.json"), json.dumps({"key": key, "ops": done}))


def _layer_rows(table: LatencyTable, graph: PruningGraph, s: TableSettings) -> list[dict[str, Any]]:
    """Per prunable layer (one per coupled group) and candidate width: own conv time, predicted model latency."""
    rows = []
    for unit in graph.prunable_units:
        layer = unit[0]
        own = [op for op in table.ops if op.node in unit]
        widths: dict[str, Any] = {}
        for rate in (None, *s.rates):
            pairs = [] if rate is None else [(layer, rate)]
            w = table.widths(pairs, s.round_to)
            widths[str(w[layer])] = {"rate": rate or 0.0,
                                     "op_ms": sum(op.at(*table.op_channels(op, w)) for op in own),
                                     "model_ms": table.predict(pairs, s.round_to)}
        rows.append({"layer": layer, "name": graph[layer].name, "coupled": list(unit), "widths": widths})
    return rows


def build_latency_table(model: nn.Module, s: TableSettings, out: str | Path, source: str = "",
                        progress: Callable[[int, int, str], None] | None = None,
                        runtime: Runtime | None = None) -> LatencyTable:
    """Measure ``model`` (eval, CPU) and return its table; ``out`` names the file (its partial results resume)."""
    from yolo_prune.models.complexity import count_gflops, count_params

    runtime = runtime or ort_runtime()
    out = Path(out)
    graph = derive_graph(model)
    ops = conv_ops(model, s.img_size)
    key = json.loads(json.dumps({"fingerprint": graph.fingerprint(), "settings": asdict(s), "runtime":
                                 [runtime.name, runtime.version, runtime.provider], "version": 1}))  # as stored
    done = _partial(out, key)
    for k, op in enumerate(ops):
        if op.name not in done:
            done[op.name] = asdict(measure_op(graph, op, s, runtime))
            _save_partial(out, key, done)
        if progress:
            progress(k + 1, len(ops), op.name)
    timings = [OpTiming(**{**d, "inputs": tuple(tuple(x) for x in d["inputs"]), "in_hw": tuple(d["in_hw"]),
                           "ins": tuple(d["ins"]), "outs": tuple(d["outs"]),
                           "ms": tuple(tuple(r) for r in d["ms"]), "spread": tuple(tuple(r) for r in d["spread"])})
               for d in (done[op.name] for op in ops)]
    units = [u[0] for u in graph.prunable_units]
    uniform = [(0.0, [])] + [(r, [(u, r) for u in units]) for r in s.rates]
    models = [model] + [prune(model, pairs, "l1", round_to=s.round_to, summarize=False).model for _, pairs in uniform[1:]]
    stats = measure_models(models, s, runtime)
    wall = stats[0].wall_ms
    base = {"ms": stats[0].value(s.timing, s.statistic), "wall_min_ms": min(wall), "wall_median_ms": float(np.median(wall)),
            "wall_p10_ms": float(np.percentile(wall, 10)), "wall_p90_ms": float(np.percentile(wall, 90)), "n": len(wall),
            "kernel_spread": stats[0].spread()}
    full = sum(op.ms[-1][-1] for op in timings)
    spreads = [v for op in timings for row in op.spread for v in row]
    table = LatencyTable(
        runtime=runtime.name, runtime_version=runtime.version, provider=runtime.provider, machine=machine(),
        settings={**asdict(s), "img_size": list(s.img_size), "rates": list(s.rates)},
        model={"source": source, "fingerprint": graph.fingerprint(), "params": count_params(model),
               "gflops": count_gflops(model, s.img_size)},
        base=base, rest_ms=base["ms"] - full,
        nodes=[{"index": n.index, "name": n.name, "out": n.out_channels, "parts": n.parts, "prunable": n.prunable}
               for n in graph.nodes],
        groups=[list(g) for g in graph.groups], ops=timings,
        noise={"median_rel_spread": float(np.median(spreads)), "max_rel_spread": float(np.max(spreads)),
               "base_rel_spread": stats[0].spread()})
    table.calibration = calibrate(table, [(r, pairs, st) for (r, pairs), st in zip(uniform, stats)])
    table.layers = _layer_rows(table, graph, s)
    return table
