"""Structural checks of exported ONNX graphs, and cutting a graph before its NMS node.

``onnx`` is imported inside the functions (an optional extra).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from yolo_prune.errors import CheckFailed
from yolo_prune.export.nms_onnx import E2E_OUTPUTS, TRT_DOMAIN, TRT_PLUGIN
from yolo_prune.export.options import ExportOptions

if TYPE_CHECKING:
    import onnx

FORBIDDEN_OPS = ("ScatterND",)  # in-place slice writes: slow or unsupported on edge runtimes


def check_graph(proto: "onnx.ModelProto") -> None:
    """``onnx.checker.check_model`` plus: no ScatterND anywhere. Raises CheckFailed."""
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"onnx.checker rejected the exported graph: {exc}") from exc
    bad = sorted({n.op_type for n in proto.graph.node if n.op_type in FORBIDDEN_OPS})
    if bad:
        raise CheckFailed(f"exported graph contains {', '.join(bad)} (in-place slice assignment in the model)")


def expected_e2e_outputs(opts: ExportOptions) -> dict[str, tuple[int, list[Any]]]:
    """Output name -> (ONNX elem type, dims) of an end-to-end graph; the batch dim is "batch" when dynamic."""
    import onnx

    b: Any = "batch" if opts.dynamic_batch else opts.batch_size
    k = opts.topk_all
    box_type = onnx.TensorProto.FLOAT16 if opts.fp16 and opts.mode == "trt_nms" else onnx.TensorProto.FLOAT
    i32 = onnx.TensorProto.INT32
    dims = ([b, 1], [b, k, 4], [b, k], [b, k])
    return dict(zip(E2E_OUTPUTS, zip((i32, box_type, box_type, i32), dims)))


def set_e2e_output_types(proto: "onnx.ModelProto", opts: ExportOptions) -> None:
    """Write the end-to-end output types and shapes into the graph (the exporter cannot infer them)."""
    from onnx import helper

    expected = expected_e2e_outputs(opts)
    for out in proto.graph.output:
        elem, dims = expected[out.name]
        out.type.CopyFrom(helper.make_tensor_type_proto(elem, dims))


def _attrs(node: "onnx.NodeProto") -> dict[str, Any]:
    """Node attributes as Python values (strings decoded)."""
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def find_trt_plugin(proto: "onnx.ModelProto") -> "onnx.NodeProto":
    """The single ``TRT::EfficientNMS_TRT`` node (CheckFailed if missing or repeated)."""
    nodes = [n for n in proto.graph.node if n.op_type == TRT_PLUGIN]
    if len(nodes) != 1 or nodes[0].domain != TRT_DOMAIN:
        raise CheckFailed(f"expected one {TRT_DOMAIN}::{TRT_PLUGIN} node, found "
                          f"{[(n.domain, n.op_type) for n in nodes]}")
    return nodes[0]


def check_trt_plugin(proto: "onnx.ModelProto", opts: ExportOptions) -> dict[str, Any]:
    """Check the plugin node's attributes and the graph outputs (names, dtypes, shapes); returns the attributes."""
    attrs = _attrs(find_trt_plugin(proto))
    want = {"background_class": -1, "box_coding": 0, "max_output_boxes": opts.topk_all, "plugin_version": "1",
            "score_activation": 0}
    wrong = {k: attrs.get(k) for k, v in want.items() if attrs.get(k) != v}
    for k, v in (("iou_threshold", opts.iou_thres), ("score_threshold", opts.conf_thres)):
        if abs(float(attrs.get(k, -1.0)) - v) > 1e-6:
            wrong[k] = attrs.get(k)
    if wrong:
        raise CheckFailed(f"{TRT_PLUGIN} attributes differ from the options: {wrong}")
    if {i.domain: i.version for i in proto.opset_import}.get(TRT_DOMAIN) != 1:
        raise CheckFailed(f"the graph does not import the custom opset domain {TRT_DOMAIN!r} version 1")
    check_e2e_outputs(proto, opts)
    return attrs


def check_e2e_outputs(proto: "onnx.ModelProto", opts: ExportOptions) -> None:
    """Graph outputs are exactly num_dets/det_boxes/det_scores/det_classes with the expected types and shapes."""
    expected = expected_e2e_outputs(opts)
    got = {o.name: (o.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
           for o in proto.graph.output}
    if list(got) != list(expected) or got != {k: (e, list(d)) for k, (e, d) in expected.items()}:
        raise CheckFailed(f"end-to-end outputs {got} differ from the expected {expected}")


def cut_before(proto: "onnx.ModelProto", node: "onnx.NodeProto") -> "onnx.ModelProto":
    """A copy of the graph whose outputs are ``node``'s inputs (the input's float type, shape left to the
    runtime); ``node`` and everything computed from it are removed."""
    import onnx
    from onnx import helper

    cut = onnx.ModelProto()
    cut.CopyFrom(proto)
    graph = cut.graph
    dead, keep = set(node.output), []
    for n in graph.node:
        if dead.intersection(n.input) or list(n.output) == list(node.output):
            dead.update(n.output)
        else:
            keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)
    del graph.output[:]
    elem = proto.graph.input[0].type.tensor_type.elem_type
    graph.output.extend(helper.make_tensor_value_info(name, elem, None) for name in node.input)
    imports = [i for i in cut.opset_import if i.domain != node.domain or node.domain == ""]
    del cut.opset_import[:]
    cut.opset_import.extend(imports)
    return cut
