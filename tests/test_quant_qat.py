"""Quantization-aware training: the fake-quantized model trains (loss falls, gradients reach every conv), keeps
a float checkpoint layout, and `yolo-prune train --qat` -> `export` -> `test` runs end to end, resumable."""
from __future__ import annotations

import re

import pytest
import torch

from yolo_prune.checkpoint import load_checkpoint, to_checkpoint
from yolo_prune.cli import main
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.modules import QConv, QHeadConv
from yolo_prune.quant.prepare import activation_quantizers, quantize_model
from yolo_prune.quant.state import load_quantized, quant_state, restore

IMG = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    kw = DEMO_SYNTH | {"n_train": 8, "n_val": 4, "img_size": IMG}
    return generate_synthetic(tmp_path_factory.mktemp("qat") / "data", **kw).data_yaml


@pytest.fixture(scope="module")
def batch(synth):
    from yolo_prune.data import create_dataloader, load_data_config

    cfg = load_data_config(str(synth))
    loader, _ = create_dataloader(list(cfg.train), cfg.nc, IMG, 8, workers=0)
    imgs, targets, _, _ = next(iter(loader))
    return imgs.float() / 255, targets


def _loss_fn(model):
    from yolo_prune.engine.hyp import load_hyp
    from yolo_prune.engine.loss import YoloLoss, scale_loss_gains

    hyp = scale_loss_gains(load_hyp("qat"), model.detect.nl, model.nc, IMG)
    return YoloLoss(model.detect, hyp)


def test_a_few_qat_steps_reduce_the_loss_and_reach_every_conv(batch):
    imgs, targets = batch
    prepared = quantize_model(load_checkpoint(DEMO_MODEL).model, "dpu", IMG)
    calibrate(prepared.model, [imgs[:4]])
    model, loss_fn = prepared.model.train(), _loss_fn(prepared.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for step in range(4):
        loss, _ = loss_fn(model(imgs), targets, imgs)
        opt.zero_grad()
        loss.backward()
        if step == 0:  # straight-through gradients reach the weights of every conv, head included
            convs = [m for m in model.modules() if isinstance(m, (QConv, QHeadConv))]
            weights = [m.conv.weight if isinstance(m, QConv) else m.weight for m in convs]
            assert len(convs) == 58 and all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_qat_model_runs_under_autocast(batch):
    imgs, _ = batch
    prepared = quantize_model(load_checkpoint(DEMO_MODEL).model, "tensorrt", IMG)
    calibrate(prepared.model, [imgs[:2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = prepared.model.train()(imgs[:2])
    assert all(torch.isfinite(o.float()).all() for o in out)


def test_qat_checkpoint_keeps_the_float_layout_and_restores_the_scales(tmp_path, batch):
    imgs, _ = batch
    prepared = quantize_model(load_checkpoint(DEMO_MODEL).model, "dpu", IMG)
    calibrate(prepared.model, [imgs[:2]])
    ckpt = to_checkpoint(prepared.model, [], {"quant": quant_state(prepared.model, prepared.scheme, 2)})
    assert ckpt["fused"] == {"conv_bn": True, "repconv": False, "implicit": True}
    assert not any("quant" in k for k in ckpt["state_dict"])  # scales live in extra, not in the state dict
    torch.save(ckpt, tmp_path / "q.pt")
    restored = load_quantized(tmp_path / "q.pt")
    assert restored is not None and restored.scheme.name == "dpu"
    want = {k: q.scale for k, q in activation_quantizers(prepared.model).items()}
    got = {k: q.scale for k, q in activation_quantizers(restored.model).items()}
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    x = imgs[:1]
    assert torch.equal(restored.model.eval()(x)[0], prepared.model.eval()(x)[0])
    assert load_quantized(DEMO_MODEL) is None  # a float checkpoint
    with pytest.raises(Exception, match="not a quantization-aware-trained checkpoint"):
        restore(prepared.model, {}, "x.pt")


@pytest.mark.slow
def test_train_qat_then_export_and_test_end_to_end(tmp_path, synth, capsys):
    common = ["--data", str(synth), "--img", str(IMG), "--batch-size", "4", "--workers", "0", "--device", "cpu",
              "--project", str(tmp_path), "--hyp", "qat"]
    assert main(["train", "--weights", str(DEMO_MODEL), "--qat", "dpu", "--qat-calib-images", "4", "--epochs", "1",
                 "--name", "q", *common]) == 0
    assert "qat (dpu): calibrated" in capsys.readouterr().out
    best = tmp_path / "q" / "weights" / "best.pt"
    assert load_checkpoint(best).extra["quant"]["scheme"]["name"] == "dpu"
    out = tmp_path / "q.int8.onnx"
    assert main(["export", "--weights", str(best), "--format", "vitis-int8", "--img-size", str(IMG),
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "from the QAT checkpoint" in text and "within the DPU shift limits" in text
    assert main(["test", "--weights", str(out), "--data", str(synth), "--img", str(IMG), "--workers", "0"]) == 0
    assert re.search(r"\s+all\s+4\s", capsys.readouterr().out)
    # a resumed QAT run picks its quantization up from last.pt (no --qat needed)
    assert main(["train", "--resume", str(tmp_path / "q"), "--workers", "0", "--device", "cpu"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--qat", "int4"], "invalid choice: 'int4'"),
    (["--qat-calib-images", "8"], "--qat-calib-images: only valid with --qat"),
    (["--qat", "dpu", "--qat-calib-images", "0"], "expected a positive integer"),
])
def test_bad_qat_flags_exit_2(tmp_path, synth, capsys, argv, message):
    argv = ["train", "--weights", str(DEMO_MODEL), "--data", str(synth), "--img", str(IMG), "--epochs", "1",
            "--project", str(tmp_path), *argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects bad choices and types itself
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
