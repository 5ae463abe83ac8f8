"""Input handling found by probing every command (issue 10, section 6), one behaviour per test, on real files."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml

import yolo_prune as yp
from cli_workspace import build_workspace, narrow_tiny, run_cli, snapshot

# Five convolutions and a head: an analysis of every layer takes a second, so whole `iterate` runs are cheap.
MICRO_CFG = {"nc": 3, "depth_multiple": 1.0, "width_multiple": 1.0,
             "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
             "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                          [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
             "head": [[[2, 3, 4], 1, "IDetect", ["nc", "anchors"]]]}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = build_workspace(tmp_path_factory.mktemp("cli-inputs"))
    torch.manual_seed(0)
    yp.save_checkpoint(yp.build_model(MICRO_CFG), root / "micro.pt")
    return root


ITERATE = {"--weights": "micro.pt", "--data": "data/data.yaml", "--iterations": "1", "--epochs": "0", "--img": "64",
           "--batch": "4", "--device": "cpu", "--workers": "0", "--pruning-rate": "[0.5]", "--criterion": "0",
           "--params-layers": "1", "--flops-layers": "1"}


def _iterate(out: str, **changes: str) -> list[str]:
    """`yolo-prune iterate` on the micro model, no fine-tuning; ``changes`` as flag_name=value."""
    opts = {**ITERATE, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    return ["iterate", "--out", out, *[word for pair in opts.items() for word in pair]]


def test_class_count_message_is_the_same_everywhere(ws):
    """Item 1: test, the analysis, iterate and train refuse a 3-class model on 6-class data with one message."""
    want = "--weights m.pt has nc=3 classes but --data data6/data.yaml has nc=6"
    base = "--data data6/data.yaml --weights m.pt --img 64 --device cpu --workers 0"
    for command in (f"test {base}", f"test {base} --task pruning_sensitivity_analysis --pruning-rate [0.5]",
                    f"iterate {base} --epochs 0", f"train {base} --epochs 1"):
        before = snapshot(ws)
        code, _, err = run_cli(command, cwd=ws)
        assert code == 2 and f"error: {want}" in err, (command, err)
        assert snapshot(ws) == before


def test_the_reverse_mismatch_no_longer_crashes_the_analysis(ws):
    """Item 1: a 6-class model on 3-class data crashed in detections_to_coco (IndexError)."""
    yp.save_checkpoint(narrow_tiny(6), ws / "m6.pt")
    code, _, err = run_cli("test --data data/data.yaml --weights m6.pt --img 64 --device cpu --workers 0 "
                           "--task pruning_sensitivity_analysis --pruning-rate [0.5] --layers [0]", cwd=ws)
    assert code == 2 and "--weights m6.pt has nc=6 classes but --data data/data.yaml has nc=3" in err


def test_iterate_refuses_a_folder_made_with_other_settings(ws):
    """Item 2: a finished --out with other weights/epochs/rates was reported as this run's; now refused."""
    code, _, err = run_cli(_iterate("it"), cwd=ws)
    assert code == 0, err
    summary = (ws / "it" / "summary.csv").read_text()
    yp.save_checkpoint(yp.build_model(MICRO_CFG), ws / "other.pt")
    for change, name in (({"pruning_rate": "[0.25]"}, "analysis.rates"), ({"img": "96"}, "data.img_size"),
                         ({"criterion": "2"}, "analysis.criterion"), ({"weights": "other.pt"}, "weights"),
                         ({"max_images": "2"}, "data.max_images"), ({"params_layers": "2"}, "selection.params_layers")):
        before = snapshot(ws)
        code, _, err = run_cli(_iterate("it", **change), cwd=ws)
        assert code == 2 and "holds iterations made with other settings" in err and name in err, (change, err)
        assert snapshot(ws) == before
    assert (ws / "it" / "summary.csv").read_text() == summary
    code, out, _ = run_cli(_iterate("it"), cwd=ws)  # the same settings resume (nothing to do)
    assert code == 0 and (ws / "it" / "summary.csv").read_text() == summary
    code, out, err = run_cli(_iterate("it", iterations="2"), cwd=ws)  # a finished loop may be extended
    assert code == 0, err
    assert [r.split(",")[0] for r in (ws / "it" / "summary.csv").read_text().splitlines()[1:]] == ["0", "1", "2"]


