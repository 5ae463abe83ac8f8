"""Run-time channel gating: Feature Boosting and Suppression (FBS; Gao et al., ICLR 2019).

A :class:`GatedConv` replaces a conv + BatchNorm pair. A small saliency predictor (global average pool of the
conv's *input* -> Linear -> ReLU) scores every output channel for this input; k-winners-take-all keeps the
``k = ceil(density * C)`` most salient channels and zeroes the rest; the kept saliencies scale the normalised
output (they replace the BN affine: ``y = s * (norm(conv(x)) + beta)``). Converted from a trained conv + BN
with a zero predictor weight and bias |gamma|, the gated conv equals the plain one at density 1.0.

``fast`` mode (eval, batch 1) computes only the selected output channels, from the input channels that are not
all zero (upstream gates' suppressed channels), with gathered weights; outputs are identical to the dense path.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def winners(saliency: torch.Tensor, density: float) -> torch.Tensor:
    """k-winners-take-all per row of ``saliency`` [B, C]: the top ``ceil(density * C)`` entries kept, others 0."""
    c = saliency.shape[1]
    k = max(1, min(c, math.ceil(density * c - 1e-6)))
    if k == c:
        return saliency
    keep = torch.zeros_like(saliency).scatter_(1, saliency.topk(k, dim=1).indices, 1.0)
    return saliency * keep


class GatedConv(nn.Module):
    """FBS gated convolution. Input [B, Cin, H, W] -> output [B, C, H', W'] with suppressed channels exactly 0.

    After each forward: ``saliency`` [B, C] (for the L1 term) and ``active`` [B] (channels computed per image).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, density: float = 1.0,
                 source: tuple[str, str] = ("", "")) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"{source[0]}: FBS gating needs an ungrouped conv (groups={conv.groups})")
        c = conv.out_channels
        gamma = bn.weight.detach().clone()
        sign = torch.where(gamma < 0, -1.0, 1.0).to(gamma)
        self.conv = copy.deepcopy(conv)
        self.norm = nn.BatchNorm2d(c, bn.eps, bn.momentum, affine=False)
        with torch.no_grad():  # fold gamma's sign into the conv so the gate (>= 0) can carry |gamma|
            self.conv.weight.mul_(sign.view(-1, 1, 1, 1))
            if self.conv.bias is not None:
                self.conv.bias.mul_(sign)
            self.norm.running_mean.copy_(bn.running_mean * sign)
            self.norm.running_var.copy_(bn.running_var)
            self.norm.num_batches_tracked.copy_(bn.num_batches_tracked)
        scale = gamma.abs().clamp_min(1e-6)
        self.beta = nn.Parameter(bn.bias.detach() / scale)
        self.predictor = nn.Linear(conv.in_channels, c)
        nn.init.zeros_(self.predictor.weight)
        with torch.no_grad():
            self.predictor.bias.copy_(scale)
        self.density, self.source, self.fast = float(density), tuple(source), False
        self.saliency: torch.Tensor | None = None
        self.active: torch.Tensor | None = None
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles drop the last forward's saliency (it holds an autograd graph) and the folded weights."""
        return {**self.__dict__, "saliency": None, "active": None, "_folded": None}

    def train(self, mode: bool = True) -> "GatedConv":
        self._folded = None  # weights may change: fold again at the next fast call
        return super().train(mode)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the normalisation folded in: ``norm(conv(x)) + beta == conv'(x)`` (eval)."""
        if self._folded is None:
            conv, norm = self.conv, self.norm
            inv = torch.rsqrt(norm.running_var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            self._folded = (conv.weight * inv.view(-1, 1, 1, 1), (bias - norm.running_mean) * inv + self.beta)
        return self._folded

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def groups(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.predictor(x.mean(dim=(2, 3))))  # [B, C]
        gate = winners(s, self.density)
        self.saliency, self.active = s, (gate > 0).sum(1)
        if self.fast and not self.training and x.shape[0] == 1:
            return self._gathered(x, gate[0])
        y = self.norm(self.conv(x)) + self.beta.view(1, -1, 1, 1)
        return y * gate[:, :, None, None]

    def _gathered(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Batch-1 path: only the selected filters, only over input channels that are not all zero."""
        out_idx = gate.nonzero().squeeze(1)
        in_idx = x[0].abs().amax(dim=(1, 2)).nonzero().squeeze(1)
        conv = self.conv
        hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
              zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
        out = x.new_zeros((1, conv.out_channels, *hw))
        if len(out_idx) == 0:
            return out
        weight, bias = self.folded()
        bias = bias.index_select(0, out_idx)
        if len(in_idx) == 0:  # an all-zero input: the conv gives its bias
            y = bias.view(1, -1, 1, 1).expand(1, -1, *hw)
        else:
            weight = weight.index_select(0, out_idx).index_select(1, in_idx)
            y = F.conv2d(x.index_select(1, in_idx), weight, bias, conv.stride, conv.padding, conv.dilation)
        return out.index_copy_(1, out_idx, y * gate.index_select(0, out_idx).view(1, -1, 1, 1))


def gated_convs(model: nn.Module) -> list[GatedConv]:
    return [m for m in model.modules() if isinstance(m, GatedConv)]


def gate_modules(model: nn.Module, pairs: Sequence[tuple[str, str]], density: float = 1.0) -> nn.Module:
    """Replace each (conv path, BatchNorm path) pair by a GatedConv at the conv's place and Identity at the BN's
    (in place; a YOLOv7 ``Conv`` block then computes ``act(gated(x))``). Returns the model."""
    for conv_path, bn_path in pairs:
        conv = model.get_submodule(conv_path)
        gated = GatedConv(conv, model.get_submodule(bn_path), density, (conv_path, bn_path)).train(conv.training)
        for path, module in ((conv_path, gated), (bn_path, nn.Identity())):
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, module)
    return model


def set_density(model: nn.Module, density: float) -> None:
    """Set every gated conv's density (fraction of output channels computed per input), in (0, 1]."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    for m in gated_convs(model):
        m.density = float(density)


def set_fast(model: nn.Module, fast: bool = True) -> None:
    """Switch the batch-1 gathered-weights path on or off."""
    for m in gated_convs(model):
        m.fast = fast


def saliency_l1(model: nn.Module) -> torch.Tensor | None:
    """Sum over gated convs of the mean |saliency| of the last forward (FBS's L1 term), or None without gates."""
    terms = [m.saliency.abs().mean() for m in gated_convs(model) if m.saliency is not None]
    return torch.stack(terms).sum() if terms else None


def gating_state(model: nn.Module) -> dict | None:
    """What a checkpoint records to rebuild the gates: ``{"layers": [[conv, bn], ...], "density": d}``."""
    gates = gated_convs(model)
    if not gates:
        return None
    return {"layers": [list(m.source) for m in gates], "density": gates[0].density}
