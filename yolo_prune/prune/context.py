"""``CriterionContext``: what data-driven, gradient and group criteria read besides one layer's weights.

It holds the options, the model and its graph as they are when pruning starts, and (for criteria that need data)
a :class:`~yolo_prune.prune.features.FeatureSource`. ``prepare(criterion, layers)`` scores every listed layer on
that unpruned model in one go, before anything is changed, so a plan can then read the scores layer by layer
whatever order it prunes in. Weight-only criteria never need a context.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.prune import criteria_data as cd
from yolo_prune.prune.features import FeatureSource
from yolo_prune.prune.options import CriterionOptions

# criterion name -> what it needs from the data: "features" (pooled maps + targets), "positions" (PLS-LC) or
# "gradients" (a loss on calibration images)
NEEDS: dict[str, str] = {
    "pls-vip-single": "features",
    "pls-vip-multi": "features",
    "cca-cv-multi": "features",
    "pls-lc-multi": "positions",
    "taylor": "gradients",
    "taylor-weight": "gradients",
    "group-taylor": "gradients",
}


def needs_data(criterion: str) -> bool:
    """Whether ``criterion`` reads calibration images (a FeatureSource)."""
    return criterion in NEEDS


def wants_source(criterion: str, options: CriterionOptions) -> bool:
    """Whether pruning with ``criterion`` and ``options`` needs a FeatureSource (data criteria, --reconstruct)."""
    return needs_data(criterion) or options.reconstruct


def wants_options(criterion: str, options: CriterionOptions) -> bool:
    """Whether ``options`` change what ``criterion`` does (recorded in histories and analysis settings)."""
    return criterion in NEEDS or options.selection != "layer" or options.reconstruct


def rewrite_kind(criterion: str, options: CriterionOptions) -> str | None:
    """What besides removing filters pruning changes: "lc" (PLS-LC), "reconstruct" (--reconstruct) or None."""
    if criterion == "pls-lc-multi":
        return "lc"
    return "reconstruct" if options.reconstruct else None


def check_analysable(criterion: str, options: CriterionOptions) -> None:
    """The sensitivity analysis prunes one layer at a time by masking filters: no global ranking, no rewriting."""
    if options.selection != "layer":
        raise PruningError("the sensitivity analysis prunes one layer at a time: --selection global does not apply")


class CriterionContext:
    """Options, the unpruned model and graph, an optional FeatureSource, and the per-layer scores computed once."""

    def __init__(self, model: nn.Module, graph: PruningGraph, options: CriterionOptions | None = None,
                 source: FeatureSource | None = None):
        self.model, self.graph = model, graph
        self.options = options or CriterionOptions()
        self.source = source
        self._scores: dict[tuple[str, int], Tensor] = {}
        self._single: np.ndarray | None = None

    def check(self, criterion: str) -> None:
        """A clear error when ``criterion`` needs calibration images and none were given."""
        if needs_data(criterion) and self.source is None:
            what = "a loss on calibration images" if NEEDS[criterion] == "gradients" else "calibration images"
            raise PruningError(f"criterion {criterion!r} needs {what}: give --data (a seeded subset of its training "
                               f"split is used; --n-samples / --perc-samples set its size)")

    def prepare(self, criterion: str, layers: Sequence[int]) -> None:
        """Score every layer in ``layers`` now (one feature or gradient pass for all of them), and record the
        position samples reconstruction will need, while the model is still unpruned."""
        if self.source is not None and self.options.reconstruct:
            self.source.prepare(positions=True)
        if criterion not in NEEDS:
            return
        self.check(criterion)
        if self.source is not None:
            self.source.prepare(features=NEEDS[criterion] == "features", gradients=NEEDS[criterion] == "gradients",
                                positions=NEEDS[criterion] == "positions")
        for layer in layers:
            self.score(criterion, layer)

    def score(self, criterion: str, layer: int) -> Tensor:
        """Importance of every filter of conv ``layer`` (higher = keep), cached."""
        key = (criterion, layer)
        if key not in self._scores:
            self.check(criterion)
            with blas_threads():
                scores = SCORERS[criterion](self, layer)
            self._scores[key] = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
        return self._scores[key]

    # ------------------------------------------------------------------------------------- data helpers
    def features(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features [N, C] and class targets [N, nc] as float64 arrays."""
        return self.source.pooled(layer).double().numpy(), self.source.targets().double().numpy()

    def single_vip(self) -> np.ndarray:
        """VIP of every filter of every prunable layer from one PLS model over the whole network (cached)."""
        if self._single is None:
            x = np.concatenate([self.source.pooled(i).double().numpy() for i in self.graph.prunable], axis=1)
            self._single = cd.pls_vip(x, self.source.targets().double().numpy(), self.options.n_components)
        return self._single

    def group_gradient_importance(self, layer: int, group: bool) -> Tensor:
        """``sum |w * dL/dw|`` per filter over the producing conv and BN (and, with ``group``, the consumers'
        input slices and implicit-layer slices: every tensor removed with the filter)."""
        grads = self.source.weight_grads()
        node = self.graph[layer]
        total = _taylor_out(self.model.get_submodule(node.name), node.name, grads)
        if group:
            for consumer, slot in node.consumers:
                total = total + _taylor_in(self.model, self.graph, consumer, slot, node.out_channels, grads)
        return total


