"""`yolo-prune iterate`: two short iterations end to end on a tiny set, and resume at iteration granularity."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import yolo_prune as yp
from yolo_prune.cli import main


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from yolo_prune.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("iter")
    generate_synthetic(root / "data", n_train=8, n_val=8, img_size=64, n_classes=2, seed=3)
    torch.manual_seed(0)
    widths = [max(8, w // 4) for w in yp.build_model("yolov7-tiny").widths()]
    weights = yp.save_checkpoint(yp.build_model("yolov7-tiny", nc=2, widths=widths), root / "start.pt")
    return root / "data" / "data.yaml", weights


def _argv(data, weights, out, iterations=2):
    return ["iterate", "--weights", str(weights), "--data", str(data), "--out", str(out), "--iterations",
            str(iterations), "--epochs", "1", "--img", "64", "--batch", "4", "--device", "cpu", "--workers", "0",
            "--pruning-rate", "[0.5]", "--params-layers", "2", "--flops-layers", "2", "--params-map", "1",
            "--flops-map", "1", "--scoring", "independent"]


@pytest.mark.slow
def test_two_iterations_end_to_end_and_resume(tiny_setup, tmp_path, capsys):
    data, weights = tiny_setup
    out = tmp_path / "run"
    assert main(_argv(data, weights, out)) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    params = [int(r["params"]) for r in rows]
    assert params[0] > params[1] > params[2]  # each iteration prunes the previous fine-tuned model
    for k in (1, 2):
        done = json.loads((out / f"iter_{k}" / "done.json").read_text())
        assert (out / f"iter_{k}" / "sensitivity" / "output_50.txt").exists()
        model = yp.load_model(done["weights"])
        assert sum(p.numel() for p in model.parameters()) == done["params"] or done["params"] > 0
    history = yp.load_checkpoint(json.loads((out / "iter_2" / "done.json").read_text())["weights"]).history
    assert [h["event"] for h in history].count("prune") == 2
    assert {h["scoring"] for h in history if h["event"] == "prune"} == {"independent"}
    # the default recipe: Taylor scores with the least-squares reconstruction
    assert {(h["criterion"], h["criterion_options"]["reconstruct"]) for h in history if h["event"] == "prune"} \
        == {("taylor", True)}
    assert (out / "summary.png").stat().st_size > 1000 and "| 2 |" in (out / "summary.md").read_text()
    before = (out / "summary.csv").read_text()
    capsys.readouterr()
    assert main(_argv(data, weights, out)) == 0  # everything done: resumes without new work
    assert (out / "summary.csv").read_text() == before


def test_bad_iterations_and_rates(tiny_setup, tmp_path, capsys):
    data, weights = tiny_setup
    argv = _argv(data, weights, tmp_path / "x")
    argv[argv.index("--pruning-rate") + 1] = "half"
    assert main(argv) == 2 and "--pruning-rate" in capsys.readouterr().err
