"""`yolo-prune export`: outputs, the engine path without TensorRT, exit codes and no partial files."""
from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch

from test_export_common import one_torch_thread  # noqa: F401 (autouse fixture)
from yolo_prune.cli import main
from yolo_prune.errors import CheckFailed

TINY = ["--cfg", "yolov7-tiny", "--nc", "2", "--img-size", "64", "96"]


def test_grid_export_default_name_in_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *TINY, "--grid", "--simplify"]) == 0
    out = capsys.readouterr().out
    assert "exported grid ONNX (opset 12, input images [1, 3, 64, 96], outputs output) -> yolov7-tiny.onnx" in out
    assert "verified grid export with ONNX Runtime" in out and "max abs diff" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov7-tiny.onnx"]  # no temporary files left
    proto = onnx.load(str(tmp_path / "yolov7-tiny.onnx"))
    assert proto.opset_import[0].version == 12 and proto.graph.output[0].type.tensor_type.shape.dim[2].dim_value == 7


def test_dynamic_export_runs_at_other_sizes_and_evaluates_as_rectangles(tmp_path, capsys):
    """YOLOv7's --dynamic: batch, height and width axes (not --dynamic-batch, which argparse would have matched
    it to); verified at a second size; `test` then takes any --img and rectangular batches, as for the .pt."""
    import json

    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.demo_data import DEMO_MODEL
    from yolo_prune.export.verify import ort_session, run_ort, sample_images

    out = tmp_path / "dyn.onnx"
    assert main(["export", *TINY, "--grid", "--dynamic", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "input images [batch, 3, height, width]" in text and "dynamic axes, at 96x160 on 1 image" in text
    sess = ort_session(out)
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert run_ort(sess, sample_images((128, 64), 3))[0].shape == (3, 3 * (16 * 8 + 8 * 4 + 4 * 2), 7)
    data = generate_synthetic(tmp_path / "data", n_train=0, n_val=3, img_size=96, n_classes=6, seed=1)
    pt = DEMO_MODEL  # trained: its detections sit away from the thresholds, so the two runtimes keep the same ones
    assert main(["export", "--weights", str(pt), "--img-size", "64", "--dynamic", "--output", str(out)]) == 0
    reports = []
    for weights in (out, pt):
        capsys.readouterr()
        assert main(["test", "--weights", str(weights), "--data", str(data.root / "data.yaml"), "--img", "128",
                     "--workers", "0", "--device", "cpu", "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["n_images"] == 3 and reports[0]["map"] == pytest.approx(reports[1]["map"], abs=1e-6)


def test_include_nms_is_the_tensorrt_end_to_end_graph(tmp_path, capsys):
    out = tmp_path / "nms.onnx"
    assert main(["export", *TINY, "--grid", "--include-nms", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "--include-nms: the end-to-end graph with TensorRT's EfficientNMS_TRT" in captured.err
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    assert any(n.op_type == "EfficientNMS_TRT" for n in proto.graph.node)


def test_engine_without_tensorrt_prints_trtexec_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    engine = tmp_path / "out" / "m.engine"
    argv = ["export", *TINY, "--format", "engine", "--end2end", "--fp16", "--int8", "--calib-cache",
            str(tmp_path / "c.cache"), "--dla", "0", "--workspace", "1024", "--dynamic-batch", "--batch-size", "4",
            "--output", str(engine)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    onnx_path = tmp_path / "out" / "m.engine.onnx"  # named after the engine: never an m.onnx no one named
    assert "TensorRT is not available here" in err
    assert (f"  trtexec --onnx={onnx_path} --saveEngine={engine} --fp16 --int8 --calib={tmp_path / 'c.cache'} "
            "--useDLACore=0 --allowGPUFallback --memPoolSize=workspace:1024 --minShapes=images:1x3x64x96 "
            "--optShapes=images:4x3x64x96 --maxShapes=images:4x3x64x96") in err
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.engine.onnx"]
    proto = onnx.load(str(onnx_path))  # the ONNX for TensorRT stays fp32: --fp16 is a builder flag
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(n.op_type == "EfficientNMS_TRT" for n in proto.graph.node)


def test_small_max_wh_gets_a_note(tmp_path, capsys):
    assert main(["export", *TINY, "--end2end", "--max-wh", "96", "--output", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "note: --max-wh 96 < 2 x the image side" in out and "verified ort_nms export" in out


def test_int8_engine_without_calibration_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["export", *TINY, "--format", "engine", "--int8", "--output", str(tmp_path / "m.engine")]) == 2
    assert "dummy (random) dynamic ranges" in capsys.readouterr().err


def test_weights_checkpoint_raw_export(official_tiny_path, tmp_path, capsys):
    out = tmp_path / "official.onnx"
    assert main(["export", "--weights", str(official_tiny_path), "--img-size", "128", "--output", str(out)]) == 0
    assert "outputs raw0, raw1, raw2" in capsys.readouterr().out and out.is_file()


def test_unknown_format_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "yolo_prune", "export", "--cfg", "yolov7-tiny", "--format", "tflite"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'tflite'" in r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--img-size", "64", "96", "128"], "one or two values"),
    (["--img-size", "64", "--conf-thres", "0.3"], "--conf-thres: only valid with --end2end"),
    (["--img-size", "64", "--max-wh", "640"], "--max-wh: only valid with --end2end"),
    (["--img-size", "64", "--int8", "--dla", "0"], "--dla: only valid with --format engine"),  # --int8: Q/DQ ONNX
    (["--img-size", "64", "--format", "engine", "--output", "x.onnx"], "name the engine file"),
    (["--img-size", "64", "--end2end", "--iou-thres", "1.5"], "iou_thres must be in (0, 1]"),
    (["--img-size", "64", "--dynamic", "--format", "engine"], "--dynamic: only with --format onnx"),
    (["--img-size", "64", "--dynamic", "--include-nms"], "--dynamic: not with --end2end/--include-nms"),
    (["--img-size", "64", "--include-nms", "--max-wh", "640"], "use --end2end --max-wh N for that"),
])
def test_bad_input_exits_2_without_files(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--cfg", "yolov7-tiny", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a checkpoint at all, just some text bytes here......" * 2, None])
def test_checkpoint_that_is_not_a_model_exits_2(content, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    if content is None:
        torch.save({"epoch": 3, "weights": torch.zeros(3)}, bad)
    else:
        bad.write_bytes(content)
    assert main(["export", "--weights", str(bad), "--output", str(tmp_path / "bad.onnx")]) == 2
    assert "yolo-prune export: error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_failed_check_exits_1_without_files(tmp_path, monkeypatch, capsys):
    import yolo_prune.export.onnx_export as onnx_export

    def mismatch(*args, **kwargs):
        raise CheckFailed("ONNX Runtime differs from PyTorch on output: max abs diff 3.1")

    monkeypatch.setattr(onnx_export, "verify_onnx", mismatch)
    assert main(["export", *TINY, "--grid", "--output", str(tmp_path / "m.onnx")]) == 1
    assert "max abs diff 3.1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_device_without_cuda_exits_2(tmp_path, capsys):
    assert main(["export", *TINY, "--device", "0", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
