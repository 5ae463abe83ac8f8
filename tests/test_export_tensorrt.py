"""TensorRT helpers without TensorRT: trtexec commands, metadata, version checks, calibration batches, and the
API-facing build/load code driven through a fake ``tensorrt`` module (the real one cannot run here)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_prune.errors import YoloPruneError
from yolo_prune.export import tensorrt as trtx
from yolo_prune.export.tensorrt import EngineOptions, InputShape

SHAPE = InputShape("images", (640, 640), batch=1)
DYN = InputShape("images", (384, 640), batch=8, dynamic=True)


def test_trtexec_command_fp16_workspace():
    cmd = trtx.trtexec_command("m.onnx", "m.engine", EngineOptions(fp16=True, workspace_mib=1024), SHAPE)
    assert cmd == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--fp16", "--memPoolSize=workspace:1024"]


def test_trtexec_command_int8_calibration_dla_dynamic_timing_cache():
    opts = EngineOptions(fp16=True, int8=True, calib_cache=Path("calib.cache"), dla_core=1, workspace_mib=512,
                         timing_cache=Path("t.cache"))
    cmd = trtx.trtexec_command(Path("a b/m.onnx"), Path("m.engine"), opts, DYN)
    assert cmd == ["trtexec", "--onnx=a b/m.onnx", "--saveEngine=m.engine", "--fp16", "--int8", "--calib=calib.cache",
                   "--useDLACore=1", "--allowGPUFallback", "--memPoolSize=workspace:512", "--timingCacheFile=t.cache",
                   "--minShapes=images:1x3x384x640", "--optShapes=images:8x3x384x640",
                   "--maxShapes=images:8x3x384x640"]
    assert trtx.format_command(cmd).startswith("trtexec '--onnx=a b/m.onnx' --saveEngine=m.engine")


def test_dla_without_precision_implies_fp16_and_warns():
    opts = EngineOptions(dla_core=0)
    assert "--fp16" in trtx.trtexec_command("m.onnx", "m.engine", opts)
    assert any("DLA" in w for w in trtx.build_warnings(opts))


def test_int8_without_calibration_warns_about_dummy_ranges():
    assert trtx.build_warnings(EngineOptions(int8=True)) == [trtx.INT8_DUMMY_WARNING]
    assert "dummy" in trtx.INT8_DUMMY_WARNING
    assert trtx.build_warnings(EngineOptions(int8=True, calib_cache=Path("c"))) == []
    assert trtx.build_warnings(EngineOptions(fp16=True)) == []


def test_unavailable_message_carries_the_command():
    msg = trtx.unavailable_message(Path("m.onnx"), Path("m.engine"), EngineOptions(int8=True), SHAPE, "no module")
    assert "no module" in msg and "m.onnx" in msg
    assert "  trtexec --onnx=m.onnx --saveEngine=m.engine --int8 --memPoolSize=workspace:2048" in msg
    assert "warning: trtexec --int8 without --calib" in msg


def test_import_tensorrt_missing_raises_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where TensorRT is installed
    with pytest.raises(trtx.TensorRTUnavailable) as err:
        trtx.import_tensorrt()
    assert err.value.exit_code == 2


@pytest.mark.parametrize("bad", [dict(workspace_mib=0), dict(calib_batch=0), dict(dla_core=-1)])
def test_engine_options_validation(bad):
    with pytest.raises(YoloPruneError):
        EngineOptions(**bad)


def test_metadata_roundtrip_and_version_check(tmp_path):
    engine = tmp_path / "m.engine"
    bindings = [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float", "input": True}]
    build = EngineOptions(fp16=True, calib_cache=Path("c")).to_dict()
    meta = trtx.engine_metadata("8.5.2.2", bindings, {"nc": 3}, build, "m.onnx")
    trtx.write_json(trtx.metadata_path(engine), meta)
    assert trtx.metadata_path(engine) == tmp_path / "m.json"
    read = trtx.read_engine_metadata(engine)
    assert read == json.loads(json.dumps(meta)) and read["build"]["calib_cache"] == "c"
    trtx.check_version(read, "8.5.2.2")
    with pytest.raises(trtx.EngineVersionError, match="8.5.2.2 cannot be loaded by TensorRT 8.6.1") as err:
        trtx.check_version(read, "8.6.1")
    assert err.value.exit_code == 2
    with pytest.raises(YoloPruneError, match="metadata missing"):
        trtx.read_engine_metadata(tmp_path / "other.engine")


def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._000.png").write_bytes(b"\x00\x05\x16\x07 macOS AppleDouble copy")  # hidden: not an image
    return paths


def test_calibration_batches_use_the_shared_letterbox(tmp_path):
    from yolo_prune.data.letterbox import preprocess

    paths = _write_images(tmp_path / "calib", [(48, 80), (100, 60), (64, 64), (30, 90), (70, 70)])
    files = trtx.calibration_files(tmp_path / "calib", limit=10)
    assert files == paths
    batches = list(trtx.calibration_batches(files, 2, (64, 96), stride=32))
    assert len(batches) == 2  # the fifth image would make a short batch: dropped
    assert all(b.shape == (2, 3, 64, 96) and b.dtype == np.float32 for b in batches)
    want = preprocess(np.asarray(Image.open(paths[1]).convert("RGB")), (64, 96), 32)[0][0].numpy()
    np.testing.assert_array_equal(batches[0][1], want)
    assert abs(float(batches[0][0][0, 0, 0]) - 114 / 255) < 1e-6  # letterbox padding colour
    half = next(trtx.calibration_batches(files, 2, (64, 96), fp16_input=True))
    assert half.dtype == np.float16
    assert trtx.calibration_files(tmp_path / "calib", limit=3) == paths[:3]
    with pytest.raises(YoloPruneError, match="no images"):
        trtx.calibration_files(tmp_path / "empty", limit=3)


class _FakeCalibratorBase:
    def __init__(self) -> None:
        pass


def test_calibrator_cache_and_end_of_data(tmp_path):
    fake = types.SimpleNamespace(IInt8EntropyCalibrator2=_FakeCalibratorBase)
    cache = tmp_path / "calib.cache"
    calib = trtx.make_calibrator(fake, iter(()), cache, nbytes=16)
    assert calib.get_batch_size() == 1 and calib.read_calibration_cache() is None
    assert calib.get_batch(["images"]) is None and calib.device is None  # no data: no GPU buffer needed
    calib.write_calibration_cache(b"TRT-8502-EntropyCalibration2")
    assert cache.read_bytes() == b"TRT-8502-EntropyCalibration2"
    assert calib.read_calibration_cache() == b"TRT-8502-EntropyCalibration2"
    too_big = trtx.make_calibrator(fake, iter([np.zeros(8, np.float32)]), None, nbytes=16)
    with pytest.raises(YoloPruneError, match="exceeds"):
        too_big.get_batch(["images"])


@pytest.mark.gpu
def test_calibrator_copies_batches_to_the_gpu():
    fake = types.SimpleNamespace(IInt8EntropyCalibrator2=_FakeCalibratorBase)
    batch = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    calib = trtx.make_calibrator(fake, iter([batch]), None, nbytes=batch.nbytes)
    ptr = calib.get_batch(["images"])[0]
    assert ptr == calib.device.data_ptr()
    assert torch.equal(calib.device.view(torch.float32).cpu().view(1, 2, 3, 4), torch.from_numpy(batch))


def test_set_workspace_new_and_old_api():
    trt = types.SimpleNamespace(MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"))
    new = mock.Mock(spec=["set_memory_pool_limit"])
    trtx.set_workspace(new, trt, 1024)
    new.set_memory_pool_limit.assert_called_once_with("WS", 1024 << 20)
    old = types.SimpleNamespace(max_workspace_size=0)  # TensorRT < 8.4
    trtx.set_workspace(old, trt, 256)
    assert old.max_workspace_size == 256 << 20


def test_configure_sets_precision_dla_profile_and_calibrator():
    trt, builder, config = mock.MagicMock(), mock.MagicMock(), mock.MagicMock()
    calib = object()
    opts = EngineOptions(fp16=True, int8=True, dla_core=1, workspace_mib=64)
    trtx.configure(trt, builder, config, opts, DYN, calib)
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 64 << 20)
    flags = [c.args[0] for c in config.set_flag.call_args_list]
    assert flags == [trt.BuilderFlag.FP16, trt.BuilderFlag.INT8, trt.BuilderFlag.GPU_FALLBACK]
    assert config.int8_calibrator is calib and config.DLA_core == 1
    assert config.default_device_type == trt.DeviceType.DLA
    profile = builder.create_optimization_profile.return_value
    profile.set_shape.assert_called_once_with("images", (1, 3, 384, 640), (8, 3, 384, 640), (8, 3, 384, 640))
    config.set_calibration_profile.assert_called_once_with(profile)


class _FakeEngine:
    names = [("images", (1, 3, 64, 64), "DataType.FLOAT", "IN"), ("num_dets", (1, 1), "DataType.INT32", "OUT")]
    num_io_tensors = 2

    def get_tensor_name(self, i):
        return self.names[i][0]

    def _row(self, name):
        return next(r for r in self.names if r[0] == name)

    def get_tensor_shape(self, name):
        return self._row(name)[1]

    def get_tensor_dtype(self, name):
        return self._row(name)[2]

    def get_tensor_mode(self, name):
        return self._row(name)[3]


def _fake_tensorrt(version: str) -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = version
    trt.TensorIOMode.INPUT = "IN"
    trt.Builder.return_value.build_serialized_network.return_value = b"ENGINE-BYTES"
    trt.Builder.return_value.create_builder_config.return_value.create_timing_cache.return_value.serialize.\
        return_value = b"TIMING"
    trt.Runtime.return_value.deserialize_cuda_engine.return_value = _FakeEngine()
    return trt


def test_build_engine_writes_engine_json_and_timing_cache(tmp_path, monkeypatch):
    trt = _fake_tensorrt("8.5.2.2")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = tmp_path / "out" / "m.engine"
    opts = EngineOptions(fp16=True, timing_cache=tmp_path / "timing.cache")
    meta = trtx.build_engine(tmp_path / "m.onnx", engine, opts, SHAPE, {"stride": [8, 16, 32], "nc": 3})
    assert engine.read_bytes() == b"ENGINE-BYTES" and (tmp_path / "timing.cache").read_bytes() == b"TIMING"
    saved = json.loads((tmp_path / "out" / "m.json").read_text())
    assert saved == meta and saved["tensorrt"] == "8.5.2.2" and saved["export"]["nc"] == 3
    assert saved["bindings"] == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float", "input": True},
                                 {"name": "num_dets", "shape": [1, 1], "dtype": "int32", "input": False}]
    trt.init_libnvinfer_plugins.assert_called()  # EfficientNMS_TRT must be registered before parsing
    trt.OnnxParser.return_value.parse_from_file.assert_called_once_with(str(tmp_path / "m.onnx"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.engine", "m.json"]


def test_build_engine_failure_writes_nothing(tmp_path, monkeypatch):
    trt = _fake_tensorrt("8.5.2.2")
    trt.Builder.return_value.build_serialized_network.return_value = None
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(YoloPruneError, match="failed to build"):
        trtx.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions(), SHAPE, {"stride": [32]})
    assert list(tmp_path.iterdir()) == []


def test_parse_errors_are_reported(tmp_path, monkeypatch):
    trt = _fake_tensorrt("8.5.2.2")
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = False
    parser.num_errors = 1
    parser.get_error.return_value = "Plugin not found: EfficientNMS_TRT"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(YoloPruneError, match="EfficientNMS_TRT"):
        trtx.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", EngineOptions(), SHAPE, {"stride": [32]})


def test_load_engine_refuses_another_tensorrt_version(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE-BYTES")
    trtx.write_json(trtx.metadata_path(engine), {"tensorrt": "8.5.2.2", "bindings": []})
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.6.1"))
    with pytest.raises(trtx.EngineVersionError):
        trtx.load_engine(engine)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.5.2.2"))
    loaded, meta = trtx.load_engine(engine)
    assert isinstance(loaded, _FakeEngine) and meta["tensorrt"] == "8.5.2.2"


def test_describe_engine_built_by_trtexec(tmp_path, monkeypatch):
    from yolo_prune.export import ExportOptions, export_onnx
    from yolo_prune.models import build_model

    onnx_path = tmp_path / "m.onnx"
    export_onnx(build_model("yolov7-tiny", nc=2).eval(), onnx_path, ExportOptions(img_size=64, end2end=True))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE-BYTES")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.5.2.2"))
    meta = trtx.describe_engine(engine, onnx_path, {"trtexec": ["--fp16"]})
    assert json.loads((tmp_path / "m.json").read_text()) == meta
    assert meta["export"]["options"]["mode"] == "trt_nms" and meta["export"]["nc"] == 2
    assert meta["build"] == {"trtexec": ["--fp16"]} and meta["bindings"][0]["name"] == "images"


def test_bindings_of_tensorrt_before_8_5(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.2.1"))
    old = mock.Mock(spec=["num_bindings", "get_binding_name", "get_binding_shape", "get_binding_dtype",
                          "binding_is_input"])
    old.num_bindings = 1
    old.get_binding_name.return_value = "images"
    old.get_binding_shape.return_value = (1, 3, 64, 64)
    old.get_binding_dtype.return_value = "DataType.FLOAT"
    old.binding_is_input.return_value = True
    assert trtx.engine_bindings(old) == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float", "input": True}]
