"""Pruning sensitivity analysis: prune each layer alone at each rate and score the result.

Fast path: per batch, the unpruned model runs once with every layer output cached; each configuration
then re-runs only the layers downstream of the pruned one, with the removed filters zeroed (equal to
the pruned model by the pruned == masked property). The rates of one layer share that downstream pass, stacked
along the batch with one filter mask per slice, as far as ``stack_bytes`` allows: the same outputs, since on CPU
every convolution runs on oneDNN whatever the batch (:func:`onednn_convolutions`; PyTorch itself switches 1x1
convolutions between two kernels by batch size and thread count).
Configurations are processed in chunks of layers; each finished chunk is stored atomically, so a killed run
resumes where it stopped. Under ``torch.distributed`` chunks are sharded across ranks and rank 0 stores the
merged results. With :class:`EarlyStop`, a configuration whose mAP@.5 after a fraction of the images is below a
fraction of the unpruned model's on the same images stops there (recorded as such).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn as nn

from yolo_prune.analysis.fastforward import (ActivationCache, channels_last, downstream_layers, last_uses, layer_of,
                                             masked, masked_stack, nbytes, run_from, run_from_stacked, stackable)
from yolo_prune.analysis.finish_pool import FinishPool, WorkerPolicy
from yolo_prune.analysis.planning import EarlyStop, Plan, cache_budget, format_seconds, stack_budget
from yolo_prune.analysis.store import ResultStore
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.conv_backend import onednn_convolutions
from yolo_prune.models.model import Model
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

    # optional, for EarlyStop: ``partial_map50(state) -> float``, a cheap mAP@.5 of the images seen so far


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
    images: int = 0
    stopped: dict | None = None  # EarlyStop's record, once stopped
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


@dataclass
class _Chunk:
    """What scoring one chunk needs besides its configurations."""

    scorer: Scorer
    sync: Callable[[], None]
    stack_bytes: int
    last: list[int]
    activations: ActivationCache
    early: EarlyStop | None = None
    channels_last: bool = False  # inputs (and, around the chunk, the model) in channels-last layout
    early_base: float | None = None  # the unpruned model's partial mAP@.5 (same images for every chunk)


def _score_chunk(model: nn.Module, graph: PruningGraph, batches: Sequence[Batch], ctx: _Chunk, configs: list[_Config],
                 baseline: _Config | None, on_done: Callable[[_Config], None] = lambda _cfg: None) -> None:
    """Run every batch once through the model and once per group of a layer's configurations downstream;
    ``on_done`` gets each configuration as soon as its last batch is scored (the rest of the batch still to run)."""
    for cfg in configs + ([baseline] if baseline else []):
        cfg.state = ctx.scorer.start()
    dtype, seen = next(model.parameters()).dtype, 0
    stop_at = ctx.early.images(sum(len(b.images) for b in batches)) if ctx.early else None
    reference = ctx.scorer.start() if ctx.early and ctx.early_base is None else None
    with torch.inference_mode():
        for index, batch in enumerate(batches):
            x = batch.inputs(dtype)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            cache = ctx.activations.outputs(index, model, x)
            ctx.sync()
            deciding = stop_at is not None and seen < stop_at <= seen + len(x)  # early stop after this batch
            done: list[_Config] = []  # finished now: handed over at once, or after the early-stop decision
            final = index == len(batches) - 1
            if baseline is not None:
                _update(ctx, baseline, _prediction(cache[-1]), batch.meta, time.perf_counter() - t0)
                done += [baseline] if final else []
            if reference is not None and seen < stop_at:
                ctx.scorer.update(reference, _prediction(cache[-1]), batch.meta)
            for group in _groups(model, graph, [c for c in configs if c.stopped is None], cache, ctx.stack_bytes):
                _run_group(model, graph, cache, x, group, batch.meta, ctx)
                done += group if final else []
                while done and not deciding:
                    on_done(done.pop(0))
            seen += len(x)
            if deciding:
                if ctx.early_base is None:
                    ctx.early_base = ctx.scorer.partial_map50(reference)
                _early_stop(ctx, configs, seen)
            for cfg in done:
                on_done(cfg)


def _groups(model: nn.Module, graph: PruningGraph, configs: list[_Config], cache: Sequence, budget: int
            ) -> list[list[_Config]]:
    """Configurations of one layer in stacks of at most ``budget`` bytes of downstream activations (>= 1 each;
    one each where :func:`stackable` says no or a configuration patches weights)."""
    by_layer: dict[int, list[_Config]] = {}
    for c in configs:
        by_layer.setdefault(c.layer, []).append(c)
    groups = []
    for same in by_layer.values():
        per = sum(nbytes(cache[i]) for i in same[0].downstream) or 1
        alone = not stackable(model, graph, same[0].layer) or any(c.patch for c in same)  # patches: one at a time
        k = 1 if alone else max(1, min(len(same), budget // per))
        groups += [same[i:i + k] for i in range(0, len(same), k)]
    return groups


def _run_group(model: nn.Module, graph: PruningGraph, cache: Sequence, x: torch.Tensor, group: list[_Config], meta: Any,
               ctx: _Chunk) -> None:
    """One downstream pass for a layer's configurations (stacked when several); the time is shared equally."""
    first, t0 = group[0], time.perf_counter()
    if len(group) == 1:
        with masked(model, graph, first.layer, first.removed), patched(model, first.patch):
            preds = [_prediction(run_from(model, cache, first.downstream, x))]
    else:
        cached = model.model[first.downstream[0]] is model.conv_modules()[first.layer]  # the layer is the conv
        with masked_stack(model, graph, first.layer, [c.removed for c in group], len(x)) as stack:
            out = _prediction(run_from_stacked(model, cache, first.downstream, x, len(group),
                                               stack if cached else None, ctx.last))
        preds = list(out.split(len(x)))
    ctx.sync()
    seconds = (time.perf_counter() - t0) / len(group)
    for cfg, pred in zip(group, preds):
        _update(ctx, cfg, pred, meta, seconds)


