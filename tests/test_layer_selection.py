"""`yolo-prune layer-selection`: published scoring on a hand-made table, budgets, plots, bad directories."""
from __future__ import annotations

import json

import pytest

from yolo_prune.cli import main

BASE_PARAMS, BASE_GFLOPS = 1000, 10.0
# layer -> rate -> (mAP, params after, GFLOPs after)
TABLE = {
    0: {0.25: (0.50, 990, 9.0), 0.5: (0.49, 980, 8.0)},
    1: {0.25: (0.48, 900, 9.9), 0.5: (0.20, 800, 9.8)},
    2: {0.25: (0.50, 995, 9.5), 0.5: (0.50, 990, 9.0)},
}


def write_published(directory, table=TABLE):
    directory.mkdir(parents=True, exist_ok=True)
    for rate in (0.25, 0.5):
        lines = ["["]
        for layer, rates in table.items():
            if rate in rates:
                m, p, g = rates[rate]
                lines.append(f"({layer}, (0.5, 0.5, 0.6, {m}, [{m}], (1.0, 0.5, 1.5, 320, 320, 8), {p}, {g})),")
        lines.append("]")
        (directory / f"output_{int(rate * 100)}.txt").write_text("\n".join(lines))
    return directory


def test_published_scoring_known_answer(tmp_path, capsys):
    d = write_published(tmp_path / "sens")
    # params score = removed x mAP: layer 1 @0.5 -> 200*0.2=40, @0.25 -> 100*0.48=48 (best); layer 0 @0.5: 9.8
    # flops score: layer 0 @0.5 -> 2*0.49=0.98, layer 2 @0.5 -> 1*0.5=0.5, layer 1 @0.25 -> 0.048
    assert main(["layer-selection", "--output", str(d), "--params", str(BASE_PARAMS), "--flops", str(BASE_GFLOPS),
                 "--params-layers", "1", "--flops-layers", "2", "--params-map", "1", "--flops-map", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pruning_params"] == [[0, 0.5], [1, 0.25], [2, 0.5]]
    objectives = {p["layer"]: p["objectives"] for p in out["picks"]}
    assert objectives == {0: ["flops"], 1: ["params"], 2: ["flops"]}


def test_same_layer_never_twice(tmp_path, capsys):
    d = write_published(tmp_path / "sens")
    # params with E=0 picks layer 1 at 0.5 (removes most); flops with E=0 picks layer 0 at 0.5 and layer 1...
    assert main(["layer-selection", "--output", str(d), "--params", "1000", "--flops", "10", "--params-layers", "3",
                 "--flops-layers", "3", "--params-map", "0", "--flops-map", "0", "--json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pruning_params"]
    assert len({layer for layer, _ in pairs}) == len(pairs) == 3


def test_text_output_is_ready_for_pruning_params(tmp_path, capsys):
    d = write_published(tmp_path / "sens")
    assert main(["layer-selection", "--output", str(d), "--params", "1000", "--flops", "10", "--params-map", "1",
                 "--flops-map", "1", "--params-layers", "5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    from yolo_prune.prune import parse_pruning_params
    assert parse_pruning_params(last) == [(0, 0.5), (1, 0.25), (2, 0.5)]


def test_budget_mode_meets_target(tmp_path, capsys):
    d = write_published(tmp_path / "sens")
    assert main(["layer-selection", "--output", str(d), "--params", "1000", "--flops", "10",
                 "--target-gflops", "8.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predicted"] <= 8.1 and len({l for l, _ in out["pruning_params"]}) == len(out["pruning_params"])
    # layers 0 @0.25 and 2 @0.5 save 2 GFLOPs at no mAP loss: cheaper than layer 0 @0.5 (0.01 loss)
    assert out["pruning_params"] == [[0, 0.25], [2, 0.5]]


def test_save_writes_diagrams(tmp_path):
    d = write_published(tmp_path / "sens")
    out = tmp_path / "graphs"
    assert main(["layer-selection", "--output", str(d), "--params", "1000", "--flops", "10", "--save",
                 "--save-dir", str(out)]) == 0
    for stem in ("sa_parameters", "sa_flops", "sa_map"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000


def test_incomplete_analysis_names_missing_layers(tmp_path, capsys):
    table = {k: dict(v) for k, v in TABLE.items()}
    del table[2][0.5]
    d = write_published(tmp_path / "sens", table)
    assert main(["layer-selection", "--output", str(d), "--params", "1000", "--flops", "10"]) == 2
    assert "rate 0.5 lacks layers [2]" in capsys.readouterr().err


def test_missing_baseline_and_directory(tmp_path, capsys):
    d = write_published(tmp_path / "sens")
    assert main(["layer-selection", "--output", str(d), "--json"]) == 0  # published defaults, with a warning
    assert "using --params 3.69079e+07 --flops 104.514" in capsys.readouterr().err
    assert main(["layer-selection", "--output", str(tmp_path / "nope"), "--params", "1", "--flops", "1"]) == 2
    assert f"--output {tmp_path / 'nope'}: directory not found" in capsys.readouterr().err
