"""yolo-prune's checkpoint format: architecture + weights + history, readable with ``weights_only=True``.

Layout (a plain dict of primitives and tensors)::

    {"format": "yolo-prune", "version": 1,
     "cfg": <model cfg dict>, "widths": [out channels of every Conv/RepConv, module order],
     "fused": {"conv_bn": bool, "repconv": bool, "implicit": bool},
     "names": [...], "state_dict": {...}, "history": [ {event dict}, ... ], "extra": {...}}

Optional: ``"masks": {parameter name: bool tensor}`` (kernel-level masks, True = kept; see
``yolo_prune.prune.masks``) and ``"gating": {"layers": [[conv path, bn path], ...], "density": d}`` (FBS gated
convs; the model is converted before its weights load). Classification CNNs use the same dict with ``"task": "classify"`` and their ``arch`` spec instead of ``cfg``
(:mod:`.classify`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from yolo_prune.checkpoint.state import build_within, load_state_strict
from yolo_prune.errors import CheckpointError, ConfigError
from yolo_prune.fileio import write_atomic
from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.fuse import fold_implicit, fuse_conv_bn, fuse_repconv
from yolo_prune.models.heads import IDetect
from yolo_prune.models.model import Model
from yolo_prune.models.spec import check_header

FORMAT = "yolo-prune"
VERSION = 1


def fused_state(model: Model) -> dict[str, bool]:
    """Which re-parameterisations have been applied to ``model``."""
    convs = [m for m in model.modules() if isinstance(m, Conv)]
    reps = [m for m in model.modules() if isinstance(m, RepConv)]
    head = model.detect
    return {
        "conv_bn": bool(convs) and all(isinstance(m.bn, nn.Identity) for m in convs),
        "repconv": bool(reps) and all(m.rbr_reparam is not None for m in reps),
        "implicit": isinstance(head, IDetect) and len(head.ia) == 0,
    }


def to_checkpoint(model: Model, history: list[dict] | None = None, extra: dict | None = None,
                  half: bool = False, masks: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (tensors copied to CPU; ``half`` stores floats as fp16); classifiers are
    written by :mod:`.classify`. ``masks``: kernel masks to keep with the weights."""
    from yolo_prune.models.classify import Classifier
    from yolo_prune.models.gating import gating_state

    if isinstance(model, Classifier):
        from yolo_prune.checkpoint.classify import classifier_checkpoint

        ckpt = classifier_checkpoint(model, history, extra, half)
    else:
        sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone())
              for k, v in model.state_dict().items()}
        ckpt = {"format": FORMAT, "version": VERSION, "cfg": model.yaml, "widths": model.widths(),
                "fused": fused_state(model), "names": list(model.names), "state_dict": sd,
                "history": list(history or []), "extra": dict(extra or {})}
    if masks:
        ckpt["masks"] = {k: v.detach().cpu().bool().clone() for k, v in masks.items()}
    gating = gating_state(model)
    if gating is not None:
        ckpt["gating"] = gating
    return ckpt


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, then rename: a crash never leaves a half-written file."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(model: Model, path: str | Path, history: list[dict] | None = None,
                    extra: dict | None = None, half: bool = False,
                    masks: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (and its kernel ``masks``, if any) in our format, atomically."""
    return atomic_save(to_checkpoint(model, history, extra, half, masks), path)


def restore_gating(model: torch.nn.Module, ckpt: dict, source: str) -> None:
    """Convert the convs a checkpoint records as FBS-gated, so its weights fit (before the strict load)."""
    from yolo_prune.models.gating import gate_modules

    gating = ckpt.get("gating")
    if gating:
        try:
            gate_modules(model, [tuple(p) for p in gating["layers"]], float(gating["density"]))
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed 'gating' entry ({exc})") from None


def is_native(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


# State-dict keys of the weight of every Conv/RepConv (module order = the order ``Model.widths`` lists them).
_CONV_WEIGHTS = (".conv.weight", ".rbr_dense.0.weight", ".rbr_reparam.weight")


def check_widths(widths: Any, state: Mapping[str, torch.Tensor], source: str) -> None:
    """A recorded width list is positive integers, one per convolution, equal to the filters the weights hold."""
    if not isinstance(widths, (list, tuple)) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        raise CheckpointError(f"{source}: 'widths' must be a list of integers, got {str(widths)[:80]}")
    held = [(k, int(t.shape[0])) for k, t in state.items() if k.endswith(_CONV_WEIGHTS) and t.ndim == 4]
    if len(held) != len(widths):
        raise CheckpointError(f"{source}: 'widths' lists {len(widths)} convolutions but the weights hold {len(held)}")
    for i, (w, (key, filters)) in enumerate(zip(widths, held)):
        if w != filters:
            raise CheckpointError(f"{source}: widths[{i}] = {w} but the weights hold {filters} filters ({key})")


def _check_head(cfg: dict, state: Mapping[str, torch.Tensor], source: str) -> None:
    """The cfg's class count and anchors fix the head convolutions' filters: they must be what the weights hold
    (checked before building, so an absurd ``nc`` is named instead of allocated)."""
    last = len(cfg["backbone"]) + len(cfg["head"]) - 1
    na = len(cfg["anchors"][0]) // 2 if isinstance(cfg["anchors"], list) else cfg["anchors"]
    expected = na * (cfg["nc"] + 5)
    for key, t in state.items():
        if key.startswith(f"model.{last}.m") and key.endswith(".weight") and t.ndim == 4 and t.shape[0] != expected:
            raise CheckpointError(f"{source} (embedded cfg): nc={cfg['nc']} with {na} anchors per level needs "
                                  f"{expected} filters in the head, but {key} holds {t.shape[0]}")


def _reparameterise(model: nn.Module, fused: Mapping[str, bool]) -> nn.Module:
    """Apply the re-parameterisations a checkpoint records (RepConv merge, Conv+BN folding, implicit folding)."""
    if fused.get("repconv"):
        fuse_repconv(model)
    if fused.get("conv_bn"):
        fuse_conv_bn(model)
    if fused.get("implicit"):
        fold_implicit(model)
    return model


def rebuild(cfg: Any, widths: Any, fused: Mapping[str, bool], state: Mapping[str, torch.Tensor], source: str,
            ch: Any = 3, convert: Callable[[nn.Module], None] | None = None) -> Model:
    """The recorded architecture, re-parameterised as recorded (then ``convert``ed, e.g. FBS gates restored), with
    ``state`` loaded strictly.

    Every shape is checked against ``state`` in a dry run before anything is allocated, and a malformed
    embedded cfg (string ``nc``, bad ``anchors``, negative ``width_multiple`` ...) is a CheckpointError naming it.
    """
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: the embedded cfg is not a mapping")
    if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
        raise CheckpointError(f"{source} (embedded cfg): 'ch' (input channels) must be a positive integer, got {ch!r}")
    try:
        check_header(cfg, f"{source} (embedded cfg)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    _check_head(cfg, state, source)

    def build() -> Model:
        model = _reparameterise(Model(cfg, ch=ch, widths=widths, source=f"{source} (embedded cfg)"), fused)
        if convert is not None:
            convert(model)
        return model

    try:
        model = build_within(build, state, source)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{source} (embedded cfg): does not describe a buildable model "
                              f"({type(exc).__name__}: {exc})") from None
    load_state_strict(model, state, source)
    return model


def model_from_native(ckpt: dict, source: str) -> Model:
    """Rebuild the (possibly pruned and fused) model recorded in ``ckpt`` and load its weights strictly."""
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{source}: written by a newer yolo-prune (format version {ckpt['version']})")
    if ckpt.get("task") == "classify":
        from yolo_prune.checkpoint.classify import classifier_from_native

        return classifier_from_native(ckpt, source)
    missing = [k for k in ("cfg", "widths", "state_dict") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks '{missing[0]}'")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: 'state_dict' must map names to tensors")
    fused = ckpt.get("fused") if isinstance(ckpt.get("fused"), dict) else {}
    cfg = ckpt["cfg"]
    if isinstance(cfg, dict) and "darknet" in cfg:  # a model built from a Darknet .cfg
        from yolo_prune.models.darknet import build_darknet

        model = _reparameterise(build_darknet(cfg, widths=ckpt["widths"]), fused)
        restore_gating(model, ckpt, source)
        load_state_strict(model, state, source)
    else:
        check_widths(ckpt["widths"], state, source)
        model = rebuild(cfg, list(ckpt["widths"]), fused, state, source,
                        convert=lambda m: restore_gating(m, ckpt, source))
    if len(ckpt.get("names") or []) == model.nc:
        model.names = [str(n) for n in ckpt["names"]]
    return model.float().eval()
