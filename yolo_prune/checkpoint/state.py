"""Strict state_dict loading with an error that lists what does not match (never drops shapes silently)."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from yolo_prune.errors import CheckpointError


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` (dtype cast); any missing, unexpected or mis-shaped key is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = ([f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + shapes)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise CheckpointError(f"{source}: weights do not fit the architecture: {shown}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
