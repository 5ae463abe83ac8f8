"""The property that proves the graph: pruning filters == zeroing them after their activation."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_prune.graph import derive_graph
from yolo_prune.models import build_model
from yolo_prune.models.fuse import fuse
from yolo_prune.models.heads import IDetect
from yolo_prune.prune import prune


def _randomise_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def masked_output(model, graph, plan, x):
    """Eval output of the unpruned model with the removed filters zeroed after activation (and after ImplicitA)."""
    convs = model.conv_modules()
    head = model.detect
    handles = []

    def zero(idx):
        def hook(_m, _i, out):
            out = out.clone()
            out[:, idx] = 0
            return out
        return hook

    for lp in plan.layers:
        removed = sorted(set(range(lp.before)) - set(lp.kept))
        if not removed:
            continue
        handles.append(convs[lp.layer].register_forward_hook(zero(removed)))
        for consumer, _slot in graph[lp.layer].consumers:
            node = graph[consumer]
            if node.kind == "head" and isinstance(head, IDetect) and len(head.ia) > 0:
                level = int(node.name.rsplit(".", 1)[1])
                handles.append(head.ia[level].register_forward_hook(zero(removed)))
    try:
        with torch.no_grad():
            return model(x)[0]
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
    result = prune(model, sorted(layer_rates.items()), criterion, round_to=round_to, seed=seed, summarize=False,
                   scoring=scoring[0] if scoring else "sequential")
    graph = derive_graph(model)
    expected = masked_output(model, graph, result.plan, x)
    with torch.no_grad():
        got = result.model(x)[0]
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
