"""Partial forward passes: run a model once, cache every layer's output, then re-run only the layers that
depend on a changed one. Used by the sensitivity analysis, where pruning layer L changes nothing upstream.

Several variants of one change (the rates of one layer) re-run together: their downstream activations are stacked
along the batch ([k * B, ...], variant j in rows j*B..(j+1)*B-1), each slice masked with its own filters
(:func:`masked_stack`), unchanged inputs read from the cache and repeated per slice (:func:`run_from_stacked`).

Networks without cfg rows (the classification CNNs) have no cached prefix: ``run_all`` keeps only the output and
``run_from`` runs the whole (masked) network again, which the same property makes exact.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Concat
from yolo_prune.models.heads import IDetect
from yolo_prune.models.model import Model


def run_all(model: nn.Module, x: torch.Tensor) -> list:
    """Every cfg layer's output for input ``x`` (the last one is the head's output); other networks: [output]."""
    if not isinstance(model, Model):
        return [model(x)]
    outputs: list = []
    for spec, m in zip(model.specs, model.model):
        outputs.append(m(_inputs(spec, outputs, x)))
    return outputs


@contextmanager
def channels_last(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run ``model`` with its 4-D weights in channels-last layout (oneDNN's fast path on CPU: ~15 % faster
    convolutions for yolov7-tiny, summed in another order), restored to the default layout afterwards; inputs must
    be converted too."""
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


class ActivationCache:
    """Each batch's :func:`run_all` outputs, kept across chunks of layers while they fit ``budget`` bytes, so that
    a chunk after the first re-runs only downstream layers; batches beyond the budget run the full forward again."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._kept: dict[int, list] = {}

    def outputs(self, index: int, model: nn.Module, x: torch.Tensor) -> list:
        """Batch ``index``'s outputs: from the cache, or computed now (and kept if they fit)."""
        if index in self._kept:
            return self._kept[index]
        outputs = run_all(model, x)
        size = nbytes(outputs)
        if self.used + size <= self.budget:
            self._kept[index], self.used = outputs, self.used + size
        return outputs


def nbytes(value) -> int:
    """Bytes held by a tensor or a (nested) list/tuple of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(nbytes(v) for v in value) if isinstance(value, (list, tuple)) else 0


def _inputs(spec, outputs: Sequence, x: torch.Tensor):
    sources = spec.sources()
    if isinstance(spec.from_, int):
        return x if sources[0] == -1 else outputs[sources[0]]
    return [x if s == -1 else outputs[s] for s in sources]


def downstream_layers(model: nn.Module) -> list[list[int]] | None:
    """For each cfg layer L, the sorted layers whose output depends on L (L included); None without cfg rows."""
    if not isinstance(model, Model):
        return None
    n = len(model.specs)
    deps: list[list[int]] = []
    for start in range(n):
        changed = {start}
        for spec in model.specs[start + 1:]:
            if any(s in changed for s in spec.sources()):
                changed.add(spec.index)
        deps.append(sorted(changed))
    return deps


def run_from(model: nn.Module, cache: Sequence, layers: Sequence[int], x: torch.Tensor):
    """Re-run ``layers`` (sorted, downstream of a change) reading unchanged inputs from ``cache`` (other networks:
    the whole network)."""
    if not isinstance(model, Model):
        return model(x)
    outputs = list(cache)
    for i in layers:
        spec = model.specs[i]
        outputs[i] = model.model[i](_inputs(spec, outputs, x))
    return outputs[-1]


def layer_of(graph: PruningGraph, conv: int) -> int:
    """Top-level cfg layer that holds conv ``conv`` (names look like ``model.<layer>...``); for a coupled group
    the earliest member's layer (everything after it is re-run)."""
    return min(int(graph[m].name.split(".")[1]) for m in graph.group_of(conv))


