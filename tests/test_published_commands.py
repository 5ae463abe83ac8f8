"""The published workflow's commands, typed as `yolo-prune <command>` with the same flags, values and forms.

Sources: the README of fzi-forschungszentrum-informatik/iterative-yolo-pruning (test.py, layer_selection.py,
train.py; prune.py's own usage line) and WongKinYiu/yolov7's README (test.py / train.py). Each command below is
the published line with only these substitutions, to run on 2 CPU cores: ``--img 640`` -> 64, ``--batch(-size)
32`` -> 4, ``--workers 8`` -> 0, ``--device 0`` -> cpu where CUDA is absent (the verbatim ``--device 0`` is run
too and must fail cleanly), and, where a published run would take hours, ``--epochs 1`` / ``--max-images`` /
``--layers`` added. File names are the published ones, made in a YOLOv7-repo-like working directory: a small
synthetic ``data/coco.yaml``, ``yolov7.pt`` / ``yolov7_training.pt`` (narrow yolov7-tiny checkpoints: all 55
prunable layers, so the published layer indices apply), the official ``data/hyp.scratch.custom.yaml`` and
``cfg/training/yolov7-tiny.yaml``, and ``output/yolov7_training`` in the published text format.
"""
from __future__ import annotations

import ast
import json
import re
import shutil

import pytest
import torch

from cli_workspace import narrow_tiny, run_cli, snapshot

PARAMS = "[(8, 0.5), (18, 0.5), (28, 0.75), (29, 0.75), (32, 0.75), (33, 0.75), (41, 0.5), (43, 0.5), (45, 0.5), (46, 0.5)]"
DEVICE = "0" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixtures_dir):
    """A working directory laid out like the YOLOv7 repo the published scripts run in."""
    import yolo_prune as yp
    from yolo_prune.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("yolov7-repo")
    generate_synthetic(root / "coco", n_train=4, n_val=4, img_size=64, n_classes=3, seed=4)
    (root / "data").mkdir()
    (root / "data" / "coco.yaml").write_text("train: ../coco/images/train\nval: ../coco/images/val\nnc: 3\n"
                                             "names: ['circle', 'square', 'triangle']\n")
    shutil.copy(fixtures_dir / "official-hyp" / "hyp.scratch.custom.yaml", root / "data")
    (root / "cfg" / "training").mkdir(parents=True)
    shutil.copy(fixtures_dir / "official-cfg" / "training" / "yolov7-tiny.yaml", root / "cfg" / "training")
    model = narrow_tiny(3)
    for name in ("yolov7.pt", "yolov7_training.pt"):
        yp.save_checkpoint(model, root / name)
    return root


def _yolo_prune(command: str, repo, device: str = DEVICE) -> tuple[int, str, str]:
    return run_cli(command.replace("--device 0", f"--device {device}"), cwd=repo)


def test_test_py_evaluation(repo):
    # python test.py --data data/coco.yaml --img 640 --batch 32 --conf 0.001 --iou 0.65 --device 0
    #     --weights yolov7.pt --name yolov7_640_val
    code, out, err = _yolo_prune("test --data data/coco.yaml --img 64 --batch 4 --conf 0.001 --iou 0.65 --device 0 "
                                 "--weights yolov7.pt --name yolov7_640_val", repo)
    assert code == 0, err
    assert "all" in out and "parameters" in out


def test_test_py_with_pruning_params(repo):
    # python test.py ... --device 0 --weights yolov7_training.pt --name yolov7_640_val
    #     --modification prune-structured --pruning-params '[(8, 0.5), ..., (46, 0.5)]'
    code, out, err = _yolo_prune("test --data data/coco.yaml --img 64 --batch 4 --conf 0.001 --iou 0.65 --device 0 "
                                 f"--weights yolov7_training.pt --name yolov7_640_val --modification prune-structured "
                                 f"--pruning-params '{PARAMS}' --json", repo)
    assert code == 0, err
    pruned = json.loads(out)
    code, out, _ = _yolo_prune("test --data data/coco.yaml --img 64 --batch 4 --device 0 --weights "
                               "yolov7_training.pt --json", repo)
    assert pruned["params"] < json.loads(out)["params"]


