"""The property that proves the graph: pruning filters == zeroing them after their activation.

One check for every model family: YOLOv7 (concatenations, SPPCSPC, RepConv, implicit heads), yolov7-e6e (residual
``Shortcut`` adds: coupled groups) and the classification CNNs (torchvision ResNet residual adds, the classifier's
first Linear sliced with the last conv's filters).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model
from yolo_prune.models.classify import build_classifier
from yolo_prune.models.fuse import fuse
from yolo_prune.models.heads import IDetect
from yolo_prune.prune import prune
from yolo_prune.prune.surgery import coupled_kept


def _randomise_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def masked_output(model, graph, plan, x):
    """Eval output of the unpruned model with the removed filters zeroed after activation (after the BN of a plain
    conv, which a zero-preserving activation follows; after ImplicitA), every member of a coupled group included."""
    head = getattr(model, "detect", None)
    handles = []

    def zero(idx):
        def hook(_m, _i, out):
            out = out.clone()
            out[:, idx] = 0
            return out
        return hook

    for layer, kept in coupled_kept(graph, plan).items():
        removed = sorted(set(range(graph[layer].out_channels)) - set(kept.tolist()))
        if not removed:
            continue
        handles.append(model.get_submodule(graph[layer].mask_point).register_forward_hook(zero(removed)))
        for consumer, _slot in graph[layer].consumers:
            node = graph[consumer]
            if node.kind == "head" and isinstance(head, IDetect) and len(head.ia) > 0:
                level = int(node.name.rsplit(".", 1)[1])
                handles.append(head.ia[level].register_forward_hook(zero(removed)))
    try:
        with torch.no_grad():
            return _first(model(x))
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def tiny3():
    torch.manual_seed(0)
    return _randomise_bn(build_model("yolov7-tiny", nc=3).eval(), 0)


@pytest.fixture(scope="module")
def v7():
    torch.manual_seed(0)
    return _randomise_bn(build_model("yolov7", nc=2).eval(), 1)


def _params(n_layers):
    layer_rates = st.dictionaries(st.integers(0, n_layers - 1), st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9]),
                                  min_size=1, max_size=n_layers)
    return st.tuples(layer_rates, st.sampled_from(["l1", "l2", "bn", "random", "l2-largest", "linf"]),
                     st.sampled_from([None, None, 8]), st.integers(0, 3), st.sampled_from(["sequential", "independent"]))


def check_pruned_equals_masked(model, params, x, fused=False):
    layer_rates, criterion, round_to, seed, *scoring = params
    if fused:
        criterion = "bn" if criterion == "bn" else criterion
    graph = derive_graph(model)
    groups = {}
    for layer, rate in sorted(layer_rates.items()):  # one entry per coupled group
        groups.setdefault(graph.group_of(layer), (layer, rate))
    result = prune(model, sorted(groups.values()), criterion, round_to=round_to, seed=seed, summarize=False,
                   scoring=scoring[0] if scoring else "sequential")
    expected = masked_output(model, graph, result.plan, x)
    with torch.no_grad():
        got = _first(result.model(x))
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    return result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_params(55))
def test_tiny_pruned_equals_masked(tiny3, params):
    check_pruned_equals_masked(tiny3, params, torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_params(89))
def test_yolov7_pruned_equals_masked(v7, params):
    check_pruned_equals_masked(v7, params, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)))


@pytest.fixture(scope="module")
def e6e(fixtures_dir):
    from yolo_prune.models.spec import load_cfg

    cfg = load_cfg(fixtures_dir / "official-cfg" / "deploy" / "yolov7-e6e.yaml")
    cfg["width_multiple"] = 0.125
    torch.manual_seed(0)
    return _randomise_bn(build_model(cfg, nc=2).eval(), 2)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_params(240))
def test_e6e_shortcut_groups_pruned_equals_masked(e6e, params):
    """yolov7-e6e's Shortcut adds couple their two producers; both lose the same filters."""
    check_pruned_equals_masked(e6e, params, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)))


CLASSIFIERS = {"scnnb": 1.0, "vgg16_bn": 0.125, "resnet18": 0.25, "resnet50": 0.125}


@pytest.fixture(scope="module", params=sorted(CLASSIFIERS))
def classifier(request):
    torch.manual_seed(0)
    model = build_classifier(request.param, nc=10, in_ch=1, img_size=32, width=CLASSIFIERS[request.param])
    return _randomise_bn(model.eval(), 3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.data())
def test_classifiers_pruned_equals_masked(classifier, params):
    """Residual adds (coupled groups), the first Linear's flattened inputs and plain conv + BN pairs, exactly."""
    n = derive_graph(classifier).nconv
    drawn = params.draw(_params(n))
    check_pruned_equals_masked(classifier, drawn, torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6)))


