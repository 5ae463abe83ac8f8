"""Li et al.'s one-shot strategies as the planner's ``scoring`` option on classification CNNs: ``independent``
scores each layer on its own unpruned weights; ``greedy`` (= ``sequential``) leaves out the kernels of input
channels already removed upstream. They differ exactly where a listed layer reads a listed producer."""
from __future__ import annotations

import pytest
import torch

from yolo_prune.graph import derive_graph
from yolo_prune.models.classify import build_classifier
from yolo_prune.prune import prune
from yolo_prune.prune.surgery import input_index


def _l1_keep(weight: torch.Tensor, inputs: torch.Tensor | None, n_keep: int) -> tuple[int, ...]:
    w = weight.detach() if inputs is None else weight.detach()[:, inputs]
    scores = w.abs().flatten(1).sum(1)
    return tuple(sorted(torch.argsort(scores)[len(scores) - n_keep:].tolist()))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return build_classifier("vgg16_bn", nc=10, in_ch=1, width=0.25).eval()


def test_greedy_leaves_out_removed_input_channels_and_independent_does_not(vgg):
    graph = derive_graph(vgg)
    listed = [0, 1, 3, 4, 7]  # 2, 5, 6 unlisted: their consumers see every input channel
    params = [(i, 0.5) for i in listed]
    greedy = {lp.layer: lp.kept for lp in prune(vgg, params, "l1", scoring="greedy", summarize=False).plan.layers}
    indep = {lp.layer: lp.kept for lp in prune(vgg, params, "l1", scoring="independent", summarize=False).plan.layers}
    decided = {}
    for layer in listed:
        node, weight = graph[layer], vgg.get_submodule(graph[layer].name).weight
        n_keep = len(indep[layer])
        assert indep[layer] == _l1_keep(weight, None, n_keep)
        upstream = any(s.producer in decided for s in node.inputs)
        visible = input_index(graph, layer, decided) if upstream else None
        assert greedy[layer] == _l1_keep(weight, visible, n_keep)
        if not upstream:
            assert greedy[layer] == indep[layer]  # the first listed layer, and layers after an unlisted one
        decided[layer] = torch.tensor(greedy[layer])
    assert greedy[0] == indep[0] and greedy[3] == indep[3] and greedy[7] == indep[7]
    assert any(greedy[i] != indep[i] for i in (1, 4))  # read a pruned producer: the strategies part ways


def test_greedy_scores_each_coupled_member_through_its_own_visible_inputs():
    torch.manual_seed(1)
    model = build_classifier("resnet18", nc=10, in_ch=1, width=0.25).eval()
    graph = derive_graph(model)
    group = graph.groups[1]  # layer2.0.conv2, layer2.0.downsample.0, layer2.1.conv2
    params = [(1, 0.5), (5, 0.5), (group[0], 0.5), (8, 0.5)]
    plan = prune(model, params, "l1", scoring="greedy", summarize=False).plan
    kept = {lp.layer: torch.tensor(lp.kept) for lp in plan.layers}
    decided = {1: kept[1], 5: kept[5]}
    total = 0
    for member in group:  # conv2 reads layer 5's output; the downsample reads stage 1's group (not listed)
        node = graph[member]
        visible = input_index(graph, member, decided) if any(s.producer in decided for s in node.inputs) else None
        w = model.get_submodule(node.name).weight.detach()
        total = total + (w if visible is None else w[:, visible]).abs().flatten(1).sum(1)
    n_keep = len(plan.layers[2].kept)
    assert plan.layers[2].kept == tuple(sorted(torch.argsort(total)[len(total) - n_keep:].tolist()))
    indep = prune(model, params, "l1", scoring="independent", summarize=False).plan
    assert indep.layers[0].kept == plan.layers[0].kept and indep.layers[2].kept != plan.layers[2].kept


def test_sweep_and_classify_train_take_the_same_option(tmp_path):
    from yolo_prune.engine.classify import ClassifySettings
    from yolo_prune.errors import PruningError
    from yolo_prune.pipeline.sweep import SweepSettings

    assert SweepSettings(scoring="greedy").scoring == "sequential"
    assert ClassifySettings(arch="scnnb", scoring="independent").scoring == "independent"
    with pytest.raises(PruningError, match="unknown scoring 'lazy'"):
        SweepSettings(scoring="lazy")
