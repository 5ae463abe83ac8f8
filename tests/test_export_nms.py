"""End-to-end exports: ONNX NonMaxSuppression equals PyTorch + torchvision; the TensorRT plugin graph is right."""
from __future__ import annotations

import onnx
import pytest
import torch

from test_export_common import IMG, lively_tiny, one_torch_thread  # noqa: F401 (autouse fixture)
from yolo_prune.errors import CheckFailed
from yolo_prune.export import ExportOptions, export_onnx
from yolo_prune.export.detections import match_detections, reference_detections, unpad
from yolo_prune.export.graph_checks import check_trt_plugin, cut_before, find_trt_plugin
from yolo_prune.export.nms_onnx import nms_padded, pad_selected
from yolo_prune.export.verify import ort_session, run_ort, sample_images

CONF, IOU = 0.5, 0.5


@pytest.fixture(scope="module")
def model():
    return lively_tiny()


@pytest.fixture(scope="module")
def images():
    return sample_images(IMG, 3, seed=7)  # three different scenes


@pytest.fixture(scope="module")
def pred(model, images):
    with torch.no_grad():
        return model(images)[0]


@pytest.fixture(scope="module")
def topk(pred):
    """A top-k between the per-image detection counts, so it truncates some images and not others."""
    counts = sorted(len(d) for d in reference_detections(pred, CONF, IOU, 10_000))
    assert counts[0] < counts[-1]
    return (counts[0] + counts[-1]) // 2


@pytest.fixture(scope="module")
def ort_e2e(model, topk, tmp_path_factory):
    opts = ExportOptions(img_size=IMG, end2end=True, max_wh=7680, dynamic_batch=True, conf_thres=CONF,
                         iou_thres=IOU, topk_all=topk)
    return export_onnx(model, tmp_path_factory.mktemp("e2e") / "ort.onnx", opts)


@pytest.fixture(scope="module")
def trt_e2e(model, tmp_path_factory):
    opts = ExportOptions(img_size=IMG, end2end=True, conf_thres=CONF, iou_thres=IOU, topk_all=50, batch_size=3)
    return export_onnx(model, tmp_path_factory.mktemp("e2e") / "trt.onnx", opts)


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    m = match_detections(got, want, box_tol=0.05, score_tol=1e-4)
    assert len(got) == len(want) == m.matched, (len(got), len(want), m.matched, m.only_got, m.only_ref)


def test_thresholds_matter_on_these_images(pred, topk):
    """Sanity of the test data: confidence filtering, NMS suppression and top-k each remove detections."""
    scores = (pred[..., 5:] * pred[..., 4:5]).amax(2)
    candidates = [int((s > CONF).sum()) for s in scores]
    after_nms = [len(d) for d in reference_detections(pred, CONF, IOU, 10_000)]
    assert all(0 < c < s.numel() for c, s in zip(candidates, scores))
    assert all(a < c for a, c in zip(after_nms, candidates))
    assert any(a > topk for a in after_nms) and any(a <= topk for a in after_nms)


def test_ort_nms_equals_torchvision_pipeline_per_image(ort_e2e, pred, images, topk):
    num, boxes, scores, classes = run_ort(ort_session(ort_e2e.path), images)
    assert num.dtype == classes.dtype == torch.int32 and boxes.shape == (3, topk, 4) and scores.shape == (3, topk)
    got = unpad(num, boxes, scores, classes)
    want = reference_detections(pred, CONF, IOU, topk, 7680)
    for g, w in zip(got, want):
        _assert_same(g, w)
        assert torch.all(g[:-1, 4] >= g[1:, 4])  # sorted by score
    for i, n in enumerate(num.view(-1).tolist()):  # padding rows are zero
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not classes[i, n:].any()
    assert "ScatterND" not in {n.op_type for n in onnx.load(str(ort_e2e.path)).graph.node}


def test_dynamic_batch_each_image_gets_its_own_detections(ort_e2e, images):
    sess = ort_session(ort_e2e.path)
    batched = unpad(*run_ort(sess, images))
    reordered = unpad(*run_ort(sess, images[[2, 0]]))
    single = unpad(*run_ort(sess, images[1:2]))
    _assert_same(reordered[0], batched[2])
    _assert_same(reordered[1], batched[0])
    _assert_same(single[0], batched[1])
    assert len({len(b) for b in batched}) > 1 or not torch.equal(batched[0], batched[1])


@pytest.mark.parametrize("change", [dict(conf_thres=0.7), dict(iou_thres=0.2), dict(topk_all=3)])
def test_nms_settings_take_effect(model, images, pred, change, tmp_path):
    settings = dict(conf_thres=CONF, iou_thres=IOU, topk_all=1000) | change
    opts = ExportOptions(img_size=IMG, end2end=True, max_wh=7680, batch_size=3, **settings)
    got = unpad(*run_ort(ort_session(export_onnx(model, tmp_path / "s.onnx", opts).path), images))
    base = reference_detections(pred, CONF, IOU, 1000, 7680)
    want = reference_detections(pred, settings["conf_thres"], settings["iou_thres"], settings["topk_all"], 7680)
    assert sum(map(len, want)) < sum(map(len, base))
    for g, w in zip(got, want):
        _assert_same(g, w)


