"""Li et al.: `yolo-prune sweep` (parameters vs accuracy over filter percentages, retrained) and prune-then-retrain
vs layer-by-layer prune-retrain, on the digits default."""
from __future__ import annotations

import json

import pytest

from yolo_prune.checkpoint import load_checkpoint
from yolo_prune.cli import main
from yolo_prune.errors import ConfigError
from yolo_prune.pipeline.sweep import SweepSettings


@pytest.mark.slow
def test_sweep_once_on_digits(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--arch", "scnnb", "--width", "0.25", "--img", "16", "--epochs", "2", "--percents",
            "[0, 0.5, 0.75]", "--retrain-epochs", "1", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| filters pruned | parameters | of base |" in text and "| 50% |" in text
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["percent"] for r in rows] == [0.0, 0.5, 0.75]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all(0.0 <= r["top1_pruned"] <= 1.0 and r["top1_retrained"] > 0.5 for r in rows)
    assert rows[2]["top1_retrained"] >= rows[2]["top1_pruned"]  # retraining recovers
    assert (out / "sweep.png").stat().st_size > 10_000 and len((out / "sweep.csv").read_text().splitlines()) == 4
    pruned = load_checkpoint(out / "p50.pt")
    assert pruned.history[-1]["event"] == "prune" and [m.out_channels for m in pruned.model.conv_modules()] == [4, 8]
    stamp = (out / "sweep.json").stat().st_mtime_ns
    assert main(argv) == 0 and (out / "sweep.json").stat().st_mtime_ns == stamp  # finished: nothing re-run
    assert main(argv[:-4] + ["--retrain", "layerwise", "--out", str(out)]) == 2
    assert "other settings (retrain)" in capsys.readouterr().err


@pytest.mark.slow
def test_layerwise_prune_retrain_prunes_one_layer_at_a_time(tmp_path):
    from yolo_prune.pipeline.sweep import run_sweep

    s = SweepSettings(arch="scnnb", width=0.25, img_size=16, epochs=1, percents=[0.5], retrain="layerwise",
                      retrain_epochs=2, out=str(tmp_path / "lw"), device="cpu", progress=False)
    (row,) = run_sweep(s)
    first = load_checkpoint(tmp_path / "lw" / "p50_layer0.pt")
    second = load_checkpoint(tmp_path / "lw" / "p50_layer1.pt")
    assert [m.out_channels for m in first.model.conv_modules()] == [4, 16]  # layer 0 alone first
    assert [m.out_channels for m in second.model.conv_modules()] == [4, 8]
    events = [h["event"] for h in second.history]
    assert events == ["train", "prune", "train", "prune"]  # base, layer 0, its retraining, layer 1
    assert row["weights"].endswith("p50_layer1/weights/last.pt")


@pytest.mark.parametrize("kwargs,match", [
    (dict(percents=[0, 1.0]), "expected fractions in"),
    (dict(retrain="twice"), "'once' or 'layerwise'"),
    (dict(arch=None), "give --weights"),
    (dict(retrain_epochs=0), "--retrain-epochs must be"),
])
def test_sweep_settings_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SweepSettings(**kwargs)


def test_sweep_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--arch", "scnnb", "--weights", "x.pt"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert main(["sweep", "--percents", "[0.5, 2]"]) == 2
    assert "--percents: 2 is out of range" in capsys.readouterr().err
    assert main(["sweep", "--percents", "[0.5, 1.0]"]) == 2  # 1.0 would remove every filter: [0, 1) at the flag
    assert "--percents: 1.0 is out of range; values must lie in [0, 1)" in capsys.readouterr().err
