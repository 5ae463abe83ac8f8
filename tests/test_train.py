"""Training: the YOLOv7 recipe's parts (param groups, warm-up, one-cycle, EMA, distillation), end-to-end runs on a
tiny synthetic set (pruned, distilled, from scratch, resumed, 2-rank gloo DDP) and bad inputs via the CLI."""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from yolo_prune.engine.ddp import ShardSampler
from yolo_prune.engine.distill import distill_loss, make_teacher, teacher_maps
from yolo_prune.engine.ema import ModelEMA
from yolo_prune.engine.optim import (Schedule, accumulate_steps, build_optimizer, one_cycle, param_groups,
                                     warmup_iterations)
from yolo_prune.engine.train_state import TrainState, find_last, new_run_dir, results_csv
from yolo_prune.engine.trainer import TrainSettings, train
from yolo_prune.errors import ConfigError, PruningError
from yolo_prune.models.heads import ImplicitA, ImplicitM

IMG = 96


def tiny_model(nc: int = 3):
    """yolov7-tiny at a quarter of its widths (~0.4 M parameters)."""
    from yolo_prune.models import build_model

    widths = [max(8, w // 4) for w in build_model("yolov7-tiny").widths()]
    return build_model("yolov7-tiny", nc=nc, widths=widths)


@pytest.fixture(scope="module")
def hyp():
    from yolo_prune.engine.hyp import load_hyp

    return load_hyp("scratch.tiny")


# ------------------------------------------------------------------------------------------- recipe parts
def test_param_groups_follow_the_official_recipe(hyp):
    torch.manual_seed(0)
    model = tiny_model()
    groups = param_groups(model)
    ids = [id(p) for g in groups.values() for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    bn = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    implicit = {id(m.implicit) for m in model.modules() if isinstance(m, (ImplicitA, ImplicitM))}
    assert implicit and bn | implicit == {id(p) for p in groups["no_decay"]}
    assert {id(p) for p in groups["bias"]} == {id(m.bias) for m in model.modules()
                                               if isinstance(getattr(m, "bias", None), nn.Parameter)}
    assert all(p.ndim == 4 for p in groups["decay"])
    opt = build_optimizer(model, hyp, batch_size=16)
    assert [g["name"] for g in opt.param_groups] == ["no_decay", "decay", "bias"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, hyp["weight_decay"] * 16 * 4 / 64, 0.0]
    assert all(g["nesterov"] and g["momentum"] == hyp["momentum"] for g in opt.param_groups)


@pytest.mark.parametrize("batch,acc", [(1, 64), (16, 4), (24, 3), (64, 1), (128, 1)])
def test_nominal_batch_accumulation(batch, acc):
    assert accumulate_steps(batch) == acc


def test_warmup_then_one_cycle(hyp):
    lf = one_cycle(hyp["lrf"], 10)
    assert lf(0) == 1.0 and lf(10) == pytest.approx(hyp["lrf"]) and lf(5) == pytest.approx((1 + hyp["lrf"]) / 2)
    assert warmup_iterations(3.0, 1000, 300) == 3000
    assert warmup_iterations(3.0, 10, 300) == 100  # at least 100 iterations...
    assert warmup_iterations(3.0, 3, 4) == 6  # ...but never more than half of a short run
    assert warmup_iterations(0.0, 10, 300) == 0
    sched = Schedule(hyp, epochs=10, batches_per_epoch=50, batch_size=8)  # warm-up: 150 iterations
    opt = build_optimizer(tiny_model(), hyp, 8)
    sched.apply(opt, 0, 0)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, hyp["warmup_bias_lr"]]
    assert opt.param_groups[0]["momentum"] == hyp["warmup_momentum"]
    assert sched.accumulate(0) == 1 and sched.accumulate(150) == 8
    sched.apply(opt, 4, 200)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([hyp["lr0"] * lf(4) for _ in range(3)])
    assert opt.param_groups[2]["momentum"] == hyp["momentum"]


def test_ema_decay_and_update():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    ema = ModelEMA(model)
    assert ema.decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert not any(p.requires_grad for p in ema.ema.parameters()) and not ema.ema.training
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    d = ema.decay(1)
    for k, v in ema.ema.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, d * before[k] + (1 - d) * model.state_dict()[k])
    assert int(ema.ema[1].num_batches_tracked) == 0 and ema.updates == 1


def test_distillation_term():
    torch.manual_seed(0)
    student = tiny_model().train()
    teacher = make_teacher(student, torch.device("cpu"))
    imgs = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        same = student.eval()(imgs)[1]
    assert distill_loss(same, teacher_maps(teacher, imgs)).item() == pytest.approx(0.0, abs=1e-12)
    maps = student.train()(imgs)
    loss = distill_loss(maps, teacher_maps(teacher, imgs))
    loss.backward()  # train-mode BatchNorm differs from the teacher's running stats: a real signal
    assert loss.item() > 0 and student.model[0].conv.weight.grad is not None
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="student map"):
        distill_loss([m[..., :5] for m in maps], teacher_maps(teacher, imgs))


