"""Filter importance criteria: small functions in a table, selectable by published number or by name.

A criterion maps a layer's filters to one score per filter; filters are removed in ascending score
order (stable, so ties go to the lower index first). "largest" criteria negate their norm.

Weight-only criteria read ``LayerFilters``' weights. Data-driven, gradient and clustering criteria
(Pruning-Darknet's PLS-VIP-Single/Multi, CCA-CV-Multi, PLS-LC-Multi, HAC; first-order Taylor and the group
criterion) read their scores from ``LayerFilters.context``, a :class:`~yolo_prune.prune.context.CriterionContext`
that computed them on the unpruned model and its calibration images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from yolo_prune.errors import PruningError


@dataclass(frozen=True)
class LayerFilters:
    """What a criterion may look at: conv weights per branch [out, in, kh, kw], BN scales per branch, RNG."""

    weights: tuple[torch.Tensor, ...]
    bn_gammas: tuple[torch.Tensor, ...]
    generator: torch.Generator
    name: str = ""
    layer: int = -1  # conv index (context criteria look their scores up by it)
    context: Any = None  # CriterionContext, for criteria that need more than the weights


def _per_branch(f: LayerFilters, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum a per-filter statistic over branches (RepConv: dense 3x3 + 1x1)."""
    return sum(fn(w.detach().float().flatten(1)) for w in f.weights)


def _gammas(f: LayerFilters) -> torch.Tensor:
    if not f.bn_gammas:
        raise PruningError(f"{f.name}: this criterion needs BatchNorm scales, but the layer has no BatchNorm "
                           f"(fused model?); use an L1/L2 criterion or an unfused model")
    return sum(g.detach().float().abs() for g in f.bn_gammas)


def l2(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: w.norm(p=2, dim=1))


def l1(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: w.abs().sum(dim=1))


def l0(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: (w != 0).sum(dim=1).float())


def linf(f: LayerFilters) -> torch.Tensor:
    return _per_branch(f, lambda w: w.abs().amax(dim=1))


def bn(f: LayerFilters) -> torch.Tensor:
    return _gammas(f)


def bn_l1(f: LayerFilters) -> torch.Tensor:
    return _gammas(f) * l1(f)


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
    **{name: (None, _from_context(name)) for name in (
        "pls-vip-single", "pls-vip-multi", "cca-cv-multi", "pls-lc-multi", "hac",
        "taylor", "taylor-weight", "group-taylor")},
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
