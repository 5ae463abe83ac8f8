"""What a Vitis AI DPU needs from a quantized graph, checked: power-of-two scales, zero points 0, per-tensor
scales, one scale across each concatenation; and what the DPU would leave on the CPU, reported.

Limits are those of the DPU product guides (PG338 DPUCZDX8G, PG389 DPUCVDX8G): activations ReLU, ReLU6,
LeakyReLU (slope 26/256); max-pool kernels 1..8. Each int8 conv must also fit the DPU compiler's shifts (the
limits AMD Quark's refinement pass enforces), with fix positions ``pos = -log2(scale)`` of input, weight, bias
and output: ``shift_cut = wpos + ipos - opos`` in [0, 16] and ``shift_bias = wpos + ipos - bpos`` in
[min(0, shift_cut - 16), 15] ([0, 15] before a LeakyReLU). The Vitis AI compiler has the last word: it prints
the subgraphs it assigns to the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn as nn

from yolo_prune.errors import CheckFailed

if TYPE_CHECKING:
    import onnx

DPU_LEAKY_SLOPE = 26 / 256
DPU_MAXPOOL_KERNEL = {"DPUCZDX8G": 8, "DPUCVDX8G": 8, "DPUCV2DX8G": 8}
CPU_ACTIVATIONS = (nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Mish, nn.GELU)


@dataclass
class QuantCheck:
    """Counts of what was checked in a QDQ graph; ``float_convs`` are the Conv nodes left unquantized."""

    quantize_nodes: int = 0
    scales: int = 0
    concats: int = 0
    exponents: tuple[int, int] = (0, 0)
    float_convs: list[str] = field(default_factory=list)
    per_channel: list[str] = field(default_factory=list)
    shift_checked: int = 0

    def __str__(self) -> str:
        lo, hi = self.exponents
        text = (f"{self.quantize_nodes} Q/DQ nodes: all {self.scales} scales powers of two (2^{lo} .. 2^{hi}), "
                f"zero points 0; {self.concats} concatenations share one scale")
        text += f"; {len(self.per_channel)} per-channel" if self.per_channel else "; per-tensor"
        if self.shift_checked:
            text += f"; {self.shift_checked} convs within the DPU shift limits"
        return text + (f"; float convs: {', '.join(self.float_convs)}" if self.float_convs else "")


def _initializers(proto: "onnx.ModelProto") -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def _constant(name: str, init: dict[str, np.ndarray], constants: dict[str, np.ndarray], node: Any) -> np.ndarray:
    if name in init:
        return init[name]
    if name in constants:
        return constants[name]
    raise CheckFailed(f"{node.op_type} node {node.name!r}: {name!r} is not a constant; a DPU needs fixed scales")


def check_xint8(proto: "onnx.ModelProto") -> QuantCheck:
    """Check a QDQ graph for a DPU; CheckFailed names the first node that breaks a rule."""
    from onnx import numpy_helper

    init = _initializers(proto)
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    result, exponents = QuantCheck(), []
    scale_of: dict[str, float] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        result.quantize_nodes += 1
        scale = _constant(node.input[1], init, constants, node)
        if scale.size != 1:
            result.per_channel.append(node.name)
        exps = np.log2(scale.astype(np.float64).reshape(-1))
        if not np.all(exps == np.round(exps)):
            bad = scale.reshape(-1)[exps != np.round(exps)][0]
            raise CheckFailed(f"{node.name}: scale {float(bad)!r} is not a power of two")
        if len(node.input) > 2 and node.input[2]:
            zero = _constant(node.input[2], init, constants, node)
            if np.any(zero != 0) or zero.dtype != np.int8:
                raise CheckFailed(f"{node.name}: zero point {zero.reshape(-1)[:4].tolist()} ({zero.dtype}); "
                                  "the DPU needs int8 with zero point 0")
        exponents.extend(int(e) for e in np.round(exps))
        if node.op_type == "DequantizeLinear":
            scale_of[node.output[0]] = float(scale.reshape(-1)[0])
    result.scales = len(exponents)
    if not exponents:
        raise CheckFailed("no QuantizeLinear/DequantizeLinear nodes: the graph is not quantized")
    result.exponents = (min(exponents), max(exponents))
    for node in proto.graph.node:
        if node.op_type == "Concat":
            result.concats += 1
            scales = {scale_of.get(i) for i in node.input}
            if len(scales) != 1 or None in scales:
                raise CheckFailed(f"{node.name}: concatenated inputs have scales {sorted(map(str, scales))}; "
                                  "the DPU concatenates int8 tensors of one scale")
        if node.op_type == "Conv" and node.input[1] not in scale_of:
            result.float_convs.append(node.name)
    result.shift_checked = _check_shifts(proto, scale_of, {**init, **constants})
    return result


def _output_scale(conv: Any, consumers: dict[str, list[Any]], init: dict[str, np.ndarray]) -> tuple[float, bool] | None:
    """(scale of the Q after the conv, or after its LeakyReLU; whether a LeakyReLU sits between) or None."""
    users = consumers.get(conv.output[0], [])
    leaky = len(users) == 1 and users[0].op_type == "LeakyRelu"
    if leaky:
        users = consumers.get(users[0].output[0], [])
    q = next((u for u in users if u.op_type == "QuantizeLinear" and u.input[1] in init), None)
    return (float(init[q.input[1]].reshape(-1)[0]), leaky) if q is not None else None


def _check_shifts(proto: "onnx.ModelProto", scale_of: dict[str, float], init: dict[str, np.ndarray]) -> int:
    """The DPU compiler's shift_cut / shift_bias limits on every int8 conv; returns how many were checked."""
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    checked = 0
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.input[0] not in scale_of or node.input[1] not in scale_of:
            continue
        out = _output_scale(node, consumers, init)
        if out is None:
            continue
        ipos, wpos, opos = (-int(round(np.log2(v))) for v in (scale_of[node.input[0]], scale_of[node.input[1]], out[0]))
        cut = wpos + ipos - opos
        if not 0 <= cut <= 16:
            raise CheckFailed(f"{node.name}: shift_cut {cut} (weight pos {wpos} + input pos {ipos} - output pos "
                              f"{opos}) is outside the DPU's [0, 16]")
        if len(node.input) > 2 and node.input[2] in scale_of:
            bias = wpos + ipos + int(round(np.log2(scale_of[node.input[2]])))
            low = 0 if out[1] else min(0, cut - 16)
            if not low <= bias <= 15:
                raise CheckFailed(f"{node.name}: shift_bias {bias} is outside the DPU's [{low}, 15]")
        checked += 1
    return checked


