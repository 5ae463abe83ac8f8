"""Pruning sensitivity analysis: prune each layer alone at each rate and score the result.

Fast path: per batch, the unpruned model runs once with every layer output cached; each configuration
then re-runs only the layers downstream of the pruned one, with the removed filters zeroed (equal to
the pruned model by the pruned == masked property). Configurations are processed in chunks of layers;
each finished chunk is stored atomically, so a killed run resumes where it stopped. Under
``torch.distributed`` chunks are sharded across ranks and rank 0 stores the merged results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
import torch.nn as nn

from yolo_prune.analysis.fastforward import downstream_layers, layer_of, masked, run_all, run_from
from yolo_prune.analysis.store import ResultStore
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune.context import CriterionContext, rewrite_kind
from yolo_prune.prune.cost import CostModel, fused_cost_model
from yolo_prune.prune.plan import make_plan
from yolo_prune.prune.reconstruct import patched, single_layer_patch


class Scorer(Protocol):
    """Turns a model's eval predictions into metrics; one state per configuration."""

    def start(self) -> Any: ...

    def update(self, state: Any, pred: torch.Tensor, meta: Any) -> None: ...

    def finish(self, state: Any) -> dict[str, Any]:
        """Metric name -> float, list of floats or {name: float}. Detection: ``mp, mr, map50, map`` and ``per_class``
        (mAP@.5:.95 per class, what the published output files hold), optionally ``official`` ({mp, mr, map50, map}
        as YOLOv7 test.py computes them, stored alongside); classification: ``top1, top5, loss``."""


@dataclass(frozen=True)
class Batch:
    """A batch on the device: images (uint8 0..255, or float 0..1) and what the scorer needs (labels, shapes)."""

    images: torch.Tensor
    meta: Any

    def inputs(self, dtype: torch.dtype) -> torch.Tensor:
        """Model input [B, 3, H, W] in 0..1 of ``dtype``."""
        x = self.images.to(dtype)
        return x / 255.0 if self.images.dtype == torch.uint8 else x


@dataclass(frozen=True)
class Distributed:
    """This process's place among ``world`` ranks, and how to gather Python objects across them."""

    rank: int = 0
    world: int = 1
    all_gather: Callable[[Any], list[Any]] = lambda obj: [obj]


@dataclass
class _Config:
    layer: int
    rate: float
    removed: list[int]
    downstream: list[int]
    state: Any = None
    seconds: float = 0.0
    nms_seconds: float = 0.0
    patch: dict | None = None  # tensors PLS-LC / --reconstruct change besides removing filters


def _prediction(out: Any) -> torch.Tensor:
    """The scored output: a detector's eval predictions (first of its tuple) or a classifier's logits."""
    return out[0] if isinstance(out, (tuple, list)) else out


def pruned_cost(costs: CostModel, layer: int, rate: float, round_to: int | None) -> tuple[int, float]:
    """Params and GFLOPs of the BN+RepConv-fused model (as the published analysis reports them) with ``layer``
    pruned at ``rate``, from the closed-form cost model (no model copy)."""
    cost = costs.cost([(layer, rate)], round_to)
    return cost.params, cost.gflops


def _configs(model: nn.Module, graph: PruningGraph, layers: Sequence[int], rates: Sequence[float], criterion: str,
             round_to: int | None, seed: int, context: CriterionContext | None = None) -> list[_Config]:
    deps = downstream_layers(model)
    rewrite = rewrite_kind(criterion, context.options) if context is not None else None
    out = []
    for layer in layers:
        for rate in rates:
            plan = make_plan(model, graph, [(layer, rate)], criterion, round_to, seed, context=context)
            kept = set(plan.layers[0].kept)
            removed = [i for i in range(graph[layer].out_channels) if i not in kept]
            patch = single_layer_patch(model, graph, context.source, layer, torch.tensor(sorted(kept)), rewrite) \
                if rewrite else None
            out.append(_Config(layer, rate, removed, deps[layer_of(graph, layer)] if deps else [], patch=patch))
    return out


def _score_chunk(model: nn.Module, graph: PruningGraph, batches: Iterable[Batch], scorer: Scorer,
                 configs: list[_Config], baseline: _Config | None, sync: Callable[[], None]) -> None:
    """Run every batch once through the model and once per configuration's downstream layers."""
    for cfg in configs + ([baseline] if baseline else []):
        cfg.state = scorer.start()
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        for batch in batches:
            x = batch.inputs(dtype)
            t0 = time.perf_counter()
            cache = run_all(model, x)
            sync()
            full_time = time.perf_counter() - t0
            if baseline is not None:
                _update(scorer, baseline, _prediction(cache[-1]), batch.meta, full_time, sync)
            for cfg in configs:
                t0 = time.perf_counter()
                with masked(model, graph, cfg.layer, cfg.removed), patched(model, cfg.patch):
                    pred = _prediction(run_from(model, cache, cfg.downstream, x))
                sync()
                _update(scorer, cfg, pred, batch.meta, time.perf_counter() - t0, sync)


