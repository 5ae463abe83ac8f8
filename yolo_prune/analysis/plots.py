"""The published selection diagrams: pruned params, pruned GFLOPs and mAP per layer and rate.

Selected points are marked: limegreen = chosen for params, royalblue = for FLOPs, red = for both.
"""
from __future__ import annotations

from pathlib import Path

from yolo_prune.analysis.selection import Pick
from yolo_prune.analysis.table import SensitivityTable

COLOURS = {"params": "limegreen", "flops": "royalblue", "both": "red"}
PANELS = (("sa_parameters", "Pruned Parameters (millions)", lambda e, bp, bg: (bp - e.params) / 1e6),
          ("sa_flops", "Pruned GFLOPS", lambda e, bp, bg: bg - e.gflops),
          ("sa_map", "mAP", lambda e, bp, bg: e.map))


def _colour(pick: Pick) -> str:
    return COLOURS["both"] if len(set(pick.objectives)) > 1 else COLOURS[pick.objectives[0]]


def plot_selection(table: SensitivityTable, picks: list[Pick], base_params: float, base_gflops: float,
                   out_dir: str | Path) -> list[Path]:
    """Write ``sa_parameters``, ``sa_flops`` and ``sa_map`` as PNG and PDF; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, ylabel, value in PANELS:
        fig, ax = plt.subplots(figsize=(8, 6))
        for rate in table.rates:
            layers = [l for l in table.layers if (l, rate) in table.entries]
            ax.plot(layers, [value(table.entries[(l, rate)], base_params, base_gflops) for l in layers],
                    label=f"pruning rate: {rate * 100:g}%")
        for p in picks:
            ax.plot(p.layer, value(table.entries[(p.layer, p.rate)], base_params, base_gflops), ".", ms=8,
                    mec="k", mew=0.8, color=_colour(p))
        ax.plot([], [], ".", ms=8, mec="k", mew=0.8, color="white", label="Selected pruning rates\n(red: for both)")
        ax.set_xlabel("Convolutional Layer Index")
        ax.set_ylabel(ylabel)
        ax.grid(True)
        ax.locator_params(axis="x", nbins=10)
        ax.legend(fontsize=8)
        for ext in ("png", "pdf"):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, bbox_inches="tight", dpi=120)
            written.append(path)
        plt.close(fig)
    return written
