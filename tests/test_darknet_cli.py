"""Darknet models through the commands: info, graph, prune to .weights, export, test, and the Pruning-Darknet
workflow (`darknet-prune`: iterative pruning + fine-tuning with a Darknet .data file, written back as .cfg/.weights)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from yolo_prune.checkpoint import load_model
from yolo_prune.checkpoint.darknet import read_weights_file, save_darknet
from yolo_prune.cli import main
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.models import build_model
from yolo_prune.models.darknet import DarknetModel, read_darknet_cfg
from yolo_prune.pipeline.darknet_workflow import iteration_rate, tuning_epochs

DATA = Path(__file__).resolve().parent / "data" / "darknet"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """yolov3-tiny for 2 classes at 64 px with random weights, a synthetic dataset and its Darknet .data file."""
    root = tmp_path_factory.mktemp("darknet")
    text = (DATA / "yolov3-tiny.cfg").read_text().replace("classes=80", "classes=2").replace("filters=255", "filters=21")
    text = text.replace("width=416", "width=64").replace("height=416", "height=64")
    (root / "src.cfg").write_text(text)
    torch.manual_seed(0)
    save_darknet(build_model(root / "src.cfg"), root / "model.cfg", root / "model.weights")
    synth = generate_synthetic(root / "data", n_train=64, n_val=8, img_size=64, n_classes=2, seed=0)
    for split, name in (("train", "train.txt"), ("val", "valid.txt")):
        images = sorted((root / "data" / "images" / split).glob("*.jpg"))
        (root / name).write_text("\n".join(str(p) for p in images) + "\n")
    (root / "obj.names").write_text("a\nb\n")
    (root / "obj.data").write_text(f"classes = 2\ntrain = {root / 'train.txt'}\nvalid = {root / 'valid.txt'}\n"
                                   f"names = {root / 'obj.names'}\nbackup = backup/\n")
    return root, synth.data_yaml


def test_info_graph_prune_export_test(files, tmp_path, capsys):
    root, data_yaml = files
    assert main(["info", "--weights", str(root / "model.weights")]) == 0
    assert "GFLOPs @64," in capsys.readouterr().out  # the cfg's width is the default size
    assert main(["graph", "--cfg", str(root / "model.cfg"), "--print"]) == 0
    assert "PruningGraph(nconv=11, head=2, prunable=11)" in capsys.readouterr().out
    out = tmp_path / "pruned.weights"
    assert main(["prune", "--weights", str(root / "model.weights"), "--pruning-params", "[(0, 0.5), (9, 0.5)]",
                 "--criterion", "l1", "--output", str(out)]) == 0
    pruned = load_model(out)
    assert isinstance(pruned, DarknetModel) and pruned.widths()[0] == 8 and pruned.widths()[9] == 64
    assert read_darknet_cfg(tmp_path / "pruned.cfg").layers[0].int("filters") == 8
    assert read_weights_file(out)[0] == read_weights_file(root / "model.weights")[0]
    assert main(["export", "--weights", str(out), "--grid", "--output", str(tmp_path / "p.onnx")]) == 0
    assert "verified grid export" in capsys.readouterr().out
    assert main(["test", "--weights", str(out), "--data", str(data_yaml), "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 8


def test_raw_onnx_of_a_darknet_model_decodes_as_darknet(files, tmp_path):
    """Evaluating a raw export through ONNX Runtime decodes with each [yolo] layer's own formula."""
    from yolo_prune.export.ort_model import OrtDetector

    root, _ = files
    assert main(["export", "--weights", str(root / "model.weights"), "--output", str(tmp_path / "raw.onnx")]) == 0
    model = load_model(root / "model.weights")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(OrtDetector(tmp_path / "raw.onnx")(x)[0], model(x)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_pruning_darknet_workflow(files, tmp_path, capsys):
    """Two pruning iterations of L1 with fine-tuning on the .data file's lists; Darknet files after each step."""
    root, _ = files
    args = ["darknet-prune", "--cfg", str(root / "model.cfg"), "--weights", str(root / "model.weights"),
            "--data", str(root / "obj.data"), "--names", str(root / "obj.names"), "--img-size", "64",
            "--technique", "L1", "--pruning-rate", "0.5", "--pruning-iter", "2", "--tuning", "--tuning-iter", "1",
            "--lr", "0.001", "--batch-size", "16", "--device", "cpu", "--workers", "0", "--output", str(tmp_path)]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    first, second = summary["iterations"]
    assert first["widths"][0] == 12 and second["widths"][0] == 8  # 16 -> 12 (a quarter) -> 8 (half in total)
    assert first["epochs"] == 1 and Path(first["weights"]).name == "tuned.weights"
    final = load_model(tmp_path / "final.weights")
    assert final.widths() == second["widths"] and final.nc == 2
    assert (tmp_path / "iter_1" / "pruned.cfg").is_file() and (tmp_path / "iter_2" / "tuned.cfg").is_file()
    assert main(args) == 0  # finished iterations are skipped
    assert "iteration 2" in capsys.readouterr().out
    assert main(["darknet-prune", "--cfg", str(root / "model.cfg"), "--weights", str(root / "model.weights"),
                 "--technique", "XYZ", "--pruning-rate", "0.5", "--output", str(tmp_path / "x")]) == 2


def test_workflow_arithmetic():
    assert [round(iteration_rate(0.6, k, 3), 4) for k in (1, 2, 3)] == [0.2, 0.25, 0.3333]
    assert (tuning_epochs(30000, 64000), tuning_epochs(1, 640)) == (30, 1)