def fit_bias_shifts(proto: "onnx.ModelProto") -> int:
    """Move each int8 conv bias whose ``shift_bias`` is outside the compiler's range to the nearest allowed scale,
    re-rounding its values (Quark's ``adjust_shift_bias`` rule). Quark cannot satisfy it for a bias tensor that
    the ONNX export shares between convs (identical biases, e.g. the zeros of untrained models): such a conv gets
    its own bias here. Returns how many biases moved."""
    from onnx import helper, numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    added: dict[str, Any] = {}  # conv name -> its own bias DequantizeLinear
    for conv in (n for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 2):
        dqs = [dq_of.get(name) for name in conv.input[:3]]
        out = _output_scale(conv, consumers, arrays)
        if out is None or None in dqs or any(dq.input[1] not in arrays for dq in dqs) or dqs[2].input[0] not in arrays:
            continue
        ipos, wpos, bpos = (-int(round(np.log2(float(arrays[dq.input[1]].reshape(-1)[0])))) for dq in dqs)
        cut = wpos + ipos + int(round(np.log2(out[0])))
        shift = min(max(wpos + ipos - bpos, 0 if out[1] else min(0, cut - 16)), 15)
        if shift == wpos + ipos - bpos:
            continue
        values, scale = arrays[dqs[2].input[0]].astype(np.float64) * 2.0 ** -bpos, 2.0 ** -(wpos + ipos - shift)
        q = np.clip(np.round(values / scale), -128, 127).astype(arrays[dqs[2].input[0]].dtype)
        stem = f"{conv.name}_bias_fit"
        proto.graph.initializer.extend([numpy_helper.from_array(q, f"{stem}_quantized"),
                                        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{stem}_scale")])
        added[conv.name] = helper.make_node("DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale",
                                                                 *dqs[2].input[2:]], [stem], name=stem)
        conv.input[2] = stem
    if added:  # each new DequantizeLinear just before its conv (topological order)
        nodes = [m for n in proto.graph.node for m in ([added[n.name]] if n.name in added else []) + [n]]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return len(added)


def dpu_warnings(model: nn.Module, target: str = "DPUCZDX8G", check: QuantCheck | None = None) -> list[str]:
    """What ``target`` would run on the CPU (or approximate), from the model's modules and the graph check."""
    found: dict[str, int] = {}
    slopes: set[float] = set()
    pools: set[int] = set()
    limit = DPU_MAXPOOL_KERNEL.get(target, 8)
    for m in model.modules():
        if isinstance(m, CPU_ACTIVATIONS):
            found[type(m).__name__] = found.get(type(m).__name__, 0) + 1
        elif isinstance(m, nn.LeakyReLU) and abs(m.negative_slope - DPU_LEAKY_SLOPE) > 1e-9:
            slopes.add(round(float(m.negative_slope), 6))
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else max(m.kernel_size)
            if k > limit:
                pools.add(int(k))
    out = []
    if found:
        listed = ", ".join(f"{n} x{c}" for n, c in sorted(found.items()))
        out.append(f"{listed}: the DPU runs ReLU/ReLU6/LeakyReLU only; these run on the CPU and split the DPU "
                   "graph. Run `yolo-prune convert-activation --to leakyrelu --slope dpu` and fine-tune first.")
    if slopes:
        out.append(f"LeakyReLU slope(s) {sorted(slopes)}: the DPU computes slope 26/256 = 0.1015625; expect a small "
                   "accuracy change (`yolo-prune convert-activation --to leakyrelu --slope dpu` + fine-tune).")
    if pools:
        out.append(f"max-pool kernel(s) {sorted(pools)} exceed {target}'s limit of {limit}: those pools run on the "
                   "CPU (a k x k max-pool equals stacked 5x5 pools, the SPPF form, which the DPU runs).")
    if check is not None and check.per_channel:
        out.append(f"{len(check.per_channel)} per-channel quantizer(s): DPUs use one scale per tensor; the compiler "
                   "will reject or re-quantize them.")
    if check is not None and check.float_convs:
        out.append(f"{len(check.float_convs)} conv(s) kept in float ({', '.join(check.float_convs)}): they run on "
                   "the CPU after the DPU subgraph.")
    return out
