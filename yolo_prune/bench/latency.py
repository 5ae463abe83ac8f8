"""Timing a callable: warm-up, per-run wall times, and the summary statistics the benchmark reports."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from yolo_prune.errors import YoloPruneError


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of every timed run of one batch (milliseconds) and what the reports derive from them.

    ``median_ms`` is the headline; ``p10_ms``-``p90_ms`` is the spread (robust to the odd disturbed run);
    ``throughput`` is images per second at the median (``batch`` images per run).
    """

    batch: int
    times_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times_ms:
            raise ValueError("LatencyStats needs at least one timed run")

    @property
    def n(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p10_ms(self) -> float:
        return percentile(self.times_ms, 10)

    @property
    def p90_ms(self) -> float:
        return percentile(self.times_ms, 90)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return 1000.0 * self.batch / self.median_ms

    def merged(self, other: "LatencyStats") -> "LatencyStats":
        """Both sets of runs together (same batch), e.g. rounds interleaved with other models."""
        if other.batch != self.batch:
            raise ValueError(f"cannot merge batch {self.batch} and batch {other.batch} timings")
        return LatencyStats(self.batch, self.times_ms + other.times_ms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary plus every run."""
        return {"batch": self.batch, "n": self.n, "median_ms": self.median_ms, "p10_ms": self.p10_ms,
                "p90_ms": self.p90_ms, "min_ms": self.min_ms, "mean_ms": self.mean_ms,
                "throughput_img_s": self.throughput, "times_ms": list(self.times_ms)}


def time_callable(fn: Callable[[], Any], warmup: int, iters: int, batch: int = 1,
                  sync: Callable[[], None] | None = None) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times, each timed with ``time.perf_counter``.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read so asynchronous device work is
    inside the run that queued it. ``batch`` is only recorded (images per call, for the throughput).
    """
    if warmup < 0 or iters < 1:
        raise YoloPruneError(f"warm-up must be >= 0 and iterations >= 1, got warmup={warmup}, iters={iters}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return LatencyStats(batch, tuple(times))


BUSY_SPREAD = 1.5  # p90 / p10 of one model's runs above this: the machine was busy, latencies are unreliable


def interleaved(factories: dict[str, Callable[[], Any]], rounds: int, warmup: int, iters: int,
                batch: int = 1) -> dict[str, LatencyStats]:
    """Time several models in turn, ``rounds`` times over, so that a busy spell hits them alike.

    ``factories``: name -> a function making a fresh runner (an object with ``run`` and ``sync``), called at each
    visit so that only one runner (e.g. one ONNX Runtime session and its threads) is alive at a time. Returns
    every model's runs of all rounds merged.
    """
    if rounds < 1:
        raise YoloPruneError(f"rounds must be >= 1, got {rounds}")
    out: dict[str, LatencyStats] = {}
    for _ in range(rounds):
        for name, make in factories.items():
            runner = make()
            stats = time_callable(runner.run, warmup, iters, batch, runner.sync)
            out[name] = out[name].merged(stats) if name in out else stats
            del runner
    return out


def busy_warning(stats: dict[str, LatencyStats], limit: float = BUSY_SPREAD) -> str | None:
    """A warning naming the models whose spread (p90 / p10) says the machine was busy, or None."""
    noisy = {name: s.p90_ms / s.p10_ms for name, s in stats.items() if s.p90_ms > limit * s.p10_ms}
    if not noisy:
        return None
    listed = ", ".join(f"{name} p90/p10 = {ratio:.2f}" for name, ratio in noisy.items())
    return (f"warning: latencies are unreliable, the machine was busy ({listed} > {limit}); "
            f"compare medians only, or re-run on a quiet machine")
