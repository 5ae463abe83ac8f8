"""What a checkpoint asks of every trainer besides its task's loss: kernel masks that stay at zero, and FBS's L1
term on the gates' saliencies. Both the detection and the classification trainer call the same two methods:
``extra_loss(model)`` after the forward pass and ``step(model, optimizer, step_fn)`` in place of
``optimizer.step()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn


@dataclass
class TrainHooks:
    """``masks``: ``{parameter name: bool}`` (True = kept) kept at zero through every step; ``saliency_l1``: weight of
    the L1 term on gated convs' saliencies (0: off)."""

    masks: dict[str, torch.Tensor] | None = None
    saliency_l1: float = 0.0

    @classmethod
    def from_checkpoint(cls, loaded: Any, saliency_l1: float | None = None) -> "TrainHooks":
        """Hooks for a loaded checkpoint: its stored masks and (unless given) the L1 weight its gating recorded."""
        raw = getattr(loaded, "raw", None) or {}
        weight = saliency_l1 if saliency_l1 is not None else float((raw.get("gating") or {}).get("l1", 0.0))
        return cls(getattr(loaded, "masks", None), weight)

    def annotate(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """Record the masks and the L1 weight in a checkpoint dict (so fine-tuning it again keeps both)."""
        if self.masks:
            ckpt["masks"] = {k: v.detach().cpu().bool().clone() for k, v in self.masks.items()}
        if ckpt.get("gating") is not None:
            ckpt["gating"]["l1"] = float(self.saliency_l1)
        return ckpt

    def attach(self, model: nn.Module) -> None:
        """Zero the masked weights of ``model`` now (a model loaded from elsewhere may not be masked yet)."""
        if self.masks:
            from yolo_prune.prune.masks import apply_masks

            apply_masks(model, self.masks)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """``saliency_l1`` x the gates' mean |saliency| of the last forward (None when off or without gates)."""
        if not self.saliency_l1:
            return None
        from yolo_prune.models.gating import saliency_l1

        term = saliency_l1(model)
        return None if term is None else self.saliency_l1 * term

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: Callable[[], object]) -> None:
        """Run ``step_fn`` (the optimizer step); with masks, gradients are masked before it and weights and optimizer
        state after it, so nothing can revive a masked weight."""
        if not self.masks:
            step_fn()
            return
        from yolo_prune.prune.masks import masked_step

        masked_step(model, self.masks, step_fn, optimizer)
