"""Read a sensitivity-analysis directory (published ``output_<rate>.txt`` files or our ``sensitivity.json``)."""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from yolo_prune.errors import YoloPruneError

_OUTPUT = re.compile(r"^[\w.-]+_(\d+)\.txt$")
# numpy >= 2 prints scalars as np.float64(0.5): the published test.py writes its per-class list that way
_NUMPY_SCALAR = re.compile(r"\b(?:np|numpy)\.(?:float|int|uint)(?:16|32|64)\(([^()]*)\)")


@dataclass(frozen=True)
class Entry:
    """One analysed configuration: accuracy and cost of the model with ``layer`` pruned at ``rate``."""

    layer: int
    rate: float
    map: float  # mAP@.5:.95
    map50: float
    params: int
    gflops: float


@dataclass(frozen=True)
class SensitivityTable:
    """All entries by (layer, rate), the rates, and the unpruned baseline when the directory has it."""

    entries: dict[tuple[int, float], Entry]
    rates: tuple[float, ...]
    baseline: Entry | None
    source: str
    model: dict | None = None  # sensitivity.json: the analysed model's source and graph fingerprint (if recorded)
    img: int | None = None  # sensitivity.json: the image size the GFLOPs were counted at

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.entries})

    def check_complete(self) -> None:
        """Every layer must have every rate (selection on a partial table would silently skip layers)."""
        for rate in self.rates:
            missing = [layer for layer in self.layers if (layer, rate) not in self.entries]
            if missing:
                raise YoloPruneError(f"{self.source}: incomplete analysis: rate {rate:g} lacks layers {missing} "
                                     f"(resume the analysis, or select from the complete rates only)")


def _parse_output_file(path: Path, rate: float) -> list[Entry]:
    try:
        rows = ast.literal_eval(_NUMPY_SCALAR.sub(r"\1", path.read_text()))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise YoloPruneError(f"{path}: not a sensitivity output file ({exc.__class__.__name__})") from None
    if not isinstance(rows, (list, tuple)):
        raise YoloPruneError(f"{path}: not a sensitivity output file (expected a bracketed list of entries)")
    entries = []
    for i, row in enumerate(rows):
        try:
            layer, (mp, mr, map50, map_, _per_class, _speed, params, gflops) = row
            entries.append(Entry(int(layer), rate, float(map_), float(map50), int(params), float(gflops)))
        except (TypeError, ValueError):
            raise YoloPruneError(f"{path}: entry {i} is not (layer, (mP, mR, mAP50, mAP, [...], (...), params, "
                                 f"gflops)): {str(row)[:80]}") from None
    return entries


def _read_json(js: Path) -> SensitivityTable:
    """Our ``sensitivity.json``; a damaged or foreign file is an error naming it, not a traceback."""
    try:
        data = json.loads(js.read_text())
        entries = {(int(r["layer"]), float(r["rate"])): Entry(int(r["layer"]), float(r["rate"]), float(r["map"]),
                                                              float(r["map50"]), int(r["params"]), float(r["gflops"]))
                   for r in data["results"].values()}
        b = data.get("baseline")
        baseline = Entry(-1, 0.0, float(b["map"]), float(b["map50"]), int(b["params"]), float(b["gflops"])) if b else None
        rates = tuple(sorted(float(r) for r in data["settings"].get("rates", sorted({k[1] for k in entries}))))
        model, img = data.get("model"), data["settings"].get("img")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise YoloPruneError(f"{js}: not a readable sensitivity.json ({type(exc).__name__}: {str(exc)[:80]}); "
                             "re-run the analysis (with --exist-ok) to rewrite it") from None
    return SensitivityTable(entries, rates, baseline, str(js), model, img)


def read_table(directory: str | Path) -> SensitivityTable:
    """Our ``sensitivity.json`` when present (it has the baseline), else the published text files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise YoloPruneError(f"analysis directory not found: {directory}")
    js = directory / "sensitivity.json"
    if js.exists():
        return _read_json(js)
    files = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _OUTPUT.match(p.name)))
    if not files:
        raise YoloPruneError(f"{directory}: no sensitivity.json and no output_<rate>.txt files")
    entries = {}
    for pct, path in files:
        for e in _parse_output_file(path, pct / 100):
            entries[(e.layer, e.rate)] = e
    return SensitivityTable(entries, tuple(pct / 100 for pct, _ in files), None, str(directory))


def check_model_matches(table: SensitivityTable, costs, label: str) -> None:
    """Refuse a model (its ``CostModel``) that is not the analysed one: the recorded graph fingerprint (structure
    and widths) must agree; analyses written before it was recorded are checked by their baseline params."""
    recorded = (table.model or {}).get("graph_fingerprint")
    source = (table.model or {}).get("source") or "an unnamed model"
    mine = costs.graph.fingerprint()
    if recorded and recorded != mine:
        raise YoloPruneError(f"{label} does not match the analysis in {table.source}: it analysed {source} (graph "
                             f"fingerprint {recorded}), {label} has graph fingerprint {mine}; pass the analysed model")
    if not recorded and table.baseline is not None and costs.cost().params != table.baseline.params:
        raise YoloPruneError(f"{label} does not match the analysis in {table.source}: the analysed model has "
                             f"{table.baseline.params:,} params (fused), {label} has {costs.cost().params:,}; pass "
                             f"the analysed model")
