"""The published method automated: sensitivity analysis -> layer selection -> prune -> fine-tune, K times.

Each iteration lives in ``<out>/iter_<k>/`` and ends with ``done.json``; a re-run skips finished iterations
and continues from the last fine-tuned model, so the loop resumes at iteration granularity. Graphs are
re-derived from the current model each time, so layer indices always refer to the current architecture.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from yolo_prune.errors import YoloPruneError
from yolo_prune.fileio import write_text_atomic
from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings


@dataclass(frozen=True)
class SelectionSettings:
    """Published scoring, or a GFLOPs budget reached geometrically over the iterations."""

    params_layers: int = 5
    flops_layers: int = 5
    params_map: float = 1.0
    flops_map: float = 1.0
    target_gflops: float | None = None


@dataclass(frozen=True)
class IterateSettings:
    """Everything one ``iterate`` run depends on."""

    weights: str
    out_dir: str
    iterations: int
    data: DataSettings
    analysis: AnalysisSettings
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    epochs: int = 10
    hyp: str = "finetune"
    eval_images: int | None = None
    scoring: str = "sequential"

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise YoloPruneError(f"--iterations must be >= 1, got {self.iterations}")
        if self.epochs < 0:
            raise YoloPruneError(f"--epochs must be >= 0, got {self.epochs}")


@dataclass
class IterationRow:
    """One line of the summary table."""

    iteration: int
    params: int
    gflops: float
    map50: float
    map: float
    epochs: int
    pruning_params: list = field(default_factory=list)
    weights: str = ""


# (pruned checkpoint path, run directory, epochs, iteration) -> fine-tuned checkpoint path
TrainFn = Callable[[Path, Path, int, int], Path]


def _row_for(weights: Path, settings: IterateSettings, iteration: int, epochs: int, pairs: list,
             device: torch.device) -> IterationRow:
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.pipeline.evaluation import evaluate_on_data

    model = load_model(weights)
    data = DataSettings(settings.data.data, "val", settings.data.img_size, settings.data.batch_size,
                        settings.data.workers, settings.eval_images)
    result = evaluate_on_data(model, data, device=device, progress=False)
    return IterationRow(iteration, count_params(model), count_gflops(model.cpu(), settings.data.img_size),
                        result.map50, result.map, epochs, pairs, str(weights))


def _select(store_dir: Path, settings: IterateSettings, iteration: int, model) -> list[tuple[int, float]]:
    from yolo_prune.analysis.budget import select_for_budget
    from yolo_prune.analysis.selection import published_selection
    from yolo_prune.analysis.table import read_table

    table = read_table(store_dir)
    table.check_complete()
    base = table.baseline
    sel = settings.selection
    if sel.target_gflops is None:
        _, _, merged = published_selection(table, base.params, base.gflops, sel.params_layers, sel.flops_layers,
                                           sel.params_map, sel.flops_map)
        return [(p.layer, p.rate) for p in merged]
    g0 = base.gflops
    step_target = g0 * (sel.target_gflops / g0) ** (1.0 / (settings.iterations - iteration))
    from yolo_prune.prune.cost import fused_cost_model

    costs = fused_cost_model(model, settings.data.img_size)
    return select_for_budget(table, g0, base.map, max(step_target, sel.target_gflops), "gflops", costs,
                             settings.analysis.round_to).pairs


def _iteration(k: int, current: Path, settings: IterateSettings, train_fn: TrainFn, device: torch.device,
               progress: bool) -> IterationRow:
    from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
    from yolo_prune.engine.calibration import calibration_source
    from yolo_prune.pipeline.evaluation import sensitivity_on_data
    from yolo_prune.prune import prune

    folder = Path(settings.out_dir) / f"iter_{k}"
    loaded = load_checkpoint(current)
    sensitivity_on_data(loaded.model, settings.data, settings.analysis, folder / "sensitivity", device=device,
                        source=str(current), progress=progress)
    model = load_checkpoint(current).model
    pairs = _select(folder / "sensitivity", settings, k - 1, model)
    if not pairs:
        raise YoloPruneError(f"iteration {k}: selection chose no layers (budget already met?)")
    a = settings.analysis
    source = calibration_source(model, a.criterion, a.options, settings.data.data, settings.data.img_size, a.seed)
    result = prune(model, pairs, a.criterion, round_to=a.round_to, seed=a.seed, inplace=True, summarize=False,
                   scoring=settings.scoring, options=a.options, source=source)
    pruned = save_checkpoint(result.model, folder / "pruned.pt", history=loaded.history + [result.history_entry()])
    tuned = train_fn(pruned, folder / "train", settings.epochs, k) if settings.epochs > 0 else pruned
    row = _row_for(tuned, settings, k, settings.epochs, [list(p) for p in pairs], device)
    write_text_atomic(folder / "done.json", json.dumps(asdict(row), indent=1))
    return row


SETTINGS_FILE = "iterate.json"


def recorded_settings(settings: IterateSettings) -> dict:
    """What the results in ``out_dir`` depend on (not ``iterations``: a finished loop may be extended)."""
    d = asdict(settings)
    d.pop("iterations"), d.pop("out_dir")
    d["weights"] = str(Path(settings.weights).resolve())
    d["data"]["data"] = str(Path(settings.data.data).resolve())
    return json.loads(json.dumps(d))  # tuples -> lists, as read back


def check_out_dir(settings: IterateSettings) -> None:
    """Refuse to resume a folder whose iterations were made with other settings (their results would be
    reported as this run's)."""
    out = Path(settings.out_dir)
    if out.exists() and not out.is_dir():
        raise YoloPruneError(f"--out {out}: is a file, expected a directory")
    saved_path = out / SETTINGS_FILE
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except ValueError:
            raise YoloPruneError(f"{saved_path}: not readable; use another --out") from None
    elif (out / "iter_0.json").is_file():  # a folder written before the settings were recorded: its weights
        first = json.loads((out / "iter_0.json").read_text())
        saved = {**recorded_settings(settings), "weights": str(Path(first.get("weights", "")).resolve())}
    else:
        return
    now = recorded_settings(settings)
    diff = _differences(saved, now)
    if diff:
        raise YoloPruneError(f"--out {out} holds iterations made with other settings ({', '.join(diff)}); use "
                             f"another --out (or the settings it was made with, to resume it)")


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Names of the settings that differ (nested dataclasses flattened as ``data.img_size``)."""
    keys = sorted(set(saved) | set(now))
    out = []
    for k in keys:
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def check_model(settings: IterateSettings) -> None:
    """The starting model fits the data (class count) and the GFLOPs target lies below its cost."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.models.complexity import count_gflops
    from yolo_prune.pipeline.evaluation import check_model_classes

    model = load_model(settings.weights)
    check_model_classes(model, settings.data, settings.weights)
    target = settings.selection.target_gflops
    if target is not None:
        gflops = count_gflops(model, settings.data.img_size)
        if target >= gflops:
            raise YoloPruneError(f"--target-gflops {target:g}: {settings.weights} has {gflops:.4g} GFLOPs at "
                                 f"{settings.data.img_size} px already; give a smaller target")


def run_iterations(settings: IterateSettings, train_fn: TrainFn, device: torch.device,
                   progress: bool = True) -> list[IterationRow]:
    """Run (or resume) the loop; returns the summary rows (row 0 = the starting model).

    The output folder's recorded settings and the model are checked before anything is written.
    """
    check_out_dir(settings)
    check_model(settings)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SETTINGS_FILE, json.dumps(recorded_settings(settings), indent=1))
    first = out / "iter_0.json"
    if first.exists():
        rows = [IterationRow(**json.loads(first.read_text()))]
    else:
        rows = [_row_for(Path(settings.weights), settings, 0, 0, [], device)]
        write_text_atomic(first, json.dumps(asdict(rows[0]), indent=1))
    current = Path(settings.weights)
    for k in range(1, settings.iterations + 1):
        done = out / f"iter_{k}" / "done.json"
        row = IterationRow(**json.loads(done.read_text())) if done.exists() else \
            _iteration(k, current, settings, train_fn, device, progress)
        rows.append(row)
        current = Path(row.weights)
        write_summary(rows, out)
    return rows


def write_summary(rows: list[IterationRow], out: Path) -> None:
    """summary.md, summary.csv and summary.png (mAP@.5:.95 against GFLOPs over the iterations)."""
    head = "| iteration | params | GFLOPs | mAP@.5 | mAP@.5:.95 | epochs |\n|---|---|---|---|---|---|\n"
    body = "".join(f"| {r.iteration} | {r.params:,} | {r.gflops:.3f} | {r.map50:.4f} | {r.map:.4f} | {r.epochs} |\n"
                   for r in rows)
    write_text_atomic(out / "summary.md", head + body)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["iteration", "params", "gflops", "map50", "map", "epochs", "pruning_params"])
    for r in rows:
        w.writerow([r.iteration, r.params, r.gflops, r.map50, r.map, r.epochs, r.pruning_params])
    write_text_atomic(out / "summary.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r.gflops for r in rows], [r.map for r in rows], marker="o")
    for r in rows:
        ax.annotate(str(r.iteration), (r.gflops, r.map), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel("mAP@.5:.95")
    ax.set_title("iterative pruning")
    ax.invert_xaxis()
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=120)
    plt.close(fig)
