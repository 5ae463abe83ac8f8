"""ONNX export: re-parameterise a copy, wrap it for the chosen outputs, trace, annotate, check, verify, write.

The file appears only after every check passed (temporary sibling, then rename). ``onnx``/``onnxruntime``/
``onnxslim`` are imported inside the functions that need them.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.export.files import atomic_path
from yolo_prune.export.graph_checks import check_e2e_outputs, check_graph, set_e2e_output_types
from yolo_prune.export.nms_onnx import TRT_DOMAIN
from yolo_prune.export.options import ExportOptions, check_img_size
from yolo_prune.export.verify import VerifyReport, verify_onnx
from yolo_prune.export.wrappers import export_module, output_names
from yolo_prune.models.fuse import deployable_copy

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
METADATA_KEY = "yolo_prune"


@dataclass
class ExportResult:
    """The written file, its input/output names, the verification report and the stored metadata."""

    path: Path
    options: ExportOptions
    outputs: list[str]
    metadata: dict[str, Any]
    report: VerifyReport | None = None
    input_name: str = INPUT_NAME


def resolve_device(device: str) -> torch.device:
    """``cpu``/empty, ``0`` (CUDA index, as YOLOv7), ``cuda`` or ``cuda:N`` -> a usable torch.device."""
    text = (device or "cpu").strip().lower()
    dev = torch.device(f"cuda:{text}" if text.isdigit() else text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise YoloPruneError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


def max_stride(model: nn.Module) -> int:
    """The model's largest detection stride (input sizes must be multiples of it)."""
    return int(model.detect.stride.max())


def prepare_model(model: nn.Module, opts: ExportOptions) -> nn.Module:
    """A deep copy, re-parameterised (Conv+BN, RepConv, implicit), eval mode, on the device, fp16 if asked.

    ``model`` itself is never modified.
    """
    return deployable_copy(model, resolve_device(opts.device), opts.fp16)


def export_metadata(model: nn.Module, opts: ExportOptions) -> dict[str, Any]:
    """What a runtime needs to use the graph: options, classes, strides and anchors (pixels), and for heads that
    decode as Darknet's [yolo] layers, each level's ``scale_x_y`` and ``new_coords``."""
    head = model.detect
    levels = getattr(head, "levels", None)
    darknet = {"darknet_decode": [{"scale_xy": lv.scale_xy, "new_coords": lv.new_coords} for lv in levels]} \
        if levels else {}
    return darknet | {
        "format_version": 1,
        "options": opts.to_dict(),
        "nc": int(head.nc),
        "names": [str(n) for n in getattr(model, "names", range(head.nc))],
        "stride": [float(s) for s in head.stride],
        "anchors": head.anchor_grid.view(head.nl, -1).tolist(),
        "input": INPUT_NAME,
        "outputs": output_names(opts, head.nl),
        **({"head_groups": {k: v.tolist() for k, v in head.channel_groups().items()}} if opts.split_head else {}),
    }


def trace_onnx(prepared: nn.Module, opts: ExportOptions) -> "onnx.ModelProto":
    """Trace the export wrapper of ``prepared`` (TorchScript exporter) into a ModelProto."""
    import onnx

    wrapper = export_module(prepared, opts)
    names = output_names(opts, prepared.detect.nl)
    param = next(prepared.parameters())
    dummy = torch.zeros((opts.batch_size, 3, *opts.img_size), device=param.device, dtype=param.dtype)
    axes = dynamic_axes(opts, names)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), buf, dynamo=False, opset_version=opts.opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
                          custom_opsets={TRT_DOMAIN: 1} if opts.mode == "trt_nms" else None)
    return onnx.load_from_string(buf.getvalue())


def dynamic_axes(opts: ExportOptions, names: list[str]) -> dict[str, dict[int, str]] | None:
    """The graph's named dynamic axes: the batch (``dynamic_batch``), or with ``dynamic`` also the input's height
    and width and so each output's grid size (raw maps ``ny``/``nx`` per level, decoded ``output``'s box count)."""
    if opts.dynamic:
        axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        if opts.mode == "grid":
            return axes | {names[0]: {0: "batch", 1: "boxes"}}
        return axes | {n: {0: "batch", 2: f"ny{i}", 3: f"nx{i}"} for i, n in enumerate(names)}
    return {n: {0: "batch"} for n in [INPUT_NAME, *names]} if opts.dynamic_batch else None


def simplify(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """Simplify with onnxslim (constant folding, dead nodes, fusions); custom nodes are kept."""
    import onnxslim

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnxslim.slim(proto)
    except Exception as exc:  # noqa: BLE001 - onnxslim raises assorted types; report which step failed
        raise YoloPruneError(f"--simplify: onnxslim failed ({type(exc).__name__}: {exc}); export without it") from exc


def annotate(proto: "onnx.ModelProto", meta: dict[str, Any], opts: ExportOptions) -> None:
    """Producer, metadata JSON (key ``yolo_prune``) and, for end-to-end graphs, explicit output types."""
    from yolo_prune import __version__

    proto.producer_name, proto.producer_version = "yolo-prune", __version__
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    if opts.end2end:
        set_e2e_output_types(proto, opts)
        check_e2e_outputs(proto, opts)


def build_onnx(model: nn.Module, opts: ExportOptions) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """The checked ModelProto of ``model`` exported with ``opts``, and its metadata (nothing written)."""
    check_img_size(opts.img_size, max_stride(model))
    proto = trace_onnx(prepare_model(model, opts), opts)
    if opts.simplify:
        proto = simplify(proto)
    meta = export_metadata(model, opts)
    annotate(proto, meta, opts)
    check_graph(proto)
    return proto, meta


def export_onnx(model: nn.Module, path: str | Path, opts: ExportOptions, verify: bool = True,
                images: torch.Tensor | None = None) -> ExportResult:
    """Export ``model`` (not modified) to ``path``; verified with ONNX Runtime unless ``verify=False``.

    Raises YoloPruneError for bad options, CheckFailed when a check fails; ``path`` is then left untouched.
    """
    import onnx

    proto, meta = build_onnx(model, opts)
    report = None
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        if verify:
            report = verify_onnx(tmp, model, opts, images)
    return ExportResult(Path(path), opts, list(meta["outputs"]), meta, report)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``yolo_prune`` metadata of an exported ONNX file ({} for foreign files)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}
