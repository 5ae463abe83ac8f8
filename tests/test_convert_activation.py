"""Activation conversion (SiLU -> LeakyReLU / ReLU): modules and cfg both change, checkpoints rebuild the converted
model with identical outputs, pruned widths stay, SPPCSPC/DownC are written out exactly, the CLI refuses bad input."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.cli import main
from yolo_prune.graph import derive_graph
from yolo_prune.models import Model, build_model
from yolo_prune.models.activation import (DPU_LEAKY_SLOPE, ConversionError, convert_activations, parse_slope,
                                          resolve_target)
from yolo_prune.models.fuse import fuse
from yolo_prune.prune import prune

IMG = 64

# Every block whose activation the conversion must handle, at width_multiple 0.5 (so rows written out for
# SPPCSPC/DownC must carry pre-multiplier widths), with absolute and relative references across them.
SMALL_CFG = {
    "nc": 2, "depth_multiple": 1.0, "width_multiple": 0.5,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
    "backbone": [
        [-1, 1, "Conv", [32, 3, 2]],                                    # 0  /2
        [-1, 1, "DownC", [64]],                                         # 1  /4
        [-1, 1, "Conv", [64, 3, 2, None, 1, "nn.LeakyReLU(0.1)"]],      # 2  /8
        [-1, 1, "Conv", [128, 3, 2]],                                   # 3  /16
    ],
    "head": [
        [-1, 1, "SPPCSPC", [64]],                                       # 4
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],                   # 5
        [[-1, 2], 1, "Concat", [1]],                                    # 6
        [-1, 1, "RepConv", [64, 3, 1]],                                 # 7  /8
        [4, 1, "RepConv", [64, 3, 1]],                                  # 8  /16
        [[7, 8], 1, "IDetect", ["nc", "anchors"]],                      # 9
    ],
}


def acts(model: nn.Module) -> list[nn.Module]:
    """Activation modules of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, (nn.SiLU, nn.LeakyReLU, nn.ReLU, nn.Hardswish))]


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


def reloaded(model: Model, path: Path, history: list | None = None) -> Model:
    save_checkpoint(model, path, history=history)
    return load_checkpoint(path).model


def small_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    model = Model(SMALL_CFG).eval()
    for m in model.modules():  # non-trivial BN statistics, so BN folding and re-ordering mistakes show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


# ------------------------------------------------------------------------------------------- library
def test_every_silu_of_yolov7_becomes_leakyrelu_and_reloads_identically(yolov7_model, tmp_path):
    model = copy.deepcopy(yolov7_model)
    widths, graph = model.widths(), derive_graph(model)
    report = convert_activations(model)
    assert report.converted == {"SiLU": len(model.conv_modules())} == {"SiLU": 89}
    assert report.unchanged == {} and report.target == "nn.LeakyReLU(0.1)"
    assert report.expanded == [{"layer": 51, "module": "SPPCSPC", "rows": [51, 62]}]
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert {type(a) for a in acts(model)} == {nn.LeakyReLU} and {a.negative_slope for a in acts(model)} == {0.1}
    # conv-layer indexing and channel counts are what pruning configs refer to: unchanged
    assert model.widths() == widths and derive_graph(model).entries() == graph.entries()
    loaded = reloaded(model, tmp_path / "leaky.pt")
    assert [(type(a), a.negative_slope) for a in acts(loaded)] == [(type(a), a.negative_slope) for a in acts(model)]
    x = torch.rand(1, 3, IMG, IMG)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)


def test_dpu_slope():
    assert parse_slope("dpu") == parse_slope("DPU") == DPU_LEAKY_SLOPE == 26 / 256 == 0.1015625
    assert parse_slope("26/256") == 0.1015625 and parse_slope("0.2") == 0.2 and parse_slope(0.1) == 0.1
    assert str(resolve_target("leakyrelu", "dpu")) == "nn.LeakyReLU(0.1015625)"
    assert str(resolve_target("relu")) == "nn.ReLU()"
    model = small_model()
    convert_activations(model, "leakyrelu", "dpu")
    assert {a.negative_slope for a in acts(model)} == {26 / 256}


