"""Benchmark rows, the comparison against the first model, and the markdown table the CLI prints.

Speed-up = first model's median / this model's median at the same batch size; GFLOPs ratio = first model's
GFLOPs / this model's. Their quotient says how much of the theoretical saving the runtime turns into time
(1.0: all of it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from yolo_prune.bench.latency import LatencyStats


@dataclass(frozen=True)
class BenchRow:
    """One (model, runtime, batch) measurement with the model's per-image cost at its input size."""

    model: str
    runtime: str
    img_size: tuple[int, int]
    params: int
    gflops: float
    stats: LatencyStats

    @property
    def batch(self) -> int:
        return self.stats.batch


@dataclass(frozen=True)
class Comparison:
    """A row next to the reference row (the first model's at the same batch); None where there is none."""

    row: BenchRow
    speedup: float | None
    gflops_ratio: float | None

    @property
    def efficiency(self) -> float | None:
        """Speed-up / GFLOPs ratio."""
        if self.speedup is None or not self.gflops_ratio:
            return None
        return self.speedup / self.gflops_ratio

    def to_dict(self) -> dict[str, Any]:
        r = self.row
        return {"model": r.model, "runtime": r.runtime, "img_size": list(r.img_size), "params": r.params,
                "gflops": r.gflops, **r.stats.to_dict(), "speedup": self.speedup, "gflops_ratio": self.gflops_ratio,
                "speedup_per_gflops_ratio": self.efficiency}


def compare(rows: Sequence[BenchRow]) -> list[Comparison]:
    """Each row against the first model's row of the same batch size (the first model is rows[0].model)."""
    if not rows:
        return []
    first = rows[0].model
    ref = {r.batch: r for r in rows if r.model == first}
    out = []
    for r in rows:
        base = ref.get(r.batch)
        speedup = base.stats.median_ms / r.stats.median_ms if base else None
        ratio = base.gflops / r.gflops if base and r.gflops > 0 else None
        out.append(Comparison(r, speedup, ratio))
    return out


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def format_table(comparisons: Sequence[Comparison]) -> str:
    """Markdown table: model, runtime, batch, input, params, GFLOPs, latency, throughput and the comparison."""
    lines = ["| model | runtime | batch | input | params | GFLOPs | median ms | p10-p90 ms | img/s | speed-up "
             "| GFLOPs ratio | speed-up / GFLOPs ratio |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in comparisons:
        r, s = c.row, c.row.stats
        compared = f"{_num(c.speedup, '.2f', 'x')} | {_num(c.gflops_ratio, '.2f', 'x')} | {_num(c.efficiency, '.2f')}"
        lines.append(f"| {r.model} | {r.runtime} | {r.batch} | {r.img_size[0]}x{r.img_size[1]} | {r.params:,} | "
                     f"{r.gflops:.2f} | {s.median_ms:.2f} | {s.p10_ms:.2f}-{s.p90_ms:.2f} | {s.throughput:.1f} | "
                     f"{compared} |")
    return "\n".join(lines)
