"""A structural lint of Q/DQ placement for TensorRT explicit quantization (TensorRT 8.5+, e.g. JetPack 5.1).

Rules, each from NVIDIA's TensorRT Developer Guide, "Working with Quantized Types" / "Explicit Quantization"
(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html):

1. Symmetric int8 only: every zero point is 0 and int8 ("TensorRT supports only symmetric quantization").
2. Q/DQ pairs: a ``QuantizeLinear`` output feeds only ``DequantizeLinear`` nodes with the same scale; TensorRT
   propagates and fuses pairs, a lone Q has no engine meaning.
3. Granularity: activations per-tensor; weights per-tensor or per-channel along the output channels (axis 0 of
   a Conv weight). TensorRT 8.x takes weights as float constants + ``QuantizeLinear`` + ``DequantizeLinear``
   (int8 weight initializers need TensorRT 10) and clamps int8 weights to [-127, 127].
4. "Quantize all inputs of weighted operations": a Conv runs in int8 only when its data input and its weight
   both come from a ``DequantizeLinear``; one without the other is a misplaced pair. The bias stays a float
   initializer (TensorRT quantizes it itself; its ONNX parser needs the Conv bias to be an initializer).
5. No Q/DQ between a Conv and its activation: Conv -> Q -> DQ -> ReLU/LeakyReLU/Sigmoid/SiLU breaks the
   conv + activation fusion the guide shows (the quantized output belongs after the activation).
6. Concatenation inputs share one scale, so TensorRT fuses the concatenation away instead of re-quantizing.

:func:`lint_trt_qdq` raises :class:`~yolo_prune.errors.CheckFailed` naming the first node that breaks a rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from yolo_prune.errors import CheckFailed

if TYPE_CHECKING:
    import onnx

ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Clip", "Tanh", "HardSwish", "Elu", "Selu")


@dataclass
class TrtLint:
    """What the lint saw: Q/DQ pairs, int8 convs (per-channel weights among them), aligned concats, float convs."""

    pairs: int = 0
    int8_convs: int = 0
    per_channel: int = 0
    concats: int = 0
    float_convs: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"{self.pairs} Q/DQ pairs, zero points 0; {self.int8_convs} convs with int8 input and weights "
                f"({self.per_channel} per-channel); {self.concats} concatenations with one input scale; "
                "no Q/DQ between a conv and its activation")
        return text + (f"; float convs: {', '.join(self.float_convs)}" if self.float_convs else "")


class _Graph:
    """Producers, consumers and constants of a graph."""

    def __init__(self, proto: "onnx.ModelProto"):
        from onnx import numpy_helper

        g = proto.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.nodes = list(g.node)

    def const(self, name: str, node: Any) -> np.ndarray:
        if name not in self.consts:
            raise CheckFailed(f"{node.op_type} {node.name!r}: {name!r} is not a constant (TensorRT needs fixed scales)")
        return self.consts[name]

    def made_by(self, tensor: str, op: str) -> Any | None:
        n = self.producer.get(tensor)
        return n if n is not None and n.op_type == op else None


def _check_qparams(g: _Graph, node: Any) -> np.ndarray:
    """Rule 1: the node's scale (returned) is positive and its zero point int8 0."""
    scale = g.const(node.input[1], node).astype(np.float64)
    if np.any(scale <= 0):
        raise CheckFailed(f"{node.name}: scale must be positive, got {scale.reshape(-1)[:4].tolist()}")
    if len(node.input) < 3 or not node.input[2]:
        raise CheckFailed(f"{node.name}: no zero point: it would default to uint8; TensorRT needs int8 zero point 0")
    zero = g.const(node.input[2], node)
    if zero.dtype != np.int8 or np.any(zero != 0):
        raise CheckFailed(f"{node.name}: zero point {zero.reshape(-1)[:4].tolist()} ({zero.dtype}); TensorRT "
                          "supports symmetric int8 only (zero point 0)")
    return scale


def _check_pairs(g: _Graph, lint: TrtLint) -> None:
    """Rules 1-3 on every Q and DQ node."""
    for node in g.nodes:
        if node.op_type == "QuantizeLinear":
            scale = _check_qparams(g, node)
            users = g.consumers.get(node.output[0], [])
            for u in users:
                if u.op_type != "DequantizeLinear":
                    raise CheckFailed(f"{node.name}: QuantizeLinear feeds {u.op_type} {u.name!r}; TensorRT needs "
                                      "every Q followed by a DequantizeLinear (a Q/DQ pair)")
                other = g.const(u.input[1], u)
                if other.shape != scale.shape or not np.allclose(other, scale, rtol=0, atol=0):
                    raise CheckFailed(f"{u.name}: dequantizes with another scale than {node.name} quantized with")
            lint.pairs += len(users)
            _check_granularity(g, node, scale)
        elif node.op_type == "DequantizeLinear":
            _check_qparams(g, node)
            if node.input[0] in g.consts:
                raise CheckFailed(f"{node.name}: dequantizes a stored int8 tensor; TensorRT 8.x needs float weights "
                                  "+ QuantizeLinear + DequantizeLinear (pre-quantized weights need TensorRT 10)")