def test_sensitivity_analysis_without_pruning_params(repo):
    # python test.py --data data/coco.yaml --img 640 --batch 32 --conf 0.001 --iou 0.65
    #     --task pruning_sensitivity_analysis --device 0 --weights yolov7_training.pt --name yolov7_640_sensitivity
    #     --modification prune-structured --prune-output output.txt --pruning-rate '[0.25, 0.5, 0.75]'
    code, out, err = _yolo_prune(
        "test --data data/coco.yaml --img 64 --batch 4 --conf 0.001 --iou 0.65 --task pruning_sensitivity_analysis "
        "--device 0 --weights yolov7_training.pt --name yolov7_640_sensitivity --modification prune-structured "
        "--prune-output output.txt --pruning-rate '[0.25, 0.5, 0.75]' --max-images 4 --layers '[8, 18]'", repo)
    assert code == 0, err
    folder = repo / "output" / "yolov7_640_sensitivity"
    for pct in (25, 50, 75):
        lines = (folder / f"output_{pct}.txt").read_text().splitlines()
        assert lines[0] == "[" and lines[-1] == "]" and [line[:4] for line in lines[1:-1]] == ["(8, ", "(18,"]


def test_layer_selection_py_on_published_files(repo):
    """Published output files (no sensitivity.json; numpy 2 writes per-class APs as np.float64(...))."""
    src = repo / "output" / "yolov7_640_sensitivity"
    if not (src / "output_50.txt").exists():
        test_sensitivity_analysis_without_pruning_params(repo)
    dst = repo / "output" / "yolov7_training"
    dst.mkdir(parents=True, exist_ok=True)
    numpy2 = lambda m: "[" + ", ".join(f"np.float64({v.strip()})" for v in m.group(1).split(",")) + "]"  # noqa: E731
    for f in src.glob("output_*.txt"):  # per-class lists (one line each) as the published test.py prints them
        (dst / f.name).write_text(re.sub(r"\[([^\[\]\n]+)\]", numpy2, f.read_text()))
    assert "np.float64(" in (dst / "output_50.txt").read_text()
    # python layer_selection.py --output output/yolov7_training --params 36907898 --flops 104.514
    #     --params-layers 6 --flops-layers 5 --params-map 20 --flops-map 20
    code, out, err = _yolo_prune("layer-selection --output output/yolov7_training --params 36907898 --flops 104.514 "
                                 "--params-layers 6 --flops-layers 5 --params-map 20 --flops-map 20", repo)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("[(") and "(8, " in out


def test_train_py_fine_tune_with_pruning_params(repo):
    # python train.py --workers 8 --device 0 --batch-size 32 --data data/coco.yaml --img 640 640
    #     --weights "yolov7_training.pt" --name yolov7-fine-tuned.pt --hyp data/hyp.scratch.custom.yaml
    #     --pruning-params "[(8, 0.5), ..., (46, 0.5)]" --criterion 0
    code, out, err = _yolo_prune("train --workers 0 --device 0 --batch-size 4 --data data/coco.yaml --img 64 64 "
                                 "--weights yolov7_training.pt --name yolov7-fine-tuned.pt "
                                 f"--hyp data/hyp.scratch.custom.yaml --pruning-params \"{PARAMS}\" --criterion 0 "
                                 "--epochs 1", repo)
    assert code == 0, err
    import yolo_prune as yp

    best = yp.load_checkpoint(repo / "runs" / "train" / "yolov7-fine-tuned.pt" / "weights" / "best.pt")
    prune_entry = next(h for h in best.history if h["event"] == "prune")
    assert [(lp["layer"], lp["rate"]) for lp in prune_entry["layers"]] == ast.literal_eval(PARAMS)
    hyp = (repo / "runs" / "train" / "yolov7-fine-tuned.pt" / "hyp.yaml").read_text()
    assert "lr0: 0.01" in hyp and "paste_in" in hyp  # the official custom hyp file was used