def _early_stop(ctx: _Chunk, configs: list[_Config], seen: int) -> None:
    """Stop the configurations whose mAP@.5 so far is below ``below`` x the unpruned model's on the same images."""
    for c in configs:
        if c.stopped is None:
            value = ctx.scorer.partial_map50(c.state)
            if value < ctx.early.below * ctx.early_base:
                c.stopped = {"images": seen, "map50": value, "baseline_map50": ctx.early_base}


def _update(ctx: _Chunk, cfg: _Config, pred: torch.Tensor, meta: Any, seconds: float) -> None:
    t0 = time.perf_counter()
    ctx.scorer.update(cfg.state, pred, meta)
    ctx.sync()
    cfg.seconds += seconds
    cfg.nms_seconds += time.perf_counter() - t0
    cfg.images += len(pred)


def _floats(value: Any) -> Any:
    """A scorer's value as plain floats (lists and {name: value} maps element by element)."""
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return [float(x) for x in value] if isinstance(value, (list, tuple)) else float(value)


def _metrics(m: dict[str, Any], cfg: _Config, shape: tuple[int, int, int], cost: tuple[int, float]) -> dict:
    """A configuration's stored record: the scorer's finished metrics, its timings and its cost."""
    t_inf, t_nms = 1e3 * cfg.seconds / max(cfg.images, 1), 1e3 * cfg.nms_seconds / max(cfg.images, 1)
    out = {**{k: _floats(v) for k, v in m.items()},
           "speed": [round(t_inf, 3), round(t_nms, 3), round(t_inf + t_nms, 3), *shape],
           "params": int(cost[0]), "gflops": round(float(cost[1]), 4)}
    if cfg.stopped is not None:
        out["early_stop"] = cfg.stopped
    return out


@dataclass
class _Round:
    """One round's scored configurations, their metrics being finished by the pool."""

    configs: list[_Config]
    baseline: _Config | None


def _sync_for(batches: Sequence[Batch]) -> Callable[[], None]:
    """Timing barrier: CUDA work is asynchronous."""
    if batches and batches[0].images.is_cuda:
        return torch.cuda.synchronize
    return lambda: None


