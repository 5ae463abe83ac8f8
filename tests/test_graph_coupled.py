"""Graphs of the classification CNNs (torch.fx tracing): coupled residual groups, the classifier's Linear,
the ``coupled`` key of the graph file, and refusals that name the operation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from yolo_prune.cli import main
from yolo_prune.errors import PruningError
from yolo_prune.graph import check_against, derive_graph, read_published
from yolo_prune.models.classify import build_classifier
from yolo_prune.prune import prune


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_classifier("resnet18", nc=10, in_ch=3, width=0.25).eval()


def test_resnet18_groups_are_the_residual_stages(r18):
    graph = derive_graph(r18)
    names = [[graph[i].name for i in g] for g in graph.groups]
    assert names == [["net.conv1", "net.layer1.0.conv2", "net.layer1.1.conv2"],
                     ["net.layer2.0.conv2", "net.layer2.0.downsample.0", "net.layer2.1.conv2"],
                     ["net.layer3.0.conv2", "net.layer3.0.downsample.0", "net.layer3.1.conv2"],
                     ["net.layer4.0.conv2", "net.layer4.0.downsample.0", "net.layer4.1.conv2"]]
    assert graph.nconv == 20 and graph[20].kind == "linear" and graph[20].name == "net.fc"
    assert graph[20].spatial == 1 and graph[20].inputs == ((19, 128, 0, 1),)
    assert graph[1].bn == "net.layer1.0.bn1" and graph[7].bn == "net.layer2.0.downsample.1"
    assert len(graph.prunable_units) == 20 - 12 + 4


def test_resnet50_bottlenecks_couple_conv3_and_downsample():
    graph = derive_graph(build_classifier("resnet50", nc=10, width=0.125))
    assert len(graph.groups) == 4
    first = [graph[i].name for i in graph.groups[0]]
    assert first == ["net.layer1.0.conv3", "net.layer1.0.downsample.0", "net.layer1.1.conv3", "net.layer1.2.conv3"]
    assert "net.conv1" not in first  # the stem feeds a downsample conv, not an add


@pytest.mark.parametrize("arch,img,spatial", [("vgg16_bn", 32, 49), ("scnnb", 32, 64), ("scnnb", 48, 144)])
def test_first_linear_reads_flattened_channels(arch, img, spatial):
    model = build_classifier(arch, nc=10, in_ch=1, img_size=img, width=0.125)
    graph = derive_graph(model)
    linear = graph[graph.nconv]
    assert linear.kind == "linear" and linear.spatial == spatial and not graph.groups
    assert [c for c, _ in graph[graph.nconv - 1].consumers] == [graph.nconv]
    pruned = prune(model, [(graph.nconv - 1, 0.5)], "l1").model
    last = pruned.get_submodule(graph[graph.nconv - 1].name).out_channels
    assert pruned.get_submodule(linear.name).in_features == last * spatial


def test_global_rate_prunes_each_group_once_with_shared_filters(r18):
    graph = derive_graph(r18)
    result = prune(r18, 0.5, "l2")
    assert [lp.layer for lp in result.plan.layers] == [u[0] for u in graph.prunable_units]
    model = result.model
    for group in graph.groups:
        widths = {model.get_submodule(graph[i].name).out_channels for i in group}
        assert widths == {graph[group[0]].out_channels // 2}
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_group_scored_jointly(r18):
    """A coupled group keeps the filters with the largest summed criterion over its members."""
    graph = derive_graph(r18)
    group = graph.groups[1]
    result = prune(r18, [(group[0], 0.5)], "l1", summarize=False)
    total = sum(r18.get_submodule(graph[i].name).weight.detach().abs().flatten(1).sum(1) for i in group)
    expected = sorted(torch.sort(total, stable=True).indices[len(total) // 2:].tolist())
    assert list(result.plan.layers[0].kept) == expected


def test_two_members_of_a_group_refused(r18):
    with pytest.raises(PruningError, match=r"layers 6 and 9 are coupled by a residual add \(group \[6, 7, 9\]"):
        prune(r18, [(6, 0.5), (9, 0.25)], "l2")
    with pytest.raises(PruningError, match="classifier layer"):
        prune(r18, [(20, 0.5)], "l2")


def test_coupled_key_round_trips_and_is_checked(tmp_path, r18):
    graph = derive_graph(r18)
    path = graph.save(tmp_path / "r18.yaml")
    back = read_published(path)
    assert back.coupled == [list(g) for g in graph.groups] and check_against(back, graph) == []
    path.write_text(path.read_text().replace("coupled: [[0, 2, 4]", "coupled: [[0, 2]"))
    problems = check_against(read_published(path), graph)
    assert problems == [f"coupled groups: file says [[0, 2], [6, 7, 9], [11, 12, 14], [16, 17, 19]], the model "
                        f"says [[0, 2, 4], [6, 7, 9], [11, 12, 14], [16, 17, 19]]"]


def test_unknown_operation_is_named():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    with pytest.raises(PruningError, match="cannot derive a pruning graph through operation sigmoid"):
        derive_graph(Gate())


def test_graph_cli_prints_classifier_groups(capsys):
    assert main(["graph", "--cfg", "resnet18", "--print"]) == 0
    out = capsys.readouterr().out
    assert "coupled [0, 2, 4]: net.conv1, net.layer1.0.conv2, net.layer1.1.conv2" in out
    assert "net.fc" in out and "linear" in out
