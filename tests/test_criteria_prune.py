"""Data-driven, gradient and clustering criteria on a real (narrow) yolov7-tiny and real synthetic images:
the FeatureSource's contract, each criterion through ``prune``, global selection, reconstruction and PLS-LC
exactness where the maths allows, the CLI flags and their errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

import yolo_prune as yp
from yolo_prune.cli import main
from yolo_prune.errors import PruningError
from yolo_prune.graph.derive import derive_graph
from yolo_prune.prune import prune
from yolo_prune.prune.features import FeatureSource, calibration_batches, class_vectors, feature_source
from yolo_prune.prune.options import CriterionOptions

IMG = 64
DATA_CRITERIA = ["pls-vip-single", "pls-vip-multi", "cca-cv-multi", "pls-lc-multi", "taylor", "taylor-weight",
                 "group-taylor"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from yolo_prune.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("crit")
    generate_synthetic(root / "data", n_train=16, n_val=4, img_size=IMG, n_classes=3, seed=5)
    torch.manual_seed(0)
    widths = [max(8, w // 4) for w in yp.build_model("yolov7-tiny").widths()]
    model = yp.build_model("yolov7-tiny", nc=3, widths=widths).eval()
    _randomise_bn(model)
    weights = yp.save_checkpoint(model, root / "start.pt")
    return root / "data" / "data.yaml", weights, model


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so eval mode and 'no statistics touched' are observable."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def _source(data, model, n=8, seed=0, loss=True):
    from yolo_prune.engine.loss import detection_loss_fn

    return feature_source(model, str(data), IMG, CriterionOptions(n_samples=n), seed,
                          loss_fn=detection_loss_fn(model, IMG) if loss else None)


def test_feature_source_shapes_targets_and_eval_mode(setup):
    data, _, model = setup
    model = copy.deepcopy(model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    src = _source(data, model)
    convs = model.conv_modules()
    assert src.n_images == 8
    for layer in (0, 10, len(convs) - 1):
        c = convs[layer].conv.out_channels
        assert src.pooled(layer).shape == (8, c) and src.positions(layer).shape == (8 * 64, c)
        assert src.activation_taylor(layer).shape == (c,) and (src.activation_taylor(layer) >= 0).all()
    y = src.targets()
    assert y.shape == (8, 3) and set(y.unique().tolist()) <= {0.0, 1.0} and y.sum() > 0
    assert model.training  # mode restored
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no BN statistic touched
    assert all(p.grad is None for p in model.parameters())


def test_features_are_taken_after_batchnorm_before_the_activation(setup):
    data, _, model = setup
    src = _source(data, model, n=4, loss=False)
    x = src.batches[0].inputs(torch.device("cpu"), torch.float32)
    conv0 = model.conv_modules()[0]
    with torch.no_grad():
        z = conv0.bn(conv0.conv(x))  # eval-mode BN, no LeakyReLU
    assert torch.allclose(src.pooled(0)[: len(x)], z.amax(dim=(2, 3)), atol=1e-5)
    avg = FeatureSource(model, src.batches, 3, pool_type="avg")
    assert torch.allclose(avg.pooled(0)[: len(x)], z.mean(dim=(2, 3)), atol=1e-5)


def test_calibration_subset_is_seeded_and_preprocessed_like_inference(setup):
    data, _, model = setup
    from yolo_prune.data import load_data_config

    cfg = load_data_config(str(data))
    a = calibration_batches(list(cfg.train), 3, IMG, 6, seed=1)
    b = calibration_batches(list(cfg.train), 3, IMG, 6, seed=1)
    c = calibration_batches(list(cfg.train), 3, IMG, 6, seed=2)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert not all(torch.equal(x.images, y.images) for x, y in zip(a, c))
    assert a[0].images.dtype == torch.uint8 and a[0].images.shape[1:] == (3, IMG, IMG)
    labels = torch.tensor([[0, 2, 0.5, 0.5, 0.1, 0.1], [0, 0, 0.2, 0.2, 0.1, 0.1], [1, 1, 0.5, 0.5, 0.2, 0.2]])
    from yolo_prune.prune.features import CalibrationBatch

    y = class_vectors([CalibrationBatch(torch.zeros(3, 3, 8, 8), labels)], 3)
    assert y.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("criterion", DATA_CRITERIA + ["hac"])
def test_each_criterion_prunes_and_is_deterministic(setup, criterion):
    data, _, model = setup
    src = _source(data, model)
    a = prune(model, 0.25, criterion, source=src, summarize=False, img_size=IMG)
    b = prune(model, 0.25, criterion, source=_source(data, model), summarize=False, img_size=IMG)
    assert [lp.kept for lp in a.plan.layers] == [lp.kept for lp in b.plan.layers]
    assert a.model.widths() == prune(model, 0.25, "l1", summarize=False).model.widths()
    with torch.no_grad():
        assert a.model(torch.rand(1, 3, IMG, IMG))[0].shape[-1] == 8
    assert a.history_entry()["criterion"] == criterion


def test_a_different_calibration_subset_changes_data_driven_scores(setup):
    data, _, model = setup
    a = prune(model, 0.5, "pls-vip-multi", source=_source(data, model, seed=0), summarize=False)
    b = prune(model, 0.5, "pls-vip-multi", source=_source(data, model, seed=3), summarize=False)
    assert [lp.kept for lp in a.plan.layers] != [lp.kept for lp in b.plan.layers]


def test_taylor_scores_a_filter_whose_output_is_zero_lowest(setup):
    data, _, model = setup
    model = copy.deepcopy(model)
    conv = model.conv_modules()[3]
    with torch.no_grad():
        conv.conv.weight[2] = 0
        conv.bn.bias[2] = 0
        conv.bn.running_mean[2] = 0  # filter 2 outputs exactly 0: removing it changes nothing
    src = _source(data, model)
    assert src.activation_taylor(3)[2] == 0 and src.activation_taylor(3).argmin() == 2
    kept = prune(model, [(3, 0.25)], "taylor", source=src, summarize=False).plan.layers[0].kept
    assert 2 not in kept


def test_group_criterion_adds_the_consumer_slices(setup):
    from yolo_prune.prune.context import CriterionContext

    data, _, model = setup
    ctx = CriterionContext(model, derive_graph(model), source=_source(data, model))
    for layer in (1, 20, 52):
        own, group = ctx.score("taylor-weight", layer), ctx.score("group-taylor", layer)
        assert (group >= own).all() and (group > own).any()


def test_data_criteria_without_images_and_bad_global_use_are_refused(setup):
    _, _, model = setup
    with pytest.raises(PruningError, match="needs calibration images"):
        prune(model, 0.3, "pls-vip-multi", summarize=False)
    with pytest.raises(PruningError, match="needs a loss on calibration images"):
        prune(model, 0.3, "taylor", summarize=False)
    with pytest.raises(PruningError, match="takes one rate"):
        prune(model, "[(1, 0.5)]", "bn", options=CriterionOptions(selection="global"), summarize=False)
    with pytest.raises(PruningError, match="--reconstruct needs calibration images"):
        prune(model, 0.3, "l1", options=CriterionOptions(reconstruct=True), summarize=False)


def test_global_bn_ranking_removes_the_smallest_scales_network_wide(setup):
    _, _, model = setup
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for conv in model.conv_modules():
            conv.bn.weight.copy_(torch.rand(conv.bn.num_features, generator=g))
    result = prune(model, 0.3, "bn", options=CriterionOptions(selection="global"), summarize=False)
    graph = derive_graph(model)
    convs = model.conv_modules()
    gammas = {lp.layer: convs[lp.layer].bn.weight.tolist() for lp in result.plan.layers}
    removed = [v for lp in result.plan.layers for i, v in enumerate(gammas[lp.layer]) if i not in lp.kept]
    kept = [v for lp in result.plan.layers for i, v in enumerate(gammas[lp.layer]) if i in lp.kept]
    total = sum(graph[i].out_channels for i in graph.prunable)
    assert abs(len(removed) - 0.3 * total) <= len(graph.prunable)  # each layer rounds to an even count
    assert max(removed) <= sorted(kept)[len(kept) // 10]  # removed scales sit at the bottom of the ranking
    assert len({len(lp.kept) / lp.before for lp in result.plan.layers}) > 3  # rates differ per layer
    assert result.history_entry()["criterion_options"]["selection"] == "global"


def _raw(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The outputs of conv layers 2 and 3 (the readers of layer 1) and the head's raw maps, concatenated."""
    taps: list[torch.Tensor] = []
    handles = [model.conv_modules()[i].register_forward_hook(lambda m, i, o: taps.append(o.flatten())) for i in (2, 3)]
    raw = model.eval()(x)[1]
    for h in handles:
        h.remove()
    return torch.cat(taps + [m.flatten() for m in raw])


