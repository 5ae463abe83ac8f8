"""NMS against a brute-force greedy reference on random boxes (batched, class-aware, agnostic, max_det)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_prune.engine.postprocess import non_max_suppression
from yolo_prune.errors import YoloPruneError


def _random_pred(seed: int, b: int = 3, n: int = 200, nc: int = 4, size: float = 320.0) -> torch.Tensor:
    """[b, n, 5 + nc]: clustered boxes (so NMS has work to do), sigmoid-like obj/cls scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(b, 8, 2, generator=g) * size
    pick = torch.randint(0, 8, (b, n), generator=g)
    cxcy = torch.gather(centres, 1, pick[..., None].expand(b, n, 2)) + torch.randn(b, n, 2, generator=g) * 6
    wh = 20 + torch.rand(b, n, 2, generator=g) * 40
    scores = torch.rand(b, n, 1 + nc, generator=g)
    return torch.cat((cxcy, wh, scores), 2)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference(x: np.ndarray, conf_thres, iou_thres, agnostic, multi_label, max_det, classes=None) -> np.ndarray:
    """Greedy NMS written from the YOLOv7 description, one image x [n, 5 + nc] -> [k, 6]."""
    nc = x.shape[1] - 5
    rows = []
    for r in x[x[:, 4] > conf_thres]:
        box = [r[0] - r[2] / 2, r[1] - r[3] / 2, r[0] + r[2] / 2, r[1] + r[3] / 2]
        sc = r[4:5] if nc == 1 else r[5:] * r[4]
        cands = [(j, sc[j]) for j in range(len(sc)) if sc[j] > conf_thres] if multi_label and nc > 1 \
            else [(int(sc.argmax()), sc.max())] if sc.max() > conf_thres else []
        rows += [box + [s, j] for j, s in cands if classes is None or j in classes]
    rows.sort(key=lambda r: -r[4])
    kept: list[list[float]] = []
    for r in rows:
        rivals = [k for k in kept if agnostic or k[5] == r[5]]
        if all(_iou(np.array(r), np.array(k)) <= iou_thres for k in rivals):
            kept.append(r)
    return np.array(kept[:max_det], dtype=np.float64).reshape(-1, 6)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("max_det", [300, 7])
def test_nms_matches_bruteforce(agnostic: bool, multi_label: bool, max_det: int) -> None:
    pred = _random_pred(seed=int(agnostic) + 2 * int(multi_label) + 4 * (max_det == 7))
    out = non_max_suppression(pred, 0.2, 0.45, agnostic=agnostic, multi_label=multi_label, max_det=max_det)
    assert len(out) == pred.shape[0]
    for x, det in zip(pred, out):
        ref = _reference(x.double().numpy(), 0.2, 0.45, agnostic, multi_label, max_det)
        assert det.shape == (ref.shape[0], 6)
        np.testing.assert_allclose(det.numpy(), ref, rtol=1e-5, atol=1e-4)
        assert (det[1:, 4] <= det[:-1, 4]).all()


def test_nms_class_filter_and_single_class() -> None:
    pred = _random_pred(seed=11)
    out = non_max_suppression(pred, 0.1, 0.5, classes=[1, 3], multi_label=True)
    for x, det in zip(pred, out):
        ref = _reference(x.double().numpy(), 0.1, 0.5, False, True, 300, classes=[1, 3])
        np.testing.assert_allclose(det.numpy(), ref, rtol=1e-5, atol=1e-4)
        assert set(det[:, 5].tolist()) <= {1.0, 3.0}
    one = _random_pred(seed=12, nc=1)
    for x, det in zip(one, non_max_suppression(one, 0.3, 0.5, multi_label=True)):
        ref = _reference(x.double().numpy(), 0.3, 0.5, False, False, 300)  # conf = obj when nc == 1
        np.testing.assert_allclose(det.numpy(), ref, rtol=1e-5, atol=1e-4)


def test_nms_does_not_modify_input_and_handles_empty() -> None:
    pred = _random_pred(seed=3)
    before = pred.clone()
    non_max_suppression(pred, 0.25, 0.45)
    assert torch.equal(pred, before)
    out = non_max_suppression(pred, conf_thres=1.1)
    assert all(d.shape == (0, 6) for d in out)
    assert non_max_suppression(torch.zeros(2, 0, 9))[1].shape == (0, 6)


def test_nms_rejects_bad_shape() -> None:
    with pytest.raises(YoloPruneError):
        non_max_suppression(torch.zeros(10, 9))
