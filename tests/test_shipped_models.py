"""The two shipped models: the demo model and the converged base trained on from it (BASE_MODEL)."""
from __future__ import annotations

import pytest
import torch

from yolo_prune.checkpoint import load_checkpoint
from yolo_prune.demo_data import BASE_MODEL, DEMO_MODEL, DEMO_SYNTH


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEMO_MODEL), load_checkpoint(BASE_MODEL)


def test_base_is_the_demo_architecture_trained_on(shipped):
    demo, base = shipped
    assert BASE_MODEL.stat().st_size < 15e6
    assert base.model.widths() == demo.model.widths() and base.model.names == demo.model.names
    last = base.history[-1]
    assert last["continued_from"] == "yolo_prune/assets/yolov7-tiny-synth.pt" and last["epochs_completed"] == 40
    assert (BASE_MODEL.parents[2] / last["hyp"]).is_file(), "the continuation hyp the history names is shipped"
    check = last["convergence_check"]
    assert check["map_after"] - check["map_before"] < 0.005, "fine-tuning the base further must gain < 0.5 pt"
    assert any(not torch.equal(a, b) for a, b in zip(base.model.state_dict().values(),
                                                    demo.model.state_dict().values()))


def test_base_detects_better_than_the_demo_model(shipped, tmp_path):
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data

    data = generate_synthetic(tmp_path / "val", n_train=0, n_val=32, img_size=DEMO_SYNTH["img_size"],
                              n_classes=DEMO_SYNTH["n_classes"], seed=11).data_yaml
    settings = DataSettings(str(data), "val", DEMO_SYNTH["img_size"], 16, 0)
    demo, base = (evaluate_on_data(c.model.float(), settings, device=torch.device("cpu"), progress=False).map
                  for c in shipped)
    assert base > demo + 0.05, (base, demo)
