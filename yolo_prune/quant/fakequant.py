"""Fake quantization: symmetric int8 with power-of-two (Vitis AI DPU) or float (TensorRT) scales.

Values are rounded to ``scale * round(x / scale)`` (half to even, as ONNX ``QuantizeLinear``) and clamped to
int8 ``[-128, 127]``; the zero point is always 0. Gradients are straight-through: 1 where ``x`` fell inside the
representable range, 0 where it was clamped (PyTorch's ``fake_quantize_per_*_affine``, which the TorchScript ONNX
exporter writes as a ``QuantizeLinear``/``DequantizeLinear`` pair, so the exported file computes what trained).

A :class:`FakeQuantize` holds a fixed scale (activations, set by calibration); :func:`weight_scale` derives a
scale from the tensor itself at every call (weights and biases, so the scale follows training).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

QMIN, QMAX = -128, 127
TINY = 1e-12


def pow2_scale(amax: Tensor, qmax: int = QMAX) -> Tensor:
    """The smallest power of two ``s`` with ``s * qmax >= amax`` (elementwise; no value overflows)."""
    return torch.exp2(torch.ceil(torch.log2(amax.float().clamp_min(TINY) / qmax)))


def fake_quant(x: Tensor, scale: Tensor, axis: int | None = None) -> Tensor:
    """``x`` rounded to int8 steps of ``scale`` (a scalar, or one per slice along ``axis``), clamped, as float.

    Straight-through gradient (zero outside the clamp range); computed in float32 and cast back to ``x``'s dtype.
    """
    scale = scale.detach().float().to(x.device)
    xf = x if x.dtype == torch.float32 else x.float()  # no-op casts would become ONNX Cast nodes
    if axis is None:
        zero = torch.zeros((), dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_tensor_affine(xf, scale.reshape(()), zero, QMIN, QMAX)
    else:
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_channel_affine(xf, scale.reshape(-1), zero, axis, QMIN, QMAX)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _reduce_amax(x: Tensor, axis: int | None) -> Tensor:
    """Max |x| over everything (``axis=None``) or per slice along ``axis``."""
    a = x.detach().abs().float()
    if axis is None:
        return a.amax()
    return a.transpose(0, axis).reshape(a.shape[axis], -1).amax(1)


def _sq_error(x: Tensor, scale: Tensor, axis: int | None) -> Tensor:
    """Sum of squared quantization errors (per slice along ``axis``, or a scalar)."""
    err = (fake_quant(x.detach().float(), scale, axis) - x.detach().float()) ** 2
    if axis is None:
        return err.sum()
    return err.transpose(0, axis).reshape(err.shape[axis], -1).sum(1)


@torch.no_grad()
def weight_scale(w: Tensor, power_of_two: bool, axis: int | None = None, mse_steps: int = 0) -> Tensor:
    """Scale for a weight or bias tensor: max |w| / 127 (per ``axis`` slice or per tensor).

    Power-of-two scales are rounded up (nothing overflows); with ``mse_steps`` > 0, the exponents up to
    ``mse_steps`` smaller (clipping the largest values) are tried too and the one with the least squared error is
    kept, as AMD Quark's MinMSE does for DPU weights.
    """
    amax = _reduce_amax(w, axis)
    if not power_of_two:
        return amax.clamp_min(TINY) / QMAX
    best = pow2_scale(amax)
    if mse_steps <= 0:
        return best
    best_err = _sq_error(w, best, axis)
    for step in range(1, mse_steps + 1):
        cand = pow2_scale(amax) / 2 ** step
        err = _sq_error(w, cand, axis)
        better = err < best_err
        best, best_err = torch.where(better, cand, best), torch.where(better, err, best_err)
    return best


class FakeQuantize(nn.Module):
    """Fake-quantizes activations with a fixed scale (per tensor, or per channel for grouped head outputs).

    ``scale`` is a non-persistent buffer (so model state dicts keep their float layout); calibration sets it and
    :func:`yolo_prune.quant.state.quant_state` saves it. ``enabled=False`` (before calibration) passes ``x``
    through. ``axis`` is the channel axis of a per-channel scale (1 for NCHW activations), ``None`` per tensor;
    ``groups`` (index tensors along ``axis``) are channels calibrated to one scale each; ``domain`` is where
    calibration measures the error (``linear``, or ``sigmoid`` for logits).
    """

    def __init__(self, power_of_two: bool, channels: int = 1, axis: int | None = None,
                 groups: list[Tensor] | None = None, domain: str = "linear"):
        super().__init__()
        self.power_of_two, self.axis, self.groups, self.domain = bool(power_of_two), axis, groups, domain
        self.register_buffer("scale", torch.ones(channels if axis is not None else ()), persistent=False)
        self.enabled = False

    def set_scale(self, scale: Tensor) -> None:
        """Adopt ``scale`` (a power of two when the scheme says so) and start quantizing."""
        scale = scale.detach().float().reshape(self.scale.shape).to(self.scale.device)
        if self.power_of_two:
            exps = torch.log2(scale)
            if not torch.equal(exps, torch.round(exps)):
                raise ValueError(f"scale {scale.tolist()} is not a power of two")
        self.scale.copy_(scale)
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        return fake_quant(x, self.scale, self.axis) if self.enabled else x

    def extra_repr(self) -> str:
        kind = "pow2" if self.power_of_two else "float"
        where = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{kind}, {where}, enabled={self.enabled}"
