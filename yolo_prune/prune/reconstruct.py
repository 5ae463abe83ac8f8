"""Least-squares compensation: fold what pruned channels contributed into the layers that read them.

After a layer keeps only the channels ``kept`` (or new ones, PLS-LC), the consumers' input is rebuilt from what
is left: on the calibration samples, the original model's activations of *all* the layer's channels are fitted
as ``act_old ~ act_kept B + c`` (minimum-norm least squares), and ``B`` and ``c`` are folded into every
consumer -- its input kernels of that slot become ``W B^T`` on the kept channels (the others are zeroed; surgery
removes them), the constant goes into its BatchNorm mean, or into its bias when it has none (a head conv; an
ImplicitA in front of one is folded into that bias too). The fold is exact wherever the removed activations are
linear in the kept ones (e.g. a copied filter) and nothing non-linear (max-pooling) sits between the layer and its
consumer; at zero-padded borders of k > 1 kernels the constant is approximate.

``reconstruct_plan`` does this for a selection plan layer by layer in ascending order, fitting each layer on the
model as compensated so far (one partial forward pass per layer), so it also corrects the error accumulated
upstream (the idea of ThiNet's / channel pruning's reconstruction, closed form here).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.prune.features import FeatureSource

RCOND = 1e-10  # singular values below this share of the largest are ignored (collinear kept channels)


def fit_reconstruction(act: nn.Module, z_old, z_new) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``act(z_old) ~ act(z_new) @ B + c`` over the samples: (B [k, C], c [C]).

    ``z_old`` [P, C], ``z_new`` [P, k]: pre-activation values (arrays or tensors) at the same samples.
    """
    old = act(torch.as_tensor(z_old).double())
    new = act(torch.as_tensor(z_new).double())
    if not (torch.isfinite(old).all() and torch.isfinite(new).all()):
        raise PruningError("reconstruction: the calibration activations are not finite (a diverged model?)")
    mean, scale = new.mean(0), new.std(0).clamp_min(1e-30)
    x = (new - mean) / scale  # standardised columns: the fit does not depend on the activations' scale
    b = torch.linalg.lstsq(x, old - old.mean(0), rcond=RCOND, driver="gelsd").solution  # [k, C], minimum norm
    b = b / scale[:, None]
    return b, old.mean(0) - mean @ b


