"""Pruning API and `yolo-prune prune`: published rounding, criteria, global rates, bad input, outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import yolo_prune as yp
from yolo_prune.cli import main
from yolo_prune.errors import PruningError
from yolo_prune.models.complexity import count_params
from yolo_prune.prune import kept_count, parse_pruning_params, prune

PUBLISHED_EXAMPLE = ("[(8, 0.5), (18, 0.5), (28, 0.75), (29, 0.75), (32, 0.75), (33, 0.75), (41, 0.5), "
                     "(43, 0.5), (45, 0.5), (46, 0.5)]")


def test_published_example_parameter_count(yolov7_model):
    result = prune(yolov7_model, PUBLISHED_EXAMPLE, 0, summarize=False)
    assert count_params(result.model) == 28_852_698
    assert count_params(yolov7_model) == 37_622_682  # the input is copied, not mutated


@pytest.mark.parametrize("name", ["yolov7", "yolov7-tiny"])
def test_global_rate_prunes_every_layer(name, yolov7_model, tiny_model):
    model = yolov7_model if name == "yolov7" else tiny_model
    result = prune(model, 0.5, "l1", summarize=False)
    assert all(len(lp.kept) == lp.before // 2 for lp in result.plan.layers)
    assert len(result.plan.layers) == len(model.conv_modules())
    with torch.no_grad():
        assert result.model(torch.rand(1, 3, 64, 64))[0].shape[1] == 252


@pytest.mark.parametrize("filters,rate,round_to,kept", [
    (64, 0.5, None, 32), (64, 0.3, None, 44), (255, 0.1, None, 229), (32, 0.99, None, 2), (3, 0.9, None, 2), (2, 0.9, None, 1),
    (64, 0.3, 8, 48), (64, 0.9, 8, 8), (6, 0.5, 8, 6), (256, 0.75, 8, 64),
])
def test_kept_count(filters, rate, round_to, kept):
    assert kept_count(filters, rate, round_to) == kept


def test_criteria_choose_the_right_filters(tiny_model):
    w = tiny_model.conv_modules()[0].conv.weight.detach().flatten(1)
    norms = w.norm(dim=1)
    keep_l2 = prune(tiny_model, [(0, 0.5)], "l2", summarize=False).plan.layers[0].kept
    assert sorted(keep_l2) == sorted(norms.argsort(descending=True)[:16].tolist())
    keep_largest = prune(tiny_model, [(0, 0.5)], 1, summarize=False).plan.layers[0].kept
    assert set(keep_largest) == set(range(32)) - set(keep_l2)
    gamma = tiny_model.conv_modules()[0].bn.weight.detach().abs()
    keep_bn = prune(tiny_model, [(0, 0.5)], "bn", summarize=False).plan.layers[0].kept
    assert min(gamma[list(keep_bn)]) >= max(gamma[sorted(set(range(32)) - set(keep_bn))])
    r1 = prune(tiny_model, [(0, 0.5)], "random", seed=1, summarize=False).plan.layers[0].kept
    r1b = prune(tiny_model, [(0, 0.5)], 6, seed=1, summarize=False).plan.layers[0].kept
    r2 = prune(tiny_model, [(0, 0.5)], "random", seed=2, summarize=False).plan.layers[0].kept
    assert r1 == r1b and r1 != r2 and list(r1) == sorted(r1)


def test_ties_are_broken_as_the_published_pruner_breaks_them(tiny_model):
    """Equal scores (common in fp16 checkpoints) fall as the published code's ``torch.argsort`` orders them."""
    import copy

    model = copy.deepcopy(tiny_model)
    model.conv_modules()[0].conv.weight.data.fill_(1.0)  # every filter has the same norm
    kept = prune(model, [(0, 0.25)], "l2", summarize=False).plan.layers[0].kept
    assert kept == tuple(sorted(torch.argsort(torch.full((32,), 3.0))[8:].tolist()))
    assert kept != tuple(range(8, 32))  # not simply by index
    assert prune(model, [(0, 0.25)], "l2", summarize=False).plan.layers[0].kept == kept