def _update(scorer: Scorer, cfg: _Config, pred: torch.Tensor, meta: Any, seconds: float, sync) -> None:
    t0 = time.perf_counter()
    scorer.update(cfg.state, pred, meta)
    sync()
    cfg.seconds += seconds
    cfg.nms_seconds += time.perf_counter() - t0


def _floats(value: Any) -> Any:
    """A scorer's value as plain floats (lists and {name: value} maps element by element)."""
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return [float(x) for x in value] if isinstance(value, (list, tuple)) else float(value)


def _metrics(scorer: Scorer, cfg: _Config, n_images: int, shape: tuple[int, int, int], cost: tuple[int, float]) -> dict:
    m = scorer.finish(cfg.state)
    t_inf, t_nms = 1e3 * cfg.seconds / max(n_images, 1), 1e3 * cfg.nms_seconds / max(n_images, 1)
    return {**{k: _floats(v) for k, v in m.items()},
            "speed": [round(t_inf, 3), round(t_nms, 3), round(t_inf + t_nms, 3), *shape],
            "params": int(cost[0]), "gflops": round(float(cost[1]), 4)}


def _sync_for(batches: Sequence[Batch]) -> Callable[[], None]:
    """Timing barrier: CUDA work is asynchronous."""
    if batches and batches[0].images.is_cuda:
        return torch.cuda.synchronize
    return lambda: None


def run_sensitivity(model: nn.Module, graph: PruningGraph, batches: Sequence[Batch], scorer: Scorer,
                    store: ResultStore, rates: Sequence[float], *, layers: Sequence[int] | None = None,
                    criterion: str = "l2", round_to: int | None = None, seed: int = 0, img_size: int = 640,
                    chunk_layers: int = 4, dist: Distributed = Distributed(), progress: bool = True,
                    prefix: str = "output", context: CriterionContext | None = None) -> ResultStore:
    """Score every (layer, rate) not yet in ``store``; rank 0 saves after each round and writes the outputs.

    ``model`` is used in eval mode and not modified (hooks are removed after each configuration; PLS-LC and
    --reconstruct changes are applied per configuration and undone). ``context`` carries data-driven criteria's
    scores and options.
    """
    layers = list(graph.prunable if layers is None else layers)
    todo = [layer for layer in layers if not all(store.done(layer, r) for r in rates)]
    chunks = [todo[i:i + chunk_layers] for i in range(0, len(todo), chunk_layers)]
    n_images = sum(len(b.images) for b in batches)
    shape = (*batches[0].images.shape[-2:], batches[0].images.shape[0]) if batches else (0, 0, 0)
    costs = fused_cost_model(model, img_size)
    sync = _sync_for(batches)
    bars = _progress_bars(rates, len(layers), lambda r: sum(store.done(l, r) for l in layers), progress and dist.rank == 0)
    model.eval()
    for start in range(0, max(len(chunks), 1 if store.baseline is None else 0), dist.world):
        mine = chunks[start + dist.rank] if start + dist.rank < len(chunks) else []
        configs = [c for c in _configs(model, graph, mine, rates, criterion, round_to, seed, context)
                   if not store.done(c.layer, c.rate)]
        baseline = _Config(-1, 0.0, [], []) if store.baseline is None and start == 0 and dist.rank == 0 else None
        _score_chunk(model, graph, batches, scorer, configs, baseline, sync)
        local = {"results": [(c.layer, c.rate, _metrics(scorer, c, n_images, shape,
                                                         pruned_cost(costs, c.layer, c.rate, round_to)))
                             for c in configs]}
        if baseline is not None:
            base = costs.cost()
            local["baseline"] = _metrics(scorer, baseline, n_images, shape, (base.params, base.gflops))
        for part in dist.all_gather(local):
            store.baseline = part.get("baseline", store.baseline)
            for layer, rate, metrics in part["results"]:
                store.add(layer, rate, metrics)
                if bars:
                    bars[rate].update(1)
        if dist.rank == 0:
            store.save()
    for bar in (bars or {}).values():
        bar.close()
    if dist.rank == 0:
        store.write_outputs(list(rates), prefix)
    return store


def _progress_bars(rates: Sequence[float], total: int, done: Callable[[float], int], enabled: bool):
    """One tqdm bar (with ETA) per rate."""
    if not enabled:
        return None
    from tqdm import tqdm

    return {r: tqdm(total=total, initial=done(r), desc=f"rate {r:g}", position=i, unit="layer", leave=True)
            for i, r in enumerate(rates)}
