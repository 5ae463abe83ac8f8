"""pycocotools mAP: known answers, and agreement with COCOeval run directly on json files."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo_prune.engine.coco import (
    build_coco_gt, category_ids, coco_evaluate, coco_from_dict, default_image_ids, detections_to_coco,
    image_ids_in, save_predictions_json,
)
from yolo_prune.errors import DataError

SHAPES = [(100, 120), (90, 60), (200, 150)]


def _evaluate(labels, dets, nc=2):
    ids = list(range(1, len(labels) + 1))
    gt = build_coco_gt(labels, SHAPES[: len(labels)], ids, nc)
    return coco_evaluate(detections_to_coco(dets, ids, list(range(nc))), gt, img_ids=ids)


def _gt():
    return [torch.tensor([[0, 10, 10, 50, 60], [1, 60, 20, 110, 90.0]]),
            torch.tensor([[0, 5, 5, 40, 40], [0, 20, 50, 55, 85.0]])]


def _perfect(labels, conf=0.9):
    return [torch.cat((lab[:, 1:5], torch.full((len(lab), 1), conf), lab[:, :1]), 1) for lab in labels]


def test_perfect_detector() -> None:
    res = _evaluate(_gt(), _perfect(_gt()))
    assert res.map == pytest.approx(1.0) and res.map50 == pytest.approx(1.0)
    np.testing.assert_allclose(res.class_ap, [1.0, 1.0])
    assert res.stats[8] == pytest.approx(1.0)  # AR@100


def test_missing_half_the_objects() -> None:
    gt = [torch.tensor([[0, 10, 10, 50, 60], [0, 60, 20, 110, 90.0]]),
          torch.tensor([[0, 5, 5, 40, 40], [0, 20, 50, 55, 85.0]])]
    dets = [d[:1] for d in _perfect(gt)]  # the first of the two objects in each image
    res = _evaluate(gt, dets, nc=1)
    assert res.stats[8] == pytest.approx(0.5)  # AR@100
    assert res.map == pytest.approx(51 / 101)  # precision 1 on recall points 0.00..0.50, 0 beyond
    assert res.class_ap[0] == pytest.approx(51 / 101)


def test_shifted_box_only_counts_at_low_iou() -> None:
    gt = [torch.tensor([[0, 0, 0, 100, 100.0]])]
    dets = [torch.tensor([[16, 0, 116, 100, 0.9, 0.0]])]  # IoU 0.724: thresholds .50-.70 only
    res = _evaluate(gt, dets, nc=1)
    assert res.map50 == pytest.approx(1.0)
    assert res.stats[2] == pytest.approx(0.0)  # AP75
    assert res.map == pytest.approx(0.5)


def test_no_detections() -> None:
    res = _evaluate(_gt(), [torch.zeros(0, 6), torch.zeros(0, 6)])
    assert res.map == 0.0 and res.map50 == 0.0
    np.testing.assert_array_equal(res.class_ap, [0.0, 0.0])


def _random_case(seed: int, n_img: int = 12, nc: int = 4):
    g = torch.Generator().manual_seed(seed)
    labels, dets, shapes = [], [], []
    for _ in range(n_img):
        h0, w0 = (int(v) for v in torch.randint(80, 300, (2,), generator=g))
        m = int(torch.randint(0, 7, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * torch.tensor([w0 * 0.7, h0 * 0.7])
        wh = 8 + torch.rand(m, 2, generator=g) * 60
        lab = torch.cat((torch.randint(0, nc, (m, 1), generator=g).float(), xy, xy + wh), 1)
        k = m + int(torch.randint(0, 5, (1,), generator=g))
        src = lab[torch.randint(0, max(m, 1), (k,), generator=g)] if m else torch.zeros(k, 5)
        box = src[:, 1:5] + torch.randn(k, 4, generator=g) * 5
        cls = torch.where(torch.rand(k, generator=g) < 0.8, src[:, 0], torch.randint(0, nc, (k,), generator=g).float())
        dets.append(torch.cat((box, torch.rand(k, 1, generator=g), cls[:, None]), 1))
        labels.append(lab)
        shapes.append((h0, w0))
    return labels, dets, shapes


def _reference(tmp: Path, labels, dets, shapes, nc: int, cat_of):
    """COCOeval straight from json files written here, independently of yolo_prune.engine.coco."""
    images, anns, res = [], [], []
    for i, (lab, det, (h0, w0)) in enumerate(zip(labels, dets, shapes)):
        images.append({"id": 100 + i, "width": w0, "height": h0, "file_name": f"im{i}.jpg"})
        for c, x1, y1, x2, y2 in lab.double().tolist():
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat_of[int(c)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for x1, y1, x2, y2, s, c in det.double().tolist():
            res.append({"image_id": 100 + i, "category_id": cat_of[int(c)], "score": round(s, 5),
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]})
    cats = [{"id": cat_of[i], "name": f"c{i}"} for i in range(nc)]
    (tmp / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp / "dt.json").write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp / "gt.json"))
        ev = COCOeval(gt, gt.loadRes(str(tmp / "dt.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    prec = ev.eval["precision"]
    per = [prec[:, :, k, 0, -1] for k in range(nc)]
    ap = [x[x > -1].mean() if (x > -1).any() else np.nan for x in per]
    ap50 = [x[0][x[0] > -1].mean() if (x[0] > -1).any() else np.nan for x in per]
    return np.array(ev.stats), np.array(ap), np.array(ap50), tmp / "gt.json"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_raw_pycocotools(tmp_path: Path, seed: int) -> None:
    nc = 4
    labels, dets, shapes = _random_case(seed, nc=nc)
    stats, ap, ap50, _ = _reference(tmp_path, labels, dets, shapes, nc, cat_of=list(range(nc)))
    ids = [100 + i for i in range(len(labels))]
    gt = build_coco_gt(labels, shapes, ids, nc)
    res = coco_evaluate(detections_to_coco(dets, ids, list(range(nc))), gt, img_ids=ids)
    np.testing.assert_allclose(res.stats, stats, atol=1e-12)
    np.testing.assert_allclose(res.class_ap, ap, atol=1e-12)
    np.testing.assert_allclose(res.class_ap50, ap50, atol=1e-12)
    assert res.map == pytest.approx(stats[0]) and 0 < res.map < 1


def test_external_gt_json_with_sparse_category_ids(tmp_path: Path) -> None:
    nc = 4
    labels, dets, shapes = _random_case(7, nc=nc)
    cat_of = [1, 3, 8, 90]
    stats, ap, _, gt_path = _reference(tmp_path, labels, dets, shapes, nc, cat_of)
    gt = coco_from_dict(json.loads(gt_path.read_text()))
    ids = image_ids_in(gt, [f"/data/images/im{i}.jpg" for i in range(len(labels))])
    assert ids == [100 + i for i in range(len(labels))]
    assert category_ids(gt, nc) == cat_of
    results = detections_to_coco(dets, ids, cat_of)
    res = coco_evaluate(results, gt_path)
    np.testing.assert_allclose(res.stats, stats, atol=1e-12)
    np.testing.assert_allclose(res.class_ap, ap, atol=1e-12)
    out = save_predictions_json(results, tmp_path / "run")
    assert out.name == "predictions.json" and json.loads(out.read_text()) == results
    with pytest.raises(DataError):
        image_ids_in(gt, ["elsewhere/unknown.jpg"])
    with pytest.raises(DataError):
        category_ids(gt, 80)


def test_default_image_ids() -> None:
    assert default_image_ids(["a/000000000139.jpg", "b/285.png"]) == [139, 285]
    assert default_image_ids(["a/1.jpg", "b/x.jpg"]) == [1, 2]
    assert default_image_ids(["a/1.jpg", "b/1.png"]) == [1, 2]


# ------------------------------------------------------------------------------------------- real predictions
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The shipped demo model's NMS output on 16 synthetic validation images (real predictions, a few hundred
    candidates per image), recorded as the evaluator records them."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.pipeline.evaluation import DataSettings, cached_batches
    from yolo_prune.pipeline.scoring import DetectionScorer

    asset = Path(__file__).resolve().parents[1] / "yolo_prune" / "assets" / "yolov7-tiny-synth.pt"
    data = generate_synthetic(tmp_path_factory.mktemp("real") / "d", n_train=0, n_val=16, img_size=256, n_classes=6,
                              seed=3).data_yaml
    raw = data.read_text().replace("train: images/train", "train: images/val")
    data.write_text(raw)
    batches, cfg = cached_batches(DataSettings(str(data), img_size=256, batch_size=8, workers=0), 32,
                                  torch.device("cpu"))
    model, scorer = load_model(asset).float().eval(), DetectionScorer(cfg.nc, cfg.names)
    state = scorer.start()
    with torch.inference_mode():
        for b in batches:
            scorer.update(state, model(b.inputs(torch.float32))[0], b.meta)
    return state


def test_faster_coco_eval_equals_pycocotools_on_real_predictions(real_run) -> None:
    """The two COCOeval implementations agree to 1e-6 on every summary number and per-class AP."""
    pytest.importorskip("faster_coco_eval")
    ids = default_image_ids(real_run.paths)
    gt = build_coco_gt(real_run.labels, real_run.shapes, ids, 6)
    results = detections_to_coco(real_run.dets, ids, list(range(6)))
    assert len(results) > 1000  # real NMS output, many low-confidence boxes
    before = json.dumps(gt, sort_keys=True)
    fast = coco_evaluate(results, gt, img_ids=ids, backend="faster-coco-eval")
    ref = coco_evaluate(results, gt, img_ids=ids, backend="pycocotools")
    np.testing.assert_allclose(fast.stats, ref.stats, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.class_ap, ref.class_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.class_ap50, ref.class_ap50, rtol=0, atol=1e-6)
    assert 0.2 < ref.map < 0.9 and json.dumps(gt, sort_keys=True) == before  # ground truth left untouched


def test_faster_results_index_equals_faster_coco_evals_own_load_res(real_run) -> None:
    """The result set built without loadRes's per-entry polygons evaluates exactly as loadRes's (every stat and
    per-class AP equal), gives the same ids/areas, and refuses entries of unknown images."""
    pytest.importorskip("faster_coco_eval")
    from faster_coco_eval import COCOeval_faster

    from yolo_prune.engine.coco import GroundTruth, _faster_results, load_coco

    ids = default_image_ids(real_run.paths)
    fgt = GroundTruth(load_coco(build_coco_gt(real_run.labels, real_run.shapes, ids, 6))).faster()
    results = detections_to_coco(real_run.dets, ids, list(range(6)))
    ours, theirs = _faster_results(fgt, [dict(r) for r in results]), fgt.loadRes([dict(r) for r in results])
    for key in ("id", "area", "iscrowd", "bbox", "score", "image_id", "category_id"):
        assert [a[key] for a in ours.dataset["annotations"]] == [a[key] for a in theirs.dataset["annotations"]]
    stats = []
    for res in (ours, theirs):
        ev = COCOeval_faster(fgt, res, "bbox", print_function=lambda *_: None)
        ev.params.imgIds = ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
        stats.append((list(ev.stats), ev.eval["precision"].tolist()))
    assert stats[0] == stats[1]
    with pytest.raises(ValueError, match="not in the ground truth"):
        _faster_results(fgt, [dict(results[0], image_id=10**9)])


def test_vectorised_test_py_metrics_equal_the_official_loops_on_real_predictions(real_run) -> None:
    """Matching all images at once (and in small blocks) gives test.py's per-image loop result, and the metrics
    its ap_per_class; on the same real predictions."""
    from test_eval_metrics import _v7_ap_per_class, _v7_correct

    from yolo_prune.engine import metrics

    iouv = metrics.iou_thresholds()
    preds, labels = real_run.stats._preds, real_run.stats._labels
    official = torch.cat([_v7_correct(p, t, iouv) for p, t in zip(preds, labels)])
    assert official.any() and torch.equal(metrics.match_images(preds, labels, iouv), official)
    blocks = metrics.MATCH_BLOCK
    try:
        metrics.MATCH_BLOCK = 3000  # a few images per block
        assert torch.equal(metrics.match_images(preds, labels, iouv), official)
    finally:
        metrics.MATCH_BLOCK = blocks
    tp, conf, pcls, tcls = real_run.stats.stats()
    p, r, ap, f1, cls = _v7_ap_per_class(official.numpy(), conf, pcls, tcls)
    m = real_run.stats.compute(6)
    np.testing.assert_allclose(m.ap50, ap[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.ap, ap.mean(1), rtol=0, atol=1e-12)
    assert (m.mp, m.mr) == (pytest.approx(p.mean(), abs=1e-12), pytest.approx(r.mean(), abs=1e-12))


def test_round_decimals_is_pythons_round() -> None:
    """Vectorised rounding equals round(v, n) everywhere, including the values where np.round differs (scaled
    products that land on .5 only after rounding) and exact ties (half to even)."""
    from yolo_prune.engine.coco import round_decimals

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1000, 2000, 200_000), rng.uniform(0, 1, 100_000),
                             np.arange(0, 5000) / 2000 + 0.0005, [2.675, 1.0005, 0.0005, 0.0015, 2.5e-6, 0.125, -0.0005,
                                                                  639.9995, 1e-9, 0.0]])
    for digits in (3, 5):
        expected = np.array([round(float(v), digits) for v in values])
        assert np.array_equal(round_decimals(values, digits), expected)
        if digits == 3:  # the case this function exists for: np.round gets hundreds of these wrong
            assert (np.round(values, digits) != expected).sum() > 100


def test_detections_to_coco_equals_yolov7_loop_and_prepared_gt_repeats(real_run) -> None:
    """Result entries equal YOLOv7 test.py's per-box loop (round(x, 3), round(conf, 5)), and one prepared ground
    truth evaluated many times gives a fresh evaluation's numbers with either backend."""
    from yolo_prune.engine.boxes import xyxy2ltwh
    from yolo_prune.engine.coco import GroundTruth, coco_backend, load_coco

    ids = default_image_ids(real_run.paths)
    loop = []
    for det, img_id in zip(real_run.dets, ids):
        for (conf, cls), b in zip(det[:, 4:6].tolist(), xyxy2ltwh(det[:, :4].double()).tolist()):
            loop.append({"image_id": img_id, "category_id": int(cls), "bbox": [round(v, 3) for v in b],
                         "score": round(conf, 5)})
    results = detections_to_coco(real_run.dets, ids, list(range(6)))
    assert results == loop and len(results) > 1000
    gt_dict = build_coco_gt(real_run.labels, real_run.shapes, ids, 6)
    backends = ["pycocotools"] + (["faster-coco-eval"] if coco_backend() == "faster-coco-eval" else [])
    for backend in backends:
        prepared = GroundTruth(load_coco(gt_dict))
        fresh = coco_evaluate(results, gt_dict, img_ids=ids, backend=backend)
        for subset in (results, results[::2], results):
            again = coco_evaluate([dict(r) for r in subset], prepared, img_ids=ids, backend=backend, owned=True)
            if subset is results:
                np.testing.assert_array_equal(again.stats, fresh.stats)
                np.testing.assert_array_equal(again.class_ap, fresh.class_ap)
            else:
                assert again.map != fresh.map
