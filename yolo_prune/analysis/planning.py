"""What an analysis run will do before it does it: the plan (configurations, images, chunks, stacking), its
ETA from measured time, the memory budget for stacked passes, and the opt-in early stop of hopeless configurations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from yolo_prune.errors import ConfigError

CPU_STACK_BYTES = 1 << 30  # stacked downstream activations on CPU (the host's other work needs its memory too)
CPU_CACHE_SHARE = 4  # unpruned activations kept across chunks on CPU: a quarter of the available host memory


def _budget(device: torch.device, requested: int | None, gpu_share: int, cpu_bytes: Callable[[], int]) -> int:
    """``requested`` bytes, else 1/``gpu_share`` of the free GPU memory, else ``cpu_bytes()``."""
    if requested is not None:
        return max(0, int(requested))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // gpu_share
    return cpu_bytes()


def available_host_bytes() -> int:
    """Memory the host can give this process now without swapping (``psutil``'s ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def stack_budget(device: torch.device, requested: int | None = None) -> int:
    """Bytes one stacked downstream pass may hold: ``requested``, else half the free GPU memory, else 1 GiB."""
    return _budget(device, requested, 2, lambda: CPU_STACK_BYTES)


def cache_budget(device: torch.device, requested: int | None = None) -> int:
    """Bytes of unpruned activations kept across chunks: ``requested``, else a quarter of the free GPU memory,
    else (CPU) a quarter of the available host memory: a chunk after the first re-runs only downstream layers for
    every batch that fits (yolov7 at 256 px needs 70 MiB per image)."""
    return _budget(device, requested, 4, lambda: available_host_bytes() // CPU_CACHE_SHARE)


@dataclass(frozen=True)
class EarlyStop:
    """Stop a configuration once ``after`` of the images are scored if its mAP@.5 (test.py's, on those images) is
    below ``below`` x the unpruned model's on the same images.

    Why that is hopeless for every later budget: the published selection scores removed x mAP^E with E = 20, so
    at half the baseline mAP a configuration scores 0.5^20 ~ 1e-6 of an unharmed one; the knapsack would choose it
    only for a budget that gives up half the accuracy. Stopped configurations keep the metrics of the images they
    saw, marked ``early_stop`` in the results.
    """

    below: float = 0.5
    after: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.below <= 1:
            raise ConfigError(f"--early-stop {self.below}: the mAP@.5 ratio must be in (0, 1]")
        if not 0 < self.after < 1:
            raise ConfigError(f"--early-stop-after {self.after}: the image fraction must be in (0, 1)")

    def images(self, total: int) -> int:
        """Images to score before deciding (at least one batch is always scored)."""
        return max(1, math.ceil(self.after * total))

    def settings(self) -> dict[str, float]:
        return {"below": self.below, "after": self.after}


@dataclass
class Plan:
    """Counts of an analysis run, printed before it starts; ``seconds_per_config`` once measured."""

    configs: int
    done: int
    images: int
    batches: int
    chunks: int
    ranks: int = 1
    stack_bytes: int = 0
    cache_bytes: int = 0
    seconds_per_config: float | None = None
    measured_on: str = ""

    @property
    def todo(self) -> int:
        return self.configs - self.done

    def eta(self, remaining: int | None = None) -> float | None:
        """Seconds left for ``remaining`` configurations (default: all to do), shared by the ranks."""
        if self.seconds_per_config is None:
            return None
        return self.seconds_per_config * (self.todo if remaining is None else remaining) / self.ranks

    def describe(self) -> str:
        """``plan: 165 configurations (0 done, 165 to do) on 64 images in 4 batches, 14 chunks, 1 rank; ...``"""
        stack = f"a layer's rates stacked in one pass up to {self.stack_bytes / 2**20:.0f} MiB" if self.stack_bytes \
            else "one pass per configuration"
        cache = f"unpruned activations kept across chunks up to {self.cache_bytes / 2**20:.0f} MiB" \
            if self.cache_bytes else "the unpruned forward re-run per chunk"
        text = (f"plan: {self.configs} configurations ({self.done} done, {self.todo} to do) on {self.images} images "
                f"in {self.batches} batches, {self.chunks} chunk(s) over {self.ranks} rank(s); {stack}; {cache}")
        if self.seconds_per_config is not None:
            text += (f"; {self.seconds_per_config:.2f} s per configuration ({self.measured_on}); "
                     f"ETA {format_seconds(self.eta())}")
        return text


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
