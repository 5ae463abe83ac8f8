"""Rewriting large stride-1 max-pools as stacked 5x5 pools (SPPF form): exact, and within DPU pool limits."""
from __future__ import annotations

import torch.nn as nn


def stack_large_pools(model: nn.Module, limit: int) -> int:
    """Replace stride-1 'same' max-pools with kernel > ``limit`` by stacked 5x5 pools (exact: the SPPF form).

    Two 5x5 pools equal one 9x9, three one 13x13 (YOLOv7's SPPCSPC kernels), so the DPU runs them instead of
    the CPU. Modifies ``model`` in place; returns how many pools were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.MaxPool2d):
                continue
            k, s, pad = (child.kernel_size, child.stride, child.padding)
            if not (isinstance(k, int) and k > limit and s in (1, (1, 1)) and pad in (k // 2, (k // 2, k // 2))
                    and (k - 1) % 4 == 0 and child.dilation in (1, (1, 1)) and not child.ceil_mode):
                continue
            pools = [nn.MaxPool2d(5, 1, 2) for _ in range((k - 1) // 4)]
            setattr(parent, name, nn.Sequential(*pools))
            replaced += 1
    return replaced