def test_verification_rejects_different_detections(model, ort_e2e, images):
    from yolo_prune.export.verify import verify_onnx

    opts = ExportOptions(img_size=IMG, end2end=True, max_wh=7680, dynamic_batch=True, conf_thres=0.8,
                         iou_thres=IOU, topk_all=ort_e2e.options.topk_all)
    with pytest.raises(CheckFailed, match="detections differ"):
        verify_onnx(ort_e2e.path, model, opts, images)  # graph built with conf 0.5, checked against 0.8


def test_trt_plugin_node_attributes_and_outputs(trt_e2e):
    proto = onnx.load(str(trt_e2e.path))
    node = find_trt_plugin(proto)
    assert (node.domain, node.op_type) == ("TRT", "EfficientNMS_TRT")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["background_class"] == -1 and attrs["box_coding"] == 0 and attrs["score_activation"] == 0
    assert attrs["plugin_version"] == b"1" and attrs["max_output_boxes"] == 50
    assert attrs["iou_threshold"] == pytest.approx(IOU) and attrs["score_threshold"] == pytest.approx(CONF)
    outs = {o.name: (o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim])
            for o in proto.graph.output}
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    assert outs == {"num_dets": (i32, [3, 1]), "det_boxes": (f32, [3, 50, 4]), "det_scores": (f32, [3, 50]),
                    "det_classes": (i32, [3, 50])}
    assert list(node.output) == [o.name for o in proto.graph.output]
    assert check_trt_plugin(proto, trt_e2e.options)["max_output_boxes"] == 50
    assert {i.domain: i.version for i in proto.opset_import}["TRT"] == 1
    assert "ScatterND" not in {n.op_type for n in proto.graph.node}


def test_trt_graph_before_plugin_runs_in_ort(trt_e2e, pred, images):
    proto = onnx.load(str(trt_e2e.path))
    boxes, scores = run_ort(ort_session(cut_before(proto, find_trt_plugin(proto)).SerializeToString()), images)
    xy, wh = pred[..., :2], pred[..., 2:4]
    torch.testing.assert_close(boxes, torch.cat((xy - wh / 2, xy + wh / 2), 2), atol=0.05, rtol=1e-4)
    torch.testing.assert_close(scores, pred[..., 5:] * pred[..., 4:5], atol=1e-4, rtol=1e-3)
    assert boxes.shape == (3, pred.shape[1], 4) and scores.shape == (3, pred.shape[1], 3)


def test_trt_plugin_check_catches_wrong_attributes(trt_e2e):
    proto = onnx.load(str(trt_e2e.path))
    for a in find_trt_plugin(proto).attribute:
        if a.name == "max_output_boxes":
            a.i = 7
    with pytest.raises(CheckFailed, match="max_output_boxes"):
        check_trt_plugin(proto, trt_e2e.options)


def test_pytorch_end2end_modules_agree_with_reference(model, images, pred):
    from yolo_prune.export.wrappers import End2EndORT, End2EndTRT

    want = reference_detections(pred, CONF, IOU, 20, 7680)
    with torch.no_grad():
        for wrapper in (End2EndTRT(model, IOU, CONF, 20), End2EndORT(model, IOU, CONF, 20, 7680)):
            for g, w in zip(unpad(*wrapper(images)), want):
                _assert_same(g, w)
    assert not model.training


def test_pad_selected_by_hand():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    conf = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1]])
    cls = torch.tensor([[1, 0, 2], [0, 2, 1]])
    selected = torch.tensor([[0, 0, 2], [0, 0, 0], [1, 0, 1]])  # image 0: boxes 2 then 0; image 1: box 1
    num, b, s, c = pad_selected(selected, boxes, conf, cls, topk=3)
    assert num.tolist() == [[2], [1]] and num.dtype == torch.int32 and c.dtype == torch.int32
    torch.testing.assert_close(s, torch.tensor([[0.9, 0.6, 0.0], [0.8, 0.0, 0.0]]))
    assert c.tolist() == [[1, 2, 0], [2, 0, 0]]
    assert torch.equal(b[0, :2], boxes[0, [0, 2]]) and torch.equal(b[1, 0], boxes[1, 1]) and not b[1, 1:].any()
    empty = pad_selected(torch.zeros((0, 3), dtype=torch.int64), boxes, conf, cls, topk=2)
    assert empty[0].tolist() == [[0], [0]] and not empty[1].any()


def test_nms_padded_is_per_class_and_sorted():
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60.0]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.1, 0.0]]])  # box 2 is another class
    num, b, s, c = nms_padded(boxes, scores, iou_thres=0.5, conf_thres=0.2, topk=4)
    assert num.item() == 2 and s[0, :2].tolist() == pytest.approx([0.9, 0.7]) and c[0, :2].tolist() == [0, 1]


def test_match_detections_ignores_order_and_reports_leftovers():
    a = torch.tensor([[0, 0, 1, 1, 0.5, 0], [5, 5, 6, 6, 0.5, 1.0]])
    m = match_detections(a.flip(0), a, box_tol=1e-3, score_tol=1e-3)
    assert m.matched == 2 and len(m.only_got) == len(m.only_ref) == 0
    m = match_detections(a[:1], a, box_tol=1e-3, score_tol=1e-3)
    assert m.matched == 1 and m.only_ref.tolist() == [a[1].tolist()]
