"""Vitis AI INT8 export: a real AMD Quark quantization of the shipped demo model, checked in ONNX Runtime,
evaluated with `yolo-prune test`; the DPU rules checked independently; bad input exits 2 with no file."""
from __future__ import annotations

import re
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from yolo_prune.checkpoint import load_checkpoint
from yolo_prune.cli import main
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_MODEL, DEMO_SYNTH
from yolo_prune.errors import CheckFailed
from yolo_prune.export.onnx_export import export_onnx
from yolo_prune.export.options import ExportOptions
from yolo_prune.export.ort_model import OrtDetector
from yolo_prune.models.pools import stack_large_pools
from yolo_prune.export.vitis_checks import DPU_LEAKY_SLOPE, check_xint8, dpu_warnings, fit_bias_shifts
from yolo_prune.models.cfgs import build_model
from yolo_prune.prune import prune

pytest.importorskip("quark.onnx")
IMG = DEMO_SYNTH["img_size"]


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("vitis")
    kw = DEMO_SYNTH | {"n_train": 16, "n_val": 16}
    return generate_synthetic(root / "data", **kw).data_yaml


@pytest.fixture(scope="session")
def int8(tmp_path_factory, synth):
    """The demo model exported with --format vitis-int8 through the CLI (16 calibration images)."""
    import os

    out, cwd = tmp_path_factory.mktemp("int8") / "demo.int8.onnx", tmp_path_factory.mktemp("cwd")
    argv = ["export", "--weights", str(DEMO_MODEL), "--format", "vitis-int8", "--data", str(synth),
            "--calib-count", "16", "--img-size", str(IMG), "--output", str(out)]
    before = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(argv) == 0
    finally:
        os.chdir(before)
    assert list(cwd.iterdir()) == []  # nothing left in the working directory (Quark writes a CSV there)
    return out


def _scales(proto):
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    q = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return init, q


def test_every_scale_is_a_power_of_two_with_zero_point_0(int8):
    proto = onnx.load(str(int8))
    init, q = _scales(proto)
    assert len(q) > 100
    for node in q:
        scale = init[node.input[1]]
        assert scale.size == 1, node.name
        assert float(scale) == 2.0 ** round(float(np.log2(scale))), node.name
        assert init[node.input[2]].dtype == np.int8 and int(init[node.input[2]]) == 0, node.name
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    dq_outputs = {n.output[0] for n in q if n.op_type == "DequantizeLinear"}
    assert all(c.input[0] in dq_outputs and c.input[1] in dq_outputs for c in convs)  # every conv runs in int8
    assert check_xint8(proto).concats == sum(n.op_type == "Concat" for n in proto.graph.node) > 0


def test_graph_ends_at_split_head_convs_and_pools_fit_the_dpu(int8):
    proto = onnx.load(str(int8))
    # each head conv split into box / obj / cls convs, each output with its own power-of-two scale
    assert [o.name for o in proto.graph.output] == [f"conv{i}_{g}" for i in range(3) for g in ("box", "obj", "cls")]
    head = [n for n in proto.graph.node if n.op_type == "Conv" and n.output[0] not in
            {i for m in proto.graph.node if m.op_type == "LeakyRelu" for i in m.input}]
    assert len(head) == 9
    assert not {"Reshape", "Transpose", "Sigmoid", "ScatterND"} & {n.op_type for n in proto.graph.node}
    kernels = [a.ints[0] for n in proto.graph.node if n.op_type == "MaxPool" for a in n.attribute
               if a.name == "kernel_shape"]
    assert kernels and max(kernels) <= 8  # the 9x9 and 13x13 SPP pools became stacked 5x5 pools


def test_int8_runs_in_ort_close_to_float(int8):
    model = load_checkpoint(DEMO_MODEL).model.float().eval()
    x = torch.rand(1, 3, IMG, IMG)
    pred, raw = OrtDetector(int8)(x)
    ref_pred, ref_raw = model(x)
    assert pred.shape == ref_pred.shape and len(raw) == len(ref_raw)
    for got, want in zip(raw, ref_raw):
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.98


