"""`yolo-prune test` reports YOLOv7 test.py's own numbers next to pycocotools', on test.py's inputs.

Side by side with the official ``test.py`` on the same checkpoint and 200 validation images of mixed aspect
ratios (BENCHMARKS.md / CHANGELOG), P and R differed by 4.7 / 4.6 points because yolo-prune fed square
letterboxed images shrunk by Pillow, where test.py feeds rectangular batches (pad 0.5) shrunk by OpenCV's
INTER_AREA. These tests pin both halves of that, and the two metric sets on a case worked out by hand.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from yolo_prune.engine.evaluator import evaluate, format_results

# ------------------------------------------------------------------------------ both sets, by hand
# One 100x100 image, one class of interest (nc=2), three labelled objects A, B, C. Detections: A exactly
# (conf 0.9), B with IoU 0.72 (conf 0.8); C is missed.
GT = [(10, 10, 30, 30), (50, 50, 90, 90), (10, 60, 30, 90)]
DETS = [((10, 10, 30, 30), 0.9), ((50, 50, 90, 78.8), 0.8)]  # (50,50,90,78.8) vs B: 40*28.8 / 1600 = 0.72

# test.py: TP at IoU thresholds 0.50..0.70 for both detections, only A above 0.70.
#   P, R at the best mean-F1 confidence: precision 1 and recall 2/3 below conf 0.8 (F1 0.8, the maximum).
#   AP (101-point trapezoid of the envelope, recall extended by 0.01):
#     t <= 0.70: recall [1/3, 2/3], precision 1 -> 0.66 + 0.005 * (1 + 2/3) + 0.005 * (2/3)       = 0.6716667
#     t >= 0.75: recall [1/3, 1/3], precision [1, 1/2] -> 0.33 + 0.005 * (1 + 1/6) + 0.005 * (1/6) = 0.3366667
OFFICIAL = {"mp": 1.0, "mr": 2 / 3, "map50": 0.66 + 0.005 * (1 + 4 / 3),
            "map": (0.66 + 0.005 * (1 + 4 / 3) + 0.33 + 0.005 * (1 + 1 / 3)) / 2}
# pycocotools: precision at each of the 101 recall thresholds, 0 beyond the largest recall:
#   t <= 0.70: thresholds 0.00..0.66 reached -> 67/101; t >= 0.75: 0.00..0.33 -> 34/101.
COCO = {"map50": 67 / 101, "map": (67 + 34) / 2 / 101}


def _hand_case():
    """(model returning the detections as raw predictions, one-batch loader) for the case above."""
    pred = torch.zeros(1, len(DETS), 5 + 2)
    for i, ((x1, y1, x2, y2), conf) in enumerate(DETS):
        pred[0, i] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, conf, 1.0, 0.0])
    targets = torch.tensor([[0, 0, (x1 + x2) / 200, (y1 + y2) / 200, (x2 - x1) / 100, (y2 - y1) / 100]
                            for x1, y1, x2, y2 in GT])
    batch = (torch.zeros(1, 3, 100, 100, dtype=torch.uint8), targets, ["hand.jpg"], [None])
    return (lambda img: (pred.clone(),)), [batch]


def test_both_metric_sets_on_a_case_known_by_hand():
    model, loader = _hand_case()
    result = evaluate(model, loader, nc=2, names=["a", "b"], progress=False)
    from yolo_prune.engine.evaluator import official_metrics

    for key, value in OFFICIAL.items():
        assert official_metrics(result)[key] == pytest.approx(value, abs=1e-6), key
    assert (result.map50, result.map) == (pytest.approx(COCO["map50"], abs=1e-6), pytest.approx(COCO["map"], abs=1e-6))
    row = format_results(result, file=None).splitlines()[1].split()
    assert row == ["all", "1", "3", "1", "0.667", "0.672", "0.504", "0.663", "0.5"]


# ------------------------------------------------------------------------------ test.py's inputs
@pytest.fixture(scope="module")
def wide_set(tmp_path_factory):
    """Four 200x100 (w x h) images with one box each, PNG (no codec differences), and their data YAML."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text(f"train: {root / 'images'}\nval: {root / 'images'}\nnc: 1\nnames: [box]\n")
    return root


class _Recorder:
    """A stand-in detector that records the input shapes it is given (and detects nothing)."""

    stride = torch.tensor([8.0, 16.0, 32.0])
    nc = 1

    def __init__(self):
        self.shapes = []

    def __call__(self, img):
        self.shapes.append(tuple(img.shape))
        return torch.zeros(img.shape[0], 10, 6), []


def test_evaluation_feeds_test_py_rectangular_batches(wide_set):
    from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data

    model = _Recorder()
    evaluate_on_data(model, DataSettings(str(wide_set / "data.yaml"), "val", 64, 2, 0), device=torch.device("cpu"),
                     progress=False)
    # h/w = 0.5 -> batch shape ceil([0.5, 1] * 64 / 32 + 0.5) * 32 = (64, 96), as test.py's create_dataloader(rect=True)
    assert model.shapes == [(2, 3, 64, 96), (2, 3, 64, 96)]
    model.input_hw = (64, 64)  # a fixed-shape model (exported ONNX) gets square letterboxed inputs instead
    model.shapes.clear()
    evaluate_on_data(model, DataSettings(str(wide_set / "data.yaml"), "val", 64, 4, 0), device=torch.device("cpu"),
                     progress=False)
    assert model.shapes == [(4, 3, 64, 64)]


