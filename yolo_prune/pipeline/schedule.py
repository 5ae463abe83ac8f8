"""Iterative pruning schedule (Pruning-Darknet's ``--pruning-iter`` / ``--tuning-iter`` flow): reach the
requested pruning in K rounds, each removing 1/K of every layer's filters (re-scored on the model as fine-tuned
so far) and fine-tuning for its share of the epochs. The total number of fine-tuning epochs equals a one-shot
run's, so the two schedules compare at equal cost.

Round k runs in ``<project>/<name>/round_<k>/`` as an ordinary ``train`` run (prune inside, then fine-tune from
the previous round's best.pt); a re-run skips finished rounds and resumes an interrupted one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from yolo_prune.engine.train_state import TrainResult, TrainSettings
from yolo_prune.errors import ConfigError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.global_select import rate_for_kept
from yolo_prune.prune.params import LayerRates, kept_count, parse_pruning_params
from yolo_prune.prune.plan import resolve_rates


def _widths(filters: int, kept: int, rounds: int, round_to: int | None) -> list[int]:
    """Widths after each round on the way from ``filters`` to ``kept`` (each step expressible by the rounding)."""
    unit = round_to or 2
    out = []
    for j in range(1, rounds + 1):
        if round_to:
            w = filters - (filters - kept) * j / rounds
            w = kept if j == rounds else min(filters, max(kept, int(round(w / unit)) * unit))
        else:
            w = filters - unit * int(round((filters - kept) / unit * j / rounds))
        out.append(w)
    return out


def round_params(graph: PruningGraph, params: str | float | list, rounds: int, round_to: int | None = None,
                 selection: str = "layer") -> list[LayerRates | float]:
    """The pruning parameters of each round so that the rounds together prune what ``params`` prunes at once.

    Per-layer: every layer's removed filters are spread evenly over the rounds (rates refer to the width the
    layer has at the start of that round). Global selection: each round removes ``1 - (1 - rate)^(1/K)`` of the
    remaining filters.
    """
    parsed = parse_pruning_params(params) if not isinstance(params, float) else params
    if selection == "global":
        if not isinstance(parsed, float):
            raise ConfigError("--selection global takes one rate")
        return [1.0 - (1.0 - parsed) ** (1.0 / rounds)] * rounds
    per_round: list[LayerRates] = [[] for _ in range(rounds)]
    for layer, rate in resolve_rates(graph, parsed):
        filters = graph[layer].out_channels
        widths = [filters] + _widths(filters, kept_count(filters, rate, round_to), rounds, round_to)
        for j in range(rounds):
            if widths[j + 1] < widths[j]:
                per_round[j].append((layer, rate_for_kept(widths[j], widths[j + 1], round_to)))
    return per_round


def _round_done(run_dir: Path, epochs: int) -> bool:
    results = run_dir / "results.csv"
    return results.is_file() and len(results.read_text().strip().splitlines()) - 1 >= epochs


def train_iteratively(settings: TrainSettings, rounds: int) -> TrainResult:
    """Prune as ``settings`` say in ``rounds`` rounds with ``settings.epochs`` fine-tuning epochs in total."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.engine.trainer import train
    from yolo_prune.graph.derive import derive_graph
    from yolo_prune.prune.options import CriterionOptions

    if settings.resume or settings.pruning_params is None or not settings.weights:
        raise ConfigError("--pruning-iter needs --weights and --pruning-params (and no --resume: re-run the same "
                          "command to continue)")
    if settings.cfg:
        raise ConfigError("--pruning-iter prunes the --weights model round by round; --cfg would rebuild it from the "
                          "cfg in every round: transfer first (`yolo-prune train --cfg ... --weights ...`), then prune "
                          "that run's best.pt with --pruning-iter")
    if settings.epochs < rounds:
        raise ConfigError(f"--pruning-iter {rounds} needs at least {rounds} epochs (one per round), got {settings.epochs}")
    options = CriterionOptions(**settings.criterion_options)
    schedule = round_params(derive_graph(load_model(settings.weights)), settings.pruning_params, rounds,
                            settings.round_to, options.selection)
    folder = Path(settings.project) / settings.name
    weights, result = settings.weights, None
    for k, params in enumerate(schedule, start=1):
        epochs = settings.epochs // rounds + (1 if k > rounds - settings.epochs % rounds else 0)
        run_dir = folder / f"round_{k}"
        if _round_done(run_dir, epochs):
            weights = str(run_dir / "weights" / "best.pt")
            continue
        if (run_dir / "weights" / "last.pt").exists():
            result = train(TrainSettings(resume=str(run_dir), device=settings.device, workers=settings.workers,
                                         progress=settings.progress))
        else:
            result = train(dataclasses.replace(settings, weights=weights, pruning_params=params or None,
                                               epochs=epochs, project=str(folder), name=run_dir.name, exist_ok=True))
        weights = str(result.best)
    if result is None:  # every round already finished
        from yolo_prune.checkpoint import load_checkpoint
        from yolo_prune.engine.train_state import TrainState, read_train_state

        last = folder / f"round_{rounds}" / "weights" / "last.pt"
        state = TrainState.from_dict(read_train_state(load_checkpoint(last), last))
        result = TrainResult.from_state(last.parent.parent, state)
    return result