def test_yolo_prune_test_reports_int8_map_beside_float(int8, synth, capsys):
    rows = {}
    for name, weights in (("float", DEMO_MODEL), ("int8", int8)):
        assert main(["test", "--weights", str(weights), "--data", str(synth), "--img", str(IMG),
                     "--batch-size", "8", "--workers", "0"]) == 0
        line = [ln for ln in capsys.readouterr().out.splitlines() if re.match(r"\s+all\s", ln)][-1]
        rows[name] = [float(v) for v in line.split()[-4:]]
    float_map50, int8_map50 = rows["float"][2], rows["int8"][2]
    assert float_map50 > 0.3
    assert int8_map50 > 0.5 * float_map50  # quantized, not broken


def test_keep_head_float_leaves_head_convs_unquantized(tmp_path, synth):
    from yolo_prune.export.vitis import VitisOptions, export_vitis_int8
    from yolo_prune.pipeline.evaluation import DataSettings, split_images

    files = [p for p in split_images(DataSettings(str(synth), "train"))[0]][:4]
    model = prune(build_model("yolov7-tiny", nc=2), 0.5, "l2", inplace=True, summarize=False).model.eval()
    opts = VitisOptions(calib_count=4, keep_head_float=True, split_head=False)
    result = export_vitis_int8(model, tmp_path / "p.onnx", 64, files, opts)
    assert len(result.check.float_convs) == 3 and result.calib_images == 4
    assert any("kept in float" in w for w in result.warnings)
    assert OrtDetector(tmp_path / "p.onnx")(torch.rand(1, 3, 64, 64))[0].shape[-1] == 7


def test_stacked_pools_equal_the_large_pools():
    x = torch.randn(2, 4, 20, 20)
    seq = nn.Sequential(nn.MaxPool2d(9, 1, 4), nn.MaxPool2d(13, 1, 6), nn.MaxPool2d(5, 1, 2), nn.MaxPool2d(2, 2))
    want = seq(x)
    assert stack_large_pools(seq, 8) == 2
    assert torch.equal(seq(x), want)
    assert all(p.kernel_size <= 5 for p in seq.modules() if isinstance(p, nn.MaxPool2d))


def _tiny_qdq(scale_a: float, scale_b: float, zero: int = 0) -> onnx.ModelProto:
    """x -> Q/DQ (scale_a) and y -> Q/DQ (scale_b) -> Concat."""
    nodes, inits = [], []
    for name, scale in (("x", scale_a), ("y", scale_b)):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(zero, np.int8), f"{name}_z")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"q_{name}"),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_d"],
                                   name=f"dq_{name}")]
    nodes.append(helper.make_node("Concat", ["x_d", "y_d"], ["out"], axis=1, name="cat"))
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", vi, [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_check_rejects_what_a_dpu_cannot_run():
    assert check_xint8(_tiny_qdq(0.25, 0.25)).exponents == (-2, -2)
    with pytest.raises(CheckFailed, match="not a power of two"):
        check_xint8(_tiny_qdq(0.3, 0.3))
    with pytest.raises(CheckFailed, match="cat: concatenated inputs have scales"):
        check_xint8(_tiny_qdq(0.25, 0.5))
    with pytest.raises(CheckFailed, match="zero point"):
        check_xint8(_tiny_qdq(0.25, 0.25, zero=3))