def test_engine_export_never_replaces_an_onnx_no_one_named(ws, monkeypatch, tmp_path):
    """Item 3: `export --format engine` without TensorRT overwrote m.onnx next to m.engine."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "m.onnx").write_bytes(b"the user's own export")
    code, _, err = run_cli(f"export --weights {ws / 'm.pt'} --img-size 64 --format engine --output "
                           f"{tmp_path / 'm.engine'}")
    assert code == 2 and f"--onnx={tmp_path / 'm.engine.onnx'}" in err
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's own export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine.onnx", "m.onnx"]


def test_pruning_params_imply_the_modification(ws):
    """Item 7: `test --pruning-params` without --modification evaluated the unpruned model silently."""
    common = "test --data data/data.yaml --weights m.pt --img 64 --device cpu --workers 0 --json"
    code, out, err = run_cli(f"{common} --pruning-params [(23,0.5)]", cwd=ws)
    implied = json.loads(out)
    assert code == 0 and "--modification prune-structured" in err
    explicit = json.loads(run_cli(f"{common} --pruning-params [(23,0.5)] --modification prune-structured", cwd=ws)[1])
    plain = json.loads(run_cli(common, cwd=ws)[1])
    assert implied["params"] == explicit["params"] < plain["params"]
    assert implied["map"] == pytest.approx(explicit["map"])


def test_vitis_calibration_skips_a_corrupt_image(ws, tmp_path):
    """Item 10: one corrupt calibration image stopped the Vitis export; test and train skip such images."""
    pytest.importorskip("quark")
    calib = tmp_path / "calib"
    calib.mkdir()
    for img in sorted((ws / "data" / "images" / "val").iterdir())[:2]:
        (calib / img.name).write_bytes(img.read_bytes())
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run_cli(f"export --weights {ws / 'm.pt'} --format vitis-int8 --calib-images {calib} "
                             f"--img-size 64 --output {tmp_path / 'm.int8.onnx'}")
    assert code == 0, err
    assert f"warning: {calib / 'broken.jpg'}: skipping unreadable or corrupt image" in err
    assert (tmp_path / "m.int8.onnx").is_file() and "calibrated on 2 images" in out


def test_resume_never_picks_an_unrelated_finished_run(ws, tmp_path, monkeypatch):
    """Item 11: after an epoch-0 interrupt, `train --resume` took an older finished run and said "nothing to do"."""
    from yolo_prune.engine import trainer

    common = (f"train --weights {ws / 'm.pt'} --data {ws / 'data' / 'data.yaml'} --img 64 --epochs 1 --batch-size 4 "
              f"--device cpu --workers 0 --max-val-images 2 --project {tmp_path}")
    assert run_cli(f"{common} --name finished")[0] == 0

    def interrupted(run, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train_epoch", interrupted)
    assert run_cli(f"{common} --name new")[0] == 130
    monkeypatch.undo()
    assert (tmp_path / "new" / "opt.yaml").is_file() and not (tmp_path / "new" / "weights" / "last.pt").exists()
    code, out, err = run_cli(f"train --resume --project {tmp_path} --device cpu --workers 0")
    assert code == 2 and f"the newest run {tmp_path / 'new'} stopped before its first epoch ended" in err
    assert "nothing to do" not in out


def test_nan_weights_are_named_before_a_run_folder_exists(ws, tmp_path):
    """Item 11: a NaN checkpoint was blamed on lr0 after the run folder was made."""
    model = narrow_tiny(3)
    with torch.no_grad():
        model.model[2].conv.weight[0, 0, 0, 0] = float("nan")
    yp.save_checkpoint(model, tmp_path / "nan.pt")
    code, _, err = run_cli(f"train --weights {tmp_path / 'nan.pt'} --data {ws / 'data' / 'data.yaml'} --img 64 "
                           f"--epochs 1 --device cpu --workers 0 --project {tmp_path / 'runs'}")
    assert code == 2 and "model.2.conv.weight holds NaN or infinite values" in err and "lr0" not in err
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_in_use_is_refused(ws, tmp_path):
    """Item 11: two `train --exist-ok` runs into one folder mixed their files; the folder is now locked."""
    from yolo_prune.engine.train_state import lock_run_dir

    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    fd = lock_run_dir(run_dir)  # as a run training in another process holds it
    try:
        code, _, err = run_cli(f"train --weights {ws / 'm.pt'} --data {ws / 'data' / 'data.yaml'} --img 64 "
                               f"--epochs 1 --batch-size 4 --device cpu --workers 0 --project {tmp_path} --name exp "
                               "--exist-ok")
    finally:
        os.close(fd)
    assert code == 2 and f"{run_dir} is in use by another training run" in err
    assert not any(run_dir.iterdir())


def test_synth_folder_has_ordinary_permissions(tmp_path):
    """Item 11: `synth` created its folder with mode 0700."""
    from yolo_prune.fileio import umask_mode

    assert run_cli(f"synth --out {tmp_path / 's'} --train 1 --val 1 --img 64")[0] == 0
    assert (tmp_path / "s").stat().st_mode & 0o777 == umask_mode(directory=True)


def test_test_needs_only_the_split_it_evaluates(ws, tmp_path):
    """Item 11: `test` required a valid train: path (data YAMLs from the training machine)."""
    val = ws / "data" / "images" / "val"
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"train": "/training/machine/train2017.txt", "val": str(val),
                                                        "nc": 3, "names": ["circle", "square", "triangle"]}))
    code, out, err = run_cli(f"test --data {tmp_path / 'eval.yaml'} --weights {ws / 'm.pt'} --img 64 --device cpu "
                             "--workers 0 --json")
    assert code == 0, err and json.loads(out)["n_images"] == 4


@pytest.mark.parametrize("command", [
    "info --weights m.pt --img 100",
    "test --data data/data.yaml --weights m.pt --img 100 --device cpu --workers 0 --max-images 1",
    "prune --weights m.pt --pruning-params 0.5 --img 100 --output {tmp}/p.pt",
    "export --weights m.pt --img-size 100 --output {tmp}/m.onnx",
    "benchmark --weights m.pt --img-size 100 --iters 1 --warmup 0",
    "train --weights m.pt --data data/data.yaml --img 100 --epochs 1 --batch-size 4 --device cpu --workers 0 "
    "--max-val-images 1 --project {tmp}",
    "synth --out {tmp}/s --train 1 --val 1 --img 100",
])
def test_img_not_a_stride_multiple_is_rounded_up_with_one_notice(ws, tmp_path, command):
    """Item 11: four different behaviours became one rule, YOLOv7's: round up to the stride, and say so."""
    code, _, err = run_cli(command.format(tmp=tmp_path), cwd=ws)
    flag = "--img-size" if "--img-size" in command else "--img"
    assert code == 0, err
    assert f"warning: {flag} 100" in err and "is not a multiple of the model's max stride 32" in err and "128" in err


def test_layer_selection_save_writes_the_files_the_readme_names(ws, tmp_path):
    """Item 11: the README named selection_params.png / selection_flops.png; the files are the published ones."""
    code, out, err = run_cli(f"layer-selection --output {ws / 'sens'} --save --save-dir {tmp_path / 'g'}")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("sa_parameters", "sa_flops", "sa_map") for ext in ("png", "pdf"))
    readme = (yp_root() / "README.md").read_text()
    assert "`sa_parameters`, `sa_flops` and `sa_map`" in readme and "selection_params" not in readme


def yp_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
