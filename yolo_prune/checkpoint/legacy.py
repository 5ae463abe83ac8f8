"""Official YOLOv7 checkpoints (``yolov7.pt``, ``yolov7-tiny.pt``, ``yolov7_training.pt``, pruned ones).

The pickle is read with the restricted unpickler into inert stand-ins; the model is rebuilt from the cfg
dict it carries (``Model.yaml``) with the channel counts found in its weights (so checkpoints pruned by
the published code load too), re-parameterised the same way if it was fused, and the weights are copied
with strict key and shape checks. A dry run on the meta device first makes sure the embedded cfg describes
exactly the tensors the file holds, so a malformed cfg fails by name instead of allocating.

What the official ``train.py`` writes (``best.pt``, ``last.pt``, ``epoch_*.pt``)::

    {'epoch', 'best_fitness': numpy array, 'training_results': str, 'model': Model (fp16),
     'ema': Model (fp16) or None, 'updates', 'optimizer': state dict or None, 'wandb_id'}

The published ``prune.py`` prunes the ``ema`` (or ``model``) object in place, gives it a ``pruning_cfg``
attribute and saves the dict again: both entries then hold the same pruned model.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from yolo_prune.checkpoint.native import rebuild
from yolo_prune.checkpoint.unpickler import AttributeRef, StandIn, restricted_pickle_module
from yolo_prune.errors import CheckpointError
from yolo_prune.models.model import Model


def read_official(path: str | Path) -> dict:
    """Unpickle an official checkpoint into a dict whose model entries are stand-ins."""
    try:
        with warnings.catch_warnings():  # legacy-format files store module source that stand-ins cannot match
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            ckpt = torch.load(path, map_location="cpu", pickle_module=restricted_pickle_module, weights_only=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # corrupt zip, truncated file, not a pickle
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    return ckpt


def pick_model(ckpt: Any, path: str | Path) -> StandIn:
    """The pickled ``models.yolo.Model``: ``ema`` when present, else ``model`` (as the official ``attempt_load``),
    or the pickled object itself (``torch.save(model)``, e.g. the trainer's ``init.pt``)."""
    candidates = [ckpt.get("ema"), ckpt.get("model")] if isinstance(ckpt, dict) else [ckpt]
    for obj in candidates:
        if isinstance(obj, StandIn) and obj.qualname.endswith(".Model"):
            return obj
    raise CheckpointError(f"{path}: no YOLOv7 model in this checkpoint (expected a 'model' or 'ema' entry "
                          f"holding models.yolo.Model)")


def walk(module: StandIn, prefix: str = "") -> Iterator[tuple[str, StandIn]]:
    """Yield (qualified name, stand-in) for a pickled nn.Module tree, in registration order."""
    yield prefix.rstrip("."), module
    for name, child in module.state.get("_modules", {}).items():
        if isinstance(child, StandIn):
            yield from walk(child, f"{prefix}{name}.")


def state_dict_of(root: StandIn) -> "OrderedDict[str, torch.Tensor]":
    """Parameters and persistent buffers of a pickled module tree, named as ``nn.Module.state_dict``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, mod in walk(root):
        prefix = f"{name}." if name else ""
        skip = mod.state.get("_non_persistent_buffers_set", set())
        for key in ("_parameters", "_buffers"):
            for pname, tensor in mod.state.get(key, {}).items():
                if isinstance(tensor, torch.Tensor) and pname not in skip:
                    out[prefix + pname] = tensor.detach()
    return out


def conv_widths(root: StandIn, sd: dict) -> list[int]:
    """Output channels of each official Conv/RepConv in module order (the published conv indexing)."""
    widths = []
    for name, mod in walk(root):
        kind = mod.qualname.rsplit(".", 1)[-1]
        if kind == "Conv":
            widths.append(sd[f"{name}.conv.weight"].shape[0])
        elif kind == "RepConv":
            key = f"{name}.rbr_reparam.weight" if f"{name}.rbr_reparam.weight" in sd else f"{name}.rbr_dense.0.weight"
            widths.append(sd[key].shape[0])
    return widths


def _head_is_fused(root: StandIn) -> bool:
    """Official ``IDetect.fuse()`` folds implicit layers and swaps ``forward`` for ``fuseforward``."""
    layers = root.state.get("_modules", {}).get("model")
    head = list(layers.state.get("_modules", {}).values())[-1] if isinstance(layers, StandIn) else None
    fwd = head.state.get("forward") if isinstance(head, StandIn) else None
    return isinstance(fwd, AttributeRef) and fwd.name == "fuseforward"


def training_info(ckpt: Any, root: StandIn) -> dict[str, Any]:
    """What an official checkpoint says about its training (epoch, best fitness), as plain Python values."""
    info: dict[str, Any] = {"pruned_by_published_code": "pruning_cfg" in root.state}
    if not isinstance(ckpt, dict):
        return info
    if isinstance(ckpt.get("epoch"), int):
        info["epoch"] = ckpt["epoch"]
    fitness = np.asarray(ckpt.get("best_fitness", []))
    if fitness.size and fitness.dtype.kind in "iuf":  # a float, or the numpy array train.py keeps
        info["best_fitness"] = float(fitness.reshape(-1)[0])
    return info


def model_from_official(path: str | Path) -> tuple[Model, dict]:
    """Rebuild our Model (float32, eval mode) from an official checkpoint; also returns metadata."""
    ckpt = read_official(path)
    root = pick_model(ckpt, path)
    cfg = root.state.get("yaml")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: the pickled model carries no cfg dict ('yaml' attribute)")
    sd = state_dict_of(root)
    fused = {"repconv": any(k.endswith("rbr_reparam.weight") for k in sd),
             "conv_bn": any(k.endswith(".conv.bias") for k in sd), "implicit": _head_is_fused(root)}
    if fused["implicit"]:
        sd = OrderedDict((k, v) for k, v in sd.items() if ".ia." not in k and ".im." not in k)
    try:
        widths = conv_widths(root, sd)
    except KeyError as exc:
        raise CheckpointError(f"{path}: a pickled convolution has no weight {exc}") from None
    model = rebuild(cfg, widths, fused, sd, str(path), ch=cfg.get("ch", 3))
    names = root.state.get("names")
    if isinstance(names, (list, tuple)) and len(names) == model.nc:
        model.names = [str(n) for n in names]
    meta = {"source_format": "yolov7-official", "implicit_folded": fused["implicit"], **training_info(ckpt, root)}
    return model.float().eval(), meta
