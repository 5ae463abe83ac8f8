"""Where sensitivity results live: ``sensitivity.json`` (rewritten atomically after every finished chunk),
plus the published ``output_<int(100*rate)>.txt`` files and a CSV written from it.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_prune.errors import YoloPruneError
from yolo_prune.fileio import write_text_atomic

Key = tuple[int, float]


def key_str(layer: int, rate: float) -> str:
    return f"{layer}:{rate:g}"


@dataclass
class ResultStore:
    """Results of one analysis directory. ``settings`` must match for a run to resume into it; ``model`` records
    which model was analysed (``source``, ``graph_fingerprint``: its structure and widths) for later checks."""

    directory: Path
    settings: dict[str, Any]
    baseline: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] | None = None

    @property
    def json_path(self) -> Path:
        return self.directory / "sensitivity.json"

    @classmethod
    def open(cls, directory: str | Path, settings: dict[str, Any], exist_ok: bool = False,
             model: dict[str, Any] | None = None) -> "ResultStore":
        """Resume from ``directory`` when its settings (and analysed model) match; replace it with ``exist_ok``;
        else refuse."""
        directory = Path(directory)
        store = cls(directory, settings, model=model)
        if store.json_path.exists() and not exist_ok:
            try:
                saved = json.loads(store.json_path.read_text())
            except (ValueError, UnicodeDecodeError):
                saved = None
            if not isinstance(saved, dict):
                raise YoloPruneError(f"{store.json_path}: not a readable sensitivity.json; use another --name, or "
                                     f"--exist-ok to replace it") from None
            if saved.get("settings") != settings:
                diff = sorted(k for k in set(saved.get("settings", {})) | set(settings)
                              if saved.get("settings", {}).get(k) != settings.get(k))
                raise YoloPruneError(f"{directory} holds an analysis with other settings ({', '.join(diff)}); "
                                     f"use another --name, or --exist-ok to replace it")
            old = (saved.get("model") or {}).get("graph_fingerprint")
            if old and model and old != model.get("graph_fingerprint"):
                raise YoloPruneError(f"{directory} holds an analysis of another model (graph fingerprint {old}, "
                                     f"this model's is {model.get('graph_fingerprint')}); use another --name, or "
                                     f"--exist-ok to replace it")
            store.baseline, store.results = saved.get("baseline"), saved.get("results", {})
        return store

    def done(self, layer: int, rate: float) -> bool:
        return key_str(layer, rate) in self.results

    def add(self, layer: int, rate: float, metrics: dict[str, Any]) -> None:
        self.results[key_str(layer, rate)] = {"layer": layer, "rate": rate, **metrics}

    def save(self) -> None:
        """Rewrite sensitivity.json atomically (a kill never leaves a half-written file)."""
        data = {"settings": self.settings, "model": self.model, "baseline": self.baseline, "results": self.results}
        write_text_atomic(self.json_path, json.dumps(data, indent=1))

    def rows(self, rate: float) -> list[dict[str, Any]]:
        return sorted((r for r in self.results.values() if r["rate"] == rate), key=lambda r: r["layer"])

    def write_outputs(self, rates: list[float], prefix: str = "output") -> list[Path]:
        """The published per-rate text files (``<prefix>_<int(100*rate)>.txt``) and sensitivity.csv; an analysis
        scored by another metric (classification: top-1) writes its CSV only."""
        if self.baseline is not None and "map" not in self.baseline:
            return [write_text_atomic(self.directory / "sensitivity.csv", self._metric_csv())]
        paths = [write_text_atomic(self.directory / f"{prefix}_{int(round(100 * r))}.txt",
                                   format_published(self.rows(r))) for r in rates]
        paths.append(write_text_atomic(self.directory / "sensitivity.csv", self._csv()))
        return paths

    def _metric_csv(self) -> str:
        """layer, rate, every scalar metric, params, GFLOPs, inference ms/image; baseline first (layer -1)."""
        rows = [{"layer": -1, "rate": 0.0, **self.baseline}] + sorted(self.results.values(),
                                                                     key=lambda r: (r["rate"], r["layer"]))
        metrics = [k for k, v in self.baseline.items() if isinstance(v, float) and k != "gflops"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["layer", "rate", *metrics, "params", "gflops", "t_inference"])
        for r in rows:
            w.writerow([r["layer"], r["rate"], *(r[k] for k in metrics), r["params"], r["gflops"], r["speed"][0]])
        return buf.getvalue()

    def _csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["layer", "rate", "mp", "mr", "map50", "map", "params", "gflops", "t_inference", "t_nms", "t_total"])
        rows = ([{"layer": -1, "rate": 0.0, **self.baseline}] if self.baseline else []) + \
            sorted(self.results.values(), key=lambda r: (r["rate"], r["layer"]))
        for r in rows:
            w.writerow([r["layer"], r["rate"], r["mp"], r["mr"], r["map50"], r["map"], r["params"], r["gflops"],
                        *r["speed"][:3]])
        return buf.getvalue()


def format_published(rows: list[dict[str, Any]]) -> str:
    """``[(layer, (mP, mR, mAP50, mAP50-95, [per-class mAP], (t_inf, t_nms, t_total, h, w, batch), params, gflops)), ...]``."""
    lines = ["["]
    for r in rows:
        speed = tuple(r["speed"])
        metrics = (r["mp"], r["mr"], r["map50"], r["map"], list(r["per_class"]), speed, r["params"], r["gflops"])
        lines.append(f"({r['layer']}, {metrics!r}),")
    lines.append("]")
    return "\n".join(lines) + "\n"
