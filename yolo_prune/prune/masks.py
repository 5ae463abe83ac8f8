"""Kernel-level (2-D kernel) masks: score every kernel ``W[o, i]`` of every convolution, remove the lowest-scoring
ones under one global threshold until a target fraction of the convolution parameters is zero, and keep them at
zero while fine-tuning.

Masks are data, ``{parameter name: bool tensor shaped like the weight}`` (True = kept), stored in our checkpoints
under ``"masks"``; the state dict itself is unchanged, so fusing, exporting and EMA see ordinary (sparse) weights.
RepConv's two branches are masked together per (out, in) pair so their fused kernel is zero too (a RepConv with
an identity branch is left dense: its fused diagonal would refill). Nothing here changes shapes: what kernel
sparsity buys at run time is measured, not assumed (BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

from yolo_prune.errors import PruningError
from yolo_prune.models.blocks import RepConv

KernelScore = Callable[[torch.Tensor], torch.Tensor]
# [out, in, kh, kw] -> [out, in] score per 2-D kernel; the smallest are masked first
KERNEL_SCORES: dict[str, KernelScore] = {
    "max-abs": lambda w: w.detach().float().abs().amax(dim=(2, 3)),
    "l1": lambda w: w.detach().float().abs().sum(dim=(2, 3)),
}


@dataclass(frozen=True)
class MaskUnit:
    """Weights masked together per (out, in) pair: one conv, or both branches of a RepConv."""

    names: tuple[str, ...]

    def scores(self, params: dict[str, nn.Parameter], score: KernelScore, how: str) -> torch.Tensor:
        per = [score(params[n]) for n in self.names]
        return torch.stack(per).amax(0) if how == "max-abs" else torch.stack(per).sum(0)

    def kernel_size(self, params: dict[str, nn.Parameter]) -> int:
        return sum(params[n][0, 0].numel() for n in self.names)


def mask_units(model: nn.Module) -> tuple[list[MaskUnit], list[str]]:
    """Every convolution as a mask unit (RepConv branches joined) and the convs left dense, with the reason."""
    units, skipped, inside_rep = [], [], set()
    for name, m in model.named_modules():
        if isinstance(m, RepConv) and m.rbr_reparam is None:
            branches = (f"{name}.rbr_dense.0", f"{name}.rbr_1x1.0")
            inside_rep.update(branches)
            if m.rbr_identity is not None:
                skipped.append(f"{name}: RepConv identity branch (its fused kernel keeps the diagonal)")
            else:
                units.append(MaskUnit(tuple(f"{b}.weight" for b in branches)))
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in inside_rep:
            units.append(MaskUnit((f"{name}.weight",)))
    return units, skipped


def _param_count(unit: MaskUnit, params: dict[str, nn.Parameter]) -> int:
    return sum(params[n].numel() for n in unit.names)


def kernel_masks(model: nn.Module, percent: float, score: str = "max-abs") -> dict[str, torch.Tensor]:
    """Masks that zero the lowest-scoring kernels of all convolutions (one global threshold) so that at least
    ``percent`` of the convolution parameters are masked. The model is not changed."""
    if not 0.0 < percent < 1.0:
        raise PruningError(f"--percent must be in (0, 1), got {percent}")
    if score not in KERNEL_SCORES:
        raise PruningError(f"--score {score!r}: unknown kernel score; known: {', '.join(KERNEL_SCORES)}")
    params = dict(model.named_parameters())
    units, _ = mask_units(model)
    if not units:
        raise PruningError("the model has no convolution to mask")
    scores = [u.scores(params, KERNEL_SCORES[score], score) for u in units]
    sizes = torch.cat([torch.full((s.numel(),), u.kernel_size(params), dtype=torch.long) for u, s in zip(units, scores)])
    flat = torch.cat([s.flatten() for s in scores])
    order = torch.sort(flat, stable=True).indices
    target = percent * sum(_param_count(u, params) for u in units)
    n_masked = int(torch.searchsorted(torch.cumsum(sizes[order], 0).double(), torch.tensor(target).double())) + 1
    keep_flat = torch.ones_like(flat, dtype=torch.bool)
    keep_flat[order[:min(n_masked, len(order))]] = False
    masks, offset = {}, 0
    for unit, s in zip(units, scores):
        keep = keep_flat[offset:offset + s.numel()].view(s.shape)
        offset += s.numel()
        for n in unit.names:
            masks[n] = keep[:, :, None, None].expand_as(params[n]).clone()
    return masks


def _masked_params(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params.get(name)
        if p is None or p.shape != mask.shape:
            have = "missing" if p is None else f"shape {tuple(p.shape)}"
            raise PruningError(f"mask for {name} (shape {tuple(mask.shape)}) does not fit the model ({have}); "
                               f"masks belong to the checkpoint they were made for")
        yield p, mask.to(p.device)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the masked weights in place (and return the model)."""
    for p, mask in _masked_params(model, masks):
        p.mul_(mask)
    return model


@torch.no_grad()
def masked_step(model: nn.Module, masks: dict[str, torch.Tensor], step: Callable[[], object],
                optimizer: torch.optim.Optimizer | None = None) -> None:
    """One optimizer ``step`` that cannot revive masked weights: gradients are masked before it, the weights and
    any per-parameter optimizer state of their shape (momentum, Adam moments) after it."""
    pairs = list(_masked_params(model, masks))
    for p, mask in pairs:
        if p.grad is not None:
            p.grad.mul_(mask)
    step()
    for p, mask in pairs:
        p.mul_(mask)
        state = optimizer.state.get(p, {}) if optimizer is not None else {}
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.mul_(mask)


@dataclass(frozen=True)
class SparsityRow:
    """One convolution's weight sparsity: kernels and parameters in total and zero."""

    name: str
    kernels: int
    zero_kernels: int
    params: int
    zero_params: int

    @property
    def fraction(self) -> float:
        return self.zero_params / max(self.params, 1)


def sparsity_report(model: nn.Module) -> list[SparsityRow]:
    """Per convolution: how many whole 2-D kernels and single weights are exactly zero (what the masks left)."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            zero_kernel = (w == 0).flatten(2).all(2)
            rows.append(SparsityRow(name, zero_kernel.numel(), int(zero_kernel.sum()), w.numel(), int((w == 0).sum())))
    return rows


def format_sparsity(rows: list[SparsityRow]) -> str:
    """A fixed-width per-layer table and the total."""
    width = max([8] + [len(r.name) for r in rows])
    lines = [f"{'layer':<{width}} {'kernels':>9} {'zero':>9} {'params':>11} {'zero %':>7}"]
    for r in rows:
        lines.append(f"{r.name:<{width}} {r.kernels:>9,} {r.zero_kernels:>9,} {r.params:>11,} {100 * r.fraction:>6.1f}%")
    total, zero = sum(r.params for r in rows), sum(r.zero_params for r in rows)
    lines.append(f"{'total':<{width}} {sum(r.kernels for r in rows):>9,} {sum(r.zero_kernels for r in rows):>9,} "
                 f"{total:>11,} {100 * zero / max(total, 1):>6.1f}%")
    return "\n".join(lines)
