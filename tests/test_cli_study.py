"""test.py's `--task speed` and `--task study`: their thresholds, sizes, file name and columns, and their errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_workspace import run_cli
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL
from yolo_prune.pipeline.study import STUDY_SIZES

COMMON = ("--weights", str(DEMO_MODEL), "--device", "cpu", "--workers", "0", "--batch", "2")


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    result = generate_synthetic(tmp_path_factory.mktemp("study") / "data", n_train=0, n_val=2, img_size=96,
                                n_classes=6, seed=5)
    yaml = result.root / "shapes.yaml"
    yaml.write_text(f"val: {result.root / 'images' / 'val'}\nnc: 6\nnames: {list(result.class_names)}\n")
    return yaml


def _json(*argv: str, cwd=None) -> dict:
    code, out, err = run_cli(["test", *COMMON, "--json", *argv], cwd=cwd)
    assert code == 0, err
    return json.loads(out)


def test_speed_task_evaluates_at_test_pys_speed_thresholds(data_yaml):
    """`--task speed` is the val split at conf 0.25, IoU 0.45 whatever --conf/--iou say, as test.py runs it."""
    speed = _json("--data", str(data_yaml), "--img", "96", "--task", "speed", "--conf", "0.001")
    plain = _json("--data", str(data_yaml), "--img", "96", "--conf", "0.25", "--iou", "0.45")
    default = _json("--data", str(data_yaml), "--img", "96")
    assert speed["official"] == plain["official"] and speed["map"] == plain["map"]
    assert speed["official"] != default["official"]


def test_study_writes_test_pys_rows_at_every_size(data_yaml, tmp_path):
    """study_<data>_<weights>.txt in the working directory: 11 rows (256..1536 px) of P, R, mAP@.5, mAP@.5:.95,
    3 zero losses, 3 times, h, w, batch; a row equals the evaluation at its size, to the 4 digits written."""
    report = _json("--data", str(data_yaml), "--task", "study", cwd=tmp_path)
    path = tmp_path / f"study_shapes_{DEMO_MODEL.stem}.txt"
    assert report["file"] == path.name and (tmp_path / report["plot"]).is_file()
    rows = np.loadtxt(path, ndmin=2)
    assert rows.shape == (len(STUDY_SIZES), 13) and STUDY_SIZES == tuple(range(256, 1537, 128))
    assert (rows[:, 4:7] == 0).all() and (rows[:, 12] == 2).all()
    assert rows[:, 10].tolist() == list(STUDY_SIZES)
    assert np.allclose(rows[:, 9], rows[:, 7] + rows[:, 8], rtol=1e-3, atol=0.1)
    at_384 = _json("--data", str(data_yaml), "--img", "384")["official"]
    want = [at_384["mp"], at_384["mr"], at_384["map50"], at_384["map"]]
    assert np.allclose(rows[1, :4], want, rtol=5e-4, atol=1e-9)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("extra, message", [
    (("--img", "320"), "--img 320: --task study evaluates at every size"),
    (("--save-json",), "--save-json: not with --task study"),
])
def test_study_refuses_what_it_cannot_do(data_yaml, tmp_path, extra, message):
    code, _, err = run_cli(["test", *COMMON, "--data", str(data_yaml), "--task", "study", *extra], cwd=tmp_path)
    assert code == 2 and message in err
    assert not any(tmp_path.iterdir())
