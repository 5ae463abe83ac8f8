"""A restricted unpickler for official YOLOv7 ``.pt`` pickles.

Every global the pickle names is looked up in a whitelist: tensor-rebuild helpers and plain containers
resolve to the real objects; YOLOv7 and ``torch.nn`` classes and ``argparse.Namespace`` (a training ``opt``)
resolve to *inert stand-ins* that only record their state; the numpy objects official trainers leave behind
are rebuilt by :mod:`.pickled_numpy`; anything else (``os.system``, ``subprocess.Popen``, ``builtins.eval``,
``numpy.load`` ...) is refused before it can run. Nothing from the official code base is imported or executed.
"""
from __future__ import annotations

import collections
import pickle
import types
from typing import Any

import torch

from yolo_prune.checkpoint.pickled_numpy import NUMPY_GLOBALS
from yolo_prune.errors import CheckpointError


class StandIn:
    """Inert replacement for a pickled class: accepts any construction and keeps the pickled state."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_value": state}

    @property
    def state(self) -> dict:
        return self.__dict__.get("_state", {})

    def __repr__(self) -> str:
        return f"<stand-in {self.qualname}>"


class AttributeRef(StandIn):
    """What ``getattr(obj, name)`` in a pickle becomes (e.g. a bound ``fuseforward``): a record, not a lookup."""

    def __init__(self, obj: Any = None, name: str = "", *rest: Any) -> None:
        super().__init__(obj, name)
        self.__dict__["name"] = name


def stand_in(qualname: str, cache: dict[str, type[StandIn]]) -> type[StandIn]:
    """The stand-in class for a fully qualified name (one class per name within one load)."""
    if qualname not in cache:
        cache[qualname] = type(qualname.rsplit(".", 1)[-1], (StandIn,), {"qualname": qualname})
    return cache[qualname]


_REAL: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "getattr"): AttributeRef,
    **NUMPY_GLOBALS,
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
# Module prefixes whose classes become inert stand-ins (the official code base and torch.nn layers), and single
# classes that training scripts leave in checkpoints (an ``opt`` namespace).
_STAND_IN_PREFIXES = ("models.", "utils.", "torch.nn.modules.")
_STAND_IN_NAMES = {("argparse", "Namespace")}


def resolve_global(module: str, name: str, cache: dict[str, type[StandIn]]) -> Any:
    """Map a pickled global to a safe object, or raise CheckpointError naming it."""
    module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
    if (module, name) in _REAL:
        return _REAL[(module, name)]
    if module == "torch" and name in _DTYPES:
        return getattr(torch, name)
    stands_in = module.startswith(_STAND_IN_PREFIXES) and name.isidentifier() and not name.startswith("__")
    if stands_in or (module, name) in _STAND_IN_NAMES:
        return stand_in(f"{module}.{name}", cache)
    raise CheckpointError(f"refusing global '{module}.{name}': it is not part of a YOLOv7 checkpoint "
                          f"(allowed: models.*/utils.* classes, torch.nn layers, tensors, containers, "
                          f"numpy arrays/scalars of plain dtypes, argparse.Namespace)")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` goes through ``resolve_global``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[str, type[StandIn]] = {}

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, self._stand_ins)


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# Passed to ``torch.load(pickle_module=...)``: torch subclasses ``Unpickler`` and handles storages itself.
restricted_pickle_module = types.SimpleNamespace(
    Unpickler=RestrictedUnpickler, load=_load, __name__="yolo_prune_restricted_pickle"
)
