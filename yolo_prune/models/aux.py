"""Auxiliary heads of the P6 models (``IAuxDetect``): training-only outputs, dropped for deployment.

``IAuxDetect`` reads nl lead inputs then nl auxiliary inputs; the official training cfgs compute the auxiliary
inputs with extra convolutions placed right before the head. :func:`drop_aux_heads` returns the deployment
model the official re-parameterisation produces (the deploy cfg): those layers and the ``m2`` convs removed, the
head an ``IDetect`` over the lead inputs, every other weight kept. Its outputs equal the training model's
eval-mode outputs exactly (the auxiliary heads never contribute to them).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.fuse import fold_implicit, fuse_conv_bn, fuse_repconv
from yolo_prune.models.heads import IAuxDetect
from yolo_prune.models.model import PRUNABLE_TYPES, Model


def has_aux_heads(model: nn.Module) -> bool:
    """Whether ``model`` carries auxiliary heads (an ``IAuxDetect`` with ``m2`` convs)."""
    head = getattr(model, "detect", None)
    return isinstance(head, IAuxDetect) and len(head.m2) > 0


def aux_only_layers(model: Model) -> list[int]:
    """Cfg layers whose outputs reach only the auxiliary heads (none of the lead inputs depends on them)."""
    nl = model.detect.nl
    needed: set[int] = set()
    stack = [s for s in model.specs[-1].sources()[:nl]]
    while stack:
        i = stack.pop()
        if i >= 0 and i not in needed:
            needed.add(i)
            stack.extend(model.specs[i].sources())
    return [i for i in range(len(model.specs) - 1) if i not in needed]


def drop_aux_heads(model: Model) -> Model:
    """A copy of ``model`` without its auxiliary heads (a plain copy when it has none); ``model`` is untouched."""
    if not has_aux_heads(model):
        return copy.deepcopy(model)
    n = len(model.specs) - 1
    aux = aux_only_layers(model)
    kept = n - len(aux)
    if aux != list(range(kept, n)):
        raise ConfigError(f"layers {aux} feed only the auxiliary heads but are not the last layers before the "
                          f"head; cannot drop them without renumbering the cfg")
    cfg = copy.deepcopy(model.yaml)
    rows = list(cfg["backbone"]) + list(cfg["head"])
    nb = len(cfg["backbone"])
    head_row = list(rows[n])
    head_row[0], head_row[2] = list(model.specs[-1].sources()[: model.detect.nl]), "IDetect"
    cfg["head"] = rows[nb:kept] + [head_row]
    aux_convs = {id(m) for i in aux for m in model.model[i].modules() if isinstance(m, PRUNABLE_TYPES)}
    widths = [w for m, w in zip(model.conv_modules(), model.widths()) if id(m) not in aux_convs]
    ref = next(model.parameters())
    with torch.device(ref.device):
        deploy = Model(cfg, ch=model.ch_in, widths=widths, source="training cfg without its auxiliary heads")
    _fuse_like(model, deploy)
    state = {}
    for key, value in model.state_dict().items():
        layer, _, rest = key.removeprefix("model.").partition(".")
        if int(layer) in aux or rest.startswith("m2."):
            continue
        state[f"model.{kept}.{rest}" if int(layer) == n else key] = value
    deploy.load_state_dict(state, strict=True)
    deploy.names = list(model.names)
    return deploy.to(ref.device, ref.dtype).train(model.training)


def _fuse_like(source: Model, target: Model) -> None:
    """Apply to ``target`` the re-parameterisations ``source`` has had (so their state_dicts line up)."""
    if any(isinstance(m, Conv) and isinstance(m.bn, nn.Identity) for m in source.modules()):
        fuse_conv_bn(target)
    if any(isinstance(m, RepConv) and m.rbr_reparam is not None for m in source.modules()):
        fuse_repconv(target)
    if len(source.detect.ia) == 0:
        fold_implicit(target)
