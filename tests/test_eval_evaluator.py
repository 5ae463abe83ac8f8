"""evaluate() end to end: a fake model over an in-memory loader that follows the batch contract."""
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
from torch import nn
from torch.utils.data import DataLoader

from yolo_prune.engine import evaluate, format_results
from yolo_prune.errors import DataError, YoloPruneError

S, NC, N = 64, 3, 10  # input size, classes, prediction rows per image
ORIG = [(48, 64), (64, 40), (32, 32), (60, 90), (100, 70)]  # (h0, w0)
NAMES = ["cat", "dog", "bird"]


def _letterbox(h0: int, w0: int):
    """((h0, w0), ((h/h0, w/w0), (padw, padh))) for a S x S letterbox, as YOLOv7 ``shapes``."""
    r = min(S / h0, S / w0)
    h, w = round(h0 * r), round(w0 * r)
    return (h0, w0), ((h / h0, w / w0), ((S - w) / 2, (S - h) / 2))


def _to_input(box: np.ndarray, shape) -> np.ndarray:
    """Original-pixel xyxy [n, 4] -> letterboxed input pixels."""
    (_, _), ((rh, rw), (pw, ph)) = shape
    return box * [rw, rh, rw, rh] + [pw, ph, pw, ph]


def _scene(seed: int, noise: float):
    """Per image: GT [m, 5] (cls, xyxy) and detections [k, 6] (xyxy, score, cls) in original pixels.

    Objects sit in separate quadrants so NMS keeps every detection; some objects are missed and some get
    an extra wrong-class detection.
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for h0, w0 in ORIG:
        gts, dets = [], []
        for qx, qy in [(0, 0), (1, 0), (0, 1), (1, 1)][: rng.integers(1, 5)]:
            cw, ch = w0 / 2, h0 / 2
            x1, y1 = qx * cw + rng.uniform(2, cw * 0.3), qy * ch + rng.uniform(2, ch * 0.3)
            box = np.array([x1, y1, x1 + rng.uniform(0.4, 0.65) * cw, y1 + rng.uniform(0.4, 0.65) * ch])
            c = int(rng.integers(0, NC))
            gts.append([c, *box])
            if noise == 0 or rng.random() < 0.8:
                dets.append([*(box + rng.normal(0, noise, 4)), rng.uniform(0.2, 1.0), c])
            if noise and rng.random() < 0.3:
                dets.append([*(box + rng.normal(0, noise, 4)), rng.uniform(0.01, 0.5), (c + 1) % NC])
        gt = np.array(gts, dtype=np.float64).reshape(-1, 5)
        det = np.array(dets, dtype=np.float64).reshape(-1, 6)
        det[:, [0, 2]] = det[:, [0, 2]].clip(0, w0)
        det[:, [1, 3]] = det[:, [1, 3]].clip(0, h0)
        det[:, 4] = det[:, 4].astype(np.float32)
        scenes.append((gt, det, _letterbox(h0, w0)))
    return scenes


class FakeModel(nn.Module):
    """Returns stored predictions [B, N, 5 + nc] for the image whose pixel (0, 0, 0) encodes its index."""

    def __init__(self, scenes) -> None:
        super().__init__()
        pred = torch.zeros(len(scenes), N, 5 + NC)
        for i, (_, det, shape) in enumerate(scenes):
            b = _to_input(det[:, :4], shape)
            pred[i, : len(det), :4] = torch.from_numpy(np.c_[(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]])
            pred[i, : len(det), 4] = torch.from_numpy(det[:, 4])
            pred[i, torch.arange(len(det)), 5 + torch.from_numpy(det[:, 5]).long()] = 1.0
        self.register_buffer("pred", pred)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, img: torch.Tensor):
        idx = (img[:, 0, 0, 0].float() * 255).round().long()
        return self.pred[idx] * self.scale.to(self.pred.dtype), [img]


def _loader(scenes, batch_size: int = 2) -> DataLoader:
    items = []
    for i, (gt, _, shape) in enumerate(scenes):
        img = torch.zeros(3, S, S, dtype=torch.uint8)
        img[0, 0, 0] = i
        b = _to_input(gt[:, 1:5], shape) / S
        t = np.c_[np.zeros(len(gt)), gt[:, 0], (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]]
        items.append((img, torch.tensor(t, dtype=torch.float32), f"/data/images/img{i}.jpg", shape))

    def collate(batch):
        imgs, labels, paths, shapes = zip(*batch)
        labels = [lab.clone() for lab in labels]
        for j, lab in enumerate(labels):
            lab[:, 0] = j
        return torch.stack(imgs), torch.cat(labels), paths, shapes

    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _gt_json(scenes, path: Path, cat_of=tuple(range(NC))) -> Path:
    images, anns = [], []
    for i, (gt, _, ((h0, w0), _)) in enumerate(scenes):
        images.append({"id": 10 + i, "width": w0, "height": h0, "file_name": f"img{i}.jpg"})
        for c, x1, y1, x2, y2 in gt.tolist():
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat_of[int(c)], "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    cats = [{"id": cat_of[i], "name": NAMES[i]} for i in range(NC)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _reference(scenes, tmp: Path):
    """Raw pycocotools on the known original-pixel boxes: (stats, per-class AP@.5:.95)."""
    res = [{"image_id": 10 + i, "category_id": int(c), "score": round(float(s), 5),
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]}
           for i, (_, det, _) in enumerate(scenes) for x1, y1, x2, y2, s, c in det.tolist()]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(_gt_json(scenes, tmp / "ref_gt.json")))
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap = [prec[:, :, k][prec[:, :, k] > -1].mean() if (prec[:, :, k] > -1).any() else np.nan for k in range(NC)]
    return np.array(ev.stats), np.array(ap), len(res)


def test_evaluate_matches_raw_pycocotools(tmp_path: Path) -> None:
    scenes = _scene(seed=0, noise=1.5)
    stats, ap, n_dets = _reference(scenes, tmp_path)
    r = evaluate(FakeModel(scenes), _loader(scenes), nc=NC, names=NAMES, save_json=tmp_path, progress=False)
    assert r.map == pytest.approx(stats[0], abs=1e-6) and r.map50 == pytest.approx(stats[1], abs=1e-6)
    np.testing.assert_allclose(r.class_ap, ap, atol=1e-6)
    np.testing.assert_allclose(r.coco_stats, stats, atol=1e-6)
    assert 0.2 < r.map < 0.95 and 0 < r.mp <= 1 and 0 < r.mr < 1 and 0 < r.map50_yolo <= 1
    assert r.n_images == len(ORIG) and r.n_labels == sum(len(s[0]) for s in scenes)
    assert len(json.loads(r.json_path.read_text())) == n_dets and r.json_path.name == "predictions.json"
    assert r.speed[3:] == (S, S, 2) and all(t >= 0 for t in r.speed[:3])
    assert {row.name for row in r.rows} <= set(NAMES) and all(row.images == len(ORIG) for row in r.rows)


def test_external_coco_gt_with_sparse_categories(tmp_path: Path) -> None:
    scenes = _scene(seed=1, noise=1.5)
    stats, ap, _ = _reference(scenes, tmp_path)
    gt = _gt_json(scenes, tmp_path / "gt.json", cat_of=(2, 5, 11))
    out = tmp_path / "pred.json"
    r = evaluate(FakeModel(scenes), _loader(scenes, 3), nc=NC, coco_gt=gt, save_json=out, progress=False)
    assert r.map == pytest.approx(stats[0], abs=1e-6)
    np.testing.assert_allclose(r.class_ap, ap, atol=1e-6)
    assert {d["category_id"] for d in json.loads(out.read_text())} <= {2, 5, 11}


def test_perfect_model_scores_one() -> None:
    scenes = _scene(seed=2, noise=0.0)
    r = evaluate(FakeModel(scenes), _loader(scenes), nc=NC, progress=False)
    for v in (r.mp, r.mr, r.map50, r.map, r.map50_yolo, r.map_yolo):
        assert v == pytest.approx(1.0, abs=1e-3)


def test_callable_numpy_output_max_images_and_train_mode(tmp_path: Path) -> None:
    scenes = _scene(seed=3, noise=1.5)
    model = FakeModel(scenes).train()
    r = evaluate(lambda img: (model(img)[0].numpy(),), _loader(scenes), nc=NC, max_images=3, progress=False)
    assert r.n_images == 3 and r.n_labels == sum(len(s[0]) for s in scenes[:3])
    evaluate(model, _loader(scenes), nc=NC, max_images=1, progress=False)
    assert model.training


def test_format_results_table() -> None:
    scenes = _scene(seed=0, noise=1.5)
    r = evaluate(FakeModel(scenes), _loader(scenes), nc=NC, names=NAMES, progress=False)
    text = format_results(r, NAMES, verbose=True, file=None)
    lines = text.splitlines()
    assert lines[0].split() == ["Class", "Images", "Labels", "P", "R", "mAP@.5", "mAP@.5:.95", "COCO@.5",
                                "COCO@.5:.95"]
    assert lines[1].split()[:3] == ["all", str(len(ORIG)), str(r.n_labels)]
    # test.py's own four numbers as the official script prints them (%.3g), then pycocotools' two
    assert lines[1].split()[3:] == ["%.3g" % v for v in (r.mp, r.mr, r.map50_yolo, r.map_yolo, r.map50, r.map)]
    row = r.rows[0]
    assert lines[2].split()[3:] == ["%.3g" % v for v in (row.p, row.r, row.ap50_yolo, row.ap_yolo, row.ap50, row.ap)]
    assert len(lines) == 3 + len(r.rows) and lines[-1].startswith("Speed: ")
    assert "Speed" in format_results(r, file=io.StringIO()) and len(format_results(r, file=None).splitlines()) == 3
    import contextlib

    redirected = io.StringIO()
    with contextlib.redirect_stdout(redirected):  # the default stream is looked up when printing, not at import
        format_results(r)
    assert redirected.getvalue().splitlines()[1].split()[0] == "all"


def test_errors() -> None:
    scenes = _scene(seed=0, noise=1.5)
    with pytest.raises(DataError):
        evaluate(FakeModel(scenes), [], nc=NC, progress=False)
    with pytest.raises(YoloPruneError):
        evaluate(FakeModel(scenes), _loader(scenes), nc=NC + 1, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_matches_cpu() -> None:
    scenes = _scene(seed=0, noise=1.5)
    model = FakeModel(scenes)
    cpu = evaluate(model, _loader(scenes), nc=NC, progress=False)
    gpu = evaluate(model, _loader(scenes), nc=NC, device="cuda", half=True, progress=False)
    assert gpu.map == pytest.approx(cpu.map, abs=0.02) and model.scale.dtype == torch.float32