def run_sensitivity(model: nn.Module, graph: PruningGraph, batches: Sequence[Batch], scorer: Scorer,
                    store: ResultStore, rates: Sequence[float], *, layers: Sequence[int] | None = None,
                    criterion: str = "l2", round_to: int | None = None, seed: int = 0, img_size: int = 640,
                    chunk_layers: int = 4, dist: Distributed = Distributed(), progress: bool = True,
                    prefix: str = "output", stack_bytes: int | None = None, cache_bytes: int | None = None,
                    early_stop: EarlyStop | None = None, channels_last_cpu: bool = False,
                    score_workers: WorkerPolicy = WorkerPolicy(),
                    dry_run: bool = False, log: Callable[[str], None] | None = None,
                    context: CriterionContext | None = None) -> ResultStore:
    """Score every (layer, rate) not yet in ``store``; rank 0 saves after each round and writes the outputs.

    ``model`` is used in eval mode and not modified (hooks are removed after each configuration; PLS-LC and
    --reconstruct changes are applied per configuration and undone). ``context`` carries data-driven criteria's
    scores and options. ``stack_bytes`` caps a stacked pass (None: :func:`stack_budget`; 0: one pass per
    configuration); ``cache_bytes`` caps the unpruned activations kept across chunks (None: :func:`cache_budget`;
    0: the full forward again per chunk). ``channels_last_cpu``: on CPU, score in channels-last layout (~10 %
    faster, but convolutions sum in another order: a detection near a threshold can flip, moving a configuration's mAP
    by ~1e-4, so it is off by default; criteria and reconstruction are computed in the model's own layout).
    ``score_workers``: processes that run ``scorer.finish`` (COCOeval) for one round while the next round's forwards
    run, and when they start (:mod:`.finish_pool`; same numbers; default: in this process, right after each round).
    ``log`` (rank 0) gets the plan before any work and the measured time per configuration with
    the ETA after the first chunk; ``dry_run`` times the first chunk on the first batch only, logs the plan with
    that estimate, and returns without scoring or writing anything.
    """
    layers = list(graph.prunable if layers is None else layers)
    todo = [layer for layer in layers if not all(store.done(layer, r) for r in rates)]
    chunks = [todo[i:i + chunk_layers] for i in range(0, len(todo), chunk_layers)]
    n_images = sum(len(b.images) for b in batches)
    shape = (*batches[0].images.shape[-2:], batches[0].images.shape[0]) if batches else (0, 0, 0)
    device = batches[0].images.device if batches else torch.device("cpu")
    ctx = _Chunk(scorer, _sync_for(batches), stack_budget(device, stack_bytes), last_uses(model),
                 ActivationCache(cache_budget(device, cache_bytes)), early_stop,
                 channels_last=channels_last_cpu and device.type == "cpu" and isinstance(model, Model))
    plan = Plan(len(layers) * len(rates), sum(store.done(l, r) for l in layers for r in rates), n_images,
                len(batches), len(chunks), dist.world, ctx.stack_bytes, ctx.activations.budget)
    say = log if log is not None and dist.rank == 0 else (lambda _text: None)
    model.eval()
    if dry_run:
        _probe(model, graph, batches, ctx, plan, chunks[:1], rates, criterion, round_to, seed, context)
        say(plan.describe())
        return store
    say(plan.describe())
    costs = fused_cost_model(model, img_size)
    bars = _progress_bars(rates, len(layers), lambda r: sum(store.done(l, r) for l in layers), progress and dist.rank == 0)
    t_start, scored, pending = time.perf_counter(), 0, None

    def merge(done: _Round) -> None:
        """Gather a round's metrics from every rank, store them (rank 0 saves), and log the ETA after the first."""
        keys = [(c.layer, c.rate) for c in done.configs] + (["baseline"] if done.baseline is not None else [])
        finished = dict(zip(keys, pool.results(keys)))
        local = {"results": [(c.layer, c.rate, _metrics(finished[c.layer, c.rate], c, shape,
                                                         pruned_cost(costs, c.layer, c.rate, round_to)))
                             for c in done.configs]}
        if done.baseline is not None:
            base = costs.cost()
            local["baseline"] = _metrics(finished["baseline"], done.baseline, shape, (base.params, base.gflops))
        merged = 0
        for part in dist.all_gather(local):
            store.baseline = part.get("baseline", store.baseline)
            for layer, rate, metrics in part["results"]:
                store.add(layer, rate, metrics)
                merged += 1
                if bars:
                    bars[rate].update(1)
        if dist.rank == 0:
            store.save()
        if plan.seconds_per_config is None and merged:
            plan.seconds_per_config = (time.perf_counter() - t_start) * dist.world / max(scored, 1)
            plan.measured_on, plan.done = f"measured on the first {scored * dist.world} configuration(s)", plan.done + merged
            say(f"first chunk: {plan.seconds_per_config:.2f} s per configuration; ETA {format_seconds(plan.eta())} "
                f"for the {plan.todo} left")

    rounds = range(0, max(len(chunks), 1 if store.baseline is None else 0), dist.world)
    with FinishPool(scorer, 0 if score_workers.worth_seconds else score_workers.workers) as pool:
        for n_round, start in enumerate(rounds):
            mine = chunks[start + dist.rank] if start + dist.rank < len(chunks) else []
            configs = [c for c in _configs(model, graph, mine, rates, criterion, round_to, seed, context)
                       if not store.done(c.layer, c.rate)]
            baseline = _Config(-1, 0.0, [], []) if store.baseline is None and start == 0 and dist.rank == 0 else None

            def submit(cfg: _Config) -> None:
                pool.submit("baseline" if cfg is baseline else (cfg.layer, cfg.rate), cfg.state)
                cfg.state = None  # the pool holds what it needs

            with channels_last(model, ctx.channels_last), onednn_convolutions(model, device.type == "cpu"):
                _score_chunk(model, graph, batches, ctx, configs, baseline, submit)
            for c in configs:  # early-stopped ones missed their last batch
                if c.state is not None:
                    submit(c)
            scored += len(configs)
            if pending is not None:  # the previous round was finished by the workers meanwhile
                merge(pending)
            pending = _Round(configs, baseline)
            if not pool.workers:  # finished in this process already: nothing to overlap
                merge(pending)
                pending = None
                left = pool.local_seconds / (n_round + 1) * (len(rounds) - n_round - 1)  # finishing still to do
                if score_workers.workers and left >= score_workers.worth_seconds:
                    pool.start(score_workers.workers)  # worth a worker's start
        if pending is not None:
            merge(pending)
    for bar in (bars or {}).values():
        bar.close()
    if dist.rank == 0:
        store.write_outputs(list(rates), prefix)
    if dist.world > 1:
        dist.all_gather(None)  # every rank returns once rank 0 has written the outputs (none leaves a rank mid-talk)
    return store