def _duplicate_filters(model: nn.Module, layer: int) -> nn.Module:
    """A copy whose conv ``layer`` has its second half of filters equal to the first half."""
    model = copy.deepcopy(model)
    conv = model.conv_modules()[layer]
    half = conv.conv.out_channels // 2
    with torch.no_grad():
        for t in (conv.conv.weight, conv.bn.weight, conv.bn.bias, conv.bn.running_mean, conv.bn.running_var):
            t[half:] = t[:half]
    return model


def test_reconstruction_is_exact_when_the_removed_filters_are_copies(setup):
    data, _, model = setup
    model = _duplicate_filters(model, 1)  # layer 1 feeds two 1x1 convs directly
    src = _source(data, model, loss=False)
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():  # HAC drops one filter of each identical pair
        ref = _raw(model, x)
        rec = prune(model, [(1, 0.5)], "hac", source=src, summarize=False, options=CriterionOptions(reconstruct=True))
        plain = prune(model, [(1, 0.5)], "hac", summarize=False)
        err_rec, err_plain = (_raw(rec.model, x) - ref).abs().max().item(), (_raw(plain.model, x) - ref).abs().max().item()
    assert rec.plan.layers[0].kept == tuple(range(rec.plan.layers[0].before // 2))
    assert err_rec < 1e-4 * ref.abs().max().item() and err_plain > 100 * err_rec, (err_rec, err_plain)


def test_pls_lc_is_function_preserving_for_a_linear_layer_of_low_rank(setup):
    data, _, model = setup
    model = _duplicate_filters(model, 1)
    model.conv_modules()[1].act = nn.Identity()  # linear: the fold is exact when k >= the maps' rank
    src = _source(data, model, n=16, loss=False)
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = _raw(model, x)
        lc = prune(model, [(1, 0.5)], "pls-lc-multi", source=src, summarize=False).model
        assert (_raw(lc, x) - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_cli_data_criteria_and_bad_flags(setup, tmp_path, capsys):
    data, weights, _ = setup
    out = tmp_path / "p.pt"
    base = ["prune", "--weights", str(weights), "--pruning-params", "0.25", "--img", str(IMG), "--output", str(out)]
    assert main(base + ["--criterion", "pls-vip-multi", "--data", str(data), "--n-samples", "8",
                        "--n-components", "1", "--pool-type", "avg", "--json"]) == 0
    entry = yp.load_checkpoint(out).history[-1]
    assert entry["criterion"] == "pls-vip-multi" and entry["criterion_options"]["pool_type"] == "avg"
    assert json.loads(capsys.readouterr().out)["criterion_options"]["n_samples"] == 8
    assert main(base + ["--criterion", "taylor", "--reconstruct", "--data", str(data), "--n-samples", "4"]) == 0
    assert yp.load_checkpoint(out).history[-1]["criterion_options"]["reconstruct"] is True
    assert main(base + ["--criterion", "hac", "--measure", "spearman"]) == 0
    assert main(base + ["--criterion", "bn", "--selection", "global"]) == 0
    capsys.readouterr()
    bad = [(["--criterion", "taylor"], "criterion 'taylor' needs calibration images: give --data"),
           (["--criterion", "pls-vip-multi", "--data", str(data), "--perc-samples", "1.5"], "--perc-samples"),
           (["--criterion", "pls-vip-multi", "--data", str(data), "--n-samples", "4", "--perc-samples", "0.5"],
            "at most one"),
           (["--criterion", "vip"], "unknown criterion 'vip'"),
           (["--reconstruct"], "--reconstruct needs calibration images")]
    for extra, message in bad:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    for extra in (["--pool-type", "median"], ["--measure", "cosine"], ["--selection", "all"], ["--n-components", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2
    assert not (tmp_path / "q.pt").exists()
