"""FBS (Gao et al., ICLR 2019) end to end: gate a trained network, fine-tune while the density steps down from
1.0 to ``density``, and measure every step: accuracy, MACs executed per image (from the gates), and at the end
the same comparison against static pruning at equal MACs (equally fine-tuned) and batch-1 CPU latency of the
gathered-weights implementation, the static model and the dense one.

Files in ``out``: ``fbs.json`` (settings, rows; rewritten atomically after every step, so a re-run resumes at
the first unfinished step; an interrupted fine-tune resumes from its last.pt), ``fbs.csv``, ``fbs.md``,
``gated_step<k>.pt`` and one run folder per step (``step<k>/``) plus ``static/``.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.fileio import write_text_atomic


@dataclass
class FbsSettings:
    """An FBS run. ``layers``: graph layer indices to gate (default: every gateable conv of a classifier, the
    backbone of a YOLOv7 model). ``epochs``: fine-tuning epochs per density step (the static model gets all of
    them). Detection uses ``hyp``, ``img_size`` and ``max_images`` (evaluation subset)."""

    weights: str
    data: str = "digits"
    density: float = 0.5
    steps: int = 3
    epochs: int = 2
    saliency_l1: float = 1e-3
    layers: Sequence[int] | None = None
    out: str = "runs/fbs/exp"
    batch_size: int = 64
    lr0: float = 0.01
    img_size: int | None = None
    hyp: str = "scratch.tiny"
    max_images: int | None = None
    static: bool = True
    latency: bool = True
    latency_iters: int = 50
    device: str = "cpu"
    workers: int = 0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"--density must be in (0, 1], got {self.density}")
        for name in ("steps", "epochs", "batch_size", "latency_iters"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.saliency_l1 < 0:
            raise ConfigError(f"--saliency-l1 must be >= 0, got {self.saliency_l1}")

    def schedule(self) -> list[float]:
        """Densities of the steps: 1.0 (the predictors learn), then ``steps`` equal steps down to ``density``."""
        return [1.0] + [round(1.0 - (1.0 - self.density) * (k + 1) / self.steps, 6) for k in range(self.steps)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers) if self.layers is not None else None}


@dataclass
class FbsResult:
    """Rows (``base``, ``step<k>``, ``static``) with accuracy, MACs per image and latency where measured."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


def _task(settings: FbsSettings, model: nn.Module):
    from yolo_prune.models.classify import Classifier
    from yolo_prune.pipeline.fbs_tasks import ClassifyTask, DetectTask

    return ClassifyTask(settings, model) if isinstance(model, Classifier) else DetectTask(settings, model)


@torch.no_grad()
def measure_macs(model: nn.Module, task: Any) -> float:
    """Mean executed MACs per validation image of a gated model (eval mode, dense path)."""
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.prune.fbs import MacCounter

    model.eval()
    counter = MacCounter(model, derive_graph(model), task.img_size, task.ch)
    per_image = [counter.per_image() for _ in _forward_all(model, task)]
    return float(torch.cat(per_image).mean())


def _forward_all(model: nn.Module, task: Any):
    for x in task.batches():
        model(x)
        yield x


def _dense_macs(model: nn.Module, task: Any) -> float:
    from yolo_prune.models.complexity import count_gflops

    return count_gflops(model, task.img_size, task.ch) / 2 * 1e9


@torch.no_grad()
def batch1_latency_ms(models: dict[str, nn.Module], task: Any, iters: int, rounds: int = 3,
                      threads: int = 1) -> dict[str, float]:
    """Median batch-1 CPU latency (``threads`` intra-op threads) of each model over validation images taken in
    turn; ``rounds`` rounds visit every model in turn so a shared machine's drift hits all alike. Gated models run
    the gathered-weights path."""
    from yolo_prune.bench.latency import time_callable
    from yolo_prune.bench.runners import torch_threads
    from yolo_prune.models.gating import set_fast

    images = [x[i:i + 1] for x in task.batches() for i in range(len(x))][:16]
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        set_fast(model.cpu().eval(), True)
    try:
        with torch_threads(threads):
            for _ in range(rounds):
                for name, model in models.items():
                    state = {"i": 0}

                    def run(model: nn.Module = model, state: dict = state) -> None:
                        model(images[state["i"] % len(images)])
                        state["i"] += 1

                    times[name] += time_callable(run, warmup=3, iters=iters).times_ms
    finally:
        for model in models.values():
            set_fast(model, False)
    return {name: statistics.median(t) for name, t in times.items()}