def _two_convs_one_bias(bias: float) -> onnx.ModelProto:
    """x -> Q/DQ 2^-7 -> conv (w 2^-9) -> LeakyReLU -> Q/DQ 2^-6 -> conv (w 2^-11) -> LeakyReLU -> Q/DQ 2^-8; both
    convs read ONE bias DequantizeLinear (scale 2^-20), as the ONNX export shares identical bias tensors."""
    inits = [numpy_helper.from_array(np.array(2.0 ** -e, np.float32), f"s{e}") for e in (6, 7, 8, 9, 11, 20)]
    inits += [numpy_helper.from_array(np.array(0, np.int8), "z"),
              numpy_helper.from_array(np.full((2, 2, 1, 1), 64, np.int8), "w"),
              numpy_helper.from_array(np.full(2, round(bias * 2 ** 20), np.int8), "b")]
    nodes = [helper.make_node("DequantizeLinear", ["b", "s20", "z"], ["bd"], name="dq_b")]
    x = "x"
    for i, (ins, ws, outs) in enumerate(((7, 9, 6), (6, 11, 8))):
        nodes += [helper.make_node("QuantizeLinear", [x, f"s{ins}", "z"], [f"q{i}"], name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{ins}", "z"], [f"d{i}"], name=f"dq{i}"),
                  helper.make_node("DequantizeLinear", ["w", f"s{ws}", "z"], [f"w{i}"], name=f"dqw{i}"),
                  helper.make_node("Conv", [f"d{i}", f"w{i}", "bd"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("LeakyRelu", [f"c{i}"], [f"a{i}"], alpha=DPU_LEAKY_SLOPE, name=f"act{i}")]
        x = f"a{i}"
    nodes += [helper.make_node("QuantizeLinear", [x, "s8", "z"], ["qo"], name="qo"),
              helper.make_node("DequantizeLinear", ["qo", "s8", "z"], ["out"], name="dqo")]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 4, 4]) for n in ("x", "out")]
    return helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], inits),
                             opset_imports=[helper.make_opsetid("", 13)])


def test_bias_shared_by_two_convs_is_split_and_moved_into_the_dpu_shift_range():
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)
    for bias in (0.0, 1e-5):  # the zeros of an untrained model; a tiny bias that rounds to zero at 2^-16
        proto = _two_convs_one_bias(bias)
        with pytest.raises(CheckFailed, match="shift_bias"):
            check_xint8(proto)
        want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
        assert fit_bias_shifts(proto) == 2 and fit_bias_shifts(proto) == 0
        onnx.checker.check_model(proto)
        assert check_xint8(proto).shift_checked == 2
        got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 2.0 ** -8  # at most one output step


def test_dpu_warnings_name_silu_and_slopes():
    silu = dpu_warnings(build_model("yolov7", nc=2))
    assert any(w.startswith("SiLU x") and "convert-activation" in w for w in silu)
    assert any("max-pool kernel(s) [9, 13]" in w for w in silu)
    leaky = nn.Sequential(nn.Conv2d(3, 3, 1), nn.LeakyReLU(DPU_LEAKY_SLOPE))
    assert dpu_warnings(leaky) == []


def test_float_conv_maps_export_matches_pytorch(tmp_path, tiny_model):
    pruned = prune(tiny_model, 0.3, "l2", inplace=False, summarize=False).model.eval()
    for model in (tiny_model, pruned):
        result = export_onnx(model, tmp_path / "c.onnx", ExportOptions(img_size=64, conv_maps=True, opset=13))
        assert result.outputs == ["conv0", "conv1", "conv2"] and result.report.max_abs_diff < 1e-3
        x = torch.rand(2, 3, 64, 64)
        assert torch.allclose(OrtDetector(tmp_path / "c.onnx")(x)[0], model.eval()(x)[0], atol=1e-3)


