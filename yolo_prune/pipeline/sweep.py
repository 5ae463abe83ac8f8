"""Li et al. (ICLR 2017) on classification CNNs: the parameters-vs-accuracy sweep, and prune-then-retrain vs
layer-by-layer prune-retrain.

For every filter percentage p (0 ... 0.9) the base model loses p of the filters of every prunable layer
(coupled residual groups as one; ``layers`` restricts the set), is evaluated right away, retrained, and
evaluated again. ``retrain="once"`` prunes all layers in one shot then retrains ``retrain_epochs``;
``"layerwise"`` prunes one layer at a time, each followed by its share of the retraining epochs (at least one).
``scoring`` is the planner's option: ``"greedy"`` (= ``sequential``, the default: kernels of channels already removed
upstream do not count) or ``"independent"`` (each layer scored on its own unpruned weights).
p = 0 is the base retrained for the same epochs (the control). Results go to ``sweep.json`` after every
percentage (a re-run resumes; an interrupted retraining resumes from its last.pt), ``sweep.csv``, ``sweep.md``
and ``sweep.png`` (top-1 against parameters, before and after retraining).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from yolo_prune.errors import ConfigError
from yolo_prune.fileio import write_atomic, write_text_atomic

PERCENTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SweepSettings:
    """A sweep: the base (``weights``, or ``arch`` trained ``epochs`` from scratch), percentages, retraining."""

    data: str = "digits"
    arch: str | None = "scnnb"
    weights: str | None = None
    width: float = 1.0
    img_size: int | None = None
    epochs: int = 10
    percents: Sequence[float] = PERCENTS
    retrain: str = "once"
    retrain_epochs: int = 3
    criterion: str = "l1"
    scoring: str = "sequential"
    layers: Sequence[int] | None = None
    batch_size: int = 64
    lr0: float = 0.05
    retrain_lr0: float = 0.01
    out: str = "runs/sweep/exp"
    seed: int = 0
    device: str = ""
    workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        from yolo_prune.prune.plan import scoring_name

        self.scoring = scoring_name(self.scoring)
        if self.retrain not in ("once", "layerwise"):
            raise ConfigError(f"--retrain must be 'once' or 'layerwise', got {self.retrain!r}")
        bad = [p for p in self.percents if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1]
        if bad or not self.percents:
            raise ConfigError(f"--percents: expected fractions in [0, 1), e.g. [0, 0.5, 0.9]; got {list(self.percents)}")
        if not self.weights and not self.arch:
            raise ConfigError("give --weights (a trained classifier) or --arch (trained first, --epochs)")
        for name in ("epochs", "retrain_epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "percents": [float(p) for p in self.percents],
                "layers": list(self.layers) if self.layers is not None else None}


def _train(s: SweepSettings, name: str, epochs: int, lr0: float, **source: Any) -> Path:
    """A classification run in ``out/name`` (resumed when interrupted, skipped when finished); its last.pt."""
    import torch

    from yolo_prune.engine.classify import ClassifySettings, train_classifier

    last = Path(s.out) / name / "weights" / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True).get("train_state") or {}
        if int(state.get("epoch", -1)) + 1 >= epochs:
            return last
        train_classifier(ClassifySettings(resume=str(last), device=s.device, workers=s.workers, progress=s.progress))
        return last
    train_classifier(ClassifySettings(data=s.data, epochs=epochs, batch_size=s.batch_size, lr0=lr0, seed=s.seed,
                                      criterion=s.criterion, device=s.device, workers=s.workers, project=s.out,
                                      name=name, exist_ok=True, progress=s.progress, **source))
    return last


def base_model(s: SweepSettings) -> Path:
    """The trained base: ``weights`` as given, or ``arch`` trained ``epochs`` epochs in ``out/base``."""
    if s.weights:
        return Path(s.weights)
    return _train(s, "base", s.epochs, s.lr0, arch=s.arch, width=s.width, img_size=s.img_size)


def prune_then_retrain(s: SweepSettings, base: Path, rate: float, tag: str) -> tuple[Path, Path]:
    """(pruned checkpoint, retrained last.pt): every listed layer pruned at ``rate`` in one shot, then retrained."""
    from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
    from yolo_prune.prune import prune

    pruned = Path(s.out) / f"{tag}.pt"
    if not pruned.is_file():
        loaded = load_checkpoint(base)
        result = prune(loaded.model, _params(s, loaded.model, rate), s.criterion, scoring=s.scoring)
        save_checkpoint(result.model, pruned, history=loaded.history + [result.history_entry()])
    return pruned, _train(s, tag, s.retrain_epochs, s.retrain_lr0, weights=str(pruned))


def layerwise_prune_retrain(s: SweepSettings, base: Path, rate: float, tag: str) -> tuple[Path, Path]:
    """(pruned checkpoint of the first step, final last.pt): one layer (unit) pruned at a time, each followed by
    ``ceil(retrain_epochs / layers)`` retraining epochs; later layers are scored on the retrained weights."""
    from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
    from yolo_prune.prune import prune

    current, first = base, None
    params = _params(s, load_checkpoint(base).model, rate)
    epochs = max(1, math.ceil(s.retrain_epochs / len(params)))
    for k, (layer, r) in enumerate(params):
        pruned = Path(s.out) / f"{tag}_layer{layer}.pt"
        if not pruned.is_file():
            loaded = load_checkpoint(current)
            result = prune(loaded.model, [(layer, r)], s.criterion)
            save_checkpoint(result.model, pruned, history=loaded.history + [result.history_entry()])
        first = first or pruned
        current = _train(s, f"{tag}_layer{layer}", epochs, s.retrain_lr0, weights=str(pruned))
    return first, current


def _params(s: SweepSettings, model: Any, rate: float) -> list[tuple[int, float]]:
    """(layer, rate) for every listed layer, one per coupled group (graph indices of the unpruned base)."""
    from yolo_prune.graph.derive import derive_graph

    graph = derive_graph(model)
    units = [u[0] for u in graph.prunable_units] if s.layers is None else list(s.layers)
    return [(layer, rate) for layer in units]


def _measure(path: Path, s: SweepSettings) -> dict[str, Any]:
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.pipeline.classify import evaluate_on_classification

    model = load_model(path)
    res = evaluate_on_classification(model, s.data, workers=s.workers, source=str(path))
    return {"params": count_params(model), "gflops": count_gflops(model, model.img_size, model.ch_in),
            "top1": res.top1}


def check_base(s: SweepSettings) -> None:
    """A given base must be a classifier that fits the data (checked before anything is written)."""
    if s.weights:
        from yolo_prune.checkpoint import load_model
        from yolo_prune.data.classify import load_classification_data
        from yolo_prune.pipeline.classify import check_fits

        model = load_model(s.weights)
        check_fits(model, load_classification_data(s.data, getattr(model, "img_size", 32)), f"--weights {s.weights}")


def run_sweep(s: SweepSettings) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns one row per percentage (sorted)."""
    check_base(s)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sweep.json"
    saved = json.loads(store.read_text()) if store.is_file() else {"settings": s.to_dict(), "rows": []}
    mine = {k: v for k, v in s.to_dict().items() if k not in ("progress", "device", "workers")}
    theirs = {k: v for k, v in saved["settings"].items() if k not in ("progress", "device", "workers")}
    if theirs != mine:
        diff = sorted(k for k in mine if theirs.get(k) != mine[k])
        raise ConfigError(f"{out} holds a sweep with other settings ({', '.join(diff)}); use another --out")
    base = base_model(s)
    rows = {round(r["percent"], 6): r for r in saved["rows"]}
    step = prune_then_retrain if s.retrain == "once" else layerwise_prune_retrain
    for p in sorted(float(x) for x in s.percents):
        if round(p, 6) in rows:
            continue
        tag = f"p{int(round(100 * p)):02d}"
        if p == 0:
            before, after = base, _train(s, tag, s.retrain_epochs, s.retrain_lr0, weights=str(base))
        else:
            before, after = step(s, base, p, tag)
        b, a = _measure(before, s), _measure(after, s)
        if p > 0 and s.retrain == "layerwise":
            b = {**b, **{k: a[k] for k in ("params", "gflops")}}  # the fully pruned size; top-1 after the first layer
        rows[round(p, 6)] = {"percent": p, "params": a["params"], "gflops": a["gflops"], "top1_pruned": b["top1"],
                             "top1_retrained": a["top1"], "weights": str(after)}
        saved["rows"] = [rows[k] for k in sorted(rows)]
        write_text_atomic(store, json.dumps(saved, indent=1))
    ordered = [rows[k] for k in sorted(rows)]
    write_tables(out, ordered, s)
    return ordered


