"""Quantization schemes: what a deployment target computes in int8, as data.

``dpu`` (Vitis AI DPUs): power-of-two scales everywhere, per-tensor weights, int8 biases (power-of-two, within the
DPU compiler's shift limits), the head's output convs quantized too with one scale per output group (box,
objectness, class: the convs are split per group in the exported graph), LeakyReLU with the DPU's 26/256 slope,
max-pools over 8x8 as stacked 5x5 pools (exact).

``tensorrt`` (explicit quantization, TensorRT >= 8.5): float scales, per-channel weights (axis 0), float biases,
per-tensor activations; the head's outputs stay float (TensorRT's last conv writes float).

Both: symmetric int8 with zero point 0, the input image quantized, one scale shared by every input of a
concatenation (and by max-pool / nearest-resize outputs, which only move int8 values).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from yolo_prune.errors import YoloPruneError

DPU_LEAKY_SLOPE = 26 / 256


@dataclass(frozen=True)
class QuantScheme:
    """How a model is fake-quantized (see the module docstring for the two shipped schemes)."""

    name: str
    power_of_two: bool
    weight_per_channel: bool
    quantize_bias: bool
    quantize_head_output: bool
    split_head: bool
    leaky_slope: float | None = None
    weight_mse_steps: int = 2
    max_pool_kernel: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (stored in QAT checkpoints and exported metadata)."""
        return asdict(self)


SCHEMES: dict[str, QuantScheme] = {
    "dpu": QuantScheme("dpu", power_of_two=True, weight_per_channel=False, quantize_bias=True,
                       quantize_head_output=True, split_head=True, leaky_slope=DPU_LEAKY_SLOPE, max_pool_kernel=8),
    "tensorrt": QuantScheme("tensorrt", power_of_two=False, weight_per_channel=True, quantize_bias=False,
                            quantize_head_output=False, split_head=False, weight_mse_steps=0),
}


def get_scheme(name: str | QuantScheme) -> QuantScheme:
    """A scheme by name (``dpu``, ``tensorrt``); YoloPruneError listing the known names otherwise."""
    if isinstance(name, QuantScheme):
        return name
    try:
        return SCHEMES[str(name).strip().lower()]
    except KeyError:
        raise YoloPruneError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}") from None


def scheme_from_dict(data: dict[str, Any]) -> QuantScheme:
    """The scheme stored by :meth:`QuantScheme.to_dict` (YoloPruneError for unknown fields)."""
    try:
        return QuantScheme(**data)
    except TypeError as exc:
        raise YoloPruneError(f"stored quantization scheme is not readable ({exc})") from None
