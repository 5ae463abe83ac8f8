"""What a benchmark measures: a checkpoint or an ONNX file, checked against the runtime and sizes, with its cost.

Everything is checked before anything is timed, so bad input fails in seconds with a message naming the file
and the flag. Costs are per image at the target's input size: for checkpoints ``count_params``/``count_gflops``
of the fused model (BN, RepConv and implicit layers folded: what runs), for ONNX files counted from the graph
(:mod:`yolo_prune.bench.onnx_cost`, the same convention, so both agree on an exported model).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.model import Model

DEFAULT_IMG = (640, 640)


@dataclass
class Target:
    """One model to time: ``name`` as the user gave it, its kind, input size, fixed batch (static ONNX) and cost."""

    name: str
    path: Path
    kind: str  # "checkpoint" | "onnx"
    img_size: tuple[int, int]
    params: int
    gflops: float
    model: Model | None = None
    static_batch: int | None = None

    def batches(self, requested: Sequence[int] | None) -> list[int]:
        """Batch sizes to time: the requested ones (default [1]), or the graph's fixed batch."""
        if self.static_batch is None:
            return list(requested or [1])
        if requested and list(requested) != [self.static_batch]:
            raise YoloPruneError(f"{self.name}: the ONNX graph has a fixed batch of {self.static_batch}, but "
                                 f"--batch-size is {' '.join(map(str, requested))}; re-export it with "
                                 "`yolo-prune export --dynamic-batch`, or leave --batch-size out")
        return [self.static_batch]


def is_onnx(path: str | Path) -> bool:
    """ONNX files are told from checkpoints by their ``.onnx`` suffix."""
    return Path(path).suffix.lower() == ".onnx"


def checkpoint_cost(model: Model, img_size: tuple[int, int]) -> tuple[int, float]:
    """(params, GFLOPs per image) of the fused model, computed on a meta-device copy."""
    from yolo_prune.models.complexity import count_gflops, count_params
    from yolo_prune.models.fuse import fuse

    fused = fuse(copy.deepcopy(model).to("meta"), conv_bn=True, repconv=True, implicit=True)
    return count_params(fused), count_gflops(fused, img_size)


def load_checkpoint_target(name: str, path: Path, img_size: tuple[int, int] | None,
                           default_img: tuple[int, int] = DEFAULT_IMG) -> Target:
    """A checkpoint (ours or official YOLOv7) at ``img_size`` (else ``default_img``), rounded up to a multiple of its
    max stride with a warning (YOLOv7's rule)."""
    import warnings

    from yolo_prune.checkpoint import load_model
    from yolo_prune.data.letterbox import round_up_to_stride
    from yolo_prune.export.onnx_export import max_stride

    model = load_model(path)
    asked = img_size or default_img
    stride = max_stride(model)
    img = (round_up_to_stride(asked[0], stride), round_up_to_stride(asked[1], stride))
    if img != tuple(asked):
        warnings.warn(f"--img-size {asked[0]} {asked[1]} is not a multiple of the model's max stride {stride} "
                      f"({name}); using {img[0]} {img[1]}", stacklevel=2)
    params, gflops = checkpoint_cost(model, img)
    return Target(name, path, "checkpoint", img, params, gflops, model=model)


def _check_runnable(name: str, proto: Any) -> None:
    """TensorRT plugin nodes (``--end2end`` without ``--max-wh``) cannot run in ONNX Runtime: say so up front."""
    from yolo_prune.export.nms_onnx import TRT_DOMAIN

    plugins = sorted({n.op_type for n in proto.graph.node if n.domain == TRT_DOMAIN})
    if plugins:
        raise YoloPruneError(f"{name}: contains TensorRT plugin nodes ({', '.join(plugins)}) that ONNX Runtime cannot "
                             "run; benchmark a raw or --grid export, or an --end2end export with --max-wh (ONNX NMS)")


def load_onnx_target(name: str, path: Path, img_size: tuple[int, int] | None) -> Target:
    """An ONNX file; a fixed input size must equal ``img_size`` when one is given."""
    from yolo_prune.bench.onnx_cost import graph_input, load_onnx, onnx_cost

    proto = load_onnx(path)
    inp = graph_input(proto)
    if len(inp.dims) != 4 or inp.dims[1] not in (3, None):
        raise YoloPruneError(f"{name}: the ONNX input {inp.name!r} has shape {list(inp.dims)}; expected an image "
                             "batch [B, 3, H, W]")
    _check_runnable(name, proto)
    fixed = inp.hw if None not in inp.hw else None
    if fixed is not None and img_size is not None and tuple(img_size) != fixed:
        raise YoloPruneError(f"{name}: the ONNX input is fixed at {fixed[0]}x{fixed[1]}, but --img-size is "
                             f"{img_size[0]} {img_size[1]}; leave --img-size out (the graph's size is used) or "
                             f"re-export with `yolo-prune export --img-size {img_size[0]} {img_size[1]}`")
    img = fixed or img_size or DEFAULT_IMG
    cost = onnx_cost(proto, img)
    return Target(name, path, "onnx", img, cost.params, cost.gflops, static_batch=inp.batch)


def load_target(name: str, runtime: str, img_size: tuple[int, int] | None,
                default_img: tuple[int, int] = DEFAULT_IMG) -> Target:
    """Check and load the file ``name`` for ``runtime`` (torch, torch-compile or ort); YoloPruneError if unusable.

    ``img_size`` is what the user asked for (None: not given); checkpoints then run at ``default_img``.
    """
    path = Path(name)
    if not path.is_file():
        raise YoloPruneError(f"--weights {name}: file not found")
    if not is_onnx(path):
        return load_checkpoint_target(name, path, img_size, default_img)
    if runtime != "ort":
        raise YoloPruneError(f"--weights {name}: an ONNX file runs with --runtime ort; --runtime {runtime} "
                             "takes checkpoints (.pt)")
    return load_onnx_target(name, path, img_size)


def load_targets(names: Sequence[str], runtime: str, img_size: tuple[int, int] | None) -> list[Target]:
    """Every file checked and loaded, in order. Without ``img_size``, checkpoints run at the fixed input size of
    the ONNX files given (when they agree on one), so a checkpoint and its export are timed alike; else 640."""
    onnx = {n: load_target(n, runtime, img_size) for n in names if is_onnx(n)}
    fixed = {t.img_size for t in onnx.values()}
    default = fixed.pop() if img_size is None and len(fixed) == 1 else DEFAULT_IMG
    return [onnx[n] if n in onnx else load_target(n, runtime, img_size, default) for n in names]
