"""`yolo-prune benchmark` and yolo_prune.bench: ONNX cost == PyTorch cost, timing statistics, the table, bad input."""
from __future__ import annotations

import copy
import json
import statistics

import numpy as np
import pytest
import torch

from yolo_prune.bench import LatencyStats, onnx_cost, percentile, time_callable
from yolo_prune.bench.onnx_cost import load_onnx
from yolo_prune.cli import main
from yolo_prune.models.complexity import count_gflops, count_params
from yolo_prune.models.fuse import fuse

IMG = 64
FAST = ["--warmup", "1", "--iters", "2", "--threads", "1"]
PUBLISHED_EXAMPLE = [(8, 0.5), (18, 0.5), (28, 0.75), (29, 0.75), (32, 0.75), (33, 0.75), (41, 0.5), (43, 0.5),
                     (45, 0.5), (46, 0.5)]


@pytest.fixture(scope="session")
def models():
    """Unpruned and pruned eval-mode yolov7-tiny (nc=2): uniform 50% and a few layers at uneven rates."""
    from yolo_prune.models import build_model
    from yolo_prune.prune import prune

    torch.manual_seed(0)
    base = build_model("yolov7-tiny", nc=2).eval()
    return {"base": base, "uniform": prune(base, 0.5, "l2", summarize=False).model.eval(),
            "layers": prune(base, [(3, 0.5), (20, 0.75), (40, 0.25)], "l2", summarize=False).model.eval()}


@pytest.fixture(scope="session")
def files(models, tmp_path_factory):
    """Checkpoints of the models; ONNX: the base (static batch), uniform (dynamic batch), layers (64x96) and the
    base with TensorRT NMS (end-to-end)."""
    from yolo_prune.checkpoint import save_checkpoint
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions

    d = tmp_path_factory.mktemp("bench")
    out = {}
    for name, model in models.items():
        out[f"{name}.pt"] = save_checkpoint(model, d / f"{name}.pt")
    export_onnx(models["base"], d / "base.onnx", ExportOptions(img_size=IMG, opset=12), verify=False)
    export_onnx(models["uniform"], d / "uniform.onnx", ExportOptions(img_size=IMG, opset=12, dynamic_batch=True),
                verify=False)
    export_onnx(models["layers"], d / "layers.onnx", ExportOptions(img_size=(IMG, 96), opset=12), verify=False)
    export_onnx(models["base"], d / "e2e.onnx", ExportOptions(img_size=IMG, opset=12, end2end=True), verify=False)
    out.update({n: d / n for n in ("base.onnx", "uniform.onnx", "layers.onnx", "e2e.onnx")})
    return {k: str(v) for k, v in out.items()}


def fused_cost(model, img):
    fused = fuse(copy.deepcopy(model), conv_bn=True, repconv=True, implicit=True)
    return count_params(fused), count_gflops(fused, img)


# ------------------------------------------------------------------------------------------------ ONNX cost
@pytest.mark.parametrize("name,img", [("base", (IMG, IMG)), ("uniform", (IMG, IMG)), ("layers", (IMG, 96))])
def test_onnx_cost_equals_fused_pytorch_count(models, files, name, img):
    cost = onnx_cost(load_onnx(files[f"{name}.onnx"]))
    params, gflops = fused_cost(models[name], img)
    assert (cost.params, cost.convs, cost.resizes) == (params, 58, 2)
    assert cost.gflops == pytest.approx(gflops, rel=1e-9)
    if name != "base":
        assert cost.params < fused_cost(models["base"], img)[0]


def test_onnx_cost_yolov7_repconv_published_pruning(tmp_path):
    """yolov7 (RepConv merged on export), pruned with the published example: ONNX count == PyTorch count."""
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.models import build_model
    from yolo_prune.prune import prune

    torch.manual_seed(0)
    model = prune(build_model("yolov7", nc=2).eval(), PUBLISHED_EXAMPLE, "l2", summarize=False).model.eval()
    export_onnx(model, tmp_path / "v7.onnx", ExportOptions(img_size=IMG, opset=12), verify=False)
    cost = onnx_cost(load_onnx(tmp_path / "v7.onnx"))
    params, gflops = fused_cost(model, IMG)
    assert (cost.params, cost.convs) == (params, 92)
    assert cost.gflops == pytest.approx(gflops, rel=1e-9)


