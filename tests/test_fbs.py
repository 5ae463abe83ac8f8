"""FBS run-time channel gating: the gated conv equals the plain conv at density 1.0, computes only the selected
channels below it (gathered weights, same outputs), MACs counted from the gates, the density schedule end to end."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from yolo_prune.checkpoint import load_checkpoint, load_model, save_checkpoint
from yolo_prune.cli import main
from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model
from yolo_prune.models.classify import build_classifier
from yolo_prune.models.gating import GatedConv, gated_convs, saliency_l1, set_density, set_fast, winners
from yolo_prune.prune.fbs import MacCounter, backbone_layers, gate_network, gateable, static_at_macs


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 3 - 1.5)  # negative scales too
    return model.eval()


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("arch,width", [("vgg16_bn", 0.125), ("resnet18", 0.25), ("resnet50", 0.125),
                                        ("scnnb", 0.5)])
def test_gated_network_equals_plain_at_density_one(arch, width):
    torch.manual_seed(0)
    model = _randomise(build_classifier(arch, nc=10, in_ch=3, width=width), 1)
    graph = derive_graph(model)
    gated = gate_network(model, graph)
    assert len(gated_convs(gated)) == len(gateable(model, graph)) > 0
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), model(x), atol=1e-5, rtol=1e-4)


def test_yolov7_tiny_backbone_gated_equals_plain_at_density_one():
    torch.manual_seed(0)
    model = _randomise(build_model("yolov7-tiny", nc=2), 2)
    graph = derive_graph(model)
    layers = backbone_layers(model, graph)
    rows = len(model.yaml["backbone"])
    assert layers and all(int(graph[i].name.split(".")[1]) < rows for i in layers)
    gated = gate_network(model, graph, layers)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_first(gated(x)), _first(model(x)), atol=1e-4, rtol=1e-4)


def test_k_winners_take_all():
    s = torch.tensor([[0.1, 0.9, 0.0, 0.5], [3.0, 1.0, 2.0, 0.2]])
    assert torch.equal(winners(s, 0.5), torch.tensor([[0.0, 0.9, 0.0, 0.5], [3.0, 0.0, 2.0, 0.0]]))
    assert torch.equal(winners(s, 1.0), s) and int((winners(s, 0.01) > 0).sum(1).max()) == 1


def test_below_one_only_the_selected_channels_are_computed(monkeypatch):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(6, 10, 3, padding=1), _randomise(nn.BatchNorm2d(10), 3)
    gate = GatedConv(conv, bn, density=0.3).eval()
    nn.init.normal_(gate.predictor.weight)  # input-dependent saliencies
    x = torch.rand(1, 6, 8, 8)
    x[:, [1, 4]] = 0  # channels an upstream gate suppressed
    with torch.no_grad():
        dense = gate(x)
    selected = (winners(F.relu(gate.predictor(x.mean((2, 3)))), 0.3) > 0)[0]
    assert int(selected.sum()) == 3 and torch.all(dense[0, ~selected] == 0)
    shapes = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda inp, w, *a, **k: shapes.append((tuple(inp.shape), tuple(w.shape)))
                        or real(inp, w, *a, **k))
    gate.fast = True
    with torch.no_grad():
        fast = gate(x)
    torch.testing.assert_close(fast, dense, atol=1e-6, rtol=1e-5)
    assert shapes == [((1, 4, 8, 8), (3, 4, 3, 3))]  # 3 of 10 filters, over 4 of 6 input channels


def test_fast_network_equals_dense_and_macs_are_counted_from_the_gates():
    torch.manual_seed(0)
    model = _randomise(build_classifier("vgg16_bn", nc=10, in_ch=1, width=0.125), 4)
    graph = derive_graph(model)
    gated = gate_network(model, graph, density=0.5).eval()
    for g in gated_convs(gated):
        nn.init.normal_(g.predictor.weight, std=0.05)
    gated_graph = derive_graph(gated)
    counter = MacCounter(gated, gated_graph, 32, 1)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        dense = gated(x)
        macs = counter.per_image()
        set_fast(gated)
        fast = torch.cat([gated(x[i:i + 1]) for i in range(3)])
    assert torch.isfinite(dense).all()
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    gates = gated_convs(gated)
    expected, hw = 0.0, 32
    for i, (conv, gate) in enumerate(zip(convs, gates)):  # VGG: a chain, each conv reads the previous one's gate
        hw = hw // 2 if i in (2, 4, 7, 10) else hw
        in_active = gates[i - 1].active[0].item() if i else 1
        expected += gate.active[0].item() * in_active * 9 * hw * hw + conv.in_channels * conv.out_channels
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    expected += sum(m.in_features * m.out_features for m in linears)
    assert macs[0].item() == pytest.approx(expected)
    assert macs.max() < counter.dense


def test_static_pruning_at_equal_macs():
    torch.manual_seed(0)
    model = build_classifier("resnet18", nc=10, in_ch=1, width=0.25)
    graph = derive_graph(model)
    layers = gateable(model, graph)
    from yolo_prune.models.complexity import count_gflops

    target = 0.7 * count_gflops(model, 32, 1) / 2 * 1e9
    rate, pruned = static_at_macs(model, graph, layers, target, 32, 1)
    got = count_gflops(pruned, 32, 1) / 2 * 1e9
    assert 0 < rate < 0.95 and abs(got - target) / target < 0.03


def test_saliency_l1_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("scnnb", nc=10, in_ch=1, img_size=16, width=0.25)
    gated = gate_network(model, derive_graph(model), density=0.5).train()
    gated(torch.rand(4, 1, 16, 16))
    term = saliency_l1(gated)
    assert term is not None and term.requires_grad and term.item() > 0
    copy.deepcopy(gated)  # the stored saliency (an autograd graph) does not block copies
    path = save_checkpoint(gated.eval(), tmp_path / "g.pt")
    raw = load_checkpoint(path).raw
    assert raw["gating"]["density"] == 0.5 and raw["gating"]["layers"][0] == ["net.features.0", "net.features.1"]
    back = load_model(path)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), gated(x))
    from yolo_prune.errors import PruningError
    from yolo_prune.prune import prune

    with pytest.raises(PruningError, match="FBS-gated: prune filters before gating"):
        prune(back, 0.5)


@pytest.mark.slow
def test_fbs_schedule_end_to_end(tmp_path, capsys):
    from yolo_prune.engine.classify import ClassifySettings, train_classifier

    base = train_classifier(ClassifySettings(arch="scnnb", width=0.25, img_size=16, epochs=2, device="cpu",
                                             project=str(tmp_path), name="base", progress=False))
    out = tmp_path / "fbs"
    argv = ["fbs", "--weights", str(base.best), "--density", "0.5", "--steps", "1", "--epochs", "1",
            "--out", str(out), "--latency-iters", "5"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| step1 | 0.500 |" in text and "static (rate" in text
    rows = {r["name"]: r for r in json.loads((out / "fbs.json").read_text())["rows"]}
    assert set(rows) == {"base", "step0", "step1", "static"}
    assert rows["step0"]["density"] == 1.0 and rows["step1"]["macs"] < rows["step0"]["macs"] < rows["base"]["macs"] * 1.01
    # static: the uniform rate whose MACs come closest (this 8/16-filter net reaches only a few MAC levels)
    from yolo_prune.models.complexity import count_gflops
    from yolo_prune.prune import prune

    model, target = load_model(base.best), rows["step1"]["macs"]
    layers = gateable(model, derive_graph(model))
    reachable = [count_gflops(prune(model, [(i, r / 20) for i in layers], "l1", summarize=False).model, 16, 1) / 2 * 1e9
                 for r in range(1, 19)]
    assert abs(rows["static"]["macs"] - target) <= min(abs(m - target) for m in reachable)
    assert all(rows[n]["latency_ms"] > 0 for n in ("base", "step1", "static"))
    assert load_checkpoint(rows["step1"]["weights"]).raw["gating"]["l1"] == 1e-3
    stamp = (out / "fbs.json").stat().st_mtime_ns
    assert main(argv) == 0 and (out / "fbs.json").stat().st_mtime_ns == stamp  # finished: nothing re-run
    assert main(argv[:-2] + ["--latency-iters", "6"]) == 2
    assert "other settings (latency_iters)" in capsys.readouterr().err


def test_fbs_bad_flags(tmp_path, capsys):
    path = save_checkpoint(build_classifier("scnnb", nc=10, in_ch=1, img_size=16, width=0.25), tmp_path / "s.pt")
    assert main(["fbs", "--weights", str(path), "--density", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--density must be in (0, 1]" in capsys.readouterr().err
    assert main(["fbs", "--weights", str(path), "--layers", "[99]", "--out", str(tmp_path / "o")]) == 2
    assert "layer 99" in capsys.readouterr().err
