"""Darknet ``.weights`` files: read them into a :class:`DarknetModel` and write (pruned) models back.

Layout (little-endian), as Darknet's ``load_weights``/``save_weights``:

* header: int32 major, minor, revision; then ``seen`` (images trained on) as uint64 when
  ``major * 10 + minor >= 2`` and both are below 1000, else uint32;
* then, for every ``[convolutional]`` in cfg order, float32: biases [n]; with ``batch_normalize=1`` also scales
  [n], rolling means [n], rolling variances [n]; then the weights [n, c / groups, size, size].

A model read from a file and written unchanged gives that file back byte for byte (header included); a
pruned model is written with its ``filters=`` updated in the cfg and the header kept.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.errors import CheckpointError, ConfigError
from yolo_prune.fileio import write_atomic
from yolo_prune.models.blocks import Conv
from yolo_prune.models.darknet import DarknetModel, read_darknet_cfg
from yolo_prune.models.darknet.layers import activation_name

DEFAULT_HEADER = (0, 2, 5, 0)  # AlexeyAB/darknet's current version, nothing seen


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a .weights file."""

    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    def pack(self) -> bytes:
        return struct.pack("<3i", self.major, self.minor, self.revision) + \
            struct.pack("<Q" if self.seen_64bit else "<I", self.seen)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.major, self.minor, self.revision, self.seen


def read_weights_file(path: str | Path) -> tuple[WeightsHeader, np.ndarray]:
    """The header and the float32 payload of a .weights file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"Darknet weights not found: {path}") from None
    if len(data) < 16:
        raise CheckpointError(f"{path}: too short for a Darknet weights header ({len(data)} bytes)")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    probe = WeightsHeader(major, minor, revision, 0)
    fmt, size = ("<Q", 8) if probe.seen_64bit else ("<I", 4)
    (seen,) = struct.unpack_from(fmt, data, 12)
    body = data[12 + size:]
    if len(body) % 4:
        raise CheckpointError(f"{path}: payload of {len(body)} bytes is not a whole number of float32 values")
    return WeightsHeader(major, minor, revision, seen), np.frombuffer(body, dtype="<f4")


def _conv_tensors(model: DarknetModel) -> Iterator[tuple[int, bool, list[tuple[str, torch.Tensor]]]]:
    """For every [convolutional] in cfg order: (layer, batch_normalize, [(what, tensor), ...] in file order)."""
    body = iter(model.conv_modules())
    heads = {lv.conv_layer: conv for lv, conv in zip(model.detect.levels, model.detect.m)}
    for s in model.darknet.layers:
        if s.kind not in ("convolutional", "conv"):
            continue
        if s.index in heads:
            conv = heads[s.index]
            yield s.index, False, [("biases", conv.bias), ("weights", conv.weight)]
            continue
        block: Conv = next(body)
        bn = bool(s.int("batch_normalize", 0))
        if bn and not isinstance(block.bn, nn.BatchNorm2d):
            raise CheckpointError(f"{s.where()}: the model's BatchNorm is fused into the conv; write an unfused model "
                                  f"(the cfg says batch_normalize=1)")
        if bn:
            b = block.bn
            tensors = [("biases", b.bias), ("scales", b.weight), ("rolling_mean", b.running_mean),
                       ("rolling_variance", b.running_var), ("weights", block.conv.weight)]
        else:
            tensors = [("biases", block.conv.bias), ("weights", block.conv.weight)]
        yield s.index, bn, tensors


@torch.no_grad()
def load_weights_into(model: DarknetModel, payload: np.ndarray, source: str) -> None:
    """Copy a .weights payload into ``model`` (cfg order); a short file is an error naming the layer."""
    offset = 0
    for layer, _, tensors in _conv_tensors(model):
        for what, t in tensors:
            n = t.numel()
            if offset + n > len(payload):
                raise CheckpointError(f"{source}: ends in layer {layer} ({what}): the file holds {len(payload)} "
                                      f"values, the cfg needs more (wrong cfg, or a partial file such as "
                                      f"yolov4.conv.137?)")
            t.copy_(torch.from_numpy(payload[offset:offset + n].copy()).view_as(t))
            offset += n
    if offset != len(payload):
        warnings.warn(f"{source}: {len(payload) - offset} trailing values after the last layer were ignored "
                      f"(Darknet ignores them too)", stacklevel=2)


def load_darknet(cfg: str | Path, weights: str | Path | None = None) -> DarknetModel:
    """A DarknetModel from a .cfg and (optionally) its .weights, float32, eval mode, on CPU."""
    parsed = read_darknet_cfg(cfg)
    if weights is None:
        return DarknetModel(parsed).eval()
    header, payload = read_weights_file(weights)
    model = DarknetModel(parsed, header=header.as_tuple())
    load_weights_into(model, payload, str(weights))
    return model.eval()


def sibling_cfg(weights: str | Path) -> Path:
    """The .cfg a .weights file is read with: the file of the same name beside it."""
    cfg = Path(weights).with_suffix(".cfg")
    if not cfg.is_file():
        raise CheckpointError(f"{weights}: Darknet weights need their .cfg; expected {cfg} beside them "
                              f"(copy or link your cfg there)")
    return cfg


def darknet_cfg_text(model: DarknetModel) -> str:
    """The cfg of ``model`` as Darknet reads it: the original text with filters/classes of changed layers."""
    changes: dict[int, dict[str, str]] = {}
    for layer, conv in zip(model.conv_layers, model.conv_modules()):
        s = model.darknet.layers[layer]
        if conv.conv.out_channels != s.int("filters", 1):
            changes[layer] = {"filters": str(conv.conv.out_channels)}
        act = activation_name(conv.act)
        if act != s.value("activation", "logistic"):
            changes.setdefault(layer, {})["activation"] = act
    for lv, conv in zip(model.detect.levels, model.detect.m):
        if conv.out_channels != model.darknet.layers[lv.conv_layer].int("filters", 1):
            changes[lv.conv_layer] = {"filters": str(conv.out_channels)}
        if model.detect.nc != model.darknet.layers[lv.yolo_layer].int("classes", 20):
            changes[lv.yolo_layer] = {"classes": str(model.detect.nc)}
    try:
        return model.darknet.with_options(changes).text()
    except ConfigError as exc:
        raise CheckpointError(f"cannot write the cfg: {exc}") from None


def weights_bytes(model: DarknetModel, header: WeightsHeader | None = None) -> bytes:
    """The .weights content of ``model``: header (the one it was read with, else ``DEFAULT_HEADER``), then
    every conv's tensors as float32 in cfg order."""
    header = header or WeightsHeader(*(model.header or DEFAULT_HEADER))
    parts = [header.pack()]
    for _, _, tensors in _conv_tensors(model):
        parts.extend(t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
                     for _, t in tensors)
    return b"".join(parts)


def save_darknet(model: DarknetModel, cfg_path: str | Path, weights_path: str | Path) -> tuple[Path, Path]:
    """Write ``model`` as a Darknet .cfg + .weights pair (both atomically)."""
    if not isinstance(model, DarknetModel):
        raise CheckpointError("only models built from a Darknet .cfg can be written as Darknet files")
    text, data = darknet_cfg_text(model), weights_bytes(model)
    cfg_out = write_atomic(cfg_path, lambda tmp: Path(tmp).write_bytes(text.encode("latin-1")))
    return cfg_out, write_atomic(weights_path, lambda tmp: Path(tmp).write_bytes(data))