def _probe(model: nn.Module, graph: PruningGraph, batches: Sequence[Batch], ctx: _Chunk, plan: Plan,
           chunks: list[list[int]], rates: Sequence[float], criterion: str, round_to: int | None, seed: int,
           context: CriterionContext | None = None) -> None:
    """Time the first chunk on the first batch (scored and finished, nothing stored): the plan's estimate."""
    configs = _configs(model, graph, chunks[0], rates, criterion, round_to, seed, context) if chunks else []
    if not configs or not batches:
        return
    t0 = time.perf_counter()
    probe = _Chunk(ctx.scorer, ctx.sync, ctx.stack_bytes, ctx.last, ActivationCache(0), channels_last=ctx.channels_last)
    with channels_last(model, ctx.channels_last), onednn_convolutions(model, batches[0].images.device.type == "cpu"):
        _score_chunk(model, graph, batches[:1], probe, configs, None)
    for c in configs:
        ctx.scorer.finish(c.state)
    per_image = (time.perf_counter() - t0) / len(configs) / len(batches[0].images)
    plan.seconds_per_config = per_image * plan.images
    plan.measured_on = f"estimated from {len(configs)} configuration(s) on the first batch"


def _progress_bars(rates: Sequence[float], total: int, done: Callable[[float], int], enabled: bool):
    """One tqdm bar (with ETA) per rate."""
    if not enabled:
        return None
    from tqdm import tqdm

    return {r: tqdm(total=total, initial=done(r), desc=f"rate {r:g}", position=i, unit="layer", leave=True)
            for i, r in enumerate(rates)}
