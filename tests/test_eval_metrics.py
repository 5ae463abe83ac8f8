"""YOLOv7 test.py metrics: known answers and agreement with a verbatim copy of the official code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from yolo_prune.engine.metrics import StatsAccumulator, ap_per_class, compute_ap, iou_thresholds, match_predictions

_trapz = getattr(np, "trapezoid", None) or getattr(np, "trapz")


# ---- verbatim (modulo np.trapz) from WongKinYiu/yolov7 utils/metrics.py and test.py -------------------
def _v7_compute_ap(recall, precision):
    mrec = np.concatenate(([0.], recall, [recall[-1] + 0.01]))
    mpre = np.concatenate(([1.], precision, [0.]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return _trapz(np.interp(x, mrec, mpre), x), mpre, mrec


def _v7_ap_per_class(tp, conf, pred_cls, target_cls):
    i = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes = np.unique(target_cls)
    nc = unique_classes.shape[0]
    px = np.linspace(0, 1, 1000)
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = (target_cls == c).sum()
        n_p = i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + 1e-16)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], _, _ = _v7_compute_ap(recall[:, j], precision[:, j])
    f1 = 2 * p * r / (p + r + 1e-16)
    i = f1.mean(0).argmax()
    return p[:, i], r[:, i], ap, f1[:, i], unique_classes.astype('int32')


def _v7_correct(pred, labels, iouv):
    """test.py's per-image matching; labels [m, 5] = (cls, xyxy)."""
    nl = len(labels)
    correct = torch.zeros(pred.shape[0], len(iouv), dtype=torch.bool)
    detected = []
    tcls_tensor = labels[:, 0]
    tbox = labels[:, 1:5]
    for cls in torch.unique(tcls_tensor):
        ti = (cls == tcls_tensor).nonzero(as_tuple=False).view(-1)
        pi = (cls == pred[:, 5]).nonzero(as_tuple=False).view(-1)
        if pi.shape[0]:
            ious, i = box_iou(pred[pi, :4], tbox[ti]).max(1)
            detected_set = set()
            for j in (ious > iouv[0]).nonzero(as_tuple=False):
                d = ti[i[j]]
                if d.item() not in detected_set:
                    detected_set.add(d.item())
                    detected.append(d)
                    correct[pi[j]] = ious[j] > iouv
                    if len(detected) == nl:
                        break
    return correct
# -------------------------------------------------------------------------------------------------------


def _random_image(g: torch.Generator, nc: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [m, 5] (cls, xyxy) and predictions [n, 6] near them (some jittered, some spurious)."""
    m = int(torch.randint(0, 6, (1,), generator=g))
    xy = torch.rand(m, 2, generator=g) * 200
    labels = torch.cat((torch.randint(0, nc, (m, 1), generator=g).float(), xy, xy + 10 + torch.rand(m, 2, generator=g) * 50), 1)
    dup = labels.repeat(2, 1)
    jit = torch.cat((dup[:, :1], dup[:, 1:] + torch.randn(2 * m, 4, generator=g) * 4), 1)
    k = int(torch.randint(0, 4, (1,), generator=g))
    fxy = torch.rand(k, 2, generator=g) * 200
    spurious = torch.cat((torch.randint(0, nc, (k, 1), generator=g).float(), fxy, fxy + 30), 1)
    cand = torch.cat((jit, spurious), 0)
    conf = torch.rand(cand.shape[0], generator=g)
    pred = torch.cat((cand[:, 1:], conf[:, None], cand[:, :1]), 1)
    return labels, pred[conf.argsort(descending=True)]


def test_matching_and_ap_agree_with_official_code() -> None:
    g = torch.Generator().manual_seed(0)
    iouv = iou_thresholds()
    acc, stats = StatsAccumulator(), []
    for _ in range(40):
        labels, pred = _random_image(g)
        ours = match_predictions(pred, labels, iouv)
        assert torch.equal(ours, _v7_correct(pred, labels, iouv))
        acc.add(pred, labels)
        stats.append((ours.numpy(), pred[:, 4].numpy(), pred[:, 5].numpy(), labels[:, 0].numpy()))
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats))
    assert tp.any() and not tp.all()
    p, r, ap, f1, cls = _v7_ap_per_class(tp, conf, pcls, tcls)
    res = ap_per_class(tp, conf, pcls, tcls)
    for a, b in ((res.p, p), (res.r, r), (res.ap, ap), (res.f1, f1), (res.classes, cls)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    m = acc.compute(nc=3)
    assert m.mp == pytest.approx(p.mean()) and m.mr == pytest.approx(r.mean())
    assert m.map50 == pytest.approx(ap[:, 0].mean()) and m.map == pytest.approx(ap.mean())


def test_known_answers() -> None:
    assert compute_ap(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1.0)
    labels = torch.tensor([[0, 0, 0, 100, 100], [0, 200, 200, 300, 300.0]])
    perfect = torch.tensor([[0, 0, 100, 100, 0.9, 0], [200, 200, 300, 300, 0.8, 0.0]])
    acc = StatsAccumulator()
    acc.add(perfect, labels)
    m = acc.compute(nc=1)
    assert (m.mp, m.mr, m.map50, m.map) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    half = StatsAccumulator()
    half.add(perfect[:1], labels)  # one of two objects found
    m = half.compute(nc=1)
    assert m.mr == pytest.approx(0.5, abs=1e-3) and m.mp == pytest.approx(1.0)
    x = np.linspace(0, 1, 101)  # precision 1 up to recall 0.5, then the 0.01 sentinel drop to 0
    assert m.map50 == pytest.approx(_trapz(np.interp(x, [0, 0.5, 0.51], [1, 1, 0]), x))
    assert 0.5 < m.map50 < 0.51


def test_shifted_box_loses_high_iou_thresholds() -> None:
    labels = torch.tensor([[0, 0, 0, 100, 100.0]])
    shifted = torch.tensor([[16, 0, 116, 100, 0.9, 0.0]])  # IoU = 84 / 116 = 0.724
    correct = match_predictions(shifted, labels, iou_thresholds())
    assert correct.tolist() == [[True] * 5 + [False] * 5]
    acc = StatsAccumulator()
    acc.add(shifted, labels)
    m = acc.compute(nc=1)
    assert m.map50 == pytest.approx(1.0) and m.map == pytest.approx(0.5)


def test_no_true_positive_gives_zeros_and_wrong_class_is_not_matched() -> None:
    acc = StatsAccumulator()
    acc.add(torch.tensor([[0, 0, 100, 100, 0.9, 1.0]]), torch.tensor([[0, 0, 0, 100, 100.0]]))
    m = acc.compute(nc=2)
    assert (m.mp, m.mr, m.map50, m.map) == (0.0, 0.0, 0.0, 0.0)
    assert m.n_labels.tolist() == [1, 0]
