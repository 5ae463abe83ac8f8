"""Checkpoints written the way the YOLOv7 ecosystem writes them, for loader tests.

The shared fixture (made with the official code) is read into real ``nn.Module`` objects whose classes are
registered under the official names (``models.yolo.Model``, ``models.common.Conv`` ...: empty subclasses, since
pickling needs only a class's name and the object's state), changed the way the official ``train.py`` or the
published ``prune.py`` change it, and written again with ``torch.save``: zip or legacy container, numpy 2
(``numpy._core``) or numpy 1 (``numpy.core``) module names.
"""
from __future__ import annotations

import contextlib
import copy
import io
import pickle
import pickletools
import sys
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

OFFICIAL_MODULES = ("models", "models.yolo", "models.common", "models.experimental", "utils", "utils.general")
NUMPY1 = {"numpy._core.multiarray": "numpy.core.multiarray"}  # how numpy 1.x names its pickling helpers


class _OfficialModule(types.ModuleType):
    """An official module's stand-in: any class name asked for becomes an empty ``nn.Module`` subclass."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (nn.Module,), {"__module__": self.__name__, "__qualname__": name})
        setattr(self, name, cls)
        return cls


_MODULES = {name: _OfficialModule(name) for name in OFFICIAL_MODULES}  # one class per name for the whole session


@contextlib.contextmanager
def official_classes() -> Iterator[None]:
    """Register the official module names while objects are read or written (restored afterwards)."""
    saved = {name: sys.modules.get(name) for name in OFFICIAL_MODULES}
    sys.modules.update(_MODULES)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _RenamingPickler(pickle.Pickler):
    """Pickles into a buffer, then writes it with some global names replaced (protocol-2 GLOBAL opcodes)."""

    renames: dict[str, str] = {}

    def __init__(self, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        self._target, self._buffer = file, io.BytesIO()
        super().__init__(self._buffer, protocol, **kwargs)

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        data = self._buffer.getvalue()
        for old, new in self.renames.items():
            data = data.replace(f"c{old}\n".encode(), f"c{new}\n".encode())
        self._target.write(data)


def save_official(obj: Any, path: Path, *, legacy: bool = False, renames: dict[str, str] | None = None) -> Path:
    """``torch.save`` (protocol 2, as the ecosystem's files are), optionally renaming globals in the pickle:
    ``{"numpy._core.multiarray": "numpy.core.multiarray"}`` or ``{"evil\\nrun": "os\\nsystem"}``."""
    pickler = type("Pickler", (_RenamingPickler,), {"renames": dict(renames or {})})
    module = types.SimpleNamespace(Pickler=pickler, dump=lambda o, f, protocol=None: pickler(f, protocol).dump(o),
                                   __name__="renaming_pickle")
    with official_classes(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")  # legacy files store class source
        torch.save(obj, path, pickle_module=module, _use_new_zipfile_serialization=not legacy)
    return path


def pickled_globals(path: Path) -> set[str]:
    """``module.name`` of every GLOBAL opcode in a checkpoint's main pickle (zip or legacy container)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    else:
        data = path.read_bytes()
    found = set()
    with contextlib.suppress(Exception):  # a legacy file continues with raw storage bytes after its pickles
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.add(arg.replace(" ", "."))
    return found


def load_trusted(path: Path) -> dict:
    """An official checkpoint as real objects (trusted test fixtures only: this runs the pickle)."""
    with official_classes():
        return torch.load(path, map_location="cpu", weights_only=False)


def submodule_tensor(root: nn.Module, key: str) -> tuple[nn.Module, str]:
    """(owning module, attribute name) of a state_dict key."""
    *path, name = key.split(".")
    module = root
    for part in path:
        module = getattr(module, part) if not part.isdigit() else module._modules[part]
    return module, name


def set_state(root: nn.Module, state: dict[str, torch.Tensor], copy: bool = True) -> None:
    """Replace a module tree's tensors by ``state`` (new shapes allowed, as the published pruner does);
    ``copy=False`` keeps views as they are (a broadcast view is then pickled with its zero strides)."""
    for key, value in state.items():
        module, name = submodule_tensor(root, key)
        value = value.clone() if copy else value
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[name] = value


def optimizer_state(model: nn.Module) -> dict:
    """What official ``train.py`` saves as ``optimizer``: SGD with three parameter groups (BN weights, weights
    with decay, biases) after a step, warm-up having set ``lr``/``momentum`` to numpy floats (``np.interp``)."""
    params = copy.deepcopy(model).float()
    pg0 = [p for n, p in params.named_parameters() if n.endswith(".bn.weight")]
    pg1 = [p for n, p in params.named_parameters() if n.endswith(".weight") and not n.endswith(".bn.weight")]
    pg2 = [p for n, p in params.named_parameters() if n.endswith(".bias")]
    opt = torch.optim.SGD(pg0, lr=0.01, momentum=0.937, nesterov=True)
    opt.add_param_group({"params": pg1, "weight_decay": 0.0005})
    opt.add_param_group({"params": pg2})
    for p in params.parameters():
        p.requires_grad_(True)
        p.grad = torch.full_like(p, 0.01)
    opt.step()
    for i, group in enumerate(opt.param_groups):
        group["lr"] = np.interp(5, [0, 10], [0.1 if i == 2 else 0.0, 0.01])
        group["momentum"] = np.interp(5, [0, 10], [0.8, 0.937])
    return opt.state_dict()


def as_trained(model: nn.Module) -> nn.Module:
    """The attributes official ``train.py`` attaches to the model it trains (``class_weights`` is float64)."""
    nc = int(model.yaml["nc"])
    model.nc, model.gr, model.hyp = nc, 1.0, {"lr0": 0.01, "momentum": 0.937, "box": 0.05, "cls": 0.3, "obj": 0.7}
    model.class_weights = torch.from_numpy(np.full(nc, 1.0 / nc)) * nc
    return model


def trainer_checkpoint(model: nn.Module, ema: nn.Module | None, epoch: int = 3) -> dict:
    """The dict official ``train.py`` saves after an epoch (``last.pt``), fp16 models."""
    model = as_trained(model)
    ema = as_trained(ema) if ema is not None else None
    return {"epoch": epoch, "best_fitness": np.array([0.4242]),
            "training_results": "      0/299     2.1G   0.05   0.02   0.01   0.08    40   640\n",
            "model": model.half(), "ema": ema.half() if ema is not None else None, "updates": 1234,
            "optimizer": optimizer_state(model), "wandb_id": None}


def stripped(ckpt: dict) -> dict:
    """Official ``strip_optimizer``: ``ema`` becomes ``model``; optimizer, results, ids dropped; epoch -1."""
    out = dict(ckpt)
    if out.get("ema") is not None:
        out["model"] = out["ema"]
    for key in ("optimizer", "training_results", "wandb_id", "ema", "updates"):
        out[key] = None
    out["epoch"] = -1
    return out
