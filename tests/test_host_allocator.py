"""The CLI's host allocator setting: large CPU tensors come from the heap (no mmap + page faults per forward pass),
only in a process started as ``yolo-prune``, never over the user's own allocator choice."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from yolo_prune.host_allocator import OPT_OUT, keep_freed_memory, mmapped_bytes

# a 64 MiB tensor: above glibc's dynamic mmap threshold (32 MiB at most), so by default it is mmap-served
PROBE = ("import torch; from yolo_prune.host_allocator import mmapped_bytes; before = mmapped_bytes(); "
         "t = torch.empty(16 << 20); print(mmapped_bytes() - before)")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD", OPT_OUT)}
    return env


def _mmapped_by_probe(prefix: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", prefix + PROBE], capture_output=True, text=True, check=True,
                         env=env or _clean_env())
    return int(out.stdout.strip().splitlines()[-1])


needs_glibc = pytest.mark.skipif(mmapped_bytes() is None, reason="glibc >= 2.33 only (mallinfo2)")


@needs_glibc
def test_large_tensor_mmapped_by_default_and_from_the_heap_once_applied():
    assert _mmapped_by_probe("") >= 64 << 20
    prefix = "from yolo_prune.host_allocator import keep_freed_memory; assert keep_freed_memory().applied; "
    assert _mmapped_by_probe(prefix) < 1 << 20


@needs_glibc
def test_cli_process_applies_it_in_process_calls_do_not():
    """``main()`` with the command line's arguments applies it; ``main([...])`` (tests, notebooks) leaves the
    embedding process alone."""
    as_process = ("import sys; sys.argv = ['yolo-prune', 'info', '--cfg', 'yolov7-tiny', '--json']; "
                  "from yolo_prune.cli import main; assert main() == 0; ")
    assert _mmapped_by_probe(as_process) < 1 << 20
    embedded = "from yolo_prune.cli import main; assert main(['info', '--cfg', 'yolov7-tiny', '--json']) == 0; "
    assert _mmapped_by_probe(embedded) >= 64 << 20


@needs_glibc
def test_user_choice_and_opt_out_leave_the_allocator_alone():
    env = {**_clean_env(), "MALLOC_MMAP_THRESHOLD_": "131072"}
    prefix = "from yolo_prune.host_allocator import keep_freed_memory; print(keep_freed_memory()); "
    assert _mmapped_by_probe(prefix, env) >= 64 << 20
    setting = keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not setting.applied and "MALLOC_MMAP_THRESHOLD_" in setting.reason
    setting = keep_freed_memory({OPT_OUT: "0"})
    assert not setting.applied and OPT_OUT in setting.reason
