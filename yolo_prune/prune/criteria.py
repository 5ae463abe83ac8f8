"""Filter importance criteria: small functions in a table, selectable by published number or by name.

A criterion maps a layer's filters to one score per filter; filters are removed in ascending score
order (ties broken as ``torch.argsort`` on the CPU breaks them, as the published pruner does). "largest"
criteria negate their norm.

Interface: a criterion receives one ``LayerFilters`` and returns a 1-D tensor of ``out`` scores. Its
``weights`` are the layer's conv weights as they are *when the layer is pruned*: under the plan's
``sequential`` scoring (the published pruner's, Li et al.'s "greedy") the input channels that earlier
listed producers already removed are left out (``inputs`` names the unpruned input channels that remain);
under ``independent`` scoring they are the unpruned weights (``inputs`` is None). So norm criteria
(L0/L1/L2/Linf) measure the remaining input channels, BN criteria see unchanged scales, RepConv criteria
see both branches sliced alike, and ``random`` draws from a generator seeded by (seed, layer), so a
layer's draw does not depend on which other layers are listed.

HAC (Pruning-Darknet's clustering criterion) reads the weights like the norms. Data-driven and gradient criteria
(PLS-VIP-Single/Multi, CCA-CV-Multi, PLS-LC-Multi; first-order Taylor and the group criterion) read their scores
from ``LayerFilters.context``,
a :class:`~yolo_prune.prune.context.CriterionContext` that computed them on the unpruned model (and its
calibration images) before anything changed, whatever the scoring strategy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from yolo_prune.errors import PruningError


@dataclass(frozen=True)
class LayerFilters:
    """What a criterion may look at: conv weights per branch [out, in_remaining, kh, kw], BN scales per branch,
    the layer's own RNG, which unpruned input channels the weights still hold (None: all of them), and the
    precision scores are computed in (the weights' stored precision, see ``score_dtype``)."""

    weights: tuple[torch.Tensor, ...]
    bn_gammas: tuple[torch.Tensor, ...]
    generator: torch.Generator
    name: str = ""
    inputs: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32
    layer: int = -1  # conv index (context criteria look their scores up by it)
    context: Any = None  # CriterionContext, for criteria that need more than the weights


def score_dtype(weight: torch.Tensor) -> torch.dtype:
    """float16 when ``weight`` holds half-precision values (official checkpoints store fp16; the published pruner
    scores in the model's own precision, so near-equal norms round and tie as they do there), else float32."""
    if weight.dtype in (torch.float16, torch.bfloat16):
        return weight.dtype
    if weight.is_meta or not weight.dtype.is_floating_point:
        return torch.float32
    w = weight.detach().flatten()
    head = w[:64]  # a float32-trained layer fails here already: the full check runs for fp16-valued ones only
    if not torch.equal(head.to(torch.float16).to(w.dtype), head):
        return torch.float32
    return torch.float16 if torch.equal(w.to(torch.float16).to(w.dtype), w) else torch.float32


def _per_branch(f: LayerFilters, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum a per-filter statistic over branches (RepConv: dense 3x3 + 1x1), in the score precision."""
    total = None
    for w in f.weights:
        stat = fn(w.detach().to(f.dtype)).to(f.dtype)
        total = stat if total is None else total + stat
    return total


def _dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim()))


def _gammas(f: LayerFilters) -> tuple[torch.Tensor, ...]:
    if not f.bn_gammas:
        raise PruningError(f"{f.name}: this criterion needs BatchNorm scales, but the layer has no BatchNorm "
                           f"(fused model?); use an L1/L2 criterion or an unfused model")
    return tuple(g.detach().to(f.dtype) for g in f.bn_gammas)


def l2(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: torch.linalg.vector_norm(w, 2, dim=_dims(w)))


def l1(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: torch.linalg.vector_norm(w, 1, dim=_dims(w)))


def l0(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: (w != 0).sum(dim=_dims(w)))


def linf(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: torch.linalg.vector_norm(w, float("inf"), dim=_dims(w)))


def bn(f: LayerFilters) -> torch.Tensor:
    """BN scale, signed and summed over branches, as published (a negative scale counts as small)."""
    return sum(_gammas(f))


def bn_l1(f: LayerFilters) -> torch.Tensor:
    """Per branch BN scale x L1 norm of that branch's filters, summed (published)."""
    products = [g * torch.linalg.vector_norm(w.detach().to(f.dtype), 1, dim=_dims(w)).to(f.dtype)
                for g, w in zip(_gammas(f), f.weights)]
    return sum(products)


def hac(f: LayerFilters) -> torch.Tensor:
    """Removal order from agglomerative clustering of the filters' weights (HAC; see ``criteria_data``): an exact
    copy of another filter goes first. Correlation: the context's ``measure`` option (default pearson)."""
    from yolo_prune.prune.context import blas_threads
    from yolo_prune.prune.criteria_data import hac_scores

    measure = f.context.options.measure if f.context is not None else "pearson"
    w = torch.cat([w.detach().double().flatten(1) for w in f.weights], 1).cpu().numpy()
    with blas_threads():
        return torch.as_tensor(hac_scores(w, measure))


def random(f: LayerFilters) -> torch.Tensor:
    return torch.rand(f.weights[0].shape[0], generator=f.generator)


def _from_context(name: str) -> Callable[[LayerFilters], torch.Tensor]:
    """A criterion whose scores the layer's CriterionContext computes (data, gradients, clustering)."""
    def score(f: LayerFilters) -> torch.Tensor:
        if f.context is None:
            raise PruningError(f"{f.name}: criterion {name!r} needs a CriterionContext (use prune() or make_plan())")
        return f.context.score(name, f.layer)
    return score


Criterion = Callable[[LayerFilters], torch.Tensor]

# name -> (published number or None, function, removes the smallest scores?)
CRITERIA: dict[str, tuple[int | None, Criterion]] = {
    "l2": (0, l2),
    "l2-largest": (1, lambda f: -l2(f)),
    "l1": (2, l1),
    "l1-largest": (3, lambda f: -l1(f)),
    "bn": (4, bn),
    "bn-l1": (5, bn_l1),
    "random": (6, random),
    "l0": (None, l0),
    "linf": (None, linf),
    "hac": (None, hac),
    **{name: (None, _from_context(name)) for name in (
        "pls-vip-single", "pls-vip-multi", "cca-cv-multi", "pls-lc-multi", "taylor", "taylor-weight",
        "group-taylor")},
}


def criterion_name(value: str | int) -> str:
    """Normalise a criterion given as published number (``0``..``6``) or name (``l2``, ``bn-l1``...)."""
    text = str(value).strip().lower()
    for name, (number, _) in CRITERIA.items():
        if text == name or (number is not None and text == str(number)):
            return name
    known = ", ".join(f"{n}" + (f" ({num})" if num is not None else "") for n, (num, _) in CRITERIA.items())
    raise PruningError(f"unknown criterion {value!r}; known: {known}")


def get_criterion(value: str | int) -> Criterion:
    return CRITERIA[criterion_name(value)][1]
