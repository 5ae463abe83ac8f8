"""The published selection diagrams: pruned params and GFLOPs per layer and rate, selected points marked."""
from __future__ import annotations

from pathlib import Path

from yolo_prune.analysis.selection import Pick
from yolo_prune.analysis.table import SensitivityTable


def plot_selection(table: SensitivityTable, picks: dict[str, list[Pick]], out_dir: str | Path) -> list[Path]:
    """Write ``selection_params.{png,pdf}`` and ``selection_flops.{png,pdf}``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for objective, attr, label in (("params", "params", "parameters after pruning"),
                                   ("flops", "gflops", "GFLOPs after pruning")):
        fig, ax = plt.subplots(figsize=(10, 4))
        for rate in table.rates:
            layers = [l for l in table.layers if (l, rate) in table.entries]
            ax.plot(layers, [getattr(table.entries[(l, rate)], attr) for l in layers], marker=".", lw=0.8,
                    label=f"rate {rate:g}")
        chosen = picks.get(objective, [])
        ax.scatter([p.layer for p in chosen], [getattr(table.entries[(p.layer, p.rate)], attr) for p in chosen],
                   s=80, facecolors="none", edgecolors="red", label="selected", zorder=3)
        ax.set_xlabel("conv layer index")
        ax.set_ylabel(label)
        ax.set_title(f"Layer selection by {objective}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            path = out_dir / f"selection_{objective}.{ext}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