@pytest.mark.parametrize("to,slope,message", [
    ("leakyrelu", "0", "a number in"), ("leakyrelu", "1", "a number in"), ("leakyrelu", "-0.1", "a number in"),
    ("leakyrelu", "nan", "a number in"), ("leakyrelu", "abc", "a number in"), ("leakyrelu", "1/0", "a number in"),
    ("relu", "0.1", "leakyrelu only"), ("gelu", None, "unknown activation target"),
])
def test_bad_targets_are_refused_before_the_model_changes(to, slope, message):
    model = small_model()
    cfg, before = copy.deepcopy(model.yaml), [type(a) for a in acts(model)]
    with pytest.raises(ConversionError, match=message):
        convert_activations(model, to, slope)
    with pytest.raises(ConversionError, match="cannot convert from 'gelu'"):
        convert_activations(model, "relu", sources=["silu", "gelu"])
    assert model.yaml == cfg and [type(a) for a in acts(model)] == before


def test_written_out_blocks_compute_the_same_as_swapping_modules(tmp_path):
    """SPPCSPC and DownC become plain rows: same result as replacing the activation modules where they are."""
    model = small_model()
    swapped = copy.deepcopy(model)
    for m in swapped.modules():
        if hasattr(m, "act") and isinstance(m.act, nn.SiLU):
            m.act = nn.ReLU()
    report = convert_activations(model, "relu")
    assert report.converted == {"SiLU": 14} and report.unchanged == {"LeakyReLU(0.1)": 1}  # 1 + 3 (DownC) + 1 + 7 + 2
    assert [(e["module"], e["rows"]) for e in report.expanded] == [("DownC", [1, 5]), ("SPPCSPC", [8, 19])]
    assert report.layers == [0, 1, 3, 4, 7, 8]
    x = torch.rand(2, 3, IMG, IMG)
    torch.testing.assert_close(outputs(model, x), outputs(swapped, x), rtol=0, atol=0)
    loaded = reloaded(model, tmp_path / "relu.pt")
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)
    assert sum(isinstance(a, nn.ReLU) for a in acts(loaded)) == 14
    # the rewritten cfg still builds the unpruned widths under width_multiple 0.5 (no width list needed)
    assert Model(model.yaml).widths() == Model(SMALL_CFG).widths() == model.widths()


def test_fused_model_converts_and_reloads(tmp_path):
    model = fuse(small_model(1), conv_bn=True, repconv=True)
    convert_activations(model, "leakyrelu", "dpu")
    loaded = reloaded(model, tmp_path / "fused.pt")
    x = torch.rand(1, 3, IMG, IMG)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)
    assert {a.negative_slope for a in acts(loaded)} == {DPU_LEAKY_SLOPE}


def test_pruned_tiny_keeps_its_channel_counts(tiny_model, tmp_path):
    pruned = prune(tiny_model, 0.3, "l1", summarize=False).model
    widths, channels = pruned.widths(), pruned.layer_channels()
    assert widths != tiny_model.widths()
    report = convert_activations(pruned, "leakyrelu", "dpu")
    assert report.converted == {"LeakyReLU(0.1)": 55} and report.expanded == []  # tiny's SPP is already rows
    assert pruned.widths() == widths and pruned.layer_channels() == channels
    loaded = reloaded(pruned, tmp_path / "pruned-dpu.pt")
    assert loaded.widths() == widths and {a.negative_slope for a in acts(loaded)} == {DPU_LEAKY_SLOPE}
    x = torch.rand(1, 3, IMG, IMG)
    torch.testing.assert_close(outputs(loaded, x), outputs(pruned, x), rtol=0, atol=0)


def test_official_tiny_checkpoint_goes_from_0_1_to_the_dpu_slope(official_tiny_path, tmp_path):
    model = load_checkpoint(official_tiny_path).model
    report = convert_activations(model, "leakyrelu", "dpu")
    assert report.converted == {"LeakyReLU(0.1)": 55} and len(report.layers) == 55
    assert "nn.LeakyReLU(0.1)" not in str(model.yaml) and "nn.LeakyReLU(0.1015625)" in str(model.yaml)
    loaded = reloaded(model, tmp_path / "tiny-dpu.pt", [report.history_entry()])
    assert {a.negative_slope for a in acts(loaded)} == {DPU_LEAKY_SLOPE} and len(acts(loaded)) == 55
    x = torch.rand(1, 3, IMG, IMG)
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), rtol=0, atol=0)
    # converting again changes nothing; ReLU leaves LeakyReLU alone unless asked to replace it
    again = convert_activations(model, "leakyrelu", "dpu")
    assert again.total == 0 and again.unchanged == {"LeakyReLU(0.1015625)": 55}
    assert convert_activations(model, "relu").total == 0
    assert convert_activations(model, "relu", sources=["leakyrelu"]).converted == {"LeakyReLU(0.1015625)": 55}