def _check_granularity(g: _Graph, q: Any, scale: np.ndarray) -> None:
    """Rule 3: per-tensor activations; weights per-tensor or per output channel, within [-127, 127]."""
    src = q.input[0]
    if src not in g.consts:
        if scale.size != 1:
            raise CheckFailed(f"{q.name}: per-channel scale on an activation; TensorRT quantizes activations "
                              "per tensor")
        return
    w = g.consts[src].astype(np.float64)
    if scale.size != 1:
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1) % w.ndim
        if axis != 0 or scale.size != w.shape[0]:
            raise CheckFailed(f"{q.name}: per-channel weight scales along axis {axis} ({scale.size} values for "
                              f"shape {list(w.shape)}); TensorRT wants them along the output channels (axis 0)")
        scale = scale.reshape([-1] + [1] * (w.ndim - 1))
    if np.rint(w / scale).min() < -127:
        raise CheckFailed(f"{q.name}: weights quantize to -128; TensorRT clamps int8 weights to [-127, 127], so "
                          "the engine would differ from this graph (use scale = max |w| / 127)")


def _dequantized(g: _Graph, tensor: str) -> Any | None:
    """The DQ producing ``tensor`` (None when it is float)."""
    return g.made_by(tensor, "DequantizeLinear")


def _check_convs(g: _Graph, lint: TrtLint) -> None:
    """Rules 4 and 5."""
    for node in g.nodes:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        x_dq, w_dq = _dequantized(g, node.input[0]), _dequantized(g, node.input[1])
        if (x_dq is None) != (w_dq is None):
            which = "input" if x_dq is None else "weight"
            raise CheckFailed(f"{node.name}: its {which} is float but the other operand is quantized; TensorRT "
                              "runs a conv in int8 only when input and weights both come from DequantizeLinear")
        if x_dq is None:
            lint.float_convs.append(node.name)
        else:
            lint.int8_convs += 1
            lint.per_channel += int(g.const(w_dq.input[1], w_dq).size > 1)
        if len(node.input) > 2 and node.input[2] and node.input[2] not in g.consts:
            raise CheckFailed(f"{node.name}: bias comes from {g.producer[node.input[2]].op_type}; TensorRT wants a "
                              "float bias initializer (it quantizes the bias itself)")
        _check_fusion(g, node)


def _check_fusion(g: _Graph, conv: Any) -> None:
    """Rule 5: Conv -> Q -> DQ -> activation (or the x * sigmoid(x) of SiLU) splits conv and activation."""
    for q in g.consumers.get(conv.output[0], []):
        if q.op_type != "QuantizeLinear":
            continue
        for dq in g.consumers.get(q.output[0], []):
            for user in g.consumers.get(dq.output[0], []):
                if user.op_type in ACTIVATIONS or (user.op_type == "Mul" and conv.output[0] in user.input):
                    raise CheckFailed(f"{q.name}: Q/DQ between conv {conv.name!r} and its activation "
                                      f"{user.op_type} {user.name!r} breaks TensorRT's conv + activation fusion; "
                                      "quantize after the activation")


def _check_concats(g: _Graph, lint: TrtLint) -> None:
    """Rule 6."""
    for node in g.nodes:
        if node.op_type != "Concat":
            continue
        dqs = [_dequantized(g, i) for i in node.input]
        if all(d is None for d in dqs):
            continue
        if any(d is None for d in dqs):
            raise CheckFailed(f"{node.name}: some concatenation inputs are quantized and some are not")
        scales = {float(g.const(d.input[1], d).reshape(-1)[0]) for d in dqs}
        if len(scales) != 1:
            shown = [float(f"{v:.6g}") for v in sorted(scales)]
            raise CheckFailed(f"{node.name}: concatenation inputs have scales {shown}; TensorRT fuses a "
                              "concatenation only when its inputs share one scale")
        lint.concats += 1


def lint_trt_qdq(proto: "onnx.ModelProto") -> TrtLint:
    """Check a Q/DQ graph against the rules in the module docstring; CheckFailed names the offending node."""
    g = _Graph(proto)
    lint = TrtLint()
    _check_pairs(g, lint)
    if lint.pairs == 0:
        raise CheckFailed("no QuantizeLinear/DequantizeLinear pairs: the graph is not explicitly quantized")
    _check_convs(g, lint)
    _check_concats(g, lint)
    return lint
