"""The auxiliary-head loss of the P6 models (official ComputeLossAuxOTA) on a tiny batch: lead-guided assignment,
find_5_positive candidates, the aux weight, and the trainer picking it for IAuxDetect heads."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from test_loss import STRIDES, TinyHead, make_hyp, make_targets, random_maps
from yolo_prune.engine.assign import SimOTAAssigner, candidate_cells
from yolo_prune.engine.loss import AuxYoloLoss, YoloLoss, make_loss

H = W = 128


@pytest.fixture()
def head() -> TinyHead:
    torch.manual_seed(0)
    return TinyHead()


def cells(match) -> set[tuple[int, int, int, int]]:
    return set(zip(match.b.tolist(), match.a.tolist(), match.gj.tolist(), match.gi.tolist()))


def test_find_5_positive_takes_all_four_neighbours():
    """bias 1.0: the target's cell and its left, upper, right and lower neighbours; bias 0.5: the two nearest."""
    targets = torch.tensor([[0, 0, 5.3 / 16, 7.6 / 16, 2 / 16, 2 / 16]])  # 16x16 grid, centre (5.3, 7.6)
    anchors = torch.tensor([[[2.0, 2.0]]])
    five = candidate_cells(targets, [(16, 16)], anchors, 4.0, bias=1.0)[0]
    three = candidate_cells(targets, [(16, 16)], anchors, 4.0, bias=0.5)[0]
    assert {(j, i) for _, _, j, i in cells(five)} == {(7, 5), (7, 4), (6, 5), (7, 6), (8, 5)}
    assert {(j, i) for _, _, j, i in cells(three)} == {(7, 5), (7, 4), (8, 5)}


def test_aux_positives_are_chosen_from_the_lead_predictions(head):
    """Lead-guided: changing the auxiliary maps changes no positive; changing the lead maps does."""
    hyp = make_hyp(1)
    loss = AuxYoloLoss(head, hyp)
    lead, targets = random_maps(2, H, W, seed=1), make_targets()
    aux_a, aux_b = random_maps(2, H, W, seed=2), random_maps(2, H, W, seed=3)

    def aux_box_cells(lead_maps, aux_maps):
        aux_maps = [m.clone().requires_grad_(True) for m in aux_maps]
        total, _ = loss(lead_maps + aux_maps, targets, torch.zeros(2, 3, H, W))
        total.backward()
        return [set(map(tuple, (m.grad[..., :4].abs().sum(-1) > 0).nonzero().tolist())) for m in aux_maps]

    first = aux_box_cells(lead, aux_a)
    assert first == aux_box_cells(lead, aux_b) and sum(map(len, first)) > 0
    expected = SimOTAAssigner(head.anchors, head.stride, hyp["anchor_t"], topk=20, bias=1.0)(lead, targets, (H, W))
    assert first == [cells(m) for m in expected]
    assert aux_box_cells(random_maps(2, H, W, seed=9), aux_a) != first


def test_aux_weight_enters_every_term_linearly(head):
    """loss(w) = (1 - w) loss(0) + w loss(1) for box, obj and cls alike; w = 0 is the lead loss alone (top-20 OTA)."""
    maps, targets = random_maps(2, H, W, seed=4) + random_maps(2, H, W, seed=5), make_targets()
    hyp = make_hyp(1)
    items = {w: AuxYoloLoss(head, hyp, aux_weight=w)(maps, targets)[1] for w in (0.0, 0.25, 1.0)}
    torch.testing.assert_close(items[0.25], 0.75 * items[0.0] + 0.25 * items[1.0])
    lead_only = YoloLoss(head, hyp, assigner=SimOTAAssigner(head.anchors, head.stride, hyp["anchor_t"], topk=20))
    torch.testing.assert_close(items[0.0], lead_only(maps[:3], targets)[1])
    assert AuxYoloLoss(head, hyp).aux_weight == 0.25 and AuxYoloLoss(head, {**hyp, "aux_weight": 0.5}).aux_weight == 0.5


def test_aux_loss_trains_both_heads(head):
    """A few SGD steps on the raw maps lower the loss; both lead and auxiliary maps receive gradients."""
    maps = [m.clone().requires_grad_(True) for m in random_maps(2, H, W, seed=6) + random_maps(2, H, W, seed=7)]
    loss = AuxYoloLoss(head, make_hyp(1))
    opt = torch.optim.SGD(maps, lr=0.5)
    first = None
    for _ in range(5):
        opt.zero_grad()
        total, _ = loss(maps, make_targets())
        first = first if first is not None else float(total.detach())
        total.backward()
        opt.step()
    assert float(total) < first
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_trainer_loss_for_p6_heads(fixtures_dir):
    """yolov7-w6's IAuxDetect head trains with the auxiliary loss on its 8 train-mode maps."""
    from yolo_prune.engine.loss import scale_loss_gains
    from yolo_prune.models import build_model
    from yolo_prune.models.spec import load_cfg

    cfg = load_cfg(fixtures_dir / "official-cfg" / "training" / "yolov7-w6.yaml")
    cfg["width_multiple"] = 0.0625
    torch.manual_seed(0)
    model = build_model(cfg, nc=2).train()
    hyp = scale_loss_gains(make_hyp(1), model.detect.nl, 2, 128)
    loss = make_loss(model.detect, hyp)
    assert isinstance(loss, AuxYoloLoss) and model.detect.nl == 4
    maps = model(torch.rand(2, 3, 128, 128))
    assert len(maps) == 8 and [m.shape[2] for m in maps[:4]] == [m.shape[2] for m in maps[4:]] == [16, 8, 4, 2]
    targets = make_targets()
    targets[:, 1] = targets[:, 1] % 2
    total, items = loss(maps, targets, torch.zeros(2, 3, 128, 128))
    total.backward()
    assert torch.isfinite(items).all() and model.detect.m2[0].weight.grad.abs().sum() > 0
    assert not isinstance(make_loss(build_model("yolov7-tiny", nc=2).detect, hyp), AuxYoloLoss)
