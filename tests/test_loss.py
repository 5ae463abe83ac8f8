"""YoloLoss / label assignment on a tiny random detect head (nl=3, na=3, nc=4, strides 8/16/32)."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, complete_box_iou_loss

from yolo_prune.engine.assign import (
    LevelMatch,
    RatioAssigner,
    SimOTAAssigner,
    candidate_cells,
    dynamic_k_match,
)
from yolo_prune.engine.hyp import load_hyp
from yolo_prune.engine.loss import HeadSpec, YoloLoss, bbox_ciou, level_balance, scale_loss_gains

NC = 4
STRIDES = (8, 16, 32)
TINY_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class TinyHead(nn.Module):
    """A Detect-like head: 1x1 convs over given feature maps -> raw maps [B, na, ny, nx, nc + 5]."""

    def __init__(self, nc: int = NC, ch: int = 8) -> None:
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, 3, 3
        self.stride = torch.tensor(STRIDES, dtype=torch.float32)
        pixels = torch.tensor(TINY_ANCHORS, dtype=torch.float32).view(3, 3, 2)
        self.register_buffer("anchors", pixels / self.stride.view(3, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(ch, self.na * self.no, 1) for _ in STRIDES)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        out = []
        for conv, x in zip(self.m, feats):
            b, _, ny, nx = x.shape
            out.append(conv(x).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out


def make_hyp(loss_ota: int, nc: int = NC, img: int = 128) -> dict:
    hyp = scale_loss_gains(load_hyp("scratch.tiny"), nl=3, nc=nc, img_size=img)
    hyp["loss_ota"] = loss_ota
    return hyp


def random_maps(b: int, h: int, w: int, seed: int = 0, no: int = NC + 5) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, h // s, w // s, no, generator=g) for s in STRIDES]


def make_targets() -> Tensor:
    """Three well separated boxes: two in image 0, one in image 1 (normalised cx, cy, w, h)."""
    return torch.tensor(
        [
            [0, 1, 0.23, 0.27, 0.15, 0.22],
            [0, 3, 0.71, 0.66, 0.40, 0.30],
            [1, 2, 0.52, 0.47, 0.60, 0.75],
        ]
    )


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def _write_perfect(maps: list[Tensor], matches: list[LevelMatch], targets: Tensor, anchors: Tensor) -> None:
    """Set box/class logits of each matched cell so that it decodes exactly to its target."""
    for i, (p, m) in enumerate(zip(maps, matches)):
        ny, nx = p.shape[2:4]
        gain = torch.tensor([nx, ny], dtype=torch.float32)
        cells = torch.stack((m.gi, m.gj), 1).float()
        t = targets[m.t]
        xy = _logit((t[:, 2:4] * gain - cells + 0.5) / 2)
        wh = _logit(torch.sqrt(t[:, 4:6] * gain / anchors[i][m.a]) / 2)
        cls = torch.full((len(m), NC), -12.0)
        cls[torch.arange(len(m)), t[:, 1].long()] = 12.0
        p[m.b, m.a, m.gj, m.gi] = torch.cat((xy, wh, torch.full((len(m), 1), 12.0), cls), 1)


def perfect_maps(loss: YoloLoss, targets: Tensor, b: int, h: int, w: int) -> list[Tensor]:
    """Raw maps decoding exactly to the targets at the cells the loss assigns; objectness -12 elsewhere."""
    maps = [torch.full((b, 3, h // s, w // s, NC + 5), -12.0) for s in STRIDES]
    grid = [(m.shape[2], m.shape[3]) for m in maps]
    _write_perfect(maps, candidate_cells(targets, grid, loss.anchors, 4.0), targets, loss.anchors)
    matches = loss.assigner(maps, targets, (h, w))
    for m in maps:
        m[..., 4] = -12.0
    _write_perfect(maps, matches, targets, loss.anchors)
    return maps


@pytest.fixture
def head() -> TinyHead:
    torch.manual_seed(0)
    return TinyHead()


@pytest.mark.parametrize("ota", [0, 1])
def test_loss_finite_positive_and_gradients_flow(head: TinyHead, ota: int) -> None:
    feats = [torch.randn(2, 8, 128 // s, 96 // s) for s in STRIDES]
    loss_fn = YoloLoss(head, make_hyp(ota))
    loss, items = loss_fn(head(feats), make_targets(), torch.zeros(2, 3, 128, 96))
    assert loss.shape == (1,) and items.shape == (4,)
    assert torch.isfinite(loss).all() and loss.item() > 0
    assert (items[:3] > 0).all()
    assert items[3].item() == pytest.approx(items[:3].sum().item(), rel=1e-6)
    assert loss.item() == pytest.approx(2 * items[3].item(), rel=1e-6)  # total * batch size
    assert not items.requires_grad
    loss.backward()
    for conv in head.m:
        assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ota", [0, 1])
@pytest.mark.parametrize("hw", [(128, 128), (96, 160)])
def test_perfect_predictions_beat_random(head: TinyHead, ota: int, hw: tuple[int, int]) -> None:
    h, w = hw
    targets = make_targets()
    loss_fn = YoloLoss(head, make_hyp(ota))
    perfect, p_items = loss_fn(perfect_maps(loss_fn, targets, 2, h, w), targets, torch.zeros(2, 3, h, w))
    random, r_items = loss_fn(random_maps(2, h, w), targets, torch.zeros(2, 3, h, w))
    assert perfect.item() < 0.01 * random.item()
    assert p_items[0].item() < 1e-4  # box: CIoU = 1 at every positive


@pytest.mark.parametrize("ota", [0, 1])
def test_no_targets_in_batch(head: TinyHead, ota: int) -> None:
    maps = [m.requires_grad_() for m in random_maps(2, 64, 64)]
    loss, items = YoloLoss(head, make_hyp(ota))(maps, torch.zeros(0, 6), torch.zeros(2, 3, 64, 64))
    assert torch.isfinite(loss).all() and loss.item() > 0
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    loss.backward()
    assert all(torch.isfinite(m.grad).all() for m in maps)


@pytest.mark.parametrize("ota", [0, 1])
def test_image_without_targets(head: TinyHead, ota: int) -> None:
    targets = make_targets()
    targets = targets[targets[:, 0] == 0]  # image 1 and 2 have none
    loss_fn = YoloLoss(head, make_hyp(ota))
    maps = random_maps(3, 64, 96)
    loss, items = loss_fn(maps, targets, torch.zeros(3, 3, 64, 96))
    assert torch.isfinite(loss).all() and (items[:3] > 0).all()
    matches = loss_fn.assigner(maps, targets, (64, 96))
    assert all((m.b == 0).all() for m in matches) and sum(len(m) for m in matches) > 0


@pytest.mark.parametrize("ota", [0, 1])
def test_sgd_on_raw_maps_reduces_loss(head: TinyHead, ota: int) -> None:
    maps = [nn.Parameter(m) for m in random_maps(2, 64, 64, seed=1)]
    loss_fn = YoloLoss(head, make_hyp(ota, img=64))
    opt = torch.optim.SGD(maps, lr=20.0, momentum=0.9)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, _ = loss_fn(maps, make_targets(), torch.zeros(2, 3, 64, 64))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_head_spec_and_missing_imgs_give_same_loss(head: TinyHead) -> None:
    spec = HeadSpec(nc=NC, anchors=head.anchors, stride=head.stride)
    assert (spec.nl, spec.na, spec.no) == (3, 3, NC + 5)
    maps, t = random_maps(2, 96, 128), make_targets()
    a = YoloLoss(head, make_hyp(1))(maps, t, torch.zeros(2, 3, 96, 128))[1]
    b = YoloLoss(spec, make_hyp(1))(maps, t)[1]
    torch.testing.assert_close(a, b)


def test_assigners_positives() -> None:
    head = TinyHead()
    maps, t = random_maps(2, 128, 128), make_targets()
    cands = RatioAssigner(head.anchors, 4.0)(maps, t, (128, 128))
    ota = SimOTAAssigner(head.anchors, head.stride, 4.0)(maps, t, (128, 128))
    for c, o in zip(cands, ota):
        cand_cells = {tuple(x) for x in torch.stack((c.b, c.a, c.gj, c.gi), 1).tolist()}
        ota_cells = [tuple(x) for x in torch.stack((o.b, o.a, o.gj, o.gi), 1).tolist()]
        assert set(ota_cells) <= cand_cells
        assert (t[o.t, 0].long() == o.b).all()  # a positive's target is in its own image
    assert sum(len(m) for m in ota) < sum(len(m) for m in cands)
    # every target gets a positive on some level
    assert set(torch.cat([m.t for m in ota]).tolist()) == {0, 1, 2}


def test_dynamic_k_resolves_shared_predictions() -> None:
    iou = torch.tensor([[0.9, 0.8, 0.1], [0.85, 0.1, 0.7]])
    cost = torch.tensor([[1.0, 2.0, 9.0], [0.5, 9.0, 3.0]])
    pred, gt = dynamic_k_match(cost, iou, topk=10)
    # k = (1, 1): gt0 -> pred0, gt1 -> pred0; pred0 is cheaper for gt1
    assert pred.tolist() == [0] and gt.tolist() == [1]


def test_bbox_ciou_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(3)
    b1 = torch.cat((torch.rand(50, 2, generator=g) * 10, torch.rand(50, 2, generator=g) * 5 + 0.1), 1)
    b2 = torch.cat((torch.rand(50, 2, generator=g) * 10, torch.rand(50, 2, generator=g) * 5 + 0.1), 1)
    ref = complete_box_iou_loss(box_convert(b1, "cxcywh", "xyxy"), box_convert(b2, "cxcywh", "xyxy"))
    torch.testing.assert_close(1 - bbox_ciou(b1, b2), ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(bbox_ciou(b1, b1), torch.ones(50), atol=1e-4)


def test_scale_loss_gains_known_case() -> None:
    hyp = load_hyp("scratch.tiny")  # box 0.05, cls 0.5, obj 1.0
    scaled = scale_loss_gains(hyp, nl=3, nc=4, img_size=320)
    assert scaled["box"] == pytest.approx(0.05)
    assert scaled["cls"] == pytest.approx(0.5 * 4 / 80)
    assert scaled["obj"] == pytest.approx(0.25)
    four = scale_loss_gains(hyp, nl=4, nc=80, img_size=640)
    assert (four["box"], four["cls"], four["obj"]) == pytest.approx((0.0375, 0.375, 0.75))
    assert hyp["box"] == 0.05 and hyp["obj"] == 1.0  # input left alone


def test_level_balance() -> None:
    assert level_balance(3) == [4.0, 1.0, 0.4]
    assert level_balance(4) == [4.0, 1.0, 0.25, 0.06]


def test_label_smoothing_raises_perfect_class_loss(head: TinyHead) -> None:
    targets = make_targets()
    plain = YoloLoss(head, make_hyp(0))
    maps = perfect_maps(plain, targets, 2, 128, 128)
    smooth = YoloLoss(head, {**make_hyp(0), "label_smoothing": 0.1})
    assert smooth(maps, targets)[1][2] > 10 * plain(maps, targets)[1][2]


def _random_case(seed: int, batch: int = 6, n: int = 40, hw: int = 128):
    g = torch.Generator().manual_seed(seed)
    head = TinyHead()
    maps = [torch.randn(batch, 3, hw // s, hw // s, NC + 5, generator=g) for s in STRIDES]
    t = torch.zeros(n, 6)
    t[:, 0] = torch.randint(0, batch - 1, (n,), generator=g).sort().values  # the last image has no target
    t[:, 1] = torch.randint(0, NC, (n,), generator=g).float()
    t[:, 2:4] = torch.rand(n, 2, generator=g)
    t[:, 4:6] = torch.rand(n, 2, generator=g) * 0.4 + 0.02
    return head, maps, t


@pytest.mark.parametrize("seed", range(4))
def test_ota_batched_over_images_equals_one_image_at_a_time(seed: int) -> None:
    """The vectorised assignment (all images padded into one tensor) picks exactly what matching each image
    alone picks: same cells, same targets, same order."""
    head, maps, t = _random_case(seed)
    ota = SimOTAAssigner(head.anchors, head.stride, 4.0)
    together = ota(maps, t, (128, 128))
    parts: list[list[tuple]] = [[] for _ in STRIDES]
    for b in range(maps[0].shape[0]):
        rows = (t[:, 0] == b).nonzero(as_tuple=True)[0]
        if not len(rows):
            continue
        alone_t = t[rows].clone()
        alone_t[:, 0] = 0
        alone = ota([m[b:b + 1] for m in maps], alone_t, (128, 128))
        for level, m in enumerate(alone):
            parts[level] += [(b, a, gj, gi, int(rows[k])) for a, gj, gi, k in
                             zip(m.a.tolist(), m.gj.tolist(), m.gi.tolist(), m.t.tolist())]
    for level, m in enumerate(together):
        got = list(zip(m.b.tolist(), m.a.tolist(), m.gj.tolist(), m.gi.tolist(), m.t.tolist()))
        assert got == parts[level]
    assert sum(len(m) for m in together) > 20


def test_dynamic_k_batch_padding_takes_nothing() -> None:
    """A padded batch: image 1 has one target and two cells; padding rows/columns (inf cost) are never matched."""
    inf = float("inf")
    cost = torch.tensor([[[1.0, 2.0, 9.0], [0.5, 9.0, 3.0]], [[2.0, 1.0, inf], [inf, inf, inf]]])
    iou = torch.tensor([[[0.9, 0.8, 0.1], [0.85, 0.1, 0.7]], [[0.6, 0.7, 0.0], [0.0, 0.0, 0.0]]])
    img, pred, gt = dynamic_k_match(cost, iou, topk=10)
    assert list(zip(img.tolist(), pred.tolist(), gt.tolist())) == [(0, 0, 1), (1, 1, 0)]
