"""Classification CNNs end to end: data without downloads, training/evaluation with the engine's conventions
(exact resume, checkpoints in our format), users' torchvision weights, pruning a classifier checkpoint, and bad
inputs that exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from yolo_prune.checkpoint import load_checkpoint, load_model
from yolo_prune.cli import main
from yolo_prune.data.classify import load_classification_data
from yolo_prune.engine.classify import ClassifySettings, train_classifier
from yolo_prune.errors import CheckpointError, DataError
from yolo_prune.models.classify import ArchSpec, build_classifier

IMG = 16


def quick(project: Path, **kw) -> ClassifySettings:
    """SCNNB at a quarter width on digits resized to 16 px: a few seconds per epoch on one core."""
    base = dict(data="digits", arch="scnnb", width=0.25, img_size=IMG, epochs=2, batch_size=64, lr0=0.05,
                device="cpu", project=str(project), progress=False)
    return ClassifySettings(**(base | kw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_classifier(quick(tmp_path_factory.mktemp("runs"), epochs=3, name="base"))


def test_digits_are_the_builtin_default():
    data = load_classification_data("digits", 24)
    assert (len(data.train), len(data.val), data.nc, data.in_ch) == (1437, 360, 10, 1)
    x, y = data.val[0]
    assert x.shape == (1, 24, 24) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    labels = torch.stack([data.val[i][1] for i in range(len(data.val))])
    assert torch.bincount(labels).min() >= 35  # stratified: every digit in the val split


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 12), colour).save(tmp_path / split / cls / f"{i}.png")
    data = load_classification_data(f"imagefolder:{tmp_path}", 16)
    assert (data.nc, data.names, data.in_ch, len(data.train)) == (2, ["blue", "red"], 3, 4)
    assert data.train[0][0].shape == (3, 16, 16)
    assert load_classification_data(str(tmp_path), 16).nc == 2  # a bare directory works too


def test_fashion_mnist_files_are_read_without_download(tmp_path):
    from _fakes import write_fashion_mnist

    write_fashion_mnist(tmp_path, 6, 4)
    data = load_classification_data(f"fashion-mnist:{tmp_path}", 32)
    assert (len(data.train), len(data.val), data.nc, data.in_ch) == (6, 4, 10, 1)
    assert data.train[0][0].shape == (1, 32, 32) and int(data.train[3][1]) == 3


@pytest.mark.parametrize("spec,match", [("cifar10:/nowhere", "cifar-10-batches-py"),
                                        ("fashion-mnist:/nowhere", "FashionMNIST/raw"),
                                        ("mnist", "not a known dataset")])
def test_missing_data_is_an_error_not_a_download(spec, match):
    with pytest.raises(DataError, match=match):
        load_classification_data(spec)


def test_training_learns_and_writes_our_checkpoints(trained):
    rows = trained.rows
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[-1]["loss"] < rows[0]["loss"]
    assert trained.best_row["top1"] > 0.8  # real handwritten digits, 3 short epochs
    best, last = load_checkpoint(trained.best), load_checkpoint(trained.last)
    assert best.raw["task"] == "classify" and best.raw["arch"]["arch"] == "scnnb"
    assert "train_state" not in best.raw and "train_state" in last.raw
    assert (trained.run_dir / "results.csv").read_text().splitlines()[0].startswith("epoch,loss,l1,val_loss,top1")
    with torch.no_grad():
        assert best.model(torch.rand(2, 1, IMG, IMG)).shape == (2, 10)


def test_resume_ends_where_an_uninterrupted_run_would(trained, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(epoch, _row):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_classifier(quick(tmp_path, epochs=3, name="cut"), on_epoch_end=stop_after_first)
    resumed = train_classifier(ClassifySettings(resume=str(tmp_path / "cut"), progress=False))
    assert [r["epoch"] for r in resumed.rows] == [0, 1, 2]
    assert resumed.rows[-1]["top1"] == trained.rows[-1]["top1"]
    a, b = load_checkpoint(trained.last).raw["state_dict"], load_checkpoint(resumed.last).raw["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classify_cli_test_and_prune_round_trip(trained, tmp_path, capsys):
    assert main(["classify", "test", "--weights", str(trained.best), "--json"]) == 0
    assert '"top1"' in capsys.readouterr().out
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--weights", str(trained.best), "--pruning-params", "[(1, 0.5)]", "--criterion", "l1",
                 "--output", str(pruned)]) == 0
    model = load_model(pruned)
    assert model.net.features[4].out_channels == 8 and model.net.classifier[0].in_features == 8 * (IMG // 4) ** 2
    assert main(["classify", "test", "--weights", str(pruned)]) == 0
    assert "top-1" in capsys.readouterr().out
    run = train_classifier(quick(tmp_path, weights=str(pruned), arch=None, epochs=1, name="ft"))
    assert load_checkpoint(run.best).history[-2]["event"] == "prune"


def test_prune_then_retrain_in_one_call(tmp_path, trained):
    run = train_classifier(quick(tmp_path, weights=str(trained.best), arch=None, epochs=1,
                                 pruning_params=0.5, name="pr"))
    model = load_model(run.best)
    assert [m.out_channels for m in model.conv_modules()] == [4, 8]


def test_users_torchvision_weights_load_without_download(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, path)
    from yolo_prune.checkpoint.classify import load_torchvision_weights

    ours = load_torchvision_weights(path, ArchSpec("resnet18", nc=5, in_ch=3, img_size=32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(5, 512\) vs model \(10, 512\)"):
        load_torchvision_weights(path, ArchSpec("resnet18", nc=10, in_ch=3))


def test_bad_inputs_exit_2(tmp_path, trained, capsys):
    cases = [
        (["classify", "train", "--data", "digits"], "give --arch"),
        (["classify", "train", "--arch", "scnnb", "--data", "nowhere:x"], "not a known dataset"),
        (["classify", "train", "--arch", "scnnb", "--img", "18"], "multiple of 4"),
        (["classify", "train", "--weights", str(trained.best), "--data", "digits", "--img", "32"],
         "takes 1x16x16 input"),
        (["classify", "test", "--weights", str(tmp_path / "missing.pt")], "missing.pt: file not found"),
        (["classify", "train", "--arch", "scnnb", "--pruning-params", "[(1, 0.5"], "cannot parse"),
        (["classify", "train", "--arch", "vgg99"], "invalid choice: 'vgg99'"),
        (["classify", "sensitivity", "--weights", str(trained.best), "--pruning-rate", "[1.5]", "--project",
          str(tmp_path)], "--pruning-rate: 1.5 is out of range"),
    ]
    for argv, message in cases:
        try:
            code = main(argv + ["--project", str(tmp_path)] if argv[1] == "train" else argv)
        except SystemExit as exc:
            code = exc.code
        assert code == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not any(tmp_path.glob("exp*"))  # nothing half-made


def test_sensitivity_cli_resumes_and_writes_csv(trained, tmp_path, capsys):
    argv = ["classify", "sensitivity", "--weights", str(trained.best), "--pruning-rate", "[0.5, 0.75]",
            "--project", str(tmp_path), "--name", "s"]
    assert main(argv) == 0
    csv = (tmp_path / "s" / "sensitivity.csv").read_text().splitlines()
    assert csv[0] == "layer,rate,top1,top5,loss,params,gflops,t_inference" and len(csv) == 1 + 1 + 2 * 2  # header, baseline, 2 layers x 2 rates
    stored = (tmp_path / "s" / "sensitivity.json").read_text()
    assert main(argv) == 0 and (tmp_path / "s" / "sensitivity.json").read_text() == stored  # nothing re-run
    assert main(argv[:-4] + ["--pruning-rate", "[0.25]", "--project", str(tmp_path), "--name", "s"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_info_and_graph_on_classifier_checkpoints(trained, capsys):
    assert main(["info", "--weights", str(trained.best)]) == 0
    assert "total:" in capsys.readouterr().out
    assert main(["graph", "--weights", str(trained.best), "--print"]) == 0
    assert "net.classifier.0 linear" in capsys.readouterr().out
