"""Q/DQ ONNX from fake-quantized models: the DPU checks and the TensorRT lint pass on what we export, ONNX
Runtime reproduces the fake-quantized PyTorch model, and the lint catches misplaced Q/DQ nodes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from yolo_prune.errors import CheckFailed
from yolo_prune.export.options import ExportOptions
from yolo_prune.export.ort_model import OrtDetector
from yolo_prune.export.qdq import export_qdq
from yolo_prune.export.trt_qdq_checks import lint_trt_qdq
from yolo_prune.export.verify import sample_images
from yolo_prune.export.vitis_checks import check_xint8
from yolo_prune.prune import prune
from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.prepare import quantize_model

IMG = 64


def _calibrated(model, scheme):
    prepared = quantize_model(model, scheme, IMG)
    calibrate(prepared.model, [sample_images((IMG, IMG), 2, seed=3)])
    return prepared.model


@pytest.fixture(scope="module")
def pruned_tiny(tiny_model):
    return prune(tiny_model, 0.3, "l2", inplace=False, summarize=False).model.eval()


@pytest.mark.parametrize("which", ["unpruned", "pruned"])
def test_dpu_graph_passes_the_checks_and_matches_the_fake_quantized_model(tmp_path, tiny_model, pruned_tiny, which):
    model = _calibrated(tiny_model if which == "unpruned" else pruned_tiny, "dpu")
    opts = ExportOptions(img_size=IMG, conv_maps=True, split_head=True, opset=13)
    result = export_qdq(model, tmp_path / "m.int8.onnx", opts, "dpu", {"tool": "test"})
    proto = onnx.load(str(tmp_path / "m.int8.onnx"))
    check = check_xint8(proto)
    assert check.per_channel == [] and check.float_convs == [] and check.concats == 14
    assert check.shift_checked == 55 + 9  # every conv, the 3 x 3 split head convs included
    assert [o.name for o in proto.graph.output] == [f"conv{i}_{g}" for i in range(3) for g in ("box", "obj", "cls")]
    weights = {i.name: i for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4}
    assert len(weights) == 64  # int8 weights stored as initializers, as AMD Quark writes them
    x = sample_images((IMG, IMG), 1, seed=7)
    pred, raw = OrtDetector(tmp_path / "m.int8.onnx")(x)  # reassembles the split head outputs
    want_pred, want_raw = model.eval()(x)
    for got, want in zip(raw, want_raw):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
    assert "cosine 1.0" in str(result)


def test_tensorrt_graph_passes_the_lint_and_matches_the_fake_quantized_model(tmp_path, pruned_tiny):
    model = _calibrated(pruned_tiny, "tensorrt")
    result = export_qdq(model, tmp_path / "m.qdq.onnx", ExportOptions(img_size=IMG, opset=13), "tensorrt", {})
    lint = lint_trt_qdq(onnx.load(str(tmp_path / "m.qdq.onnx")))
    assert lint.int8_convs == 58 and lint.per_channel == 58 and lint.float_convs == [] and lint.concats == 14
    x = sample_images((IMG, IMG), 1, seed=9)
    got, want = OrtDetector(tmp_path / "m.qdq.onnx")(x)[1], model.eval()(x)[1]
    assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
    assert result.metadata["options"]["mode"] == "raw"


# ------------------------------------------------------------------------------------------ the TensorRT lint
def _graph(misplace: str = "") -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(Q/DQ weight, per-channel) -> LeakyRelu -> Q/DQ -> Concat(with a maxpool branch) -> y,
    with one defect chosen by ``misplace``."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(w_scale, "w_s"), numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s2")]
    qdq = lambda src, dst, scale="s": [  # noqa: E731
        helper.make_node("QuantizeLinear", [src, scale, "z"], [f"{dst}_q"], name=f"q_{dst}"),
        helper.make_node("DequantizeLinear", [f"{dst}_q", scale, "z"], [dst], name=f"dq_{dst}")]
    nodes = qdq("x", "xd")
    nodes += [helper.make_node("QuantizeLinear", ["w", "w_s", "w_z"], ["wq"], name="q_w", axis=0),
              helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], name="dq_w", axis=0)]
    if misplace == "between_conv_and_act":
        nodes += [helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])]
        nodes += qdq("c", "cd") + [helper.make_node("LeakyRelu", ["cd"], ["a"], name="act", alpha=0.1)]
    elif misplace == "float_input":
        nodes += [helper.make_node("Conv", ["x", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                  helper.make_node("LeakyRelu", ["c"], ["a"], name="act", alpha=0.1)]
    else:
        nodes += [helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                  helper.make_node("LeakyRelu", ["c"], ["a"], name="act", alpha=0.1)]
    nodes += qdq("a", "ad")
    nodes += [helper.make_node("MaxPool", ["ad"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    nodes += qdq("p", "pd", "s2" if misplace == "concat_scales" else "s")
    nodes += [helper.make_node("Concat", ["ad", "pd"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_lint_accepts_a_well_placed_graph():
    lint = lint_trt_qdq(_graph())
    assert (lint.int8_convs, lint.per_channel, lint.concats) == (1, 1, 1)


@pytest.mark.parametrize("misplace, message", [
    ("between_conv_and_act", "q_cd: Q/DQ between conv 'conv' and its activation LeakyRelu 'act'"),
    ("float_input", "conv: its input is float but the other operand is quantized"),
    ("concat_scales", "cat: concatenation inputs have scales [0.02, 0.05]"),
])
def test_lint_catches_misplaced_qdq(misplace, message):
    with pytest.raises(CheckFailed, match=message.replace("[", r"\[").replace("]", r"\]")):
        lint_trt_qdq(_graph(misplace))


def test_lint_catches_asymmetric_and_per_channel_activation_quantization():
    proto = _graph()
    for init in proto.graph.initializer:
        if init.name == "z":
            init.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "z"))
    with pytest.raises(CheckFailed, match="zero point \\[3\\]"):
        lint_trt_qdq(proto)
    proto = _graph()
    proto.graph.node[0].input[1] = proto.graph.node[1].input[1] = "w_s"  # per-channel scale on the input
    with pytest.raises(CheckFailed, match="per-channel scale on an activation"):
        lint_trt_qdq(proto)


def test_dpu_check_catches_a_shift_outside_the_compilers_limits(tmp_path, tiny_model):
    model = _calibrated(tiny_model, "dpu")
    export_qdq(model, tmp_path / "m.onnx", ExportOptions(img_size=IMG, conv_maps=True, split_head=True, opset=13),
               "dpu", {})
    proto = onnx.load(str(tmp_path / "m.onnx"))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = next(n for n in proto.graph.node if n.output[0] == conv.input[1])
    scale = next(i for i in proto.graph.initializer if i.name == dq.input[1]) if any(
        i.name == dq.input[1] for i in proto.graph.initializer) else None
    new = helper.make_tensor(f"{dq.input[1]}_big", TensorProto.FLOAT, [], [2.0 ** 10])
    proto.graph.initializer.append(new)
    dq.input[1] = new.name  # weight scale 2^10: shift_cut far below 0
    assert scale is None or scale.name != new.name
    with pytest.raises(CheckFailed, match="shift_cut"):
        check_xint8(proto)
