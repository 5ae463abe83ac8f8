"""torch.distributed glue for the analysis: who am I, and gather Python objects (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

from yolo_prune.analysis.sensitivity import Distributed


def from_environment(device_type: str = "cpu") -> Distributed:
    """A ``Distributed`` for this process: initialises the process group under torchrun, else single rank."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return process_group_info()


@contextmanager
def environment_group(device_type: str = "cpu") -> Iterator[Distributed]:
    """:func:`from_environment` for a with-block: a process group it initialises is destroyed at the end, as
    PyTorch asks (gloo's threads left to the interpreter's exit can abort it: pytorch/pytorch#190489)."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    info = from_environment(device_type)
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def process_group_info() -> Distributed:
    """A ``Distributed`` over the already initialised default process group."""
    import torch.distributed as dist

    def gather(obj: Any) -> list[Any]:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    return Distributed(dist.get_rank(), dist.get_world_size(), gather)