@pytest.mark.parametrize("augment,flag", [(False, cv2.INTER_AREA), (True, cv2.INTER_LINEAR)])
def test_images_are_resized_as_yolov7_does(wide_set, augment, flag):
    """test.py shrinks with cv2.INTER_AREA (INTER_LINEAR when augmenting); the pixels decide P and R."""
    from yolo_prune.data.dataset import YoloDataset

    ds = YoloDataset([str(wide_set / "images" / "0.png")], nc=1, img_size=150, augment=augment)
    img, (h0, w0), (h, w) = ds.load_resized(0)
    original = np.array(Image.open(wide_set / "images" / "0.png").convert("RGB"))
    assert (h0, w0, h, w) == (100, 200, 75, 150)  # factor 0.75: not an integer shrink, where libraries differ
    assert np.array_equal(img, cv2.resize(original, (150, 75), interpolation=flag))


def test_letterbox_resizes_with_opencv_linear():
    from yolo_prune.data.letterbox import letterbox

    img = np.random.default_rng(1).integers(0, 256, (90, 170, 3), dtype=np.uint8)
    out, ratio, (dw, dh) = letterbox(img, 64, auto=False, scaleup=True)
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    inner = out[top: top + round(90 * ratio[1]), left: left + 64]
    assert np.array_equal(inner, cv2.resize(img, (64, round(90 * ratio[1])), interpolation=cv2.INTER_LINEAR))


def test_cli_prints_and_reports_both_sets(tmp_path, capsys):
    from yolo_prune.cli import main
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.demo_data import DEMO_MODEL

    generate_synthetic(tmp_path / "data", n_train=1, n_val=6, img_size=256, n_classes=6, seed=3)
    args = ["test", "--data", str(tmp_path / "data" / "data.yaml"), "--weights", str(DEMO_MODEL), "--img", "256",
            "--batch", "3", "--device", "cpu", "--workers", "0"]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    official = report["official"]
    assert set(official) == {"mp", "mr", "map50", "map"}
    assert (official["mp"], official["mr"]) == (report["mp"], report["mr"]) and report["map"] > 0.1
    assert official["map"] != report["map"]  # test.py's interpolation vs pycocotools' (the authority)
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[3:] == ["P", "R", "mAP@.5", "mAP@.5:.95", "COCO@.5", "COCO@.5:.95"]
    expected = [official[k] for k in ("mp", "mr", "map50", "map")] + [report["map50"], report["map"]]
    assert lines[1].split()[3:] == ["%.3g" % v for v in expected]
    assert "per 256x256 image at batch-size 3" in lines[-2]  # --img, as test.py (its rect batches vary in shape)
    names = yaml.safe_load((tmp_path / "data" / "data.yaml").read_text())["names"]
    class_rows = [line.split()[0] for line in lines[2:-2]]  # test.py prints them unasked below 50 classes
    assert class_rows and set(class_rows) <= set(names)


def _octagon(cx: float, cy: float, w: float, h: float) -> list[float]:
    """Eight points touching each edge of the box (a polygon as the official COCO labels hold one)."""
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return [x1, cy - h / 4, cx - w / 4, y1, cx + w / 4, y1, x2, cy - h / 4,
            x2, cy + h / 4, cx + w / 4, y2, cx - w / 4, y2, x1, cy + h / 4]


def test_cli_on_polygon_labels_reports_the_numbers_of_their_boxes(tmp_path, capsys):
    """`yolo-prune test` on a data set labelled with polygons (official COCO labels) gives the numbers of the same
    set labelled with YOLOv7's enclosing boxes (computed here as its ``segments2boxes`` does, in float32)."""
    import shutil

    from yolo_prune.cli import main
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.demo_data import DEMO_MODEL

    synth = generate_synthetic(tmp_path / "synth", n_train=0, n_val=6, img_size=128, n_classes=6, seed=3)
    reports = {}
    for kind in ("polygons", "boxes"):
        root = tmp_path / kind
        shutil.copytree(synth.data_yaml.parent / "images" / "val", root / "images" / "val")
        (root / "labels" / "val").mkdir(parents=True)
        for src in sorted((synth.data_yaml.parent / "labels" / "val").glob("*.txt")):
            rows = []
            for line in src.read_text().splitlines():
                cls, *box = line.split()
                coords = [f"{v:.6f}" for v in _octagon(*map(float, box))]
                if kind == "boxes":
                    xy = np.array(coords, np.float32).reshape(-1, 2)
                    (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
                    coords = [f"{v:.9g}" for v in ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)]
                rows.append(" ".join([cls, *coords]))
            (root / "labels" / "val" / src.name).write_text("\n".join(rows) + "\n")
        (root / "data.yaml").write_text(f"path: {root}\nval: images/val\nnc: 6\nnames: {list(synth.class_names)}\n")
        assert main(["test", "--data", str(root / "data.yaml"), "--weights", str(DEMO_MODEL), "--img", "128",
                     "--device", "cpu", "--workers", "0", "--json"]) == 0
        reports[kind] = json.loads(capsys.readouterr().out)
        reports[kind].pop("speed")
    assert reports["polygons"]["n_images"] == 6 and reports["polygons"]["map50"] > 0.1
    assert reports["polygons"] == reports["boxes"]