def write_tables(out: Path, rows: list[dict[str, Any]], s: SweepSettings) -> None:
    """sweep.csv, sweep.md and sweep.png."""
    base = rows[0]["params"] if rows and rows[0]["percent"] == 0 else None
    csv = ["percent,params,gflops,top1_pruned,top1_retrained"] + [
        f"{r['percent']:g},{r['params']},{r['gflops']:.6g},{r['top1_pruned']:.6g},{r['top1_retrained']:.6g}"
        for r in rows]
    write_text_atomic(out / "sweep.csv", "\n".join(csv) + "\n")
    md = ["| filters pruned | parameters | of base | GFLOPs | top-1 pruned | top-1 retrained |", "|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{r['params'] / base:.3f}" if base else "-"
        md.append(f"| {100 * r['percent']:.0f}% | {r['params']:,} | {share} | {r['gflops']:.5f} | "
                  f"{r['top1_pruned']:.4f} | {r['top1_retrained']:.4f} |")
    write_text_atomic(out / "sweep.md", "\n".join(md) + "\n")
    write_atomic(out / "sweep.png", lambda tmp: _plot(rows, s).savefig(tmp, dpi=110, format="png"))


def _plot(rows: list[dict[str, Any]], s: SweepSettings):
    """Top-1 against parameters (millions), before and after retraining, each point labelled by its percentage."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    params = [r["params"] / 1e6 for r in rows]
    ax.plot(params, [r["top1_pruned"] for r in rows], "o--", label="pruned, no retraining")
    ax.plot(params, [r["top1_retrained"] for r in rows], "o-", label=f"retrained ({s.retrain}, {s.retrain_epochs} ep.)")
    for x, r in zip(params, rows):
        ax.annotate(f"{100 * r['percent']:.0f}%", (x, r["top1_retrained"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{s.arch or Path(s.weights).name} on {s.data}: filters pruned per layer ({s.criterion})")
    ax.grid(True, alpha=0.4)
    ax.legend()
    fig.tight_layout()
    return fig
