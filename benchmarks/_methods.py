"""Pruning methods of the accuracy benchmark, each bringing a model to (at most, and close to) a GFLOPs budget.

A method is written ``<selection>:<criterion>[+rec]``:

- ``uniform``: one rate for every prunable layer, found by bisection on the exact cost;
- ``global``: filters ranked across all layers by the criterion (``--selection global``), bisection on the share;
- ``knapsack``: the sensitivity analysis (on calibration images of the training split, with the same criterion)
  and the budget knapsack (``select_for_budget``), checked against the exact cost;

``+rec`` adds the least-squares reconstruction (``--reconstruct``). Costs are exact GFLOPs of the BN/RepConv-fused
model at the benchmark's image size (``prune.cost.fused_cost_model``, closed form).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from yolo_prune.analysis.budget import select_for_budget
from yolo_prune.engine.calibration import calibration_source
from yolo_prune.graph.derive import derive_graph
from yolo_prune.prune import prune
from yolo_prune.prune.context import CriterionContext
from yolo_prune.prune.cost import fused_cost_model
from yolo_prune.prune.global_select import global_rates, score_layers
from yolo_prune.prune.options import CriterionOptions


@dataclass(frozen=True)
class Method:
    """A parsed method spec."""

    selection: str
    criterion: str
    reconstruct: bool

    @classmethod
    def parse(cls, spec: str) -> "Method":
        selection, _, rest = spec.partition(":")
        if selection not in ("uniform", "global", "knapsack") or not rest:
            raise ValueError(f"method {spec!r}: expected uniform|global|knapsack:<criterion>[+rec]")
        criterion, _, flag = rest.partition("+")
        return cls(selection, criterion, flag == "rec")

    def options(self, n_samples: int) -> CriterionOptions:
        return CriterionOptions(n_samples=n_samples, reconstruct=self.reconstruct,
                                selection="global" if self.selection == "global" else "layer")


def bisect(cost: Callable[[float], float], target: float, steps: int = 18) -> float:
    """The largest share in (0, 0.95) whose cost is still above ``target``'s side: cost(result) <= target."""
    lo, hi = 0.0, 0.95
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) > target else (lo, mid)
    return hi


@dataclass
class Pruned:
    model: torch.nn.Module
    params: object  # what was passed to prune(): a rate or (layer, rate) pairs
    seconds: float


def prune_to_budget(model: torch.nn.Module, method: Method, fraction: float, data: Path, img: int, n_samples: int,
                    work: Path, seed: int = 0) -> Pruned:
    """``model`` (not modified) pruned by ``method`` to at most ``fraction`` of its GFLOPs."""
    started = time.time()
    model = copy.deepcopy(model)
    options = method.options(n_samples)
    costs = fused_cost_model(model, img)
    target = fraction * costs.cost().gflops
    source = calibration_source(model, method.criterion, options, str(data), img, seed)
    graph = derive_graph(model)
    if method.selection == "uniform":
        layers = graph.prunable
        params = bisect(lambda r: costs.cost([(i, r) for i in layers]).gflops, target)
    elif method.selection == "global":
        scores = score_layers(model, graph, graph.prunable, method.criterion,
                              CriterionContext(model, graph, options, source), seed)
        params = bisect(lambda r: costs.cost(global_rates(scores, r)).gflops, target)
        params = global_rates(scores, params)  # the per-layer rates the global ranking gives
        options = CriterionOptions(n_samples=n_samples, reconstruct=method.reconstruct)
    else:
        params = _knapsack(model, method, options, data, img, target, work, seed, costs)
    result = prune(model, params, method.criterion, seed=seed, inplace=True, summarize=False, img_size=img,
                   options=options, source=source)
    return Pruned(result.model, params, time.time() - started)


def _knapsack(model, method: Method, options: CriterionOptions, data: Path, img: int, target: float, work: Path,
              seed: int, costs) -> list[tuple[int, float]]:
    """The sensitivity analysis on calibration images of the training split, then the budget knapsack."""
    from yolo_prune.analysis.table import read_table
    from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, sensitivity_on_data

    folder = work / "sensitivity" / f"{method.criterion}{'+rec' if method.reconstruct else ''}-{seed}"
    analysis = DataSettings(str(data), "train", img, 16, 1, options.n_samples)
    sensitivity_on_data(model, analysis, AnalysisSettings([0.25, 0.5, 0.75], method.criterion, seed=seed,
                                                          options=options), folder, device=torch.device("cpu"),
                        progress=False, exist_ok=False)
    table = read_table(folder)
    base = table.baseline
    return select_for_budget(table, base.gflops, base.map, target, "gflops", costs).pairs
