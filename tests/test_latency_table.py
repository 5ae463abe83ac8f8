"""Latency tables: the file format (runtime, version, machine, settings, noise, per-layer widths), real ONNX Runtime
measurements of a small Darknet model, resuming, prediction, and selection under a latency budget."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from yolo_prune.analysis.budget import select_for_latency
from yolo_prune.analysis.latency import FORMAT, LatencyTable, OpTiming, read_latency_table
from yolo_prune.analysis.table import Entry, SensitivityTable
from yolo_prune.bench import latency_table as lt
from yolo_prune.cli import main
from yolo_prune.errors import ConfigError, YoloPruneError
from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model

CFG = Path(__file__).resolve().parent / "data" / "darknet" / "yolov3-tiny.cfg"
SETTINGS = lt.TableSettings(img_size=(64, 64), threads=1, warmup=1, repeats=3, rates=(0.5,))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real table of yolov3-tiny at 64 px (rate 0.5 only), built through the CLI."""
    out = tmp_path_factory.mktemp("lat") / "table.json"
    code = main(["latency-table", "--cfg", str(CFG), "--img-size", "64", "--threads", "1", "--warmup", "1",
                 "--repeats", "3", "--rates", "[0.5]", "--output", str(out)])
    assert code == 0
    return out


def test_file_records_runtime_machine_settings_and_noise(measured):
    data = json.loads(measured.read_text())
    import onnxruntime

    assert data["format"] == FORMAT and data["runtime"] == "onnxruntime"
    assert data["runtime_version"] == onnxruntime.__version__ and data["provider"] == "CPUExecutionProvider"
    assert {"platform", "processor", "cpu_count"} <= set(data["machine"])
    assert data["settings"] == {"img_size": [64, 64], "batch": 1, "threads": 1, "warmup": 1, "repeats": 3,
                                "rates": [0.5], "round_to": None, "statistic": "min", "timing": "profile"}
    assert {"median_rel_spread", "max_rel_spread", "base_rel_spread"} == set(data["noise"])
    base = data["base"]
    assert base["n"] >= 10 and base["wall_min_ms"] <= base["wall_median_ms"] and 0 < base["ms"] <= base["wall_min_ms"]
    assert [p["rate"] for p in data["calibration"]["points"]] == [0.0, 0.5]


def test_every_conv_measured_at_each_candidate_width(measured):
    table = read_latency_table(measured)
    model = build_model(CFG)
    graph = derive_graph(model)
    assert table.model["fingerprint"] == graph.fingerprint()
    assert len(table.ops) == 13  # 11 body convs + 2 head convs
    first = table.ops[0]
    assert (first.name, first.ins, first.outs, first.in_hw, first.act) == ("model.0.conv", (3,), (8, 16), (64, 64),
                                                                            "LeakyReLU")
    second = next(op for op in table.ops if op.name == "model.2.conv")
    assert second.ins == (8, 16) and second.outs == (16, 32) and len(second.ms) == 2 and len(second.ms[0]) == 2
    assert all(v > 0 for op in table.ops for row in op.ms for v in row)
    head = table.ops[-1]
    assert head.node == graph.nconv + 1 and head.outs == (255,)
    layers = {row["layer"]: row for row in table.layers}
    assert sorted(layers) == graph.prunable and set(layers[0]["widths"]) == {"16", "8"}
    assert layers[0]["widths"]["8"]["model_ms"] == pytest.approx(table.predict([(0, 0.5)]))


def test_prediction_is_exact_at_measured_points(measured):
    """Every layer at 0.5 puts every conv on its smallest measured (in, out) point: no interpolation."""
    table = read_latency_table(measured)
    pairs = [(i, 0.5) for i in range(11)]
    conv, volume = table.terms(pairs)
    assert conv == pytest.approx(sum(op.ms[0][0] for op in table.ops))
    c = table.calibration
    assert table.predict(pairs) == pytest.approx(c["conv_scale"] * conv + c["volume_ms"] * volume + c["const_ms"])
    assert table.predict(pairs) < table.predict([])


class _FlatTiming:
    """Whole-model timings that noise made equal for every pruned model."""

    wall_ms = [5.0, 5.0, 5.0]

    def value(self, _timing, _statistic):
        return 5.0


def test_calibration_keeps_the_measured_conv_times_when_noise_flattens_the_models(measured):
    table = read_latency_table(measured)
    pairs = [(i, 0.5) for i in range(11)]
    fit = lt.calibrate(table, [(0.0, [], _FlatTiming()), (0.5, pairs, _FlatTiming())])
    assert fit["conv_scale"] == 1.0 and "noise" in fit["note"]
    table.calibration = fit
    assert table.predict(pairs) < table.predict([])  # pruning is never priced at zero