def test_few_steps_reduce_the_loss(hyp):
    """Optimizer + loss on one fixed batch: 15 SGD steps lower the YOLOv7 loss by a clear margin."""
    from yolo_prune.engine.loss import YoloLoss, scale_loss_gains

    torch.manual_seed(0)
    model = tiny_model().train()
    criterion = YoloLoss(model.detect, scale_loss_gains(hyp, 3, 3, IMG))
    opt = build_optimizer(model, hyp, 64)
    imgs = torch.rand(4, 3, IMG, IMG)
    targets = torch.tensor([[0, 0, .5, .5, .3, .3], [1, 1, .3, .6, .2, .4], [2, 2, .7, .3, .4, .2],
                            [3, 1, .5, .5, .6, .6]])
    losses = []
    for _ in range(15):
        loss, items = criterion(model(imgs), targets, imgs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(items[3].item())
    assert sum(losses[-5:]) / 5 < 0.75 * losses[0]


def test_shard_sampler_covers_every_index_once_per_epoch():
    shards = [ShardSampler(r, 3, seed=1) for r in range(3)]
    for s in shards:
        s.bind(10)
        s.set_epoch(2)
    parts = [list(s) for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(sum(parts, [])) == set(range(10))
    shards[0].set_epoch(3)
    assert list(shards[0]) != parts[0]


def test_run_folders_never_overwrite(tmp_path):
    assert new_run_dir(tmp_path, "exp", False) == tmp_path / "exp"
    assert new_run_dir(tmp_path, "exp", False) == tmp_path / "exp2"
    assert new_run_dir(tmp_path, "exp", False) == tmp_path / "exp3"
    assert new_run_dir(tmp_path, "exp", True) == tmp_path / "exp"


def test_resume_finds_the_newest_last_pt(tmp_path):
    import os

    for i, name in enumerate(["a", "b"]):
        f = tmp_path / name / "weights" / "last.pt"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        os.utime(f, (1000 + i, 1000 + i))
    assert find_last(True, tmp_path) == tmp_path / "b" / "weights" / "last.pt"
    assert find_last(str(tmp_path / "a"), tmp_path) == tmp_path / "a" / "weights" / "last.pt"


def test_state_records_best_and_csv():
    st = TrainState()
    assert st.record({"epoch": 0, "fitness": 0.2})
    assert not st.record({"epoch": 1, "fitness": 0.1})
    assert st.record({"epoch": 2, "fitness": 0.2})  # ties go to the newer epoch, as YOLOv7's ==
    assert (st.epoch, st.best_epoch) == (2, 2)
    text = results_csv(st.rows)
    assert text.splitlines()[0].startswith("epoch,box,obj,cls,total,distill,P,R,mAP@.5,mAP@.5:.95,fitness,lr0")
    assert len(text.splitlines()) == 4


@pytest.mark.parametrize("kwargs,match", [
    ({"data": None}, "--data is required"),
    ({"weights": None}, "give --weights .*--cfg .*or both"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"img_size": 0}, "img_size"),
    ({"distill": True, "weights": None, "cfg": "yolov7-tiny"}, "--distill needs --weights"),
    ({"distill": True, "cfg": "yolov7-tiny"}, "--distill needs --weights without --cfg"),
])
def test_settings_are_validated(kwargs, match):
    base = {"data": "d.yaml", "weights": "w.pt"}
    with pytest.raises(ConfigError, match=match):
        TrainSettings(**(base | kwargs))


def test_settings_reject_malformed_pruning_params():
    with pytest.raises(PruningError, match="cannot parse"):
        TrainSettings(data="d.yaml", weights="w.pt", pruning_params="[(8, 0.5")


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> Path:
    from yolo_prune.data.synth import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", n_train=12, n_val=6, img_size=IMG,
                              n_classes=3, seed=0).data_yaml


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from yolo_prune.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tiny_model(), tmp_path_factory.mktemp("weights") / "tiny.pt")


def settings(synth_yaml: Path, weights: Path, project: Path, **kw) -> TrainSettings:
    """A tiny CPU run: 96 px, batch 4, no worker processes, quiet."""
    base = dict(data=str(synth_yaml), weights=str(weights), hyp="scratch.tiny", epochs=1, batch_size=4,
                img_size=IMG, device="cpu", workers=0, project=str(project), progress=False)
    return TrainSettings(**(base | kw))


