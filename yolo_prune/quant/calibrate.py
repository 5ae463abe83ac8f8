"""Activation scales from calibration images: the candidate scale with the least squared error wins.

Two passes over the images with quantizers off: the largest magnitude each quantizer sees, then the summed
squared error of every candidate scale below it (power-of-two schemes: the non-overflowing exponent and the
four below it, as AMD Quark's MinMSE; float schemes: 16 clip levels from max down to max / 10). Quantizers shared
by a concatenation see all of its inputs. Head outputs are scored after the sigmoid every YOLO output goes
through (``domain='sigmoid'``), so clipping a logit that is already saturated costs nothing; grouped head
quantizers (box / objectness / class) get one scale per group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from yolo_prune.errors import YoloPruneError
from yolo_prune.quant.fakequant import QMAX, TINY, FakeQuantize, fake_quant, pow2_scale
from yolo_prune.quant.prepare import activation_quantizers

POW2_STEPS = 4
FLOAT_LEVELS = torch.logspace(0, -1, 16)


@dataclass
class CalibrationReport:
    """How many images calibrated how many quantizers, and the exponent range chosen (power-of-two schemes)."""

    images: int
    quantizers: int
    exponents: tuple[int, int] | None = None

    def __str__(self) -> str:
        text = f"calibrated {self.quantizers} activation quantizers on {self.images} images"
        return text + (f" (scales 2^{self.exponents[0]} .. 2^{self.exponents[1]})" if self.exponents else "")


def _slices(q: FakeQuantize, x: Tensor) -> list[Tensor]:
    """The tensors that share one scale: ``x`` itself, or each channel group of a grouped quantizer."""
    groups = getattr(q, "groups", None)
    if q.axis is None or groups is None:
        return [x]
    return [x.index_select(q.axis, idx.to(x.device)) for idx in groups]


def _candidates(amax: Tensor, power_of_two: bool) -> Tensor:
    """Candidate scales [K] for one observed max."""
    if power_of_two:
        return pow2_scale(amax) / 2.0 ** torch.arange(POW2_STEPS + 1)
    return amax.clamp_min(TINY) / QMAX * FLOAT_LEVELS


def _error(x: Tensor, scale: Tensor, domain: str) -> Tensor:
    xq = fake_quant(x, scale)
    if domain == "sigmoid":
        return ((xq.sigmoid() - x.sigmoid()) ** 2).sum()
    return ((xq - x) ** 2).sum()


class _Observer:
    """Per quantizer (and group): max magnitude, then candidate errors."""

    def __init__(self, quantizers: dict[str, FakeQuantize]):
        self.quantizers = quantizers
        self.amax: dict[int, list[Tensor]] = {}
        self.errors: dict[int, list[Tensor]] = {}
        self.phase = "max"

    def __call__(self, q: FakeQuantize, args: tuple, _out: Tensor) -> None:
        x = args[0].detach().float()
        parts = _slices(q, x)
        if self.phase == "max":
            old = self.amax.get(id(q))
            new = [p.abs().amax() for p in parts]
            self.amax[id(q)] = new if old is None else [torch.maximum(a, b) for a, b in zip(old, new)]
            return
        errs = self.errors.setdefault(id(q), [torch.zeros(len(c)) for c in self.cands(q)])
        domain = getattr(q, "domain", "linear")
        for e, p, cands in zip(errs, parts, self.cands(q)):
            e += torch.stack([_error(p, c, domain) for c in cands]).cpu()

    def cands(self, q: FakeQuantize) -> list[Tensor]:
        return [_candidates(a, q.power_of_two) for a in self.amax[id(q)]]

    def best(self, q: FakeQuantize) -> Tensor:
        """The winning scale: a scalar, or one per channel for grouped quantizers."""
        picks = [c[int(e.argmin())] for c, e in zip(self.cands(q), self.errors[id(q)])]
        groups = getattr(q, "groups", None)
        if q.axis is None or groups is None:
            return picks[0].expand(q.scale.shape).clone()
        out = torch.empty(q.scale.shape)
        for idx, s in zip(groups, picks):
            out[idx] = s
        return out


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor], progress: bool = False) -> CalibrationReport:
    """Set every activation quantizer of ``model`` (from :func:`quantize_model`) from ``batches`` of images
    [B, 3, H, W] RGB 0..1 (pre-processed as at inference); the model is put in eval mode.

    YoloPruneError when ``batches`` is empty.
    """
    images = [b for b in batches]
    if not images:
        raise YoloPruneError("calibration set is empty: no images")
    quantizers = activation_quantizers(model)
    for q in quantizers.values():
        q.enabled = False
    observer = _Observer(quantizers)
    handles = [q.register_forward_hook(observer) for q in quantizers.values()]
    device = next(model.parameters()).device
    try:
        for phase in ("max", "mse"):
            observer.phase = phase
            for batch in tqdm(images, desc=f"calibrate ({phase})", disable=not progress):
                model.eval()(batch.to(device))
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, q in quantizers.items() if id(q) not in observer.errors]
    if missing:
        raise YoloPruneError(f"calibration never reached quantizer(s) {', '.join(missing)}")
    for q in quantizers.values():
        q.set_scale(observer.best(q))
    return CalibrationReport(sum(len(b) for b in images), len(quantizers), _exponent_range(quantizers))


def _exponent_range(quantizers: dict[str, FakeQuantize]) -> tuple[int, int] | None:
    if not quantizers or not next(iter(quantizers.values())).power_of_two:
        return None
    exps = torch.cat([torch.log2(q.scale).reshape(-1) for q in quantizers.values()])
    return int(exps.min()), int(exps.max())
