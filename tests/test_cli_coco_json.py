"""`yolo-prune test --coco-json`: pycocotools against a COCO json (crowds ignored), YOLOv7's own path for a
coco.yaml, --save-json's file as test.py names it, and the flags' errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_workspace import run_cli
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL

IMG = 128


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic val images with labels, their COCO json, and a data YAML that does not name the json."""
    result = generate_synthetic(tmp_path_factory.mktemp("cocojson") / "data", n_train=0, n_val=6, img_size=IMG,
                                n_classes=6, seed=3)
    yaml = result.root / "plain.yaml"
    yaml.write_text(f"val: {result.root / 'images' / 'val'}\nnc: 6\nnames: {list(result.class_names)}\n")
    return result, yaml


def _report(*argv: str, cwd: Path | None = None) -> dict:
    code, out, err = run_cli(["test", "--weights", str(DEMO_MODEL), "--img", str(IMG), "--device", "cpu",
                              "--workers", "0", "--json", *argv], cwd=cwd)
    assert code == 0, err
    report = json.loads(out)
    report.pop("speed")
    return report


def test_coco_json_is_the_ground_truth_of_the_pycocotools_maps(synth, tmp_path):
    """The synthetic json holds the labels' boxes: the same report. Marking one class's objects as crowds changes
    pycocotools' mAPs (crowds are ignored regions) and leaves test.py's, which come from the labels."""
    result, yaml = synth
    labels = _report("--data", str(yaml))
    same = _report("--data", str(yaml), "--coco-json", str(result.coco_json))
    assert same == labels
    gt = json.loads(result.coco_json.read_text())
    crowd_class = gt["annotations"][0]["category_id"]
    for ann in gt["annotations"]:
        ann["iscrowd"] = int(ann["category_id"] == crowd_class)
    crowds = tmp_path / "crowds.json"
    crowds.write_text(json.dumps(gt))
    with_crowds = _report("--data", str(yaml), "--coco-json", str(crowds))
    assert with_crowds["official"] == labels["official"]
    assert abs(with_crowds["map"] - labels["map"]) > 1e-3


def test_coco_yaml_uses_yolov7s_ground_truth_path_when_it_exists(synth, tmp_path):
    """As test.py: for a data YAML named coco.yaml, ./coco/annotations/instances_val2017.json is the ground truth."""
    result, yaml = synth
    gt = json.loads(result.coco_json.read_text())
    for ann in gt["annotations"]:
        ann["iscrowd"] = int(ann["category_id"] == gt["annotations"][0]["category_id"])
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    shutil.copy(yaml, tmp_path / "coco.yaml")
    explicit = _report("--data", str(yaml), "--coco-json", str(tmp_path / "coco/annotations/instances_val2017.json"))
    assert _report("--data", "coco.yaml", cwd=tmp_path) == explicit
    code, out, _ = run_cli(["test", "--weights", str(DEMO_MODEL), "--img", str(IMG), "--device", "cpu",
                            "--workers", "0", "--data", "coco.yaml"], cwd=tmp_path)
    assert code == 0 and "pycocotools ground truth: coco/annotations/instances_val2017.json" in out
    assert _report("--data", str(yaml), cwd=tmp_path) != explicit  # another YAML name: the labels


def test_coco_json_errors(synth, tmp_path):
    result, yaml = synth
    base = ["test", "--weights", str(DEMO_MODEL), "--data", str(yaml), "--img", str(IMG), "--workers", "0"]
    code, _, err = run_cli(base + ["--coco-json", str(tmp_path / "missing.json")])
    assert code == 2 and "--coco-json" in err and "missing.json: file not found" in err
    code, _, err = run_cli(base + ["--task", "pruning_sensitivity_analysis", "--coco-json", str(result.coco_json),
                                   "--project", str(tmp_path)])
    assert code == 2 and "--coco-json: only for an evaluation" in err
    other = json.loads(result.coco_json.read_text())
    other["categories"] = other["categories"][:3]
    bad = tmp_path / "three.json"
    bad.write_text(json.dumps(other))
    code, _, err = run_cli(base + ["--coco-json", str(bad)])
    assert code == 2 and "3 categories" in err
    assert not list(tmp_path.glob("runs*"))


def test_save_json_writes_test_pys_file_in_a_new_run_folder(synth, tmp_path):
    """--save-json as test.py: ``<weights stem>_predictions.json`` in project/name, then name2 (--exist-ok: name
    again); pycocotools scores the written file to the mAPs reported."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    result, yaml = synth
    argv = ("--data", str(yaml), "--coco-json", str(result.coco_json), "--save-json",
            "--project", str(tmp_path / "runs"), "--name", "val")
    first, second, again = _report(*argv), _report(*argv), _report(*argv, "--exist-ok")
    name = f"{DEMO_MODEL.stem}_predictions.json"
    assert first["predictions_json"] == str(tmp_path / "runs" / "val" / name)
    assert second["predictions_json"] == str(tmp_path / "runs" / "val2" / name)
    assert again["predictions_json"] == first["predictions_json"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["val", "val2"]
    gt = COCO(str(result.coco_json))
    scored = COCOeval(gt, gt.loadRes(first["predictions_json"]), "bbox")
    scored.evaluate(), scored.accumulate(), scored.summarize()
    assert scored.stats[0] == pytest.approx(first["map"], abs=1e-12)
    assert scored.stats[1] == pytest.approx(first["map50"], abs=1e-12)


def test_save_json_leaves_no_folder_when_the_evaluation_fails(tmp_path):
    empty = tmp_path / "images" / "val"
    empty.mkdir(parents=True)
    yaml = tmp_path / "empty.yaml"
    yaml.write_text(f"val: {empty}\nnc: 6\nnames: [a, b, c, d, e, f]\n")
    code, _, err = run_cli(["test", "--weights", str(DEMO_MODEL), "--img", str(IMG), "--device", "cpu",
                            "--data", str(yaml), "--save-json", "--project", str(tmp_path / "runs")])
    assert code == 2 and "has no images" in err
    assert not (tmp_path / "runs").exists()