def _fold_conv(conv: nn.Conv2d, offset: int, kept: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Rewrite one slot of ``conv``'s input kernels to read only the ``kept`` channels; returns the constant
    each output gains."""
    width = b.shape[1]
    part = conv.weight.detach().double()[:, offset:offset + width]  # [O, C, kh, kw]
    new = torch.einsum("oihw,ki->okhw", part, b)  # [O, k, kh, kw]
    delta = torch.einsum("oihw,i->o", part, c)
    with torch.no_grad():
        conv.weight[:, offset:offset + width] = 0
        conv.weight[:, offset + kept] = new.to(conv.weight.dtype)
    return delta


def _absorb(bn: nn.Module, conv: nn.Conv2d, delta: torch.Tensor) -> None:
    """Add ``delta`` to a conv's output: through its BatchNorm's mean, or its bias when fused."""
    with torch.no_grad():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean -= delta.to(bn.running_mean.dtype)
        elif conv.bias is not None:
            conv.bias += delta.to(conv.bias.dtype)
        else:
            raise PruningError("reconstruction: a consumer conv has neither BatchNorm nor bias to absorb the constant")


def _fold_consumer(model: nn.Module, graph: PruningGraph, consumer: int, slot: int, kept: torch.Tensor,
                   b: torch.Tensor, c: torch.Tensor) -> None:
    """Fold the reconstruction into one consumer slot (Conv, RepConv or a head conv with its ImplicitA)."""
    node = graph[consumer]
    offset = node.whole_slot_offset(slot, "reconstruction", "prune without --reconstruct")
    module = model.get_submodule(node.name)
    if isinstance(module, Conv):
        _absorb(module.bn, module.conv, _fold_conv(module.conv, offset, kept, b, c))
    elif isinstance(module, RepConv):
        if module.rbr_identity is not None:
            raise PruningError(f"reconstruction: consumer {node.name} is a RepConv with an identity branch")
        branches = [(module.rbr_reparam, None)] if module.rbr_reparam is not None else \
            [(br[0], br[1]) for br in (module.rbr_dense, module.rbr_1x1)]
        for conv, bn in branches:
            _absorb(bn, conv, _fold_conv(conv, offset, kept, b, c))
    else:  # a head output conv; an ImplicitA in front of it adds a learned constant per input channel
        head_name, attr, level = node.name.rsplit(".", 2)
        head = model.get_submodule(head_name)
        extra = torch.zeros_like(c)
        ia = head.ia[int(level)].implicit if attr == "m" and len(getattr(head, "ia", [])) else None
        if ia is not None:
            extra = ia.detach().double()[0, offset:offset + len(c), 0, 0].clone()
            with torch.no_grad():
                ia[0, offset:offset + len(c), 0, 0] = 0
        _absorb(None, module, _fold_conv(module, offset, kept, b, c + extra))


def fold_into_consumers(model: nn.Module, graph: PruningGraph, layer: int, kept: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor) -> None:
    """Fold ``act_old ~ act_kept B + c`` of conv ``layer`` into every slot that reads it."""
    for consumer, slot in graph[layer].consumers:
        _fold_consumer(model, graph, consumer, slot, kept, b, c)


def reconstruct_plan(model: nn.Module, graph: PruningGraph, source: FeatureSource, kept: dict[int, torch.Tensor]) -> None:
    """Compensate, in place and before surgery, every layer in ``kept`` (layer -> kept filter indices).

    ``source`` holds the original model's samples; each layer's kept channels are read from ``model`` as
    compensated so far.
    """
    from yolo_prune.prune.context import blas_threads

    current = FeatureSource(model, source.batches, source.nc, positions_per_image=source.positions_per_image,
                            seed=source.seed)
    convs = model.conv_modules()
    with blas_threads():
        for layer in sorted(kept):
            index = kept[layer]
            z_now = current.current_positions(layer)[:, index]
            b, c = fit_reconstruction(convs[layer].act, source.positions(layer), z_now)
            fold_into_consumers(model, graph, layer, index, b, c)


def _affected(graph: PruningGraph, layer: int) -> list[str]:
    """Module paths whose tensors a single-layer rewrite or fold may change (the layer, its consumers, and the
    ImplicitA in front of a head consumer)."""
    names = [graph[layer].name]
    for consumer, _ in graph[layer].consumers:
        name = graph[consumer].name
        names.append(name)
        if graph[consumer].kind == "head":
            head, attr, level = name.rsplit(".", 2)
            if attr == "m":
                names.append(f"{head}.ia.{level}")
    return names


def single_layer_patch(model: nn.Module, graph: PruningGraph, source: FeatureSource, layer: int,
                       kept: torch.Tensor, rewrite: str) -> dict[str, torch.Tensor]:
    """The tensors (state-dict name -> value) that pruning conv ``layer`` alone to ``kept`` changes besides
    slicing: ``rewrite`` "lc" (PLS-LC) or "reconstruct". ``model`` is left as it was (the change is computed in
    place, recorded, then undone). Upstream layers are untouched, so the source's samples are current."""
    from yolo_prune.prune.context import blas_threads
    from yolo_prune.prune.lc import rewrite_layer

    prefixes = tuple(f"{n}." for n in _affected(graph, layer))
    state = {k: v for k, v in model.state_dict(keep_vars=True).items() if k.startswith(prefixes)}
    saved = {k: v.detach().clone() for k, v in state.items()}
    try:
        with blas_threads():
            z = source.positions(layer).double()
            if rewrite == "lc":
                rewrite_layer(model, graph, source, layer, len(kept), z.numpy(), z.numpy())
            else:
                b, c = fit_reconstruction(model.conv_modules()[layer].act, z, z[:, kept])
                fold_into_consumers(model, graph, layer, kept, b, c)
        return {k: v.detach().clone() for k, v in state.items() if not torch.equal(v.detach(), saved[k])}
    finally:
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(saved[k])


class patched:
    """Context manager: copy ``patch`` (state-dict name -> tensor) into ``model``, restore on exit."""

    def __init__(self, model: nn.Module, patch: dict[str, torch.Tensor] | None):
        self.patch = patch or {}
        self.state = model.state_dict(keep_vars=True) if self.patch else {}
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> None:
        with torch.no_grad():
            for k, v in self.patch.items():
                self.saved[k] = self.state[k].detach().clone()
                self.state[k].copy_(v.to(self.state[k].device))

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for k, v in self.saved.items():
                self.state[k].copy_(v)
