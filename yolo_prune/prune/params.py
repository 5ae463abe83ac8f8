"""Pruning parameters: parse ``"[(8, 0.5), (18, 0.5)]"`` or ``"0.3"`` safely, and the filter-count rounding."""
from __future__ import annotations

import ast
import math
from typing import Sequence

from yolo_prune.errors import PruningError

LayerRates = list[tuple[int, float]]


def _check_rate(rate: object, where: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise PruningError(f"{where}: rate must be a number in (0, 1), got {rate!r}")
    return float(rate)


def parse_pruning_params(value: str | float | Sequence[tuple[int, float]]) -> LayerRates | float:
    """A list of (layer, rate) pairs, or one rate for every prunable layer (never evaluated as code)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise PruningError(f"--pruning-params: cannot parse {value!r}; expected e.g. "
                               f"\"[(8, 0.5), (18, 0.25)]\" or a single rate such as 0.3") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _check_rate(value, "--pruning-params")
    if not isinstance(value, (list, tuple)) or not value:
        raise PruningError(f"--pruning-params: expected a non-empty list of (layer, rate) pairs or a rate, got {value!r}")
    pairs: LayerRates = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], int)):
            raise PruningError(f"--pruning-params: each entry must be (layer index, rate), got {item!r}")
        pairs.append((item[0], _check_rate(item[1], f"--pruning-params entry {tuple(item)!r}")))
    layers = [layer for layer, _ in pairs]
    duplicates = sorted({layer for layer in layers if layers.count(layer) > 1})
    if duplicates:
        raise PruningError(f"--pruning-params: layer(s) {duplicates} listed more than once")
    return pairs


def kept_count(filters: int, rate: float, round_to: int | None = None) -> int:
    """Filters kept after pruning ``rate`` of ``filters``; never zero.

    Default (published): removed = ceil(rate * filters / 2) * 2. With ``round_to`` N the kept count is the
    nearest multiple of N (at least N, at most ``filters``), e.g. 8 for TensorRT tensor cores.
    """
    if round_to:
        if filters <= round_to:
            return filters
        kept = int(math.floor(filters * (1.0 - rate) / round_to + 0.5)) * round_to
        return min(filters, max(round_to, kept))
    removed = math.ceil(rate * filters / 2) * 2
    if removed >= filters:
        removed = filters - (2 if filters > 2 else 1)
    return filters - removed
