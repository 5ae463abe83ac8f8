"""deploy/jetson without a Jetson: scripts parse and drive a stub trtexec; infer.py imports without TensorRT and
its pre/post-processing (from yolo_prune) maps detections back to the original image."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

JETSON = Path(__file__).resolve().parents[1] / "deploy" / "jetson"
STUB = """#!/usr/bin/env bash
echo "trtexec $*" >> "$STUB_LOG"
for a in "$@"; do case $a in --saveEngine=*) echo engine > "${a#--saveEngine=}" ;; esac; done
echo "[I] Throughput: 312.5 qps"
echo "[I] GPU Compute Time: min = 2.9 ms, max = 3.6 ms, mean = 3.1 ms, median = 3.1 ms"
"""


@pytest.fixture
def stub(tmp_path):
    exe = tmp_path / "trtexec"
    exe.write_text(STUB)
    exe.chmod(0o755)
    env = dict(os.environ, TRTEXEC=str(exe), STUB_LOG=str(tmp_path / "calls.log"), PYTHON="/nonexistent/python")
    return env, tmp_path / "calls.log"


@pytest.fixture(scope="module")
def infer():
    saved = sys.modules.get("tensorrt", "absent")
    sys.modules["tensorrt"] = None  # TensorRT absent, even where it is installed
    try:
        spec = importlib.util.spec_from_file_location("jetson_infer", JETSON / "infer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved == "absent":
            del sys.modules["tensorrt"]
        else:
            sys.modules["tensorrt"] = saved
    return module


@pytest.mark.parametrize("script", ["build_engine.sh", "benchmark.sh"])
def test_scripts_parse_and_are_executable(script):
    path = JETSON / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert os.access(path, os.X_OK)


def test_readme_states_it_was_not_run_here():
    text = (JETSON / "README.md").read_text()
    assert "could not be run" in text and "yolo-prune export" in text and "JetPack 5.1" in text


def test_build_engine_script_runs_trtexec_with_the_flags(stub, tmp_path):
    env, log = stub
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    r = subprocess.run(["bash", str(JETSON / "build_engine.sh"), str(onnx_path), "--int8", "--dla", "0",
                        "--workspace", "1024", "--dynamic", "--batch", "4", "--img", "384", "640"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    call = log.read_text().strip()
    assert call == (f"trtexec --onnx={onnx_path} --saveEngine={tmp_path / 'm.engine'} --int8 --useDLACore=0 "
                    "--allowGPUFallback --memPoolSize=workspace:1024 --minShapes=images:1x3x384x640 "
                    "--optShapes=images:4x3x384x640 --maxShapes=images:4x3x384x640")
    assert "dummy dynamic ranges" in r.stderr and (tmp_path / "m.engine").is_file()


def test_build_engine_script_builds_a_qdq_onnx_without_a_cache_and_without_the_warning(stub, tmp_path):
    env, log = stub
    onnx_path = tmp_path / "m.qdq.onnx"
    onnx_path.write_bytes(b"\x08\x07QuantizeLinear\x12DequantizeLinear")  # op types as the protobuf stores them
    r = subprocess.run(["bash", str(JETSON / "build_engine.sh"), str(onnx_path), "--int8", "--fp16"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--int8" in log.read_text() and "--calib" not in log.read_text()
    assert "explicit quantization" in r.stderr and "dummy" not in r.stderr


def test_build_engine_script_rejects_bad_input(stub, tmp_path):
    env, _ = stub
    r = subprocess.run(["bash", str(JETSON / "build_engine.sh"), str(tmp_path / "missing.onnx")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such ONNX" in r.stderr


def test_benchmark_script_reports_fps(stub, tmp_path):
    env, log = stub
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    r = subprocess.run(["bash", str(JETSON / "benchmark.sh"), str(engine), "--batch", "2", "--img", "640", "640"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--shapes=images:2x3x640x640" in log.read_text()
    assert "throughput: 312.5 inferences/s  GPU compute mean: 3.1 ms  FPS: 625.0" in r.stdout


def test_infer_compiles_and_imports_without_tensorrt(infer):
    subprocess.run([sys.executable, "-m", "py_compile", str(JETSON / "infer.py")], check=True)
    args = infer.parse_args(["--engine", "m.engine", "--source", "0"])
    assert args.conf_thres == 0.25 and args.out == "runs/jetson"
    source = (JETSON / "infer.py").read_text()
    assert "from yolo_prune.data.letterbox import preprocess" in source
    assert "from yolo_prune.engine.postprocess import non_max_suppression" in source
    assert "def letterbox" not in source  # imported, not copied


def test_infer_main_without_tensorrt_fails_clearly(infer, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    assert infer.main(["--engine", str(engine), "--source", str(tmp_path)]) == 2
    assert "tensorrt" in capsys.readouterr().err.lower()


class _FakeDetector:
    """Stands in for TrtDetector: an end-to-end engine that finds one box in network pixels."""

    batch, img_size = 1, (320, 320)
    meta = {"export": {"stride": [8, 16, 32], "names": ["a", "b"], "options": {"mode": "trt_nms"}}}

    def run(self, batch):
        assert batch.shape == (1, 3, 320, 320) and batch.dtype == np.float32
        boxes = np.zeros((1, 5, 4), np.float32)
        boxes[0, 0] = [0, 80, 160, 240]  # letterbox of 640x320 -> 320x160 placed at rows 80..240
        scores = np.array([[0.9, 0, 0, 0, 0]], np.float32)
        return {"num_dets": np.array([[1]], np.int32), "det_boxes": boxes, "det_scores": scores,
                "det_classes": np.array([[1, 0, 0, 0, 0]], np.int32)}


def test_infer_detect_maps_boxes_back_and_draws(infer, tmp_path):
    img = np.full((320, 640, 3), 50, np.uint8)
    args = infer.parse_args(["--engine", "m.engine", "--source", "x"])
    dets = infer.detect(_FakeDetector(), img, args)
    np.testing.assert_allclose(dets, [[0, 0, 320, 320, 0.9, 1]], atol=1e-4)
    drawn = infer.draw(img, dets, ["a", "b"])
    assert drawn.shape == img.shape and (drawn != img).any() and (img == 50).all()


def test_infer_grid_outputs_use_the_package_nms(infer):
    pred = np.zeros((1, 3, 7), np.float32)
    pred[0, :, :4] = [[50, 50, 20, 20], [52, 50, 20, 20], [150, 150, 10, 10]]
    pred[0, :, 4] = [0.9, 0.8, 0.7]
    pred[0, :, 5:] = [[1, 0], [1, 0], [0, 1]]
    dets = infer.detections({"output": pred}, "grid", 0.25, 0.45, 300)[0]
    assert dets.shape == (2, 6) and dets[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(dets[0, :4], [40, 40, 60, 60])


def test_infer_reads_image_folders(infer, tmp_path):
    from PIL import Image

    for name in ("b.png", "a.jpg"):
        Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    got = [(n, f.shape, s) for n, f, s in infer.frames(str(tmp_path))]
    assert got == [("a.jpg", (8, 12, 3), False), ("b.png", (8, 12, 3), False)]


def test_infer_turns_phone_photos_upright_as_evaluation_does(infer, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (a phone held upright) is inferred upright, as `test`, training
    and OpenCV's imread (YOLOv7's detect.py) read it; without the orientation the boxes would be for a rotated
    image."""
    import cv2
    from PIL import Image

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored (sideways) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    (name, frame, _), = infer.frames(str(tmp_path / "phone.jpg"))
    assert frame.shape == (40, 20, 3) and frame[:10].mean() > 200 and frame[-10:].mean() < 50
    np.testing.assert_array_equal(frame, cv2.imread(str(tmp_path / "phone.jpg"))[..., ::-1])