@pytest.mark.parametrize("extra, message", [
    ([], "needs calibration images"),
    (["--data", "{data}", "--grid"], "--grid: not valid with --format vitis-int8"),
    (["--data", "{data}", "--opset", "12"], "QDQ models need opset >= 13"),
    (["--calib-images", "{empty}"], "no images"),
    (["--data", "{data}", "--calib-split", "test"], "missing required key 'test'"),
])
def test_bad_input_exits_2_without_files(tmp_path, synth, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "x.int8.onnx"
    argv = [a.format(data=synth, empty=tmp_path / "empty") for a in extra]
    assert main(["export", "--cfg", "yolov7-tiny", "--format", "vitis-int8", "--output", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_vitis_flags_with_another_format_exit_2(tmp_path, synth, capsys):
    assert main(["export", "--cfg", "yolov7-tiny", "--data", str(synth), "--output", str(tmp_path / "a.onnx")]) == 2
    assert "--data: only valid with --format vitis-int8" in capsys.readouterr().err


def test_missing_quark_says_how_to_install(tmp_path, synth, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "quark.onnx", None)
    argv = ["export", "--cfg", "yolov7-tiny", "--format", "vitis-int8", "--data", str(synth), "--img-size", "64",
            "--output", str(tmp_path / "q.onnx")]
    assert main(argv) == 2
    assert "pip install 'yolo-prune[vitis]'" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


# ------------------------------------------------------------------------------------------ deploy/vitis
VITIS = __import__("pathlib").Path(__file__).resolve().parents[1] / "deploy" / "vitis"


def _run_vitis():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_vitis", VITIS / "run_vitis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_vitis_on_cpu_matches_the_package_pipeline(int8, synth, tmp_path, capsys):
    from PIL import Image

    from yolo_prune.data.letterbox import preprocess
    from yolo_prune.engine.postprocess import non_max_suppression

    images = sorted((synth.parent / "images" / "val").glob("*.jpg"))[:3]
    src = tmp_path / "src"
    src.mkdir()
    for f in images:
        (src / f.name).write_bytes(f.read_bytes())
    assert _run_vitis().main(["--model", str(int8), "--source", str(src), "--cpu", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f.name for f in images]
    det = OrtDetector(int8)
    for f in images:
        img = np.asarray(Image.open(f).convert("RGB"))
        x, _, _ = preprocess(img, (IMG, IMG), 32)
        n = len(non_max_suppression(det(x)[0], 0.25, 0.45, max_det=300)[0])
        assert f"{f.name}: {n} detections" in out


def test_run_vitis_without_the_vitis_ep_exits_2(int8, capsys):
    assert _run_vitis().main(["--model", str(int8), "--compile-only"]) == 2
    assert "VitisAIExecutionProvider is not available" in capsys.readouterr().err


def test_compile_script_parses_and_is_executable():
    import os
    import subprocess

    subprocess.run(["bash", "-n", str(VITIS / "compile.sh")], check=True)
    assert os.access(VITIS / "compile.sh", os.X_OK) and os.access(VITIS / "run_vitis.py", os.X_OK)


def test_compile_script_runs_vai_c_xir_with_the_board_arch(tmp_path):
    import os
    import subprocess

    stub = tmp_path / "vai_c_xir"
    stub.write_text('#!/usr/bin/env bash\necho "vai_c_xir $*" > "$STUB_LOG"\n')
    stub.chmod(0o755)
    arch = tmp_path / "arch" / "DPUCZDX8G" / "KV260"
    arch.mkdir(parents=True)
    (arch / "arch.json").write_text("{}")
    model = tmp_path / "m.xmodel"
    model.write_bytes(b"x")
    env = dict(os.environ, VAI_C_XIR=str(stub), STUB_LOG=str(tmp_path / "log"), VAI_ARCH_ROOT=str(tmp_path / "arch"))
    r = subprocess.run(["bash", str(VITIS / "compile.sh"), str(model), "kv260", "--out", str(tmp_path / "c")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "log").read_text().strip() == (f"vai_c_xir -x {model} -a {arch / 'arch.json'} "
                                                      f"-o {tmp_path / 'c'} -n m")
    assert "DPUCZDX8G (Vitis AI 3.0)" in r.stdout


def test_compile_script_rejects_bad_input(tmp_path, int8):
    import os
    import subprocess

    def run(*argv, **env):
        return subprocess.run(["bash", str(VITIS / "compile.sh"), *argv], capture_output=True, text=True,
                              env=dict(os.environ, **env), cwd=tmp_path)

    r = run(str(tmp_path / "missing.onnx"), "kv260")
    assert r.returncode == 2 and "no such model file" in r.stderr
    r = run(str(int8), "zcu999")
    assert r.returncode == 2 and "unknown target 'zcu999'" in r.stderr
    r = run(str(int8), "vek280", PYTHON=sys.executable)  # the ONNX path needs the Vitis AI EP: clear failure
    assert r.returncode == 2 and "VitisAIExecutionProvider is not available" in r.stderr
    assert "DPUCV2DX8G (Vitis AI 3.5)" in r.stdout
    assert not list(tmp_path.glob("compiled_*")), "a failed compile left its output folder behind"


def test_vitis_readme_states_what_was_not_run():
    text = (VITIS / "README.md").read_text()
    assert "could not be run" in text and "yolo-prune export --weights" in text and "vai_c_xir" in text