@contextmanager
def masked(model: nn.Module, graph: PruningGraph, conv: int, removed: Sequence[int]) -> Iterator[None]:
    """Zero filters ``removed`` of conv ``conv`` (and of every layer coupled with it) after its activation (after a
    plain conv's BN; after the ImplicitA they reach).

    By the pruned == masked property this gives the pruned model's outputs without building it.
    """
    index = torch.as_tensor(list(removed), dtype=torch.long)
    handles = []

    def zero(_m: nn.Module, _i, out: torch.Tensor) -> torch.Tensor:
        return out.index_fill(1, index.to(out.device), 0)

    for member in graph.group_of(conv):
        handles.append(model.get_submodule(graph[member].mask_point).register_forward_hook(zero))
        handles += [m.register_forward_hook(zero) for m in _implicit_consumers(model, graph, member)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def last_uses(model: nn.Module) -> list[int]:
    """For each cfg layer, the last layer that reads its output (its own index if none does); [] without cfg rows."""
    if not isinstance(model, Model):
        return []
    last = list(range(len(model.specs)))
    for spec in model.specs:
        for src in spec.sources():
            if src >= 0:
                last[src] = max(last[src], spec.index)
    return last


def _tiled(value, k: int):
    """A cached output (tensor, or list/tuple of them) repeated ``k`` times along the batch."""
    if isinstance(value, torch.Tensor):
        return value.repeat(k, *([1] * (value.ndim - 1)))
    return type(value)(_tiled(v, k) for v in value)


def _stacked_concat(parts: Sequence[tuple[torch.Tensor, bool]], k: int, batch: int, dim: int) -> torch.Tensor:
    """``Concat`` of (tensor, stacked) inputs: stacked ones have batch k * B, cached ones batch B and are broadcast
    to the k variants inside the one copy the concatenation makes (not repeated first); the same values as
    ``torch.cat`` of the repeated inputs. Channels-last inputs take that plain path (the layout they give the output
    decides the next convolutions')."""
    if dim < 1 or not all(p.is_contiguous() for p, _ in parts):
        return torch.cat([p if is_stacked else _tiled(p, k) for p, is_stacked in parts], dim)
    views = [p.view(k, batch, *p.shape[1:]) if is_stacked else p.unsqueeze(0).expand(k, *p.shape)
             for p, is_stacked in parts]
    out = torch.cat(views, dim + 1)
    return out.view(k * batch, *out.shape[2:])


def run_from_stacked(model: Model, cache: Sequence, layers: Sequence[int], x: torch.Tensor, k: int,
                     first: Callable[[torch.Tensor], torch.Tensor] | None = None, last: Sequence[int] | None = None):
    """:func:`run_from` for ``k`` stacked variants: outputs of ``layers`` have batch k * B; unchanged inputs come
    from ``cache`` (batch B) repeated per variant. ``first``: the first layer is the masked conv itself, so its
    output is not re-run: ``first`` stacks the k masked variants of its cached output (the filter
    :func:`masked_stack` yields; the same values a re-run would give, bit for bit). ``last`` (:func:`last_uses`)
    lets stacked outputs go as soon as no later layer reads them. Returns the head's output (batch k * B)."""
    stacked: dict[int, object] = {}
    for n, i in enumerate(layers):
        spec = model.specs[i]
        if n == 0 and first is not None:
            stacked[i] = first(cache[i])
            continue
        module = model.model[i]
        if isinstance(module, Concat) and -1 not in spec.sources():
            parts = [(stacked[s], True) if s in stacked else (cache[s], False) for s in spec.sources()]
            stacked[i] = _stacked_concat(parts, k, len(x), module.d)
        else:
            srcs = [x if s == -1 else stacked[s] if s in stacked else _tiled(cache[s], k) for s in spec.sources()]
            stacked[i] = module(srcs[0] if isinstance(spec.from_, int) else srcs)
        if last is not None:
            for s in spec.sources():
                if s in stacked and last[s] <= i and s != layers[-1]:
                    del stacked[s]
    return stacked[layers[-1]]


def _stack_filter(removed: Sequence[Sequence[int]], batch: int):
    """Forward hook zeroing, for variant j, channels ``removed[j]``; an output of batch B (the layer ran once) is
    first repeated to the k variants."""
    k = len(removed)
    indices = [torch.as_tensor(sorted(set(r)), dtype=torch.long) for r in removed]

    def hook(_m: nn.Module, _i, out: torch.Tensor) -> torch.Tensor:
        if out.shape[0] == batch:  # one output for every variant (a cached one, or the layer ran once): k copies
            stacked = torch.cat([out] * k).view(k, batch, *out.shape[1:])
        else:  # the layer's own fresh output of the stacked pass: zeroed in place
            stacked = out.view(k, batch, *out.shape[1:])
        for j, index in enumerate(indices):
            if len(index):
                stacked[j].index_fill_(1, index.to(out.device), 0)
        return stacked.view(k * batch, *out.shape[1:])

    return hook


@contextmanager
def masked_stack(model: Model, graph: PruningGraph, conv: int, removed: Sequence[Sequence[int]],
                 batch: int) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """:func:`masked` for k stacked variants: variant j (batch rows j*B..) has filters ``removed[j]`` zeroed.
    Yields the filter itself (conv output of batch B -> the k masked variants), for a cached output."""
    hook = _stack_filter(removed, batch)
    handles = [model.conv_modules()[conv].register_forward_hook(hook)]
    for m in _implicit_consumers(model, graph, conv):
        handles.append(m.register_forward_hook(hook))
    try:
        yield lambda out: hook(None, None, out)
    finally:
        for h in handles:
            h.remove()


def stackable(model: nn.Module, graph: PruningGraph, conv: int) -> bool:
    """Whether :func:`masked_stack` covers ``conv``: a cfg model's conv that is coupled with no other layer and is
    masked at its own module (otherwise one :func:`masked` pass per variant)."""
    return (isinstance(model, Model) and list(graph.group_of(conv)) == [conv]
            and model.get_submodule(graph[conv].mask_point) is model.conv_modules()[conv])


def _implicit_consumers(model: nn.Module, graph: PruningGraph, conv: int) -> list[nn.Module]:
    """The head's ImplicitA layers that add a learned constant to ``conv``'s channels (mask after them too)."""
    head, out = (model.detect if isinstance(model, Model) else None), []
    for consumer, _ in graph[conv].consumers:
        node = graph[consumer]
        if node.kind == "head" and isinstance(head, IDetect) and len(head.ia) > 0 and ".m." in node.name:
            out.append(head.ia[int(node.name.rsplit(".", 1)[1])])
    return out
