"""The host allocator of a CPU run: keep freed activation memory for reuse instead of returning it to the kernel.

glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so every CPU forward pass of a large model at batch size > 1 page-faults its big activations in again: the
kernel zeroes each 4 KiB page before the first write. Measured here (2-core EPYC, 1 thread, 32 images at 256 px,
batch 8): a ``yolov7`` evaluation 6.0 -> 4.9-5.2 s; yolov7-tiny training at 256 px, batch 16 (tensors below 32 MiB)
unchanged. Results are unchanged (only where memory comes from moves). The CLI applies it once per process; a
notebook may call :func:`keep_freed_memory` itself. No effect on CUDA memory (PyTorch caches it already), and none
outside glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
LARGEST = (1 << 31) - 1  # mallopt takes an int: anything below 2 GiB comes from the heap and stays there once freed
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
OPT_OUT = "YOLO_PRUNE_KEEP_FREED_MEMORY"


@dataclass(frozen=True)
class AllocatorSetting:
    """What :func:`keep_freed_memory` did: ``applied``, else ``reason`` it left the allocator alone."""

    applied: bool
    reason: str = ""


def _libc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it (musl, macOS and Windows have no mallopt thresholds to set)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def keep_freed_memory(environ: dict[str, str] | None = None) -> AllocatorSetting:
    """Raise glibc's mmap and trim thresholds to their largest values (process-wide, inherited by forked data-loader
    workers). Left alone when the user chose an allocator setting (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``, a
    preloaded allocator such as jemalloc) or set ``YOLO_PRUNE_KEEP_FREED_MEMORY=0``. Cost: memory a run freed stays
    with the process (its peak, at most) until it exits."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return AllocatorSetting(False, f"{OPT_OUT}={env[OPT_OUT]}")
    chosen = [name for name in USER_SETTINGS if env.get(name)]
    if chosen:
        return AllocatorSetting(False, f"the allocator is the user's choice ({', '.join(chosen)} set)")
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return AllocatorSetting(False, "not glibc")
    ok = libc.mallopt(M_MMAP_THRESHOLD, LARGEST) == 1 and libc.mallopt(M_TRIM_THRESHOLD, LARGEST) == 1
    return AllocatorSetting(ok, "" if ok else "mallopt refused the thresholds")


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): where the heap's bytes are."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mmapped_bytes() -> int | None:
    """Bytes this process holds in mmap-served allocations (``mallinfo2().hblkhd``); None outside glibc >= 2.33."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)
