"""numpy objects inside official checkpoints, rebuilt without letting the pickle call into numpy.

The official ``train.py`` pickles ``best_fitness`` (a float64 array) and, once warm-up has set them, the
optimizer's ``lr``/``momentum`` (float64 scalars). A pickle names these as ``numpy.core.multiarray._reconstruct``
/ ``scalar`` (``numpy._core...`` under numpy 2), ``numpy.ndarray``, ``numpy.dtype`` and, for the raw bytes,
``_codecs.encode(text, 'latin1')``. The replacements below accept exactly that shape of data: a plain dtype
('f8', '<i4', 'b1', 'U2' ...) and a byte string of the right length. Object, structured and datetime dtypes are
refused; any other numpy name (``numpy.load``, ``numpy.testing`` ...) never reaches here and is refused by the
unpickler. The array bytes are copied by our own call to ``ndarray.__setstate__`` with the validated dtype.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from yolo_prune.errors import CheckpointError

_PLAIN_DTYPE = re.compile(r"^[biufcSU]\d{1,2}$")  # bool, ints, floats, complex, bytes, str
_BYTE_ORDERS = ("<", ">", "|", "=")
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


class PickledDtype:
    """``numpy.dtype(name, align, copy)`` followed by its pickled state; only plain dtypes are accepted."""

    name: str | None = None
    byteorder: str = "="

    def __init__(self, name: Any = None, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or not _PLAIN_DTYPE.match(name):
            raise CheckpointError(f"refusing numpy dtype {name!r}: only plain bool/number/string dtypes are rebuilt")
        self.name = name

    def __setstate__(self, state: Any) -> None:
        plain = isinstance(state, tuple) and len(state) >= 5 and state[1] in _BYTE_ORDERS and state[3] is None \
            and state[4] is None
        if not plain:
            raise CheckpointError(f"refusing numpy dtype state {str(state)[:80]}: structured dtypes are not rebuilt")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        """The real dtype, built by us from the validated name and byte order."""
        if self.name is None:
            raise CheckpointError("refusing a numpy dtype pickled without its name")
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class NdarrayName:
    """What the name ``numpy.ndarray`` resolves to: a marker for ``_reconstruct``; it cannot be instantiated."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "NdarrayName":
        raise CheckpointError("refusing to construct numpy.ndarray directly from a pickle")


class PickledArray(np.ndarray):
    """The array ``_reconstruct`` returns; the pickle's BUILD step fills it from validated bytes."""

    def __setstate__(self, state: Any) -> None:
        version, shape, dtype, fortran, raw = state if isinstance(state, tuple) and len(state) == 5 else (None,) * 5
        shape_ok = isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
        if not (shape_ok and isinstance(dtype, PickledDtype) and isinstance(raw, bytes)):
            raise CheckpointError("refusing a numpy array whose pickled state is not (shape, plain dtype, bytes)")
        real = dtype.to_numpy()
        if len(raw) != math.prod(shape) * real.itemsize:
            raise CheckpointError(f"numpy array {shape} {real} carries {len(raw)} bytes, "
                                  f"expected {math.prod(shape) * real.itemsize}")
        super().__setstate__((1, shape, real, bool(fortran), raw))


def reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> PickledArray:
    """``numpy.core.multiarray._reconstruct``: an empty array that the following BUILD fills."""
    if cls is not NdarrayName:
        raise CheckpointError(f"refusing numpy _reconstruct of {cls!r}: only numpy.ndarray is rebuilt")
    return np.ndarray.__new__(PickledArray, (0,), np.uint8)


def scalar(dtype: Any, raw: Any = b"") -> np.generic:
    """``numpy.core.multiarray.scalar``: one value of a plain dtype from its bytes."""
    if not isinstance(dtype, PickledDtype) or not isinstance(raw, bytes):
        raise CheckpointError("refusing a numpy scalar that is not (plain dtype, bytes)")
    real = dtype.to_numpy()
    if len(raw) != real.itemsize:
        raise CheckpointError(f"numpy scalar {real} carries {len(raw)} bytes, expected {real.itemsize}")
    return np.frombuffer(raw, real)[0]


def latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles store bytes; only the latin-1 round trip is accepted."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise CheckpointError(f"refusing _codecs.encode with encoding {encoding!r} (pickled bytes use latin1)")
    return text.encode("latin-1")


def empty_bytes(*args: Any) -> bytes:
    """``builtins.bytes``: protocol-2 pickles write ``bytes()`` for b'' (e.g. an empty array's data)."""
    if args:
        raise CheckpointError("refusing builtins.bytes with arguments (only b'' is pickled that way)")
    return b""


NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): NdarrayName,
    ("numpy", "dtype"): PickledDtype,
    ("numpy.core.multiarray", "_reconstruct"): reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("_codecs", "encode"): latin1_encode,
    ("builtins", "bytes"): empty_bytes,
}
