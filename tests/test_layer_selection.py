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


def write_analysis(directory, cfg="yolov7-tiny", nc=3, img=256, record_model=True):
    """A sensitivity.json as the analysis writes it, with the exact fused costs of ``cfg`` (synthetic mAPs)."""
    import random

    from yolo_prune.analysis.store import ResultStore
    from yolo_prune.models import build_model
    from yolo_prune.prune.cost import fused_cost_model

    costs = fused_cost_model(build_model(cfg, nc=nc), img)
    rng = random.Random(0)
    rates = [0.25, 0.5, 0.75]
    info = {"source": f"{cfg}.pt", "graph_fingerprint": costs.graph.fingerprint()} if record_model else None
    store = ResultStore.open(directory, {"source": f"{cfg}.pt", "img": img, "rates": rates}, model=info)

    def metrics(map_, cost):
        return {"mp": 0.5, "mr": 0.5, "map50": 0.5, "map": map_, "per_class": [map_] * nc,
                "speed": [1.0, 0.5, 1.5, img, img, 4], "params": cost.params, "gflops": round(cost.gflops, 4)}

    store.baseline = metrics(0.3, costs.cost())
    for layer in costs.graph.prunable:
        sens = rng.random() ** 3
        for r in rates:
            store.add(layer, r, metrics(0.3 - sens * r * 0.2 + rng.gauss(0, 0.003), costs.cost([(layer, r)])))
    store.save()
    return directory


def test_budget_of_exactly_half_lands_under_it(tmp_path, capsys):
    """The reported failure: --target-gflops 1.043 on a 2.086 GFLOPs yolov7-tiny."""
    d = write_analysis(tmp_path / "sens")
    argv = ["layer-selection", "--output", str(d), "--target-gflops", "1.043", "--cfg", "yolov7-tiny", "--nc", "3"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.99 * 1.043 <= out["exact"] <= 1.043 and out["predicted"] < out["exact"]
    assert out["predicted_map"] <= 0.3
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"predicted gflops {out['predicted']:g}, exact {out['exact']:g}" in text and "% of the budget" in text
    assert main(argv[:4] + ["0.1", "--cfg", "yolov7-tiny", "--nc", "3"]) == 2
    assert "out of reach" in capsys.readouterr().err


def test_model_that_is_not_the_analysed_one_is_refused(tmp_path, capsys):
    d = write_analysis(tmp_path / "sens")
    assert main(["layer-selection", "--output", str(d), "--target-gflops", "1.5", "--cfg", "yolov7", "--nc", "3"]) == 2
    err = capsys.readouterr().err
    assert "--cfg yolov7 does not match the analysis" in err and "yolov7-tiny.pt" in err and "Traceback" not in err
    assert main(["layer-selection", "--output", str(d), "--target-gflops", "1.5", "--cfg", "yolov7-tiny"]) == 2
    assert "graph fingerprint" in capsys.readouterr().err  # 80 classes: another head, another model


def test_analysis_without_recorded_model_is_checked_by_its_baseline(tmp_path, capsys):
    d = write_analysis(tmp_path / "sens", record_model=False)
    data = json.loads((d / "sensitivity.json").read_text())
    assert data["model"] is None  # as files written before the fingerprint was recorded
    del data["model"]
    (d / "sensitivity.json").write_text(json.dumps(data))
    assert main(["layer-selection", "--output", str(d), "--target-gflops", "1.5", "--cfg", "yolov7", "--nc", "3"]) == 2
    assert "params (fused)" in capsys.readouterr().err
    assert main(["layer-selection", "--output", str(d), "--target-gflops", "1.5", "--cfg", "yolov7-tiny", "--nc", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] <= 1.5


def test_iterate_budget_step_lands_under_its_exact_target(tmp_path):
    """`iterate --target-gflops` selects each step with the same exact-cost search (geometric steps)."""
    from yolo_prune.models import build_model
    from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings
    from yolo_prune.pipeline.iterate import IterateSettings, SelectionSettings, _select
    from yolo_prune.prune.cost import fused_cost_model

    d = write_analysis(tmp_path / "sens")
    model = build_model("yolov7-tiny", nc=3)
    settings = IterateSettings("start.pt", str(tmp_path / "run"), 2, DataSettings("data.yaml", img_size=256),
                               AnalysisSettings([0.25, 0.5, 0.75]), SelectionSettings(target_gflops=1.043))
    pairs = _select(d, settings, 0, model)
    step = (2.08633856 * 1.043) ** 0.5  # first of two geometric steps to 1.043
    assert 0.99 * step <= fused_cost_model(model, 256).cost(pairs).gflops <= step