def test_interrupted_table_resumes(tmp_path, monkeypatch):
    """Finished convolutions survive an interruption; the rerun measures only the rest."""
    model = build_model(CFG).eval()
    out = tmp_path / "t.json"
    calls: list[str] = []
    real = lt.measure_op

    def counting(graph, op, s, runtime=None):
        calls.append(op.name)
        if len(calls) == 4 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").touch()
            raise KeyboardInterrupt
        return real(graph, op, s, runtime)

    monkeypatch.setattr(lt, "measure_op", counting)
    settings = lt.TableSettings(img_size=(64, 64), threads=1, warmup=0, repeats=3, rates=(0.5,))
    monkeypatch.setattr(lt, "measure_models", lambda models, s, runtime=None: [_fake_stats() for _ in models])
    with pytest.raises(KeyboardInterrupt):
        lt.build_latency_table(model, settings, out)
    assert len(json.loads((tmp_path / "t.json.partial.json").read_text())["ops"]) == 3
    calls.clear()
    table = lt.build_latency_table(model, settings, out)
    assert len(calls) == 10 and len(table.ops) == 13


def _fake_stats():
    return lt.Timing((2.0, 2.5, 3.0), ({"a": 1.0}, {"a": 1.5}, {"a": 1.2}))


def test_bad_tables_are_named(tmp_path, measured):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not a latency table"):
        read_latency_table(bad)
    data = json.loads(measured.read_text())
    data["ops"][1]["ms"] = data["ops"][1]["ms"][:1]
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"op model.2.conv: grid of 1 rows"):
        read_latency_table(bad)


# ------------------------------------------------------------------------------------ selection on a hand-made table
def _hand_table() -> LatencyTable:
    """Three chained 1x1 convs (0 -> 1 -> 2) at 8 -> 16 -> 16 -> 16 channels; conv time = ci x co / 100 ms."""
    nodes = [{"index": i, "name": f"model.{i}", "out": 16, "parts": 1, "prunable": True} for i in range(3)]
    grid = (4, 8, 12, 16)

    def op(i: int, producer: int | None) -> OpTiming:
        ins = (8,) if producer is None else grid
        ms = tuple(tuple(ci * co / 100 for co in grid) for ci in ins)
        return OpTiming(f"model.{i}.conv", i, ((producer, 8 if producer is None else 16, 0, 1),), 1, 1, 1, (8, 8),
                        "Identity", ins, grid, ms, (), (8, 8))
    return LatencyTable("onnxruntime", "x", "CPU", {}, {"round_to": None, "statistic": "min"}, {}, {}, 1.0, nodes,
                        [], [op(0, None), op(1, 0), op(2, 1)],
                        {"conv_scale": 1.0, "volume_ms": 0.0, "const_ms": 1.0})


def _sensitivity(losses: dict[tuple[int, float], float]) -> SensitivityTable:
    entries = {k: Entry(k[0], k[1], 0.5 - v, 0.6, 0, 0.0) for k, v in losses.items()}
    return SensitivityTable(entries, (0.25, 0.5, 0.75), Entry(-1, 0.0, 0.5, 0.6, 0, 0.0), "hand-made")


def test_prediction_follows_the_chain():
    table = _hand_table()
    assert table.predict([]) == pytest.approx(1 + (8 * 16 + 16 * 16 + 16 * 16) / 100)
    # layer 1 at 0.5 keeps 8 filters: its own conv 16 -> 8 and its consumer 8 -> 16
    assert table.predict([(1, 0.5)]) == pytest.approx(1 + (8 * 16 + 16 * 8 + 8 * 16) / 100)


def test_latency_budget_is_optimal_against_brute_force():
    """The selection meets the latency target with the least summed loss among every combination."""
    table = _hand_table()
    losses = {(layer, r): (layer + 1) * r * 0.01 * (1 + r) for layer in range(3) for r in (0.25, 0.5, 0.75)}
    sens = _sensitivity(losses)
    for target in (6.0, 5.0, 4.0, 3.5):
        choice = select_for_latency(sens, table, 0.5, target)
        assert choice.exact_cost <= target and choice.exact_cost == pytest.approx(table.predict(choice.pairs))
        best = math.inf
        for combo in itertools.product([None, 0.25, 0.5, 0.75], repeat=3):
            pairs = [(i, r) for i, r in enumerate(combo) if r is not None]
            if table.predict(pairs) <= target:
                best = min(best, sum(losses[p] for p in pairs))
        assert sum(losses[p] for p in choice.pairs) == pytest.approx(best, abs=1e-9)
    with pytest.raises(YoloPruneError, match="out of reach"):
        select_for_latency(sens, table, 0.5, 1.5)


def test_layer_selection_latency_mode(measured, tmp_path, capsys):
    """`layer-selection --target-latency` on published-format analysis files: predicted and measured latency."""
    table = read_latency_table(measured)
    out = tmp_path / "sens"
    out.mkdir()
    lines = [f"({i}, (0.5, 0.5, 0.6, {0.4 - 0.01 * i}, [0.4], (1.0, 1.0, 2.0, 64, 64, 1), 100, 1.0))," for i in range(11)]
    (out / "output_50.txt").write_text("[\n" + "\n".join(lines) + "\n]\n")
    target = 0.85 * table.predict([])
    code = main(["layer-selection", "--output", str(out), "--params", "1000", "--flops", "5",
                 "--target-latency", f"{target:.4f}", "--latency-table", str(measured), "--cfg", str(CFG)])
    text = capsys.readouterr().out
    assert code == 0 and "measured" in text and "predicted" in text
    assert main(["layer-selection", "--output", str(out), "--params", "1000", "--flops", "5",
                 "--target-latency", "1"]) == 2
