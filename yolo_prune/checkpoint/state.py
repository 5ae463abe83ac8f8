"""Weights against architecture: strict loading, and a dry run that bounds every shape by what the file holds."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn as nn

from yolo_prune.errors import CheckpointError


def _problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``own`` (a model's state_dict)."""
    missing = [f"missing {k}" for k in own if k not in state]
    unexpected = [f"unexpected {k}" for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing + unexpected + shapes


def _raise(problems: list[str], source: str) -> None:
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise CheckpointError(f"{source}: weights do not fit the architecture: {shown}")


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` (dtype cast); any missing, unexpected or mis-shaped key is an error."""
    own = model.state_dict()
    _raise(_problems(own, state), source)
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def check_backed(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Every tensor's shape is backed by stored values: a pickled view with zero strides can claim a huge shape
    over a single number, and widths read from such a shape would make the model builder allocate it."""
    for key, t in state.items():
        held = t.untyped_storage().nbytes() // max(t.element_size(), 1) - t.storage_offset()
        if t.numel() > max(held, 0):
            raise CheckpointError(f"{source}: tensor {key} claims shape {tuple(t.shape)} ({t.numel()} values) but "
                                  f"the file holds only {max(held, 0)} values for it")


def build_within(build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """``build()`` once every parameter and buffer it would make is known to have the shape ``state`` holds.

    ``build`` (which applies the file's re-parameterisations too) first runs on the meta device, where nothing is
    allocated: a cfg or width list that claims more than the weights hold fails here, not in the allocator.
    """
    check_backed(state, source)
    with torch.device("meta"):
        skeleton = build()
    _raise(_problems(skeleton.state_dict(), state), source)
    return build()
