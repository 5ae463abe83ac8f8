"""`yolo-prune export` INT8 paths: TensorRT Q/DQ ONNX (PTQ and QAT checkpoints), the explicit engine build without
TensorRT, DPU graphs from QAT checkpoints, and every misplaced INT8 flag exiting 2 without writing a file."""
from __future__ import annotations

import importlib.util
import re

import onnx
import pytest
import torch

from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.cli import main
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.export.trt_qdq_checks import lint_trt_qdq
from yolo_prune.export.vitis_checks import check_xint8
from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.prepare import quantize_model
from yolo_prune.quant.state import quant_state

IMG = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    kw = DEMO_SYNTH | {"n_train": 6, "n_val": 4, "img_size": IMG}
    return generate_synthetic(tmp_path_factory.mktemp("int8cli") / "data", **kw).data_yaml


@pytest.fixture(scope="module", params=["dpu", "tensorrt"])
def qat_ckpt(request, tmp_path_factory):
    """A checkpoint as `train --qat` writes it (fused float weights + extra['quant']), without the training."""
    prepared = quantize_model(load_checkpoint(DEMO_MODEL).model, request.param, IMG)
    calibrate(prepared.model, [torch.rand(1, 3, IMG, IMG)])
    path = tmp_path_factory.mktemp("qat") / f"{request.param}.pt"
    save_checkpoint(prepared.model, path, extra={"quant": quant_state(prepared.model, prepared.scheme, 1)})
    return request.param, path


def _all_row(text: str) -> list[float]:
    return [float(v) for v in [ln for ln in text.splitlines() if re.match(r"\s+all\s", ln)][-1].split()[-4:]]


def test_onnx_int8_writes_a_linted_qdq_graph_that_yolo_prune_test_evaluates(tmp_path, synth, capsys):
    out = tmp_path / "demo.qdq.onnx"
    assert main(["export", "--weights", str(DEMO_MODEL), "--int8", "--data", str(synth), "--calib-count", "4",
                 "--img-size", str(IMG), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated 27 activation quantizers on 4 images" in text and "exported TensorRT Q/DQ ONNX" in text
    lint = lint_trt_qdq(onnx.load(str(out)))
    assert lint.int8_convs == 58 and lint.per_channel == 58 and not lint.float_convs
    assert main(["test", "--weights", str(out), "--data", str(synth), "--img", str(IMG), "--workers", "0"]) == 0
    assert len(_all_row(capsys.readouterr().out)) == 4


def test_engine_int8_qdq_without_tensorrt_writes_the_qdq_onnx_and_the_trtexec_command(tmp_path, synth, capsys):
    pytest.importorskip("onnxruntime")
    engine = tmp_path / "demo.engine"
    code = main(["export", "--weights", str(DEMO_MODEL), "--format", "engine", "--int8", "--qdq", "--data", str(synth),
                 "--calib-count", "2", "--img-size", str(IMG), "--output", str(engine)])
    err = capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert code == 2 and f"trtexec --onnx={tmp_path / 'demo.engine.onnx'}" in err and "--int8" in err
        assert "--calib" not in err and "dummy" not in err  # explicit quantization: no calibrator, no cache
    lint_trt_qdq(onnx.load(str(tmp_path / "demo.engine.onnx")))  # named after the engine, as every engine ONNX


def test_qat_checkpoints_export_with_their_own_scales(tmp_path, qat_ckpt, capsys):
    scheme, ckpt = qat_ckpt
    if scheme == "dpu":
        out = tmp_path / "q.int8.onnx"
        assert main(["export", "--weights", str(ckpt), "--format", "vitis-int8", "--img-size", str(IMG),
                     "--output", str(out)]) == 0
        check = check_xint8(onnx.load(str(out)))
        assert check.float_convs == [] and check.shift_checked == 64
        wrong = ["--int8"]
    else:
        out = tmp_path / "q.qdq.onnx"
        assert main(["export", "--weights", str(ckpt), "--int8", "--img-size", str(IMG), "--output", str(out)]) == 0
        assert lint_trt_qdq(onnx.load(str(out))).int8_convs == 58
        wrong = ["--format", "vitis-int8"]
    assert "ONNX Runtime vs the fake-quantized PyTorch model" in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    assert main(["export", "--weights", str(ckpt), *wrong, "--img-size", str(IMG), "--output", str(bad)]) == 2
    assert f"was trained with --qat {scheme}" in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("argv, message", [
    (["--qdq"], "--qdq: only valid with --format engine --int8"),
    (["--format", "vitis-int8", "--int8", "--data", "{data}"], "--int8: only valid with --format engine or --format onnx"),
    (["--int8"], "needs calibration images"),
    (["--int8", "--data", "{data}", "--fp16"], "--fp16: not valid with --int8"),
    (["--int8", "--data", "{data}", "--calib-images", "{images}"], "give --data or --calib-images, not both"),
    (["--quark-algo", "cle"], "--quark-algo: only valid with --format vitis-int8"),
    (["--data", "{data}"], "--data: only valid with --format vitis-int8, --format onnx --int8"),
    (["--format", "engine", "--int8", "--data", "{data}"], "--data: only valid with"),
    (["--format", "vitis-int8", "--quark-algo", "adaround", "adaquant", "--data", "{data}"], "exclude each other"),
    (["--format", "vitis-int8", "--calib-method", "entropy", "--data", "{data}"], "invalid choice: 'entropy'"),
])
def test_bad_int8_flags_exit_2_without_files(tmp_path, synth, capsys, argv, message):
    out = tmp_path / "x.onnx"
    argv = [a.format(data=synth, images=synth.parent / "images" / "val") for a in argv]
    try:
        code = main(["export", "--cfg", "yolov7-tiny", "--img-size", str(IMG), "--output", str(out), *argv])
    except SystemExit as exc:  # argparse's own choice check
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_qat_checkpoint_refuses_calibration_flags(tmp_path, qat_ckpt, synth, capsys):
    scheme, ckpt = qat_ckpt
    fmt = ["--format", "vitis-int8"] if scheme == "dpu" else ["--int8"]
    assert main(["export", "--weights", str(ckpt), *fmt, "--data", str(synth), "--img-size", str(IMG),
                 "--output", str(tmp_path / "x.onnx")]) == 2
    assert "carries its own scales" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_modelopt_ptq_goes_through_the_same_writer_and_lint(tmp_path, synth, capsys):
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt is not installed")
    out = tmp_path / "mo.qdq.onnx"
    assert main(["export", "--weights", str(DEMO_MODEL), "--int8", "--quantizer", "modelopt", "--data", str(synth),
                 "--calib-count", "2", "--img-size", str(IMG), "--output", str(out)]) == 0
    assert "calibrated with NVIDIA ModelOpt on 2 images" in capsys.readouterr().out
    lint = lint_trt_qdq(onnx.load(str(out)))
    assert lint.int8_convs == 58 and lint.per_channel == 58
    from yolo_prune.export.onnx_export import read_metadata

    assert read_metadata(out)["quantization"]["tool"] == "modelopt"


def test_yolo_prune_test_evaluates_a_qat_checkpoint_fake_quantized(qat_ckpt, synth, capsys):
    _, ckpt = qat_ckpt
    assert main(["test", "--weights", str(ckpt), "--data", str(synth), "--img", str(IMG), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "evaluated fake-quantized (int8)" in out and "GFLOPs @64" in out and len(_all_row(out)) == 4