def blas_threads():
    """NumPy/SciPy BLAS limited to torch's intra-op thread count: these are small matrices, and an unlimited
    OpenBLAS pool on a busy machine was 10x slower than one thread."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=torch.get_num_threads())


def _elementwise(p: Tensor, grads: dict[str, Tensor], name: str) -> Tensor:
    return (p.detach().float().cpu() * grads[name]).abs()


def _taylor_out(module: nn.Module, prefix: str, grads: dict[str, Tensor]) -> Tensor:
    """Per output filter: conv kernels (dim 0), conv biases and BatchNorm scales/shifts of ``module``."""
    total = None
    for pname, p in module.named_parameters():
        if pname.startswith("rbr_identity"):  # identity BN acts on the input channels
            continue
        t = _elementwise(p, grads, f"{prefix}.{pname}")
        t = t.flatten(1).sum(1) if t.ndim > 1 else t
        total = t if total is None else total + t
    return total


def _taylor_in(model: nn.Module, graph: PruningGraph, consumer: int, slot: int, width: int,
               grads: dict[str, Tensor]) -> Tensor:
    """Per producer filter: the consumer's input-channel kernels of that slot (and an ImplicitA's slice)."""
    cnode = graph[consumer]
    offset = cnode.whole_slot_offset(slot, "group-taylor", "use taylor or taylor-weight")
    module = model.get_submodule(cnode.name)
    total = torch.zeros(width)
    for pname, p in module.named_parameters():
        if p.ndim == 4:
            t = _elementwise(p, grads, f"{cnode.name}.{pname}")[:, offset:offset + width]
            total += t.transpose(0, 1).flatten(1).sum(1)
    if cnode.kind == "head":
        head_name, attr, level = cnode.name.rsplit(".", 2)
        ia = f"{head_name}.ia.{level}.implicit"
        if attr == "m" and ia in grads:
            implicit = model.get_submodule(f"{head_name}.ia.{level}").implicit
            total += _elementwise(implicit, grads, ia)[0, offset:offset + width, 0, 0]
    return total


def _lc_order(ctx: CriterionContext, layer: int) -> np.ndarray:
    """PLS-LC keeps its first k (rewritten) filters: scores descend with the index."""
    return np.arange(ctx.graph[layer].out_channels, 0, -1, dtype=np.float64)


def _single(ctx: CriterionContext, layer: int) -> np.ndarray:
    start = sum(ctx.graph[i].out_channels for i in ctx.graph.prunable if i < layer)
    return ctx.single_vip()[start:start + ctx.graph[layer].out_channels]


SCORERS: dict[str, Callable[[CriterionContext, int], np.ndarray | Tensor]] = {
    "pls-vip-single": _single,
    "pls-vip-multi": lambda ctx, layer: cd.pls_vip(*ctx.features(layer), ctx.options.n_components),
    "cca-cv-multi": lambda ctx, layer: cd.cca_weights(*ctx.features(layer), ctx.options.n_components),
    "pls-lc-multi": _lc_order,
    "taylor": lambda ctx, layer: ctx.source.activation_taylor(layer),
    "taylor-weight": lambda ctx, layer: ctx.group_gradient_importance(layer, group=False),
    "group-taylor": lambda ctx, layer: ctx.group_gradient_importance(layer, group=True),
}