def test_every_layer_at_once_yolov7(v7):
    """All 89 layers together (every concat slot and the SPPCSPC internals are sliced in one pass)."""
    check_pruned_equals_masked(v7, ({i: 0.5 for i in range(89)}, "l1", None, 0), torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("implicit", [False, True])
def test_fused_models_prune_exactly(tiny3, implicit):
    fused = fuse(copy.deepcopy(tiny3), implicit=implicit)
    params = ({i: 0.5 for i in range(0, 55, 3)} | {52: 0.5, 53: 0.25, 54: 0.75}, "l2", None, 0)
    result = check_pruned_equals_masked(fused, params, torch.rand(1, 3, 64, 64), fused=True)
    assert result.model.conv_modules()[0].conv.bias.shape[0] == result.model.widths()[0]


def test_repconv_branches_pruned_together(v7):
    result = prune(v7, [(86, 0.5), (87, 0.25), (88, 0.75)], "l2", summarize=False)
    for idx, rate in [(86, 0.5), (87, 0.25), (88, 0.75)]:
        rep = result.model.conv_modules()[idx]
        assert rep.rbr_dense[0].out_channels == rep.rbr_1x1[0].out_channels == rep.rbr_dense[1].num_features
    head = result.model.detect
    assert [m.in_channels for m in head.m] == [128, 384, 256]
    assert [ia.implicit.shape[1] for ia in head.ia] == [128, 384, 256]


def test_half_precision_pruning(tiny3):
    half = copy.deepcopy(tiny3).half()
    result = prune(half, 0.5, "l2", summarize=False)
    assert next(result.model.parameters()).dtype == torch.float16
    with torch.no_grad():
        out = result.model(torch.rand(1, 3, 64, 64).half())[0]
    assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_pruning_matches_cpu(tiny3):
    cpu = prune(tiny3, 0.5, "l2", summarize=False)
    gpu = prune(copy.deepcopy(tiny3).cuda(), 0.5, "l2", summarize=False)
    assert cpu.plan.layers == gpu.plan.layers
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gpu.model(x.cuda())[0].cpu(), cpu.model(x)[0], atol=1e-3, rtol=1e-3)


DARKNET = Path(__file__).resolve().parent / "data" / "darknet"


@pytest.fixture(scope="module", params=["mixed", "yolov4-tiny", "yolov3-tiny"])
def darknet_model(request):
    torch.manual_seed(0)
    return _randomise_bn(build_model(DARKNET / f"{request.param}.cfg").eval(), 7)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.data())
def test_darknet_pruned_equals_masked(darknet_model, params):
    """Darknet cfgs: grouped routes (a split layer keeps the same number of filters in every chunk, so Darknet's
    cut stays in place), [shortcut]/[sam]/[scale_channels] (coupled groups), padded max-pools, no-BN convs."""
    graph = derive_graph(darknet_model)
    rates, criterion, round_to, seed, scoring = params.draw(_params(graph.nconv))
    no_bn = [i for i in rates if not isinstance(darknet_model.get_submodule(graph[i].name).bn, torch.nn.BatchNorm2d)]
    if criterion == "bn" and no_bn:  # BN-scale criteria refuse layers without BatchNorm (tested in test_prune_cli)
        criterion = "l1"
    check_pruned_equals_masked(darknet_model, (rates, criterion, round_to, seed, scoring),
                               torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8)))


def test_darknet_graph_of_the_hand_written_cfg():
    """Exact links: route groups become chunk slots, shortcut and scale_channels couple their producers."""
    graph = derive_graph(build_model(DARKNET / "mixed.cfg"))
    assert graph.groups == ((1, 3), (6, 7))
    assert graph[4].parts == 4 and graph.parts_of(4) == 4  # read as halves (layer 6) and a quarter (layer 9)
    assert graph[5].inputs == ((4, 16, 1, 2),)  # conv 5 (cfg layer 7) reads the second half of conv 4
    assert graph[6].inputs == ((4, 8, 2, 4), (5, 16, 0, 1), (4, 32, 0, 1))  # [third quarter of conv 4 | conv 5 | conv 4]
    assert [graph[i].name for i in (10, 11)] == ["model.26.m.0", "model.26.m.1"]
    result = prune(build_model(DARKNET / "mixed.cfg"), [(4, 0.5), (1, 0.25)], "l1")
    kept = result.plan.layers[1].kept  # layer 4: 4 of 8 filters in each quarter
    assert [sum(q * 8 <= k < q * 8 + 8 for k in kept) for q in range(4)] == [4, 4, 4, 4]


def test_darknet_split_of_a_concatenation_fixes_its_producers(tmp_path):
    """Darknet cuts a grouped route of a concatenation at a fraction of its total, which moves when one input is
    pruned alone: its producers stay whole (a grouped route of several layers cuts each one: those are fine)."""
    conv = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
    path = tmp_path / "split.cfg"
    path.write_text("[net]\nwidth=32\nheight=32\n" + conv + conv + "[route]\nlayers=-1,-2\n"
                    "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv +
                    "[convolutional]\nfilters=7\nactivation=linear\n[yolo]\nmask=0\nanchors=10,10\nnum=1\nclasses=2\n")
    graph = derive_graph(build_model(path))
    assert [graph[i].prunable for i in range(3)] == [False, False, True]
    assert "route model.3 splits a concatenation" in graph[0].reason
    assert graph[2].inputs == ((0, 8, 0, 1),)


def test_work_needing_a_contiguous_slot_refuses_a_chunked_one_by_name():
    """group-taylor and --reconstruct read a consumer slot as one block of channels; a Darknet route-group chunk is
    refused with the consumer's name and what to use instead (conv 5 reads the second half of conv 4)."""
    from yolo_prune.errors import PruningError

    graph = derive_graph(build_model(DARKNET / "mixed.cfg"))
    assert graph[6].whole_slot_offset(1, "x", "y") == 8  # after the quarter of conv 4 in slot 0
    with pytest.raises(PruningError, match=r"reconstruction: model\.\d+.* reads its input in chunks .*; prune without"):
        graph[5].whole_slot_offset(0, "reconstruction", "prune without --reconstruct")
