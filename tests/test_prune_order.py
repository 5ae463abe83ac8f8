"""Multi-layer plans choose the filters the published pruner chooses: layers in ascending order, each scored on
its weights after the input channels that earlier listed layers removed (``scoring="sequential"``, default)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_prune.checkpoint import load_checkpoint, load_model
from yolo_prune.cli import main
from yolo_prune.errors import PruningError
from yolo_prune.models import build_model
from yolo_prune.prune import prune
from yolo_prune.prune.context import NEEDS
from yolo_prune.prune.criteria import CRITERIA, LayerFilters, score_dtype
from yolo_prune.prune.plan import scoring_name

GOLDEN = Path(__file__).parent / "golden" / "published_choices.json"


def _digest(kept) -> str:
    return hashlib.sha256(json.dumps(list(kept)).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def official_tiny(official_tiny_path):
    return load_model(official_tiny_path)


def test_published_pruner_choices_on_official_checkpoint(official_tiny):
    """The kept filters equal the published prune_structured's (tests/golden/make_published_choices.py), for the
    published criteria 0-5 on the fp16 official-format fixture (scores tie and round as they do there)."""
    golden = json.loads(GOLDEN.read_text())
    for key, expected in golden["kept_sha256_16"].items():
        criterion, name = key.split("/")
        plan = prune(official_tiny, golden["parameter_sets"][name], int(criterion), summarize=False).plan
        got = {str(lp.layer): _digest(lp.kept) for lp in plan.layers}
        wrong = [layer for layer in expected if got[layer] != expected[layer]]
        assert not wrong, f"criterion {criterion}, {name}: layers {wrong} keep other filters than the published pruner"


def test_independent_scoring_is_todays_choice_and_is_recorded(official_tiny):
    golden = json.loads(GOLDEN.read_text())
    params = golden["parameter_sets"]["every-layer-0.5"]
    indep = prune(official_tiny, params, 0, summarize=False, scoring="independent")
    seq = prune(official_tiny, params, 0, summarize=False)
    assert indep.plan.scoring == "independent" and seq.plan.scoring == "sequential"
    assert indep.history_entry()["scoring"] == "independent"
    differ = [a.layer for a, b in zip(indep.plan.layers, seq.plan.layers) if a.kept != b.kept]
    assert differ and differ[0] > 0  # the first layer has no pruned producer: both agree there
    # independent == every layer planned alone on the unpruned model
    for lp in indep.plan.layers[::9]:
        alone = prune(official_tiny, [(lp.layer, 0.5)], 0, summarize=False).plan.layers[0]
        assert alone.kept == lp.kept
    assert scoring_name("greedy") == "sequential"  # Li et al. (ICLR 2017) call it greedy
    with pytest.raises(PruningError, match="unknown scoring"):
        scoring_name("ascending")


def _one_at_a_time(model, pairs, criterion, round_to, seed):
    """Apply single layers one after another in ascending order (the published loop), re-deriving the graph."""
    current = model
    for layer, rate in sorted(pairs):
        current = prune(current, [(layer, rate)], criterion, round_to=round_to, seed=seed, summarize=False).model
    return current


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tiny = build_model("yolov7-tiny", nc=3).eval()
    half_valued = build_model("yolov7-tiny", nc=3).eval().half().float()  # fp16-exact weights: scored in fp16
    v7 = build_model("yolov7", nc=2).eval()
    g = torch.Generator().manual_seed(0)
    for m in (tiny, half_valued, v7):  # BN scales of both signs, so bn criteria are not trivial
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) * 2 - 0.5)
    return {"tiny": tiny, "half": half_valued, "v7": v7}


def _param_sets(n_layers, max_layers):
    pairs = st.dictionaries(st.integers(0, n_layers - 1), st.sampled_from([0.1, 0.25, 0.5, 0.75]),
                            min_size=2, max_size=max_layers)
    weight_criteria = sorted(set(CRITERIA) - set(NEEDS))  # data-driven criteria score the unpruned model
    return st.tuples(pairs, st.sampled_from(weight_criteria), st.sampled_from([None, None, 8]), st.integers(0, 3))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_param_sets(55, 55), st.sampled_from(["tiny", "half"]))
def test_multi_layer_equals_single_layers_in_ascending_order_tiny(models, params, which):
    pairs, criterion, round_to, seed = params
    model = models[which]
    together = prune(model, sorted(pairs.items()), criterion, round_to=round_to, seed=seed, summarize=False).model
    _assert_same_model(together, _one_at_a_time(model, pairs.items(), criterion, round_to, seed))


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_param_sets(89, 12))
def test_multi_layer_equals_single_layers_in_ascending_order_yolov7(models, params):
    pairs, criterion, round_to, seed = params
    model = models["v7"]
    together = prune(model, sorted(pairs.items()), criterion, round_to=round_to, seed=seed, summarize=False).model
    _assert_same_model(together, _one_at_a_time(model, pairs.items(), criterion, round_to, seed))


def test_repconv_layers_sequential_on_yolov7(models):
    """RepConv layers 86-88 read concatenations of earlier pruned layers: both branches are scored on the same
    remaining input channels."""
    pairs = [(75, 0.5), (76, 0.5), (86, 0.5), (87, 0.5), (88, 0.5)]
    for criterion in ("l1", "bn-l1"):
        together = prune(models["v7"], pairs, criterion, summarize=False).model
        _assert_same_model(together, _one_at_a_time(models["v7"], pairs, criterion, None, 0))


def test_criteria_follow_the_published_definitions():
    w1 = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.5, 0.5]]).view(3, 2, 1, 1)
    w2 = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).view(3, 2, 1, 1)
    f = LayerFilters((w1, w2), (torch.tensor([0.5, -2.0, 1.0]), torch.tensor([1.0, 1.0, -0.5])),
                     torch.Generator(), "x")
    bn, bn_l1 = CRITERIA["bn"][1], CRITERIA["bn-l1"][1]
    assert bn(f).tolist() == [1.5, -1.0, 0.5]  # signed scale summed over branches (published criterion 4)
    assert bn_l1(f).tolist() == [0.5 * 2 + 1 * 2, -2 * 3 + 0, 1 * 1 + (-0.5) * 2]  # per branch scale x L1
    sliced = LayerFilters((w1[:, 1:],), (), torch.Generator(), "x", torch.tensor([1]))
    assert CRITERIA["l1"][1](sliced).tolist() == [1.0, 0.0, 0.5]  # only the remaining input channel counts


def test_scores_use_the_weights_stored_precision():
    w = torch.randn(4, 3, 3, 3)
    assert score_dtype(w) == torch.float32
    assert score_dtype(w.half().float()) == torch.float16
    assert score_dtype(w.half()) == torch.float16


def test_cli_scoring_flag_recorded_in_history(tmp_path, capsys):
    out = tmp_path / "p.pt"
    argv = ["prune", "--cfg", "yolov7-tiny", "--nc", "2", "--pruning-params", "[(1, 0.5), (2, 0.5)]",
            "--output", str(out), "--img", "64"]
    assert main(argv + ["--scoring", "independent"]) == 0
    assert "independent scoring" in capsys.readouterr().out
    assert load_checkpoint(out).history[-1]["scoring"] == "independent"
    assert main(argv) == 0
    assert load_checkpoint(out).history[-1]["scoring"] == "sequential"
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--scoring", "ascending"])
    assert exc.value.code == 2 and "--scoring" in capsys.readouterr().err
