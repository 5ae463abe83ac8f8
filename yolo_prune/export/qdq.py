"""INT8 Q/DQ ONNX written from a fake-quantized model (calibrated PTQ or QAT-trained), checked for its target.

PyTorch's ``fake_quantize_per_*_affine`` ops export as ``QuantizeLinear``/``DequantizeLinear`` pairs, so the
graph computes what the fake-quantized model computes; two passes then give it the form each runtime expects:

- :func:`fold_weight_quantizers` (Vitis AI): ``QuantizeLinear`` of a constant weight/bias becomes an int8
  initializer read by the ``DequantizeLinear`` (AMD Quark's layout). TensorRT 8.x keeps float weights + Q/DQ.
- :func:`propagate_qdq`: a Q/DQ pair with the input's scale after every max-pool, resize and concatenation whose
  inputs are all dequantized with one scale (exact: those ops only move int8 values). The DPU check needs a
  scale on every concatenation input, and TensorRT then sees a ``DequantizeLinear`` at every conv input.

The written file is checked (DPU: :func:`~.vitis_checks.check_xint8`; TensorRT: :func:`~.trt_qdq_checks.lint_trt_qdq`)
and ONNX Runtime's outputs are compared with the fake-quantized model's on synthetic images.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.errors import CheckFailed
from yolo_prune.export.files import atomic_path
from yolo_prune.export.onnx_export import annotate, build_onnx
from yolo_prune.export.options import ExportOptions
from yolo_prune.export.verify import ort_session, run_ort, sample_images, torch_reference
from yolo_prune.export.wrappers import assemble_head_maps

if TYPE_CHECKING:
    import onnx

SCALE_PRESERVING = ("MaxPool", "Resize", "Concat")
# ORT vs the fake-quantized model. With power-of-two scales every product and sum is exact in float32, so the two
# agree bit for bit. With float scales the convs' float accumulation order (ORT's GEMM vs PyTorch's) moves values
# lying within an ulp of a rounding boundary by one step, and those flips spread downstream: the outputs agree
# statistically, as an int8 engine (which accumulates in int32 and rescales in float) agrees with either.
MIN_COSINE = 0.999
MAX_MEAN_DIFF = 0.05  # mean |ORT - PyTorch| relative to mean |PyTorch|


@dataclass
class QdqResult:
    """The written file, its structural check, ORT-vs-PyTorch agreement per output, and warnings."""

    path: Path
    scheme: str
    check: str
    agreement: list[str]
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"checked ({self.scheme}): {self.check}",
                 "ONNX Runtime vs the fake-quantized PyTorch model (synthetic images):"]
        return "\n".join(lines + [f"  {a}" for a in self.agreement])


def _arrays(proto: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _axis(node: "onnx.NodeProto") -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def inline_constant_identities(proto: "onnx.ModelProto") -> int:
    """Rewire readers of ``Identity(initializer)`` (the exporter's deduplicated scales and zero points) to the
    initializer itself and drop those nodes, so every scale is a named constant; returns how many."""
    inits = {i.name for i in proto.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    keep = [n for n in proto.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    outputs = {o.name for o in proto.graph.output}
    for n in keep:
        n.input[:] = [alias.get(i, i) for i in n.input]
    if outputs & set(alias):  # never the case for exported models; keep the graph valid regardless
        return 0
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return len(alias)


def fold_weight_quantizers(proto: "onnx.ModelProto") -> int:
    """Replace each ``QuantizeLinear`` of a constant by its int8 result (an initializer); returns how many."""
    from onnx import numpy_helper

    consts, graph = _arrays(proto), proto.graph
    keep, folded = [], 0
    for node in graph.node:
        src = node.input[0] if node.input else ""
        if node.op_type != "QuantizeLinear" or src not in consts or node.input[1] not in consts:
            keep.append(node)
            continue
        w, scale = consts[src].astype(np.float64), consts[node.input[1]].astype(np.float64)
        if scale.size > 1:  # per-channel: broadcast along the node's axis
            shape = [1] * w.ndim
            shape[_axis(node) % w.ndim] = scale.size
            scale = scale.reshape(shape)
        q = np.clip(np.rint(w / scale), -128, 127).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused_initializers(proto)
    return folded


def _drop_unused_initializers(proto: "onnx.ModelProto") -> None:
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    kept = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def propagate_qdq(proto: "onnx.ModelProto") -> int:
    """Insert Q/DQ (the inputs' scale) after scale-preserving ops fed only by DQs of one scale; returns how many."""
    from onnx import helper

    consts, graph = _arrays(proto), proto.graph
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes, added = [], 0
    for node in graph.node:
        nodes.append(node)
        data = node.input[:1] if node.op_type in ("MaxPool", "Resize") else list(node.input)
        if node.op_type not in SCALE_PRESERVING or not all(i in dq_of for i in data):
            continue
        qps = [(dq_of[i].input[1], dq_of[i].input[2] if len(dq_of[i].input) > 2 else "") for i in data]
        if not all(s in consts and consts[s].size == 1 and (not z or z in consts) for s, z in qps):
            continue
        values = {(float(consts[s].reshape(-1)[0]), int(consts[z].reshape(-1)[0]) if z else 0) for s, z in qps}
        if len(values) != 1:
            continue
        scale, zero = qps[0]
        out = node.output[0]
        q_out, dq_out = f"{out}_QuantizeLinear", f"{out}_DequantizeLinear"
        nodes.append(helper.make_node("QuantizeLinear", [out, scale, zero], [q_out], name=q_out))
        dq = helper.make_node("DequantizeLinear", [q_out, scale, zero], [dq_out], name=dq_out)
        nodes.append(dq)
        dq_of[dq_out] = dq
        for c in consumers.get(out, []):
            c.input[:] = [dq_out if i == out else i for i in c.input]
        added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return added


@torch.no_grad()
def agreement(path: Path, model: nn.Module, opts: ExportOptions, images: torch.Tensor) -> list[str]:
    """Per output: cosine similarity and max abs difference, ORT vs the fake-quantized model; CheckFailed when
    they disagree beyond rounding-boundary flips (the graph would then not be the trained model)."""
    session = ort_session(path)
    outs = [o.float() for o in run_ort(session, images)]
    pred, raw = torch_reference(model, images)
    head = model.detect
    if opts.mode == "conv":
        if opts.split_head:
            outs = assemble_head_maps(outs, [g.tolist() for g in head.channel_groups().values()], head.nl)
        outs, want = [head.reshape(o) for o in outs], raw
    elif opts.mode == "raw":
        want = raw
    else:
        want = [pred]
    lines = []
    for i, (got, ref) in enumerate(zip(outs, want)):
        cos = float(torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0))
        diff = (got - ref).abs()
        mean = float(diff.mean() / ref.abs().mean().clamp_min(1e-12))
        lines.append(f"output {i} {tuple(ref.shape)}: cosine {cos:.6f}, max abs diff {float(diff.max()):.3g}, "
                     f"mean abs diff {100 * mean:.3f}% of the mean value")
        if cos < MIN_COSINE or mean > MAX_MEAN_DIFF:
            raise CheckFailed(f"ONNX Runtime disagrees with the fake-quantized model on output {i}: {lines[-1]}")
    return lines


def export_qdq(qmodel: nn.Module, path: str | Path, opts: ExportOptions, target: str,
               quant_meta: dict[str, Any], propagate: bool = True) -> QdqResult:
    """Write the Q/DQ ONNX of ``qmodel`` (a calibrated fake-quantized model, not modified) for ``target``
    (``dpu`` or ``tensorrt``) to ``path``, only after the checks passed. ``quant_meta`` goes into the metadata;
    ``propagate=False`` keeps another tool's Q/DQ placement as it is (ModelOpt), for the lint to judge."""
    import onnx

    from yolo_prune.export.trt_qdq_checks import lint_trt_qdq
    from yolo_prune.export.vitis_checks import check_xint8

    from yolo_prune.quant.modules import freeze_scales

    qmodel = freeze_scales(copy.deepcopy(qmodel).float().eval())  # constant scales in the traced graph
    proto, meta = build_onnx(qmodel, opts)
    inline_constant_identities(proto)
    if target == "dpu":
        fold_weight_quantizers(proto)
    if propagate:
        propagate_qdq(proto)
    check = check_xint8(proto) if target == "dpu" else lint_trt_qdq(proto)
    onnx.checker.check_model(proto)
    meta["quantization"] = dict(quant_meta)
    annotate(proto, meta, opts)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        lines = [line for seed in (0, 1)  # two different inputs, each a full (static) batch
                 for line in agreement(tmp, qmodel, opts, sample_images(opts.img_size, opts.batch_size, seed))]
    return QdqResult(Path(path), target, str(check), lines, metadata=meta)

