"""``prune()``: derive (or check) the graph, make a plan, apply it, and summarise what changed."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch.nn as nn

from yolo_prune.graph.derive import derive_graph
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.graph.io import PublishedGraph, check_against
from yolo_prune.errors import PruningError
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.prune.context import CriterionContext, wants_options
from yolo_prune.prune.criteria import criterion_name
from yolo_prune.prune.features import FeatureSource
from yolo_prune.prune.global_select import global_rates, score_layers
from yolo_prune.prune.lc import rewrite_pls_lc
from yolo_prune.prune.reconstruct import reconstruct_plan
from yolo_prune.prune.options import CriterionOptions
from yolo_prune.prune.params import LayerRates, kept_count, parse_pruning_params
from yolo_prune.prune.plan import PruningPlan, make_plan, resolve_rates
from yolo_prune.prune.surgery import apply_plan
from yolo_prune.prune.units import module_of


@dataclass(frozen=True)
class LayerChange:
    """Per-layer summary row."""

    layer: int
    name: str
    rate: float
    filters_before: int
    filters_after: int
    params_removed: int
    consumers: tuple[int, ...]


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and a summary (params/GFLOPs before and after)."""

    model: nn.Module
    plan: PruningPlan
    layers: list[LayerChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    gflops_before: float = 0.0
    gflops_after: float = 0.0
    img_size: int = 640
    options: dict | None = None  # CriterionOptions of data-driven / global selections (None: not used)

    def to_dict(self) -> dict:
        return {"criterion": self.plan.criterion, "scoring": self.plan.scoring, "round_to": self.plan.round_to,
                "seed": self.plan.seed, **({"criterion_options": self.options} if self.options else {}),
                "img_size": self.img_size, "params_before": self.params_before, "params_after": self.params_after,
                "gflops_before": self.gflops_before, "gflops_after": self.gflops_after,
                "layers": [vars(c) | {"consumers": list(c.consumers)} for c in self.layers]}

    def history_entry(self) -> dict:
        """What a checkpoint's history records about this pruning step (replayable: kept indices)."""
        return {"event": "prune", **self.plan.to_dict(), "params_before": self.params_before,
                "params_after": self.params_after, **({"criterion_options": self.options} if self.options else {})}


def resolve_graph(model: nn.Module, given: PublishedGraph | None = None) -> PruningGraph:
    """The model's derived graph; a user-supplied published graph must agree with it."""
    graph = derive_graph(model)
    if given is not None:
        problems = check_against(given, graph)
        if problems:
            raise PruningError(f"{given.path} does not match the model: {problems[0]}"
                               + (f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""))
    return graph


def _cost(model: nn.Module, img_size: int) -> tuple[int, float]:
    return count_params(model), count_gflops(model, img_size, getattr(model, "ch_in", 3))


def prune(model: nn.Module, params: str | float | LayerRates, criterion: str | int = "l2", *,
          round_to: int | None = None, seed: int = 0, graph: PruningGraph | PublishedGraph | None = None,
          inplace: bool = False, summarize: bool = True, img_size: int | None = None,
          scoring: str = "sequential", options: CriterionOptions | None = None,
          source: FeatureSource | None = None) -> PruneResult:
    """Structurally prune ``model`` (a YOLOv7 ``Model``, a Darknet model, or a traced network such as a
    ``Classifier``; a copy unless ``inplace``) and return the result with a summary (GFLOPs at ``img_size``;
    default: the model's own input size).

    ``scoring``: ``sequential`` (default, the published pruner's choices; alias ``greedy``, Li et al.'s name) or
    ``independent`` (see ``make_plan``). ``options`` (CriterionOptions) choose per-layer or global selection,
    reconstruction and the data-driven criteria's settings; ``source`` (a FeatureSource built on ``model``) supplies
    calibration features and gradients to the criteria that need them. Such criteria score every layer on the
    unpruned model before anything changes.
    """
    img_size = img_size or int(getattr(model, "img_size", getattr(model, "default_img_size", 640)))
    if round_to is not None and round_to < 1:
        raise PruningError(f"--round-to must be a positive integer, got {round_to}")
    name, options = criterion_name(criterion), options or CriterionOptions()
    parsed = parse_pruning_params(params) if not isinstance(params, float) else params
    if not isinstance(graph, PruningGraph):
        graph = resolve_graph(model, graph)
    context = CriterionContext(model, graph, options, source)
    context.prepare(name, [layer for layer, _ in resolve_rates(graph, parsed)])
    if options.selection == "global":
        parsed = _global(model, graph, parsed, name, round_to, seed, context)
    before = _cost(model, img_size) if summarize else (0, 0.0)
    target = model if inplace else copy.deepcopy(model)
    if name == "pls-lc-multi":
        rewrite_pls_lc(target, graph, source, [(layer, kept_count(graph[layer].out_channels, rate, round_to))
                                               for layer, rate in resolve_rates(graph, parsed)])
    plan = make_plan(target, graph, parsed, name, round_to, seed, scoring, context=context)
    if options.reconstruct and name != "pls-lc-multi":  # PLS-LC folds its own reconstruction
        if source is None:
            raise PruningError("--reconstruct needs calibration images: give --data")
        reconstruct_plan(target, graph, source, plan.kept_map())

    def layer_params(layer: int) -> int:
        return sum(p.numel() for m in graph.group_of(layer) for p in module_of(target, graph[m]).parameters())

    params_before_layer = {lp.layer: layer_params(lp.layer) for lp in plan.layers} if summarize else {}
    apply_plan(target, graph, plan)
    result = PruneResult(target, plan, img_size=img_size,
                         options=options.to_dict() if wants_options(name, options) else None)
    if summarize:
        result.params_before, result.gflops_before = before
        result.params_after, result.gflops_after = _cost(target, img_size)
        for lp in plan.layers:
            node = graph[lp.layer]
            removed = params_before_layer[lp.layer] - layer_params(lp.layer)
            result.layers.append(LayerChange(lp.layer, node.name, lp.rate, lp.before, len(lp.kept), removed,
                                             tuple(sorted({c for m in graph.group_of(lp.layer)
                                                           for c, _ in graph[m].consumers}))))
    return result


def _global(model: nn.Module, graph: PruningGraph, params: LayerRates | float, criterion: str, round_to: int | None,
            seed: int, context: CriterionContext) -> LayerRates:
    """Per-layer rates from ranking every prunable layer's filters together (``--selection global``)."""
    if not isinstance(params, float):
        raise PruningError("--selection global takes one rate (the share of all prunable filters to remove), "
                           "not a per-layer list")
    if criterion == "pls-lc-multi":
        raise PruningError("pls-lc-multi rewrites each layer's filters; it has no global ranking (use --selection layer)")
    return global_rates(score_layers(model, graph, [unit[0] for unit in graph.prunable_units], criterion, context,
                                     seed), params, round_to)


def format_result(result: PruneResult) -> str:
    """Human-readable per-layer table and totals."""
    lines = [f"{'layer':>5} {'module':<16} {'rate':>5} {'filters':>13} {'params -':>10}  consumers"]
    for c in result.layers:
        lines.append(f"{c.layer:>5} {c.name:<16} {c.rate:>5.2f} {c.filters_before:>6} -> {c.filters_after:<4} "
                     f"{c.params_removed:>10,}  {list(c.consumers)}")
    share = 100 * result.params_after / max(result.params_before, 1)
    lines.append(f"criterion {result.plan.criterion} ({result.plan.scoring} scoring); params "
                 f"{result.params_before:,} -> {result.params_after:,} ({share:.1f}%), GFLOPs@{result.img_size} "
                 f"{result.gflops_before:.3f} -> {result.gflops_after:.3f}")
    return "\n".join(lines)