@pytest.fixture(scope="session")
def baseline(synth_yaml, tiny_weights, tmp_path_factory):
    """Three uninterrupted epochs with the full recipe (mosaic and all augmentation on)."""
    project = tmp_path_factory.mktemp("runs")
    return train(settings(synth_yaml, tiny_weights, project, epochs=3, name="base"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fixed_batch_loss(weights: Path, data_yaml: Path, img_size: int) -> float:
    """YOLOv7 loss of a checkpoint's model (eval mode) on every training image, letterboxed, in one batch."""
    from yolo_prune.checkpoint import load_model
    from yolo_prune.data import YoloDataset
    from yolo_prune.engine.loss import detection_loss_fn

    model = load_model(weights).float().eval()
    images = sorted(str(p) for p in (data_yaml.parent / "images" / "train").glob("*.jpg"))
    dataset = YoloDataset(images, nc=model.nc, img_size=img_size)
    imgs, targets, _, _ = YoloDataset.collate_fn([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return float(detection_loss_fn(model, img_size)(model(imgs.float() / 255)[1], targets, imgs))


def test_fine_tuning_wins_back_part_of_what_pruning_cost(tmp_path):
    """The shipped demo model pruned (5 layers at 50 %) and fine-tuned for 4 iterations: its loss on the training
    images (no augmentation) falls back towards the unpruned model's, whatever the seed (measured: 31-46 % of the
    gap won back in 4 iterations, seeds 0-2)."""
    from yolo_prune.checkpoint import load_model, save_checkpoint
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
    from yolo_prune.prune import prune

    img, params = 128, "[(2, 0.5), (5, 0.5), (20, 0.5), (30, 0.5), (40, 0.5)]"
    data = generate_synthetic(tmp_path / "data", **(DEMO_SYNTH | dict(n_train=16, n_val=4, img_size=img))).data_yaml
    pruned = save_checkpoint(prune(load_model(DEMO_MODEL), params, 0, summarize=False).model, tmp_path / "p.pt")
    before, base = fixed_batch_loss(pruned, data, img), fixed_batch_loss(DEMO_MODEL, data, img)
    run = train(settings(data, DEMO_MODEL, tmp_path / "runs", epochs=2, batch_size=8, img_size=img, hyp="finetune",
                         pruning_params=params, criterion=0, seed=1))
    after = fixed_batch_loss(run.last, data, img)
    assert base < before and after < before - 0.2 * (before - base), (base, before, after)


def test_run_writes_yolov7_outputs_and_steps(baseline, tiny_weights):
    """Three short epochs (9 iterations inside the warm-up: too few to show learning from random weights, which
    ``test_fine_tuning_wins_back_part_of_what_pruning_cost`` shows) step the optimizer and write every output."""
    from yolo_prune.checkpoint import load_checkpoint

    rows = baseline.rows
    assert [r["epoch"] for r in rows] == [0, 1, 2] and baseline.epochs_completed == 3
    assert all(math.isfinite(r["total"]) and r["total"] > 0 for r in rows)
    moved = conv_weights(load_checkpoint(baseline.last).raw["state_dict"]) - \
        conv_weights(load_checkpoint(tiny_weights).raw["state_dict"])
    assert moved.abs().max() > 1e-4  # the optimizer stepped
    assert rows[0]["lr2"] > rows[0]["lr1"]  # bias LR warms down from warmup_bias_lr
    names = {p.name for p in baseline.run_dir.iterdir()}
    assert {"weights", "results.csv", "results.png", "hyp.yaml", "opt.yaml"} <= names
    assert len((baseline.run_dir / "results.csv").read_text().splitlines()) == 4
    best, last = load_checkpoint(baseline.best), load_checkpoint(baseline.last)
    key = "model.0.conv.weight"
    assert "train_state" not in best.raw and best.raw["state_dict"][key].dtype == torch.float16
    assert last.raw["train_state"]["epoch"] == 2 and last.raw["state_dict"][key].dtype == torch.float32
    assert best.history[-1]["event"] == "train" and best.history[-1]["epochs_completed"] >= 1
    assert best.model.names == ["circle", "square", "triangle"]


def test_pruned_distilled_training_via_cli(synth_yaml, tiny_weights, tmp_path):
    from yolo_prune.checkpoint import load_checkpoint, load_model
    from yolo_prune.cli import main
    from yolo_prune.prune import prune

    params = "[(2, 0.5), (5, 0.5), (20, 0.25)]"
    rc = main(["train", "--weights", str(tiny_weights), "--data", str(synth_yaml), "--hyp", "scratch.tiny",
               "--epochs", "1", "--batch-size", "4", "--img", str(IMG), "--device", "cpu", "--workers", "0",
               "--project", str(tmp_path), "--name", "pruned", "--pruning-params", params, "--criterion", "0",
               "--distill", "--scoring", "independent"])
    assert rc == 0
    expected = prune(load_model(tiny_weights), params, 0, summarize=False).model.widths()
    best = load_checkpoint(tmp_path / "pruned" / "weights" / "best.pt")
    assert best.model.widths() == expected != load_model(tiny_weights).widths()
    assert [h["event"] for h in best.history] == ["prune", "train"]
    assert best.history[0]["criterion"] == "l2" and best.history[-1]["distill"] is True
    assert best.history[0]["scoring"] == "independent"
    row = (tmp_path / "pruned" / "results.csv").read_text().splitlines()[1].split(",")
    assert float(row[5]) > 0  # the distillation column


def conv_weights(state: dict) -> torch.Tensor:
    """All conv weights of a state dict, flattened into one vector."""
    return torch.cat([v.detach().flatten().float() for k, v in state.items() if k.endswith("conv.weight")])


def test_fine_tuning_starts_from_the_loaded_weights(baseline, tiny_weights):
    from yolo_prune.checkpoint import load_checkpoint, load_model

    w0 = conv_weights(load_model(tiny_weights).state_dict())
    w1 = conv_weights(load_checkpoint(baseline.last).raw["train_state"]["model"])
    assert 0 < (w1 - w0).norm() < 0.2 * w0.norm()


def test_from_scratch_keeps_the_pruned_architecture(synth_yaml, tiny_weights, tmp_path):
    from yolo_prune.checkpoint import load_checkpoint, load_model
    from yolo_prune.prune import prune

    params = "[(2, 0.5), (5, 0.5)]"
    pruned = prune(load_model(tiny_weights), params, 0, summarize=False).model
    result = train(settings(synth_yaml, tiny_weights, tmp_path, pruning_params=params, from_scratch=True))
    model = load_checkpoint(result.best).model
    assert model.widths() == pruned.widths()
    w0, w1 = conv_weights(pruned.state_dict()), conv_weights(model.state_dict())
    assert (w1 - w0).norm() > w0.norm()  # re-initialised (independent weights: ~1.4x), not the pruned ones


class Interrupt(Exception):
    """Stands in for Ctrl-C / a killed job after an epoch's files were written."""


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_would(baseline, synth_yaml, tiny_weights, tmp_path):
    from yolo_prune.checkpoint import load_checkpoint

    def stop_after_first(epoch: int, row: dict) -> None:
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(settings(synth_yaml, tiny_weights, tmp_path, epochs=3, name="base"), on_epoch_end=stop_after_first)
    seen: list[int] = []
    resumed = train(TrainSettings(resume=str(tmp_path / "base"), device="cpu", workers=0, progress=False),
                    on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [1, 2] and resumed.run_dir == tmp_path / "base"
    assert [r["epoch"] for r in resumed.rows] == [0, 1, 2]
    for got, want in zip(resumed.rows, baseline.rows):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    a, b = load_checkpoint(resumed.last).raw, load_checkpoint(baseline.last).raw
    for key in ("state_dict",):
        for k, v in b[key].items():
            torch.testing.assert_close(a[key][k], v, rtol=1e-4, atol=1e-5)
    for k, v in b["train_state"]["model"].items():
        torch.testing.assert_close(a["train_state"]["model"][k], v, rtol=1e-4, atol=1e-5)
    assert a["train_state"]["updates"] == b["train_state"]["updates"]
    assert (tmp_path / "base" / "results.csv").read_text() == (baseline.run_dir / "results.csv").read_text()


def bad_hyp(tmp_path: Path) -> list[str]:
    from yolo_prune.engine.hyp import resolve_hyp_path

    text = resolve_hyp_path("scratch.tiny").read_text().replace("lr0: 0.01", "")
    (tmp_path / "hyp.bad.yaml").write_text(text)
    return ["--hyp", str(tmp_path / "hyp.bad.yaml")]


def bad_data(tmp_path: Path) -> list[str]:
    (tmp_path / "data.yaml").write_text("train: /nonexistent/images/train\nval: /nonexistent/images/val\n"
                                        "nc: 3\nnames: [a, b, c]\n")
    return ["--data", str(tmp_path / "data.yaml")]


@pytest.mark.parametrize("make_args,message", [
    (bad_hyp, "missing required hyp key(s): lr0"),
    (lambda tmp: ["--pruning-params", "[(500, 0.5)]"], "layer 500 is out of range"),
    (bad_data, "key 'train': path '/nonexistent/images/train' does not exist"),
    (lambda tmp: ["--weights", str(tmp / "missing.pt")], "missing.pt: file not found"),
    (lambda tmp: ["--resume", str(tmp / "nothing_here")], "checkpoint not found"),
], ids=["hyp-missing-key", "pruning-wrong-model", "data-wrong-paths", "weights-missing", "resume-missing"])
@pytest.mark.parametrize("exist_ok", [False, True])
def test_bad_inputs_fail_clearly_and_leave_runs_untouched(baseline, synth_yaml, tiny_weights, tmp_path, capsys,
                                                          make_args, message, exist_ok):
    from yolo_prune.cli import main

    project = baseline.run_dir.parent
    before, folders = snapshot(project), sorted(project.iterdir())
    args = ["train", "--weights", str(tiny_weights), "--data", str(synth_yaml), "--hyp", "scratch.tiny",
            "--epochs", "1", "--batch-size", "4", "--img", str(IMG), "--device", "cpu", "--workers", "0",
            "--project", str(project), "--name", baseline.run_dir.name] + (["--exist-ok"] if exist_ok else [])
    assert main(args + make_args(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert snapshot(project) == before and sorted(project.iterdir()) == folders


def test_resuming_a_finished_checkpoint_is_refused(baseline, capsys):
    from yolo_prune.cli import main

    assert main(["train", "--resume", str(baseline.best)]) == 2
    assert "no training state" in capsys.readouterr().err


def test_official_checkpoint_with_other_classes_is_an_error(official_tiny_path, synth_yaml, tmp_path, capsys):
    from yolo_prune.cli import main

    rc = main(["train", "--weights", str(official_tiny_path), "--data", str(synth_yaml), "--epochs", "1",
               "--project", str(tmp_path), "--device", "cpu"])
    assert rc == 2 and "nc=80 classes but --data" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _ddp_rank(rank: int, world: int, init_file: str, synth_yaml: str, weights: str, project: str) -> None:
    """One of two gloo processes: join the group, train one epoch, report what this rank saw."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(settings(Path(synth_yaml), Path(weights), Path(project), name="ddp"))
        report = {"rows": len(result.rows), "run_dir": str(result.run_dir), "world": dist.get_world_size()}
        (Path(project) / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter finalisation, where gloo's threads can abort a finished rank (pytorch#190489)


@pytest.mark.slow
def test_two_rank_gloo_ddp_trains_and_rank0_saves(synth_yaml, tiny_weights, tmp_path):
    from yolo_prune.checkpoint import load_checkpoint

    project = tmp_path / "runs"
    mp.start_processes(_ddp_rank, args=(2, str(tmp_path / "init"), str(synth_yaml), str(tiny_weights), str(project)),
                       nprocs=2, join=True, start_method="spawn")
    reports = [json.loads((project / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rows"] for r in reports] == [1, 0]  # only rank 0 evaluates and records
    assert {r["run_dir"] for r in reports} == {str(project / "ddp")} and reports[0]["world"] == 2
    assert sorted(p.name for p in project.iterdir() if p.is_dir()) == ["ddp"]
    best = load_checkpoint(project / "ddp" / "weights" / "best.pt")
    assert best.model.widths() == load_checkpoint(tiny_weights).model.widths()
    last = load_checkpoint(project / "ddp" / "weights" / "last.pt").raw["train_state"]
    # 12 images / (2 ranks x 2) = 3 batches: a step on batch 0 (warm-up accumulates 1), then one at the epoch end
    assert last["epoch"] == 0 and last["updates"] == 2


def test_cfg_alone_trains_from_scratch_with_the_data_classes(synth_yaml, tmp_path):
    import yaml

    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.cli import main
    from yolo_prune.models.cfgs import resolve_cfg

    cfg = yaml.safe_load(resolve_cfg("yolov7-tiny").read_text()) | {"width_multiple": 0.25}  # nc stays 80
    (tmp_path / "tiny-quarter.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["train", "--cfg", str(tmp_path / "tiny-quarter.yaml"), "--data", str(synth_yaml), "--hyp",
               "scratch.tiny", "--epochs", "1", "--batch-size", "4", "--img", str(IMG), "--device", "cpu",
               "--workers", "0", "--project", str(tmp_path / "runs")])
    best = load_checkpoint(tmp_path / "runs" / "exp" / "weights" / "best.pt")
    assert rc == 0 and best.model.nc == 3 and best.history[-1]["event"] == "train"


# ------------------------------------------------------------------------------------------- speed levers
def test_foreach_sgd_and_ema_update_are_the_per_tensor_arithmetic(hyp):
    """The multi-tensor optimizer step and EMA update give bit-identical weights to the per-parameter loops."""
    torch.manual_seed(0)
    model = tiny_model().train()
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, hyp, batch_size=16)
    assert all(g["foreach"] for g in opt.param_groups)
    ref_opt = torch.optim.SGD([{**{k: v for k, v in g.items() if k not in ("params", "foreach")},
                                "params": list(rg["params"])} for g, rg in
                               zip(opt.param_groups, build_optimizer(ref, hyp, batch_size=16).param_groups)],
                              foreach=False)
    ema, ref_ema = ModelEMA(model), copy.deepcopy(ModelEMA(model))
    x = torch.rand(2, 3, 64, 64)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            sum(p.float().square().mean() for p in m(x)).backward()
            o.step()
        ema.update(model)
        ref_ema.updates += 1
        d = ref_ema.decay()
        with torch.no_grad():
            current = ref.state_dict()
            for k, v in ref_ema.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(current[k], alpha=1 - d)
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.ema.state_dict().values(), ref_ema.ema.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- transfer learning
def test_cfg_and_weights_transfer_every_matching_tensor(synth_yaml, official_tiny_path, fixtures_dir, tmp_path,
                                                        capsys):
    """YOLOv7's transfer-learning command: --cfg (nc from the data: 3) and an official nc=80 checkpoint. Every
    tensor whose name and shape match is copied; the class-dependent head tensors and the anchors are not, and
    each is named, on the console and in the checkpoint history."""
    from yolo_prune.checkpoint import load_checkpoint, load_model
    from yolo_prune.cli import main

    cfg = fixtures_dir / "official-cfg" / "training" / "yolov7-tiny.yaml"
    rc = main(["train", "--cfg", str(cfg), "--weights", str(official_tiny_path), "--data", str(synth_yaml),
               "--hyp", "scratch.tiny", "--epochs", "1", "--batch-size", "4", "--img", str(IMG), "--device", "cpu",
               "--workers", "0", "--project", str(tmp_path), "--name", "transfer"])
    assert rc == 0
    head = [f"model.77.m.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    implicit = [f"model.77.im.{i}.implicit" for i in range(3)]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("transferred "))
    source = load_model(official_tiny_path).state_dict()
    total = len(source)  # same architecture: the same tensor names
    entry = load_checkpoint(tmp_path / "transfer" / "weights" / "last.pt").history[0]
    assert entry["event"] == "transfer" and entry["nc"] == 3 and entry["total"] == total
    reinit = entry["reinitialised"]
    assert set(head + implicit) <= set(reinit) and all("anchor" in k for k in set(reinit) - set(head + implicit))
    assert entry["transferred"] == total - len(reinit) > 0.95 * total
    assert reinit["model.77.m.0.weight"] == "shape 255x128x1x1 -> 24x128x1x1"
    assert line.startswith(f"transferred {entry['transferred']}/{total} tensors from {official_tiny_path.name}; "
                           f"re-initialised for nc=3: ")
    assert "model.77.m.0.weight (shape 255x128x1x1 -> 24x128x1x1)" in line


def test_transfer_copies_matching_tensors_exactly(official_tiny_path):
    from yolo_prune.checkpoint import load_model
    from yolo_prune.checkpoint.transfer import transfer_weights
    from yolo_prune.models import build_model

    source = load_model(official_tiny_path)
    torch.manual_seed(0)
    target = build_model("yolov7-tiny", nc=3)
    fresh = copy.deepcopy(target.state_dict())
    report = transfer_weights(source, target, str(official_tiny_path))
    theirs, own = source.state_dict(), target.state_dict()
    for name, value in own.items():
        if name in report.reinitialised:
            assert torch.equal(value, fresh[name])
        else:
            assert torch.equal(value, theirs[name].to(value.dtype))
    assert report.transferred + len(report.reinitialised) == len(own)


def test_speed_settings_run_and_are_reported(synth_yaml, tiny_weights, tmp_path, capsys):
    """bf16 autocast (where the CPU has it), channels-last and cached images: a real run, recorded settings."""
    from yolo_prune.engine.accel import bf16_supported

    amp = "bf16" if bf16_supported(torch.device("cpu")) else "off"
    result = train(settings(synth_yaml, tiny_weights, tmp_path, amp=amp, cache_images=True, progress=True))
    row = result.rows[-1]
    assert math.isfinite(row["total"]) and row["total"] > 0
    header = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("train: "))
    assert "channels-last" in header and "images cached (" in header
    assert ("bfloat16 autocast" in header) == (amp == "bf16")
    opt = (result.run_dir / "opt.yaml").read_text()
    assert f"amp: {amp}" in opt and "cache_images: true" in opt and "channels_last: true" in opt


def test_amp_modes_are_checked():
    from yolo_prune.engine.accel import amp_dtype

    with pytest.raises(ConfigError, match="amp must be one of"):
        TrainSettings(data="d.yaml", weights="w.pt", amp="fp8")
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA device"):
        amp_dtype("fp16", torch.device("cpu"))
    assert amp_dtype("auto", torch.device("cpu")) is None and amp_dtype("off", torch.device("cpu")) is None


def test_cached_images_give_identical_samples(synth_yaml):
    """--cache-images: the same samples (mosaic, augmentation and all) as decoding every time."""
    from yolo_prune.data import load_data_config
    from yolo_prune.data.dataset import YoloDataset
    from yolo_prune.engine.hyp import load_hyp

    cfg = load_data_config(str(synth_yaml))
    plain = YoloDataset(list(cfg.train), cfg.nc, IMG, augment=True, hyp=load_hyp("scratch.tiny"), seed=3)
    cached = YoloDataset(list(cfg.train), cfg.nc, IMG, augment=True, hyp=load_hyp("scratch.tiny"), seed=3)
    assert cached.cache_images() == cached.cached_bytes > 0 and plain.cached_bytes == 0
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.slow
def test_compiled_forward_trains(synth_yaml, tiny_weights, tmp_path, monkeypatch):
    """--compile: the model goes through torch.compile (Dynamo + AOTAutograd; the 'aot_eager' backend here, since
    inductor's C++ code generation takes many minutes on 2 CPU cores) and the run's files carry plain names."""
    import functools

    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.engine import accel

    calls = []
    real = accel.compiled_forward

    def aot_eager(model, device, enabled, backend="inductor"):
        calls.append(enabled)
        return real(model, device, enabled, backend="aot_eager")

    monkeypatch.setattr(accel, "compiled_forward", functools.wraps(real)(aot_eager))
    result = train(settings(synth_yaml, tiny_weights, tmp_path, compile=True))
    assert calls == [True] and math.isfinite(result.rows[-1]["total"])
    last = load_checkpoint(result.last)
    assert not any("_orig_mod" in k for k in last.raw["train_state"]["model"])


@pytest.mark.gpu
def test_compile_with_cuda_graphs_and_amp_on_gpu(synth_yaml, tiny_weights, tmp_path):
    """On CUDA: inductor + CUDA graphs (static training shapes), fp16 AMP and channels-last train and save."""
    result = train(settings(synth_yaml, tiny_weights, tmp_path, device="0", compile=True, amp="fp16",
                            cache_images=True))
    assert math.isfinite(result.rows[-1]["total"]) and result.best.is_file()


# ------------------------------------------------------------------------------------ YOLOv7 train.py options
def test_official_options_adam_linear_lr_label_smoothing_and_freeze(synth_yaml, tiny_weights, tmp_path):
    """`--adam --linear-lr --label-smoothing 0.1 --freeze 3` as YOLOv7's train.py takes them: Adam with betas
    (momentum, 0.999), a linear LR factor, the smoothing in the run's hyp, layers 0-2 unchanged by training."""
    from yolo_prune.checkpoint import load_checkpoint, load_model
    from yolo_prune.cli import main

    rc = main(["train", "--weights", str(tiny_weights), "--data", str(synth_yaml), "--hyp", "scratch.tiny",
               "--epochs", "2", "--batch-size", "4", "--img", str(IMG), "--device", "cpu", "--workers", "0",
               "--project", str(tmp_path), "--name", "official", "--adam", "--linear-lr", "--label-smoothing", "0.1",
               "--freeze", "3", "--noautoanchor"])
    assert rc == 0
    run = tmp_path / "official"
    state = load_checkpoint(run / "weights" / "last.pt").raw["train_state"]
    assert state["settings"]["optimizer"] == "adam" and state["settings"]["linear_lr"] is True
    assert state["hyp"]["label_smoothing"] == 0.1 and "label_smoothing: 0.1" in (run / "hyp.yaml").read_text()
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.937, 0.999)  # scratch.tiny's momentum
    before, after = load_model(tiny_weights).state_dict(), state["model"]
    params = {name for name, _ in load_model(tiny_weights).named_parameters()}
    frozen = [k for k in params if k.startswith(("model.0.", "model.1.", "model.2."))]
    assert frozen and all(torch.equal(before[k], after[k].to(before[k].dtype)) for k in frozen)
    assert not torch.equal(before["model.3.conv.weight"], after["model.3.conv.weight"].float())


def test_freeze_takes_a_count_or_layer_indices():
    from yolo_prune.engine.trainer import freeze_layers

    model = tiny_model()
    frozen = freeze_layers(model, (2,))
    assert frozen and {name.split(".")[1] for name in frozen} == {"0", "1"}
    assert all(not p.requires_grad for name, p in model.named_parameters() if name in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters() if name not in frozen)
    picked = freeze_layers(tiny_model(), (1, 11))
    assert {name.split(".")[1] for name in picked} == {"1", "11"}  # "model.1." does not match model.11's twin


def test_linear_lr_decays_linearly_to_lrf():
    schedule = Schedule({"lrf": 0.1, "warmup_epochs": 0, "lr0": 0.01}, epochs=11, batches_per_epoch=1, batch_size=64,
                        linear=True)
    assert [round(schedule.lr_factor(e), 6) for e in (0, 5, 10)] == [1.0, 0.55, 0.1]
    assert Schedule({"lrf": 0.1}, 11, 1, 64).lr_factor(5) == pytest.approx(one_cycle(0.1, 11)(5))


@pytest.mark.parametrize("flags, named", [
    (["--rect"], "--rect: rectangular training"), (["--multi-scale", "--quad"], "--multi-scale"),
    (["--evolve"], "--evolve"), (["--bucket", "b"], "--bucket"), (["--v5-metric"], "--v5-metric"),
    (["--single-cls"], "--single-cls"), (["--image-weights"], "--image-weights"), (["--notest"], "--notest"),
    (["--nosave"], "--nosave"),
])
def test_unimplemented_official_options_are_named_usage_errors(synth_yaml, tiny_weights, tmp_path, flags, named):
    from cli_workspace import run_cli

    code, _, err = run_cli(["train", "--weights", str(tiny_weights), "--data", str(synth_yaml), "--project",
                            str(tmp_path), *flags])
    assert code == 2 and "does not implement" in err and named in err
    assert not any(tmp_path.iterdir())


def test_best_possible_recall_as_yolov7_measures_it():
    from yolo_prune.engine.anchors import best_possible_recall

    hw = np.array([[100, 200], [200, 200]])  # (h, w): measured at 64 on the long side -> 64x32 and 64x64
    labels = [np.array([[0, 0.5, 0.5, 0.25, 0.5]]), np.array([[0, 0.5, 0.5, 0.5, 0.5], [1, 0.5, 0.5, 0.05, 0.05]])]
    anchors = np.array([[16.0, 16.0], [32.0, 32.0]])  # boxes 16x16, 32x32 and 3.2x3.2 px
    assert best_possible_recall(labels, hw, 64, anchors, 4.0) == pytest.approx(2 / 3)
    assert best_possible_recall(labels, hw, 64, anchors, 6.0) == 1.0
    assert best_possible_recall([np.zeros((0, 5))], hw[:1], 64, anchors, 4.0) == 1.0


def test_training_warns_when_yolov7_would_replace_the_anchors(synth_yaml, tmp_path):
    """Anchors 30x too large for the boxes: YOLOv7's autoanchor would replace them; yolo-prune says so and keeps
    them."""
    from yolo_prune.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model()
    with torch.no_grad():
        model.detect.anchors.mul_(30)
        model.detect.anchor_grid.mul_(30)
    weights = save_checkpoint(model, tmp_path / "big_anchors.pt")
    with pytest.warns(UserWarning, match=r"anchors fit 0\.\d+ of the training boxes .* yolo-prune keeps a trained "
                                         r"model's anchors"):
        run = train(settings(synth_yaml, weights, tmp_path / "runs", epochs=1))
    kept = load_checkpoint(run.last).model.detect.anchors
    assert torch.equal(kept, model.detect.anchors)


def test_evolved_anchors_fit_boxes_the_cfg_anchors_miss():
    """YOLOv7's kmean_anchors: k-means then a genetic evolution; n anchors sorted by area, at least as good as
    k-means alone, the same for the same seed."""
    from yolo_prune.engine.anchors import evolve_anchors, recall_of

    rng = np.random.default_rng(0)
    centres = np.array([[4, 6], [12, 9], [30, 40], [80, 60], [150, 200], [300, 250]], np.float32)
    wh = np.concatenate([c * rng.uniform(0.6, 1.6, (200, 2)) for c in centres]).astype(np.float32)
    cfg_like = np.array([[500, 600], [700, 650], [900, 800]], np.float32)  # far too large
    assert recall_of(wh, cfg_like, 4.0) < 0.3
    anchors = evolve_anchors(wh, 6, 4.0, seed=1)
    assert anchors.shape == (6, 2) and (np.diff(anchors.prod(1)) >= 0).all()
    assert recall_of(wh, anchors, 4.0) > 0.99
    assert np.array_equal(anchors, evolve_anchors(wh, 6, 4.0, seed=1))
    assert evolve_anchors(wh[:3], 6, 4.0) is None  # fewer boxes than anchors: nothing to cluster


def _cfg_with_anchors_times(tmp_path: Path, factor: int) -> Path:
    import yaml

    from yolo_prune.models.cfgs import resolve_cfg

    cfg = yaml.safe_load(resolve_cfg("yolov7-tiny").read_text())
    cfg["anchors"] = [[v * factor for v in level] for level in cfg["anchors"]]
    cfg["nc"] = 6
    out = tmp_path / "yolov7-tiny-big-anchors.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def test_training_from_a_cfg_replaces_anchors_that_do_not_fit(synth_yaml, tmp_path, capsys):
    """As YOLOv7's train.py: a model trained from random weights whose cfg anchors fit < 98 % of the boxes gets
    k-means anchors (saved in its checkpoints, used by the loss); --noautoanchor keeps the cfg's."""
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.data import create_dataloader, load_data_config
    from yolo_prune.engine.anchors import best_possible_recall, head_anchors
    from yolo_prune.models.cfgs import build_model

    cfg = _cfg_with_anchors_times(tmp_path, 30)
    base = dict(data=str(synth_yaml), cfg=str(cfg), weights=None, hyp="scratch.tiny", epochs=1, batch_size=4,
                img_size=IMG, device="cpu", workers=0, project=str(tmp_path / "runs"), progress=False)
    run = train(TrainSettings(**base, name="auto"))
    out = capsys.readouterr().out
    assert "autoanchor: the cfg's anchors fit" in out and "new anchors fit" in out
    data = load_data_config(synth_yaml)
    _, dataset = create_dataloader(list(data.train), data.nc, IMG, 4, augment=False, workers=0)
    new = head_anchors(load_checkpoint(run.last).model.detect)
    kept = head_anchors(load_checkpoint(train(TrainSettings(**base, name="kept", autoanchor=False)).last).model.detect)
    assert "autoanchor" not in capsys.readouterr().out
    fit = [best_possible_recall(dataset.labels, dataset.hw0, IMG, a, 4.0) for a in (kept, new)]
    assert fit[0] < 0.98 <= fit[1]
    assert np.allclose(kept, head_anchors(build_model(str(cfg)).detect))


def test_transfer_learning_replaces_the_cfgs_anchors_too(synth_yaml, tiny_weights, tmp_path, capsys):
    """`--cfg` + `--weights`: the anchors come from the cfg (as in YOLOv7's transfer), so autoanchor may replace
    them, as YOLOv7's train.py does."""
    cfg = _cfg_with_anchors_times(tmp_path, 30)
    train(settings(synth_yaml, tiny_weights, tmp_path / "runs", cfg=str(cfg)))
    out = capsys.readouterr().out
    assert "transferred" in out and "new anchors fit" in out