@pytest.mark.parametrize("params,match", [
    ("[(8, 0.5)", "cannot parse"),
    ("[(8, 1.5)]", r"rate must be a number in \(0, 1\)"),
    ("0", r"rate must be a number in \(0, 1\)"),
    ("[(99, 0.5)]", "layer 99 is out of range"),
    ("[(55, 0.5)]", "layer 55 \\(model.77.m.0\\) cannot be pruned: head output conv"),
    ("[(3, 0.5), (3, 0.2)]", "listed more than once"),
    ("__import__('os').system('true')", "cannot parse"),
])
def test_bad_pruning_params(tiny_model, params, match):
    with pytest.raises(PruningError, match=match):
        prune(tiny_model, params, summarize=False)


def test_unknown_criterion(tiny_model):
    with pytest.raises(PruningError, match="unknown criterion 'foo'; known: l2 \\(0\\)"):
        prune(tiny_model, 0.5, "foo", summarize=False)


def test_bn_criterion_on_fused_model(tiny_model):
    import copy

    fused = yp.fuse(copy.deepcopy(tiny_model))
    with pytest.raises(PruningError, match="needs BatchNorm scales"):
        prune(fused, [(0, 0.5)], "bn", summarize=False)


def test_parse_pruning_params_forms():
    assert parse_pruning_params("0.3") == 0.3
    assert parse_pruning_params("[(8, 0.5), [18, 0.25]]") == [(8, 0.5), (18, 0.25)]


def test_cli_prune_writes_loadable_checkpoint(tmp_path, official_tiny_path, capsys):
    out = tmp_path / "pruned.pt"
    assert main(["prune", "--weights", str(official_tiny_path), "--pruning-params", "[(0, 0.5), (23, 0.25)]",
                 "--criterion", "l1", "--output", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layers"][0]["filters_after"] == 16 and summary["params_after"] < summary["params_before"]
    loaded = yp.load_checkpoint(out)
    assert loaded.model.widths()[0] == 16 and loaded.model.widths()[23] == 192
    assert loaded.history[-1]["event"] == "prune" and loaded.history[-1]["criterion"] == "l1"
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 3, 64, 64))[0].shape == (1, 252, 85)
    # a pruned checkpoint prunes again (graph re-derived from the pruned widths)
    out2 = tmp_path / "pruned2.pt"
    assert main(["prune", "--weights", str(out), "--pruning-params", "0.25", "--output", str(out2)]) == 0
    assert len(yp.load_checkpoint(out2).history) == 2


@pytest.mark.parametrize("args,message", [
    (["--cfg", "yolov7-tiny", "--pruning-params", "[(8, 0.5)"], "cannot parse"),
    (["--cfg", "yolov7-tiny", "--pruning-params", "[(57, 0.5)]"], "head output conv"),
    (["--cfg", "yolov7-tiny", "--pruning-params", "1.2"], "rate must be"),
    (["--cfg", "yolov7-tiny", "--pruning-params", "0.5", "--criterion", "9"], "unknown criterion"),
    (["--cfg", "yolov7", "--pruning-params", "0.5", "--pruning-config", "pruning_config/yolov7-tiny_pruning_cfg.yaml"],
     "does not match the model"),
])
def test_cli_bad_input_exit_2_no_output(tmp_path, args, message):
    out = tmp_path / "out.pt"
    r = subprocess.run([sys.executable, "-m", "yolo_prune", "prune", *args, "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_not_a_model_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    r = subprocess.run([sys.executable, "-m", "yolo_prune", "prune", "--weights", str(bad), "--pruning-params",
                        "0.5", "--output", str(tmp_path / "o.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "no YOLOv7 model" in r.stderr and not (tmp_path / "o.pt").exists()