# ------------------------------------------------------------------------------------------- CLI
def cli(argv: list[str]) -> int:
    """Run the CLI in-process; argparse's own errors come back as their exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_cli_converts_official_tiny_with_history(official_tiny_path, tmp_path, capsys):
    out = tmp_path / "tiny-dpu.pt"
    assert cli(["convert-activation", "--weights", str(official_tiny_path), "--to", "leakyrelu", "--slope", "dpu",
                "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LeakyReLU(0.1) x55" in printed and f"yolo-prune train --weights {out}" in printed
    loaded = load_checkpoint(out)
    assert loaded.history[-1]["event"] == "convert-activation"
    assert loaded.history[-1]["target"] == "nn.LeakyReLU(0.1015625)"
    assert {a.negative_slope for a in acts(loaded.model)} == {DPU_LEAKY_SLOPE}
    # our checkpoint converts again, keeping its history
    out2 = tmp_path / "tiny-relu.pt"
    assert cli(["convert-activation", "--weights", str(out), "--to", "relu", "--from", "leakyrelu",
                "--output", str(out2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["converted"] == {"LeakyReLU(0.1015625)": 55}
    assert [h["event"] for h in load_checkpoint(out2).history] == ["convert-activation", "convert-activation"]


def test_cli_from_cfg(tmp_path, capsys):
    out = tmp_path / "leaky.pt"
    assert cli(["convert-activation", "--cfg", "yolov7-tiny", "--nc", "2", "--to", "leakyrelu", "--slope", "0.2",
                "--output", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["converted"] == {"LeakyReLU(0.1)": 55}
    model = load_checkpoint(out).model
    assert model.nc == 2 and {a.negative_slope for a in acts(model)} == {0.2}


@pytest.mark.parametrize("args,message", [
    (["--to", "gelu"], "invalid choice"),
    (["--to", "leakyrelu", "--slope", "1.5"], "in (0, 1)"),
    (["--to", "leakyrelu", "--slope", "dpux"], "in (0, 1)"),
    (["--to", "relu", "--slope", "0.1"], "leakyrelu only"),
    (["--to", "relu", "--from", "silu,swish"], "cannot convert from 'swish'"),
])
def test_cli_bad_options_exit_2_without_output(official_tiny_path, tmp_path, capsys, args, message):
    out = tmp_path / "out.pt"
    assert cli(["convert-activation", "--weights", str(official_tiny_path), *args, "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_files_exit_2_without_output(tmp_path, capsys):
    out = tmp_path / "out.pt"
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint, just some text that is long enough to look like a file\n")
    not_model = tmp_path / "dict.pt"
    torch.save({"x": torch.zeros(1)}, not_model)
    cases = [(tmp_path / "missing.pt", "file not found"), (text, "not a"), (not_model, "no YOLOv7 model")]
    for src, message in cases:
        assert cli(["convert-activation", "--weights", str(src), "--to", "leakyrelu", "--output", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "model.pt"
    save_checkpoint(small_model(), src)
    before = src.read_bytes()
    for out in (src, tmp_path / "sub" / ".." / "model.pt"):
        assert cli(["convert-activation", "--weights", str(src), "--to", "leakyrelu", "--output", str(out)]) == 2
        assert "is the input checkpoint" in capsys.readouterr().err
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_converted_checkpoint_fine_tunes(tmp_path, capsys):
    """`yolo-prune train --weights` takes the converted checkpoint and keeps its activations and history."""
    from yolo_prune.data.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "data", n_train=4, n_val=2, img_size=IMG, n_classes=2, seed=0).data_yaml
    torch.manual_seed(0)
    widths = [max(8, w // 8) for w in build_model("yolov7", nc=2).widths()]
    src = save_checkpoint(build_model("yolov7", nc=2, widths=widths), tmp_path / "small.pt")
    out = tmp_path / "leaky.pt"
    assert cli(["convert-activation", "--weights", str(src), "--to", "leakyrelu", "--slope", "dpu",
                "--output", str(out)]) == 0
    assert cli(["train", "--weights", str(out), "--data", str(data), "--hyp", "scratch.tiny", "--epochs", "1",
                "--batch-size", "2", "--img", str(IMG), "--device", "cpu", "--workers", "0",
                "--project", str(tmp_path / "runs"), "--name", "ft"]) == 0
    best = load_checkpoint(tmp_path / "runs" / "ft" / "weights" / "best.pt")
    assert [h["event"] for h in best.history] == ["convert-activation", "train"]
    assert {type(a) for a in acts(best.model)} == {nn.LeakyReLU}
    assert {a.negative_slope for a in acts(best.model)} == {DPU_LEAKY_SLOPE} and best.model.widths() == widths