class _Store:
    """fbs.json: settings and rows; a step already in it is not re-run."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings, self.rows = out / "fbs.json", settings, []
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("settings") != settings:
                diff = sorted(k for k in settings if saved.get("settings", {}).get(k) != settings[k])
                raise ConfigError(f"{out} holds an FBS run with other settings ({', '.join(diff)}); use another --out")
            self.rows = saved["rows"]

    def get(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["name"] == name), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        names = [r["name"] for r in self.rows]
        if row["name"] in names:
            self.rows[names.index(row["name"])] = row
        else:
            self.rows.append(row)
        write_text_atomic(self.path, json.dumps({"settings": self.settings, "rows": self.rows}, indent=1))
        return row


def run_fbs(settings: FbsSettings) -> FbsResult:
    """Run (or resume) the schedule and the comparisons; see the module docstring."""
    from yolo_prune.checkpoint import load_checkpoint, load_model, save_checkpoint
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.models.gating import set_density
    from yolo_prune.prune.fbs import backbone_layers, gate_network, gateable

    out = Path(settings.out)
    loaded = load_checkpoint(settings.weights)
    base, history = loaded.model.eval(), list(loaded.history)
    torch.manual_seed(settings.seed)
    graph = derive_graph(base)
    layers = list(settings.layers) if settings.layers is not None else (
        gateable(base, graph) if not hasattr(base, "yaml") else backbone_layers(base, graph))
    gated = gate_network(base, graph, layers, 1.0)  # checks the layers before anything is written
    task = _task(settings, base)
    out.mkdir(parents=True, exist_ok=True)
    store = _Store(out, {**settings.to_dict(), "layers": layers, "progress": None, "device": None, "workers": None})
    dense = _dense_macs(base, task)
    if store.get("base") is None:
        store.add({"name": "base", "density": 1.0, **task.evaluate(base), "macs": dense, "macs_ratio": 1.0})
    weights = out / "gated_step0.pt"
    if not weights.is_file():
        ckpt = {"event": "fbs-gate", "layers": layers, "saliency_l1": settings.saliency_l1}
        save_checkpoint(gated, weights, history=history + [ckpt])
        _set_l1(weights, settings.saliency_l1)
    for k, density in enumerate(settings.schedule()):
        name = f"step{k}"
        if k > 0:
            weights = _at_density(load_checkpoint(last), density, out / f"gated_{name}.pt", settings.saliency_l1)
        last = task.train(weights, name, settings.epochs)
        if store.get(name) is None:
            model = load_model(last)
            set_density(model, density)
            macs = measure_macs(model, task)
            store.add({"name": name, "density": density, **task.evaluate(model), "macs": macs,
                       "macs_ratio": macs / dense, "weights": str(last)})
    final = store.get(f"step{settings.steps}")
    if settings.static and store.get("static") is None:
        store.add(_static_row(settings, base, graph, layers, final["macs"], dense, task, history))
    if settings.latency and "latency_ms" not in store.get("base"):
        _latency_rows(settings, store, base, load_model(final["weights"]), task)
    write_tables(out, store.rows, task.primary)
    return FbsResult(out, store.rows)


def _set_l1(path: Path, weight: float) -> None:
    """Record the L1 weight in a gated checkpoint (what the trainers' hooks read)."""
    from yolo_prune.checkpoint import atomic_save

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["gating"]["l1"] = float(weight)
    atomic_save(ckpt, path)


def _at_density(loaded: Any, density: float, path: Path, l1: float) -> Path:
    """The previous step's weights as a fresh checkpoint at the next density (no training state)."""
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.models.gating import set_density

    if not path.is_file():
        set_density(loaded.model, density)
        save_checkpoint(loaded.model, path, history=loaded.history)
        _set_l1(path, l1)
    return path


def _static_row(settings: FbsSettings, base: nn.Module, graph: Any, layers: list[int], macs: float, dense: float,
                task: Any, history: list[dict]) -> dict[str, Any]:
    """Static pruning of the same layers at the FBS model's MACs, fine-tuned for the schedule's total epochs."""
    from yolo_prune.checkpoint import load_model, save_checkpoint
    from yolo_prune.prune.fbs import static_at_macs

    rate, pruned = static_at_macs(base, graph, layers, macs, task.img_size, task.ch)
    path = Path(settings.out) / "static.pt"
    if not path.is_file():
        save_checkpoint(pruned, path, history=history + [{"event": "prune", "uniform_rate": rate, "layers": layers}])
    last = task.train(path, "static", settings.epochs * (settings.steps + 1))
    model = load_model(last)
    static_macs = _dense_macs(model, task)
    return {"name": "static", "density": None, "rate": rate, **task.evaluate(model), "macs": static_macs,
            "macs_ratio": static_macs / dense, "weights": str(last)}


def _latency_rows(settings: FbsSettings, store: _Store, base: nn.Module, gated: nn.Module, task: Any) -> None:
    """Batch-1 CPU latency of the dense, the static and the final gated model (gathered weights)."""
    from yolo_prune.checkpoint import load_model

    models = {"base": base, f"step{settings.steps}": gated}
    if store.get("static") is not None:
        models["static"] = load_model(store.get("static")["weights"])
    for name, ms in batch1_latency_ms(models, task, settings.latency_iters).items():
        store.add({**store.get(name), "latency_ms": ms})


def write_tables(out: Path, rows: list[dict[str, Any]], primary: str) -> None:
    """fbs.csv and fbs.md: one row per model (base, steps, static)."""
    cols = ["name", "density", primary, "macs", "macs_ratio", "latency_ms"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r[c], float)
                                         else str(r[c]) for c in cols) for r in rows]
    write_text_atomic(out / "fbs.csv", "\n".join(lines) + "\n")
    md = [f"| model | density | {primary} | MACs / image | of dense | batch-1 CPU ms |", "|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-"
        dens = f"{r['density']:.3f}" if r.get("density") is not None else f"static (rate {r.get('rate', 0):.3f})"
        md.append(f"| {r['name']} | {dens} | {r[primary]:.4f} | {r['macs'] / 1e6:.3f} M | {r['macs_ratio']:.3f} "
                  f"| {lat} |")
    write_text_atomic(out / "fbs.md", "\n".join(md) + "\n")
