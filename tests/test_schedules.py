"""Schedules (one-shot vs iterative --pruning-iter), the fine-tuning hyp default, feature distillation, and the
sensitivity analysis with data-driven criteria, PLS-LC and --reconstruct, on tiny real runs."""
from __future__ import annotations

import json
import random

import pytest
import torch

import yolo_prune as yp
from yolo_prune.cli import main
from yolo_prune.engine.distill import FeatureDistiller, neck_index
from yolo_prune.engine.hyp import load_hyp
from yolo_prune.engine.trainer import TrainSettings, train
from yolo_prune.errors import ConfigError
from yolo_prune.graph.derive import derive_graph
from yolo_prune.pipeline.schedule import round_params
from yolo_prune.prune import prune
from yolo_prune.prune.params import kept_count
from yolo_prune.prune.plan import resolve_rates

IMG = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from yolo_prune.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("sched")
    generate_synthetic(root / "data", n_train=8, n_val=4, img_size=IMG, n_classes=2, seed=7)
    torch.manual_seed(0)
    widths = [max(8, w // 4) for w in yp.build_model("yolov7-tiny").widths()]
    weights = yp.save_checkpoint(yp.build_model("yolov7-tiny", nc=2, widths=widths), root / "start.pt")
    return root / "data" / "data.yaml", weights


def _settings(data, weights, project, **kw):
    base = dict(data=str(data), weights=str(weights), epochs=2, batch_size=4, img_size=IMG, device="cpu", workers=0,
                project=str(project), progress=False, max_val_images=4)
    return TrainSettings(**(base | kw))


@pytest.mark.parametrize("round_to", [None, 8])
def test_rounds_compose_to_the_one_shot_widths(tiny_model, round_to):
    graph = derive_graph(tiny_model)
    rng = random.Random(round_to or 0)
    params = [(layer, round(rng.uniform(0.1, 0.9), 2)) for layer in rng.sample(graph.prunable, 12)]
    for rounds in (1, 2, 3):
        width = {layer: graph[layer].out_channels for layer, _ in params}
        for step in round_params(graph, params, rounds, round_to):
            for layer, rate in step:
                assert rate > 0
                width[layer] = kept_count(width[layer], rate, round_to)
        assert width == {l: kept_count(graph[l].out_channels, r, round_to) for l, r in resolve_rates(graph, params)}
    steps = round_params(graph, 0.5, 2, selection="global")
    assert len(steps) == 2 and (1 - steps[0]) * (1 - steps[1]) == pytest.approx(0.5)


def test_fine_tuning_hyp_is_the_default_from_weights():
    assert TrainSettings(data="d.yaml", weights="w.pt").hyp == "finetune"
    # from a cfg or from scratch: decided once the model is built (scratch.p6 for P6 models, else scratch.p5)
    assert TrainSettings(data="d.yaml", cfg="yolov7-tiny").hyp is None
    assert TrainSettings(data="d.yaml", weights="w.pt", from_scratch=True).hyp is None
    assert TrainSettings(data="d.yaml", weights="w.pt", hyp="scratch.tiny").hyp == "scratch.tiny"
    ft, tiny = load_hyp("finetune"), load_hyp("scratch.tiny")
    assert ft["lr0"] < tiny["lr0"] and ft["warmup_bias_lr"] == 0.0 and ft["warmup_epochs"] < tiny["warmup_epochs"]
    with pytest.raises(ConfigError, match="--feature-distill needs --weights"):
        TrainSettings(data="d.yaml", cfg="yolov7-tiny", feature_distill="kept")
    with pytest.raises(ConfigError, match="--feature-distill 'both'"):
        TrainSettings(data="d.yaml", weights="w.pt", feature_distill="both")
    with pytest.raises(ConfigError, match="unknown key"):
        TrainSettings(data="d.yaml", weights="w.pt", criterion_options={"pool": "max"})


def test_feature_distiller_maps_student_channels_to_the_teachers(tiny_model):
    result = prune(tiny_model, [(52, 0.5), (54, 0.25)], "l1", summarize=False)
    index = neck_index(derive_graph(tiny_model), result.plan.kept_map())
    assert [len(i) for i in index] == [c.in_channels for c in result.model.detect.m]
    assert index[0].tolist() == list(result.plan.kept_map()[52]) and index[1].tolist() == list(range(256))
    teacher = [torch.randn(2, c.in_channels, 4, 4) for c in tiny_model.detect.m]
    student = [t.index_select(1, i) for t, i in zip(teacher, index)]
    kept = FeatureDistiller(index, [t.shape[1] for t in teacher], "kept")
    adapter = FeatureDistiller(index, [t.shape[1] for t in teacher], "adapter")
    assert kept(student, teacher).item() == 0.0
    zero_rest = [t.clone().index_fill_(1, torch.tensor(sorted(set(range(t.shape[1])) - set(i.tolist()))), 0)
                 if len(i) < t.shape[1] else t for t, i in zip(teacher, index)]
    assert adapter(student, zero_rest).item() == pytest.approx(0.0, abs=1e-7)  # starts as the kept embedding
    assert adapter(student, teacher).item() > 0 and len(list(adapter.parameters())) == 3


@pytest.mark.slow
def test_feature_distillation_trains_and_resumes(setup, tmp_path):
    data, weights = setup
    s = _settings(data, weights, tmp_path, name="fd", pruning_params="[(52, 0.5), (53, 0.5)]", criterion="l1",
                  distill=True, feature_distill="adapter", feature_distill_weight=2.0)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(s, on_epoch_end=stop)
    last = yp.load_checkpoint(tmp_path / "fd" / "weights" / "last.pt").raw["train_state"]
    assert "feature_adapter" in last and len(last["neck_index"][0]) == 16
    assert len(last["optimizer"]["param_groups"]) == 4  # the adapters' group
    result = train(TrainSettings(resume=str(tmp_path / "fd"), device="cpu", workers=0, progress=False))
    assert result.epochs_completed == 2 and all(r["distill"] > 0 for r in result.rows)


@pytest.mark.slow
def test_iterative_schedule_reaches_the_one_shot_architecture_and_resumes(setup, tmp_path):
    data, weights = setup
    params = "[(1, 0.5), (20, 0.75), (45, 0.5)]"
    argv = ["train", "--weights", str(weights), "--data", str(data), "--epochs", "2", "--batch-size", "4",
            "--img", str(IMG), "--device", "cpu", "--workers", "0", "--project", str(tmp_path), "--name", "it",
            "--pruning-params", params, "--criterion", "taylor", "--reconstruct", "--n-samples", "4",
            "--max-val-images", "4", "--distill", "--feature-distill", "kept"]
    assert main(argv + ["--pruning-iter", "2"]) == 0
    rounds = [yp.load_checkpoint(tmp_path / "it" / f"round_{k}" / "weights" / "best.pt") for k in (1, 2)]
    one_shot = prune(yp.load_model(weights), params, "l1", summarize=False).model
    assert rounds[1].model.widths() == one_shot.widths() != rounds[0].model.widths()
    assert [h["event"] for h in rounds[1].history].count("prune") == 2
    assert rounds[1].history[0]["criterion"] == "taylor"
    assert rounds[1].history[0]["criterion_options"]["reconstruct"] is True
    rows = (tmp_path / "it" / "round_2" / "results.csv").read_text().splitlines()
    assert float(rows[1].split(",")[5]) > 0  # the distillation column (output + neck features)
    before = (tmp_path / "it" / "round_2" / "results.csv").read_text()
    assert main(argv + ["--pruning-iter", "2"]) == 0  # finished rounds are skipped
    assert (tmp_path / "it" / "round_2" / "results.csv").read_text() == before
    assert main(argv[:3] + ["--data", str(data), "--epochs", "1", "--pruning-params", params,
                            "--pruning-iter", "2"]) == 2


def _analysis(data, weights, project, *extra):
    return ["test", "--data", str(data), "--weights", str(weights), "--img", str(IMG), "--batch", "4", "--device",
            "cpu", "--workers", "0", "--task", "pruning_sensitivity_analysis", "--pruning-rate", "[0.5]",
            "--project", str(project), "--layers", "[1, 45]", "--json", *extra]


@pytest.mark.parametrize("extra", [["--criterion", "taylor"], ["--criterion", "pls-lc-multi"],
                                   ["--criterion", "l1", "--reconstruct"]])
def test_sensitivity_analysis_with_data_criteria(setup, tmp_path, capsys, extra):
    data, weights = setup
    before = {k: v.clone() for k, v in yp.load_model(weights).state_dict().items()}
    assert main(_analysis(data, weights, tmp_path, "--name", "s", "--n-samples", "4", *extra)) == 0
    store = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert len(store["results"]) == 2 and (tmp_path / "s" / "output_50.txt").exists()
    assert store["settings"]["criterion_options"]["n_samples"] == 4
    assert all(torch.equal(v, before[k]) for k, v in yp.load_model(weights).state_dict().items())


def test_sensitivity_analysis_refuses_global_selection(setup, tmp_path, capsys):
    data, weights = setup
    assert main(_analysis(data, weights, tmp_path, "--name", "g", "--criterion", "bn", "--selection", "global")) == 2
    assert "--selection global does not apply" in capsys.readouterr().err


@pytest.mark.slow
def test_iterate_with_a_data_driven_criterion_and_reconstruction(setup, tmp_path):
    data, weights = setup
    out = tmp_path / "iter"
    argv = ["iterate", "--weights", str(weights), "--data", str(data), "--out", str(out), "--iterations", "1",
            "--epochs", "1", "--img", str(IMG), "--batch", "4", "--device", "cpu", "--workers", "0",
            "--pruning-rate", "[0.5]", "--params-layers", "2", "--flops-layers", "2", "--criterion", "taylor",
            "--reconstruct", "--n-samples", "4"]
    assert main(argv) == 0
    done = json.loads((out / "iter_1" / "done.json").read_text())
    entry = yp.load_checkpoint(out / "iter_1" / "pruned.pt").history[-1]
    assert entry["criterion"] == "taylor" and entry["criterion_options"]["reconstruct"] is True
    assert json.loads((out / "iter_1" / "sensitivity" / "sensitivity.json").read_text())["settings"][
        "criterion_options"]["n_samples"] == 4
    assert done["params"] < sum(p.numel() for p in yp.load_model(weights).parameters())


def test_iterative_schedule_refuses_a_cfg_it_would_rebuild_every_round(setup, tmp_path, capsys):
    data, weights = setup
    assert main(["train", "--cfg", "yolov7-tiny", "--weights", str(weights), "--data", str(data), "--epochs", "2",
                 "--pruning-params", "0.3", "--pruning-iter", "2", "--project", str(tmp_path)]) == 2
    assert "--cfg would rebuild it from the cfg in every round" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
