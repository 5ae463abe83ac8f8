"""Parameters and GFLOPs of an ONNX graph, read from the graph itself, so any exported file can be compared.

The convention is the one ``yolo_prune.models.complexity`` uses for PyTorch models (thop, as the YOLOv7
ecosystem reports): GFLOPs = 2 x (multiply-accumulates of every ``Conv``, bias excluded, plus one op per output
element of every ``Resize``/``Upsample``), for one image; everything else counts zero. Parameters = elements of
every ``Conv`` node's weight and bias inputs, counted per node: an INT8 QDQ graph's ``DequantizeLinear``
outputs have the weights' shapes, so each weight is counted once, and biases that the exporter de-duplicated
(identical values) still count for every conv that uses them, as in PyTorch. For an exported model both
numbers equal ``count_params``/``count_gflops`` of the fused PyTorch model (BN, RepConv and implicit layers
folded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from yolo_prune.errors import YoloPruneError

if TYPE_CHECKING:
    import onnx

RESIZE_OPS = ("Resize", "Upsample")


@dataclass(frozen=True)
class OnnxCost:
    """Counted cost of one image through the graph, and how many nodes were counted."""

    params: int
    gflops: float
    convs: int
    resizes: int


@dataclass(frozen=True)
class OnnxInput:
    """The graph's first input: name, element type (e.g. ``tensor(float)`` style ``float32``) and dims.

    A dim is an int when fixed in the graph, ``None`` when symbolic (dynamic).
    """

    name: str
    dtype: str
    dims: tuple[int | None, ...]

    @property
    def batch(self) -> int | None:
        return self.dims[0] if self.dims else None

    @property
    def hw(self) -> tuple[int | None, int | None]:
        return (self.dims[2], self.dims[3]) if len(self.dims) == 4 else (None, None)


def load_onnx(path: str | Path) -> "onnx.ModelProto":
    """The graph of ``path`` without external weight data; YoloPruneError naming the file if it is not ONNX."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted types for non-ONNX bytes
        raise YoloPruneError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node or not proto.graph.input:
        raise YoloPruneError(f"{path}: not an ONNX model (no graph nodes or inputs)")
    return proto


def graph_input(proto: "onnx.ModelProto") -> OnnxInput:
    """The first graph input that is not an initializer (the image tensor)."""
    import onnx

    inits = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    tt = inp.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
    return OnnxInput(inp.name, dtype, dims)


def with_input_shape(proto: "onnx.ModelProto", shape: tuple[int, ...]) -> "onnx.ModelProto":
    """A copy of ``proto`` whose image input has the fixed ``shape`` (so shape inference gives numbers)."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    name = graph_input(proto).name
    inp = next(i for i in fixed.graph.input if i.name == name)
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise YoloPruneError(f"the ONNX input {name!r} has {len(dims)} dims, expected {len(shape)}")
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)
    return fixed


def _shapes(proto: "onnx.ModelProto") -> dict[str, tuple[int, ...] | None]:
    """Every tensor's shape known after shape inference (None where a dim stayed symbolic)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes: dict[str, tuple[int, ...] | None] = {t.name: tuple(t.dims) for t in inferred.graph.initializer}
    for node in inferred.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = (tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims)
                               else None)
    return shapes


def _known(shapes: dict[str, tuple[int, ...] | None], name: str, node: "onnx.NodeProto") -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None:
        raise YoloPruneError(f"cannot infer the shape of {name!r} ({node.op_type} node {node.name!r}): "
                             "its GFLOPs cannot be counted from the graph")
    return shape


def onnx_cost(proto: "onnx.ModelProto", img_size: tuple[int, int] | None = None) -> OnnxCost:
    """Params and GFLOPs (one image) of ``proto``; ``img_size`` (h, w) is needed only for dynamic H/W inputs."""
    inp = graph_input(proto)
    if len(inp.dims) != 4:
        raise YoloPruneError(f"the ONNX input {inp.name!r} has shape {list(inp.dims)}, expected [batch, 3, H, W]")
    h, w = inp.hw
    if h is None or w is None:
        if img_size is None:
            raise YoloPruneError(f"the ONNX input {inp.name!r} has a dynamic image size: give the size to count at")
        h, w = img_size
    shapes = _shapes(with_input_shape(proto, (1, inp.dims[1] or 3, h, w)))
    macs = params = convs = resizes = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            out = _known(shapes, node.output[0], node)
            weight = _known(shapes, node.input[1], node)
            macs += math.prod(out[1:]) * math.prod(weight[1:])  # out elements x (Cin/groups x kh x kw)
            params += math.prod(weight)
            if len(node.input) > 2 and node.input[2]:
                params += math.prod(_known(shapes, node.input[2], node))
            convs += 1
        elif node.op_type in RESIZE_OPS:
            macs += math.prod(_known(shapes, node.output[0], node)[1:])
            resizes += 1
    return OnnxCost(params, 2 * macs / 1e9, convs, resizes)