def test_official_train_py_from_a_cfg_with_empty_weights(repo):
    # yolov7 README: python train.py --workers 8 --device 0 --batch-size 32 --data data/coco.yaml --img 640 640
    #     --cfg cfg/training/yolov7.yaml --weights '' --name yolov7 --hyp data/hyp.scratch.p5.yaml
    code, _, err = _yolo_prune("train --workers 0 --device 0 --batch-size 4 --data data/coco.yaml --img 64 64 "
                               "--cfg cfg/training/yolov7-tiny.yaml --weights '' --name yolov7 "
                               "--hyp data/hyp.scratch.custom.yaml --epochs 1", repo)
    assert code == 0, err
    assert (repo / "runs" / "train" / "yolov7" / "weights" / "best.pt").is_file()


def test_prune_py_form(repo):
    # python prune.py --weights yolov7.pt --pruning-params [...] --criterion 0 --name yolov7-pruned.pt
    code, out, err = _yolo_prune("prune --weights yolov7.pt --pruning-params \"[(8, 0.5), (18, 0.5)]\" "
                                 "--criterion 0 --name yolov7-pruned.pt", repo)
    assert code == 0, err
    import yolo_prune as yp

    assert yp.load_checkpoint(repo / "yolov7-pruned.pt").history[-1]["event"] == "prune"
    # prune.py's usage comment shows --pruning-params []: there is nothing to prune, said as such
    code, _, err = _yolo_prune("prune --weights yolov7.pt --pruning-params [] --criterion 0 --name empty.pt", repo)
    assert code == 2 and "--pruning-params: expected a non-empty list" in err and not (repo / "empty.pt").exists()


def test_weights_given_as_a_list(repo):
    """YOLOv7 declares --weights with nargs='+': one file parses; several (an ensemble) are a named error."""
    code, _, err = _yolo_prune("test --data data/coco.yaml --img 64 --batch 4 --device 0 --weights yolov7.pt "
                               "yolov7_training.pt", repo)
    assert code == 2 and "--weights takes one checkpoint here, got 2: yolov7.pt yolov7_training.pt" in err
    code, _, err = _yolo_prune("prune --weights yolov7.pt yolov7_training.pt --pruning-params 0.5 --name x.pt", repo)
    assert code == 2 and "--weights takes one checkpoint here, got 2" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is absent")
@pytest.mark.parametrize("command", [
    "test --data data/coco.yaml --img 64 --batch 4 --device 0 --weights yolov7.pt --name yolov7_640_val",
    "test --data data/coco.yaml --img 64 --task pruning_sensitivity_analysis --device 0 --weights yolov7_training.pt "
    "--name cuda_sens --modification prune-structured --prune-output output.txt --pruning-rate '[0.25, 0.5, 0.75]'",
    "train --workers 0 --device 0 --batch-size 4 --data data/coco.yaml --img 64 64 --weights yolov7_training.pt "
    "--name cuda_run --hyp data/hyp.scratch.custom.yaml --criterion 0 --epochs 1",
])
def test_device_0_without_cuda_is_a_clean_usage_error(repo, command):
    """Decided: --device 0 where CUDA is absent is refused (exit 2, before any work), as YOLOv7's select_device
    refuses it; it never falls back to the CPU silently (a 300-epoch run would otherwise crawl unnoticed)."""
    before = snapshot(repo)
    code, _, err = _yolo_prune(command, repo, device="0")
    assert code == 2 and "--device 0: CUDA device 0 is not available (0 visible); use --device cpu" in err
    assert "Traceback" not in err and snapshot(repo) == before
