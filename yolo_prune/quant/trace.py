"""Which quantizer produced each layer's input, and which quantizers must share a scale, from one forward pass.

Every output quantizer tags the tensor it returns; max-pool, nearest resize and concatenation move int8 values
without changing their scale, so their outputs keep the tag (a concatenation merges its inputs' tags: the DPU
concatenates int8 tensors of one scale, and TensorRT fuses a concatenation away only when its inputs share one).
The merged groups then share one :class:`FakeQuantize` object, and every quantized layer learns the quantizer
of its input (the DPU's shift limits depend on it). Works on any module structure (blocks with internal
``torch.cat``/pools included) because the tags ride on the tensors (a ``TorchFunctionMode``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.darknet.layers import DarknetMaxPool
from yolo_prune.quant.fakequant import FakeQuantize
from yolo_prune.quant.modules import QHeadConv, _QuantLayer

MAX_POOLS = (nn.MaxPool2d, DarknetMaxPool)
PASS_THROUGH = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "interpolate", "upsample_nearest2d"}
MERGING = {"cat", "concat", "concatenate"}


class _Groups:
    """Union-find over quantizers."""

    def __init__(self) -> None:
        self.parent: dict[int, FakeQuantize] = {}

    def find(self, q: FakeQuantize) -> FakeQuantize:
        root = self.parent.get(id(q), q)
        if root is not q:
            root = self.find(root)
            self.parent[id(q)] = root
        return root

    def union(self, qs: list[FakeQuantize]) -> None:
        roots = [self.find(q) for q in qs]
        for r in roots[1:]:
            if r is not roots[0]:
                self.parent[id(r)] = roots[0]


class _TagMode(TorchFunctionMode):
    """Propagates quantizer tags through scale-preserving ops; records un-tagged inputs of concatenations."""

    def __init__(self, groups: _Groups):
        super().__init__()
        self.groups = groups
        self.tags: dict[int, tuple[torch.Tensor, FakeQuantize]] = {}
        self.untagged: list[str] = []

    def tag(self, t: Any) -> FakeQuantize | None:
        hit = self.tags.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t else None

    def mark(self, t: torch.Tensor, q: FakeQuantize) -> None:
        self.tags[id(t)] = (t, q)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in MERGING and args:
            tags = [self.tag(t) for t in args[0]]
            if None in tags:
                self.untagged.append(f"{name} input {tags.index(None)}")
            elif isinstance(out, torch.Tensor):
                self.groups.union(tags)  # type: ignore[arg-type]
                self.mark(out, tags[0])  # type: ignore[arg-type]
        elif name in PASS_THROUGH and args:
            src = self.tag(args[0])
            result = out[0] if isinstance(out, tuple) else out
            if src is not None and isinstance(result, torch.Tensor):
                self.mark(result, src)
        return out


def _hooks(model: nn.Module, mode: _TagMode, inputs: dict[nn.Module, FakeQuantize | None]) -> list[Any]:
    """Forward hooks: quantizer outputs get tagged, max-pool modules pass their input's tag on; quantized layers
    record their input's tag."""
    handles = []
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            handles.append(m.register_forward_hook(lambda mod, _i, out: mode.mark(out, mod)))
        elif isinstance(m, (_QuantLayer, QHeadConv)):
            def pre(mod: nn.Module, args: tuple) -> None:
                own = getattr(mod, "image_quant", None)
                inputs[mod] = own if own is not None else mode.tag(args[0])
            handles.append(m.register_forward_pre_hook(pre))
        elif isinstance(m, MAX_POOLS):  # whatever ops its kernel runs (strided maxima), a max pool keeps the scale
            def pooled(_mod: nn.Module, args: tuple, out: Any) -> None:
                src = mode.tag(args[0])
                if src is not None and isinstance(out, torch.Tensor):
                    mode.mark(out, src)
            handles.append(m.register_forward_hook(pooled))
    return handles


def _share(model: nn.Module, groups: _Groups) -> int:
    """Point every layer's output quantizer at its group's root; returns the number of distinct quantizers."""
    roots: set[int] = set()
    for m in model.modules():
        if isinstance(m, _QuantLayer):
            m.out_quant = groups.find(m.out_quant)
            roots.add(id(m.out_quant))
    return len(roots)


@torch.no_grad()
def link_quantizers(model: nn.Module, example: torch.Tensor) -> int:
    """Trace ``model`` on ``example`` (quantizers disabled), share scales across concatenations and set every
    quantized layer's ``input_quant``; returns the number of distinct activation quantizers (image excluded).

    YoloPruneError when a concatenation or a quantized layer reads a tensor no quantizer produced (an op this
    scheme cannot run in int8, e.g. a residual add).
    """
    groups, inputs = _Groups(), {}
    mode = _TagMode(groups)
    handles = _hooks(model, mode, inputs)
    try:
        with mode:
            head = model.eval().detect
            for i, feats in enumerate(model.head_inputs(example)[: head.nl]):
                head.level(i, feats)
    finally:
        for h in handles:
            h.remove()
    missing = [type(m).__name__ for m, q in inputs.items() if q is None]
    if mode.untagged or missing:
        where = ", ".join(mode.untagged + [f"{n} input" for n in missing])
        raise YoloPruneError(f"cannot quantize this model: {where} comes from an operation without an int8 output "
                             "(supported: Conv/RepConv blocks, max-pools, nearest upsampling, concatenations)")
    count = _share(model, groups)
    for m, q in inputs.items():
        m.__dict__["input_quant"] = groups.find(q)  # type: ignore[arg-type]
    return count