def test_onnx_cost_int8_qdq_counts_weights_once(files, tmp_path):
    """A QDQ INT8 graph (weights stored as int8, dequantized before each Conv) counts like the float graph."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": np.random.default_rng(i).random((1, 3, IMG, IMG), np.float32)}
                                 for i in range(2)])

        def get_next(self):
            return next(self.batches, None)

    out = tmp_path / "base.int8.onnx"
    quantize_static(files["base.onnx"], str(out), Reader(), quant_format=QuantFormat.QDQ,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    proto = load_onnx(out)
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    assert onnx_cost(proto) == onnx_cost(load_onnx(files["base.onnx"]))


# ------------------------------------------------------------------------------------------------ timing
def test_percentile_matches_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.5]
    for q in (0, 10, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_latency_stats_and_time_callable():
    stats = LatencyStats(4, (10.0, 20.0, 30.0, 40.0, 100.0))
    assert (stats.n, stats.median_ms, stats.min_ms, stats.mean_ms) == (5, 30.0, 10.0, 40.0)
    assert stats.throughput == pytest.approx(4 * 1000 / 30.0)
    assert (stats.p10_ms, stats.p90_ms) == (pytest.approx(14.0), pytest.approx(76.0))
    assert stats.merged(LatencyStats(4, (1.0,))).n == 6
    calls, syncs = [], []
    timed = time_callable(lambda: calls.append(1), warmup=3, iters=5, batch=2, sync=lambda: syncs.append(1))
    assert (len(calls), len(syncs), timed.n, timed.batch) == (8, 6, 5, 2)  # one sync after warm-up, one per run
    assert all(t >= 0 for t in timed.times_ms) and timed.median_ms == statistics.median(timed.times_ms)


def test_interleaved_visits_models_in_turn_and_busy_warning():
    from types import SimpleNamespace

    from yolo_prune.bench import busy_warning, interleaved

    order, alive = [], []

    def factory(name):
        def make():
            alive.append(name)  # a fresh runner at every visit
            return SimpleNamespace(run=lambda: order.append(name), sync=None)
        return make

    stats = interleaved({"a": factory("a"), "b": factory("b")}, rounds=3, warmup=1, iters=2)
    assert alive == ["a", "b"] * 3 and order == (["a"] * 3 + ["b"] * 3) * 3
    assert stats["a"].n == stats["b"].n == 6
    quiet = {"a": LatencyStats(1, (10.0, 10.2, 10.1, 9.9)), "b": LatencyStats(1, (5.0, 5.1, 5.2))}
    busy = {"a": LatencyStats(1, (10.0, 10.2, 30.0, 9.9, 31.0)), "b": quiet["b"]}
    assert busy_warning(quiet) is None
    assert "machine was busy (a p90/p10" in busy_warning(busy) and "b p90" not in busy_warning(busy)


# ------------------------------------------------------------------------------------------------ CLI
def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_cli_torch_checkpoints_table(files, capsys):
    argv = ["benchmark", "--weights", files["base.pt"], files["uniform.pt"], "--img-size", str(IMG),
            "--batch-size", "1", "2", *FAST]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "[4/4]" in captured.err and "median" in captured.err  # progress, one line per (model, batch)
    assert "| model | runtime | batch | input | params | GFLOPs | median ms | p10-p90 ms | img/s | speed-up " \
           "| GFLOPs ratio | speed-up / GFLOPs ratio |" in captured.out
    rows = table_rows(captured.out)
    assert [(r[0].rsplit("/", 1)[-1], r[1], r[2], r[3]) for r in rows] == [
        ("base.pt", "torch", "1", "64x64"), ("base.pt", "torch", "2", "64x64"),
        ("uniform.pt", "torch", "1", "64x64"), ("uniform.pt", "torch", "2", "64x64")]
    assert rows[0][9:] == ["1.00x", "1.00x", "1.00"]
    ratio = fused_cost_ratio(files)
    assert rows[2][10] == f"{ratio:.2f}x" and rows[2][4] == f"{1509151:,}"
    speedup = float(rows[2][9].rstrip("x"))
    assert float(rows[2][11]) == pytest.approx(speedup / ratio, abs=0.011)


def fused_cost_ratio(files) -> float:
    from yolo_prune.checkpoint import load_model

    return fused_cost(load_model(files["base.pt"]), IMG)[1] / fused_cost(load_model(files["uniform.pt"]), IMG)[1]


def test_cli_ort_onnx_and_checkpoint_json(files, tmp_path, capsys):
    """ONNX files and a checkpoint (exported on the fly at the ONNX files' size) in ONNX Runtime; --json rows."""
    out = tmp_path / "sub" / "speed.json"
    argv = ["benchmark", "--runtime", "ort", "--weights", files["base.onnx"], files["uniform.onnx"],
            files["uniform.pt"], *FAST, "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "ONNX Runtime" in captured.out and "CPUExecutionProvider, 1 intra-op thread;" in captured.out
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["model"] for r in rows] == [files["base.onnx"], files["uniform.onnx"], files["uniform.pt"]]
    assert all(r["runtime"] == "ort" and r["batch"] == 1 and r["img_size"] == [IMG, IMG] and r["n"] == 2
               and len(r["times_ms"]) == 2 for r in rows)
    assert rows[1]["params"] == rows[2]["params"] == 1509151 and rows[1]["gflops"] == rows[2]["gflops"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["gflops_ratio"] == pytest.approx(fused_cost_ratio(files))
    assert rows[1]["speedup_per_gflops_ratio"] == pytest.approx(rows[1]["speedup"] / rows[1]["gflops_ratio"])
    assert data["environment"]["settings"] == {"runtime": "ort", "warmup": 1, "iters": 2, "threads": 1,
                                               "fp16": False}
    assert f"wrote 3 rows -> {out}" in captured.out


def test_cli_dynamic_batch_onnx_takes_batch_sizes(files, capsys):
    assert main(["benchmark", "--runtime", "ort", "--weights", files["uniform.onnx"], "--batch-size", "1", "3",
                 *FAST]) == 0
    assert [r[2] for r in table_rows(capsys.readouterr().out)] == ["1", "3"]


BAD = [
    (["--weights", "{missing}"], "--weights {missing}: file not found"),
    (["--weights", "{junk_pt}"], "not a PyTorch checkpoint"),
    (["--runtime", "ort", "--weights", "{junk_onnx}"], "not an ONNX model"),
    (["--runtime", "ort", "--weights", "{base_onnx}", "--img-size", "128"],
     "{base_onnx}: the ONNX input is fixed at 64x64, but --img-size is 128 128"),
    (["--weights", "{base_onnx}"], "--weights {base_onnx}: an ONNX file runs with --runtime ort; --runtime torch "
                                   "takes checkpoints (.pt)"),
    (["--runtime", "torch-compile", "--weights", "{base_pt}", "{uniform_onnx}"],
     "--weights {uniform_onnx}: an ONNX file runs with --runtime ort"),
    (["--runtime", "ort", "--weights", "{uniform_onnx}", "{base_onnx}", "--batch-size", "2"],
     "{base_onnx}: the ONNX graph has a fixed batch of 1, but --batch-size is 2"),
    (["--runtime", "ort", "--weights", "{base_onnx}", "{e2e_onnx}"],
     "{e2e_onnx}: contains TensorRT plugin nodes (EfficientNMS_TRT) that ONNX Runtime cannot run"),
    (["--runtime", "ort", "--weights", "{base_onnx}", "--fp16"], "--fp16: with --runtime ort the precision is"),
    (["--weights", "{base_pt}", "--img-size", "64", "64", "64"], "--img-size takes one or two values"),
    (["--weights", "{base_pt}", "--device", "7"], "--device 7: CUDA device 7 is not available"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_exits_2_and_writes_nothing(files, tmp_path, capsys, argv, message):
    names = {k.replace(".", "_"): v for k, v in files.items()}  # str.format placeholders: base_pt, base_onnx ...
    names.update(missing=str(tmp_path / "missing.pt"), junk_pt=str(tmp_path / "junk.pt"),
                 junk_onnx=str(tmp_path / "junk.onnx"))
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 not an onnx file either" * 8)
    out = tmp_path / "speed.json"
    assert main(["benchmark", *[a.format(**names) for a in argv], *FAST, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("yolo-prune benchmark: error: ") and message.format(**names) in err
    assert not out.exists() and "[1/" not in err  # rejected before anything was timed


def test_json_must_not_overwrite_an_input(files, capsys):
    before = open(files["base.pt"], "rb").read()
    assert main(["benchmark", "--weights", files["base.pt"], *FAST, "--json", files["base.pt"]]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert open(files["base.pt"], "rb").read() == before


def test_unknown_runtime_is_a_usage_error(files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--weights", files["base.pt"], "--runtime", "tensorrt"])
    assert exc.value.code == 2
    assert "--runtime: invalid choice: 'tensorrt' (choose from 'torch', 'torch-compile', 'ort')" in \
        capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_fp16_eager_and_compiled(files, capsys):
    for runtime in ("torch", "torch-compile"):
        assert main(["benchmark", "--runtime", runtime, "--device", "0", "--fp16", "--weights", files["base.pt"],
                     files["uniform.pt"], "--img-size", str(IMG), "--warmup", "2", "--iters", "3"]) == 0
        out = capsys.readouterr().out
        assert "fp16, cuda:0" in out and len(table_rows(out)) == 2
