"""ONNX export without NMS: raw maps and decoded grid equal PyTorch (ONNX Runtime), static and dynamic batch."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from test_export_common import IMG, lively_tiny, pruned_widths, one_torch_thread  # noqa: F401 (autouse fixture)
from yolo_prune.errors import CheckFailed, YoloPruneError
from yolo_prune.export import ExportOptions, OrtDetector, export_onnx, read_metadata
from yolo_prune.export.verify import ort_session, run_ort, sample_images


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def model():
    return lively_tiny()


@pytest.fixture(scope="module")
def two_images():
    x = sample_images(IMG, 2, seed=11)
    assert (x[0] - x[1]).abs().max() > 0.5  # different scenes
    return x


@pytest.fixture(scope="module")
def grid_static(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "tiny.onnx"
    return export_onnx(model, path, ExportOptions(img_size=IMG, grid=True, batch_size=2))


@pytest.fixture(scope="module")
def raw_dynamic(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "tiny.onnx"
    return export_onnx(model, path, ExportOptions(img_size=IMG, dynamic_batch=True))


def test_raw_static_matches_pytorch_raw_maps(model, tmp_path):
    result = export_onnx(model, tmp_path / "m.onnx", ExportOptions(img_size=IMG))
    x = sample_images(IMG, 1, seed=3)
    outs = run_ort(ort_session(result.path), x)
    with torch.no_grad():
        _, raw = model(x)
    assert result.outputs == ["raw0", "raw1", "raw2"] and len(outs) == 3
    assert [tuple(o.shape) for o in outs] == [(1, 3, 20, 24, 8), (1, 3, 10, 12, 8), (1, 3, 5, 6, 8)]
    for got, want in zip(outs, raw):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    assert "ScatterND" not in _ops(result.path)
    assert result.report is not None and result.report.max_abs_diff < 1e-3


def test_raw_dynamic_batch_two_different_images(model, raw_dynamic, two_images):
    sess = ort_session(raw_dynamic.path)
    assert sess.get_inputs()[0].shape[0] == "batch"
    both = run_ort(sess, two_images)
    with torch.no_grad():
        _, raw = model(two_images)
    for got, want in zip(both, raw):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    single = run_ort(sess, two_images[1:])  # image 1 alone gives what it gave in the batch
    for got, batched in zip(single, both):
        torch.testing.assert_close(got[0], batched[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0][0], both[0][1])


def test_grid_equals_pytorch_eval_predictions(model, grid_static, two_images):
    got = run_ort(ort_session(grid_static.path), two_images)[0]
    with torch.no_grad():
        pred, _ = model(two_images)
    assert grid_static.outputs == ["output"] and got.shape == pred.shape == (2, 3 * (20 * 24 + 10 * 12 + 5 * 6), 8)
    torch.testing.assert_close(got[..., :4], pred[..., :4], atol=0.05, rtol=1e-4)  # pixels
    torch.testing.assert_close(got[..., 4:], pred[..., 4:], atol=1e-4, rtol=1e-3)
    assert "ScatterND" not in _ops(grid_static.path)


def test_pruned_tiny_exports_and_matches(tmp_path):
    pruned = lively_tiny(nc=3, widths=pruned_widths())
    assert pruned.widths()[3] == 16
    opts = ExportOptions(img_size=IMG, grid=True, dynamic_batch=True, simplify=True)
    result = export_onnx(pruned, tmp_path / "p.onnx", opts)
    x = sample_images(IMG, 2, seed=4)
    with torch.no_grad():
        pred, _ = pruned(x)
    torch.testing.assert_close(run_ort(ort_session(result.path), x)[0], pred, atol=0.05, rtol=1e-4)
    graph = onnx.load(str(result.path)).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    conv_out = sorted(dims[n.input[1]][0] for n in graph.node if n.op_type == "Conv")
    assert conv_out == sorted(list(pruned_widths()) + [3 * 8] * 3)  # every conv, head widths from nc


@pytest.mark.parametrize("nc", [1, 7])
def test_head_width_follows_nc(nc, tmp_path):  # a fresh model, small input: cheap
    from yolo_prune.models import build_model

    model = build_model("yolov7-tiny", nc=nc).eval()
    result = export_onnx(model, tmp_path / "n.onnx", ExportOptions(img_size=(64, 96), grid=True))
    out = ort_session(result.path).get_outputs()[0]
    assert out.shape[2] == 5 + nc
    assert read_metadata(result.path)["nc"] == nc


def test_fp16_export_close_to_fp32_pytorch(tmp_path):
    from yolo_prune.models import build_model

    torch.manual_seed(1)
    model = build_model("yolov7-tiny", nc=3).eval()
    result = export_onnx(model, tmp_path / "h.onnx", ExportOptions(img_size=IMG, grid=True, fp16=True))
    sess = ort_session(result.path)
    assert sess.get_inputs()[0].type == "tensor(float16)"
    assert result.report.lines and "tolerance 0.02" in result.report.lines[0]


def test_export_leaves_the_model_untouched(tmp_path):
    model = lively_tiny()
    before = copy.deepcopy(model.state_dict())
    training = model.training
    result = export_onnx(model, tmp_path / "u.onnx", ExportOptions(img_size=IMG, end2end=True, max_wh=4096))
    assert model.training == training
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert len(model.detect.ia) == 3  # implicit layers were folded in a copy only
    with pytest.raises(YoloPruneError, match="raw, --grid or vitis-int8"):
        OrtDetector(result.path)  # end-to-end graphs have no prediction output


def test_metadata_and_ort_detector_grid(model, grid_static):
    meta = read_metadata(grid_static.path)
    assert meta["options"]["mode"] == "grid" and meta["stride"] == [8.0, 16.0, 32.0] and len(meta["anchors"]) == 3
    det = OrtDetector(grid_static.path)
    three = sample_images(IMG, 3, seed=21)
    pred, raw = det(three)  # 3 images through a batch-2 graph: chunked, the last chunk padded
    with torch.no_grad():
        want, _ = model(three)
    assert raw == [] and det.nc == 3 and det.eval() is det and pred.shape == want.shape
    torch.testing.assert_close(pred, want, atol=0.05, rtol=1e-4)


def test_ort_detector_decodes_raw_exports(model, raw_dynamic, two_images):
    pred, raw = OrtDetector(raw_dynamic.path)(two_images)
    with torch.no_grad():
        want_pred, want_raw = model(two_images)
    torch.testing.assert_close(pred, want_pred, atol=0.05, rtol=1e-4)
    assert [r.shape for r in raw] == [r.shape for r in want_raw]


def test_failed_verification_leaves_no_file(model, tmp_path, monkeypatch):
    import yolo_prune.export.onnx_export as onnx_export

    def fail(*args, **kwargs):
        raise CheckFailed("simulated mismatch")

    monkeypatch.setattr(onnx_export, "verify_onnx", fail)
    with pytest.raises(CheckFailed):
        onnx_export.export_onnx(model, tmp_path / "x.onnx", ExportOptions(img_size=IMG))
    assert list(tmp_path.iterdir()) == []


def test_verification_catches_a_wrong_graph(grid_static):
    from yolo_prune.export.verify import verify_onnx

    other = lively_tiny(nc=3, widths=pruned_widths())  # a different model: ORT output no longer matches
    with pytest.raises(CheckFailed, match="differs from PyTorch"):
        verify_onnx(grid_static.path, other, grid_static.options)


@pytest.mark.parametrize("bad", [dict(img_size=(0, 64)), dict(topk_all=0), dict(conf_thres=1.5),
                                 dict(iou_thres=0.0), dict(max_wh=640), dict(opset=9)])
def test_invalid_options(bad):
    with pytest.raises(YoloPruneError):
        ExportOptions(**bad)


def test_image_size_must_be_stride_multiple(model, tmp_path):
    with pytest.raises(YoloPruneError, match="max stride 32"):
        export_onnx(model, tmp_path / "s.onnx", ExportOptions(img_size=(160, 200)))
    assert not (tmp_path / "s.onnx").exists()


def test_sample_images_are_real_looking_and_different():
    x = sample_images((96, 128), 3)
    assert x.shape == (3, 3, 96, 128) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert all(float(x[i].std()) > 0.05 for i in range(3))
    assert np.unique(x.view(3, -1).sum(1).numpy()).size == 3


@pytest.mark.gpu
@pytest.mark.parametrize("lively,kw", [(True, dict(grid=True)), (True, dict(end2end=True, max_wh=7680)),
                                       (False, dict(grid=True, fp16=True)), (False, dict(end2end=True, fp16=True))])
def test_export_on_cuda(lively, kw, tmp_path):
    from yolo_prune.models import build_model

    model = lively_tiny() if lively else build_model("yolov7-tiny", nc=3).eval()
    result = export_onnx(model, tmp_path / "c.onnx", ExportOptions(img_size=IMG, device="cuda", **kw))
    assert result.report is not None and result.report.lines
    assert next(model.parameters()).device.type == "cpu"  # traced on a CUDA copy; the model stays put