TIMES_STUB = """#!/usr/bin/env bash
echo "trtexec $*" >> "$STUB_LOG"
onnx=""; times=""; iters=1
for a in "$@"; do case $a in --help) echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8502]"; exit 0 ;;
  --onnx=*) onnx=${a#--onnx=} ;; --exportTimes=*) times=${a#--exportTimes=} ;; --iterations=*) iters=${a#--iterations=} ;;
esac; done
size=$(stat -c %s "$onnx")
python3 - "$times" "$iters" "$size" <<'PY'
import json, sys
path, iters, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
json.dump([{"computeMs": size / 1e5 + 0.01 * k} for k in range(iters)], open(path, "w"))
PY
"""


@pytest.mark.slow
def test_latency_table_script_writes_the_same_format_with_trtexec(tmp_path):
    """The Jetson script drives trtexec (a stub here: times grow with the graph's size) into a latency table that
    yolo-prune reads like its own."""
    from yolo_prune.analysis.latency import read_latency_table

    exe = tmp_path / "trtexec"
    exe.write_text(TIMES_STUB)
    exe.chmod(0o755)
    env = dict(os.environ, TRTEXEC=str(exe), STUB_LOG=str(tmp_path / "calls.log"))
    cfg = Path(__file__).resolve().parent / "data" / "darknet" / "yolov3-tiny.cfg"
    out = tmp_path / "trt.json"
    done = subprocess.run([sys.executable, str(JETSON / "latency_table.py"), "--cfg", str(cfg), "--img-size", "64",
                           "--rates", "[0.5]", "--repeats", "3", "--fp16", "--output", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    table = read_latency_table(out)
    assert (table.runtime, table.runtime_version, table.provider) == ("tensorrt", "8502", "TensorRT GPU fp16")
    assert len(table.ops) == 13 and table.ops[1].ms[0][0] < table.ops[1].ms[1][1]  # smaller graph, faster
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert all("--iterations=" in c and "--fp16" in c and "--exportTimes=" in c for c in calls if "--onnx=" in c)
    assert table.predict([(0, 0.5)]) < table.predict([])
