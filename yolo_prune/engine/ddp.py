"""Distributed-training glue for the trainer: joining the process group, sharding the data, wrapping the model.

``torchrun --nproc_per_node N -m yolo_prune train ...`` sets WORLD_SIZE/RANK/LOCAL_RANK; the group is started
here (NCCL on CUDA, gloo on CPU) unless the caller already initialised one (tests use ``file://`` + gloo).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Sampler


@dataclass
class DistInfo:
    """This process's place in the job; ``owned``: we initialised the process group (and destroy it)."""

    rank: int = 0
    world: int = 1
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_distributed(device_text: str) -> tuple[DistInfo, torch.device]:
    """Join the process group (already initialised, or started here under torchrun: NCCL on CUDA, gloo on CPU)
    and pick this rank's device (``cuda:LOCAL_RANK`` when distributed on CUDA)."""
    import torch.distributed as dist

    from yolo_prune.pipeline.devices import select_device

    device = select_device(device_text)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:  # long timeout: other ranks wait in their next all-reduce while rank 0 evaluates and saves
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return DistInfo(dist.get_rank(), dist.get_world_size(), owned), device


class ShardSampler(Sampler[int]):
    """This rank's share of the ``(seed, epoch)`` permutation (the single-process order), padded by wrapping
    so every rank gets ``ceil(n / world)`` indices (equal batch counts keep DDP in step).

    The dataset size is set with :meth:`bind` once the dataset exists (unreadable images are dropped there).
    """

    def __init__(self, rank: int, world: int, seed: int) -> None:
        self.rank, self.world, self.seed, self.epoch, self.n = rank, world, seed, 0, 0

    def bind(self, n: int) -> None:
        self.n = int(n)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter(np.resize(order, len(self) * self.world)[self.rank::self.world].tolist())


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (SyncBatchNorm first with ``sync_bn`` on CUDA)."""
    if sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
        else:
            warnings.warn("--sync-bn needs CUDA; training with per-process BatchNorm", stacklevel=2)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def broadcast_path(path: Path | None, dist_info: DistInfo) -> Path:
    """Rank 0's run folder, on every rank."""
    if dist_info.world == 1:
        return Path(path)
    import torch.distributed as dist

    box = [str(path) if dist_info.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def broadcast_buffers(module: torch.nn.Module, names: tuple[str, ...], dist_info: DistInfo) -> None:
    """Rank 0's values of ``module``'s buffers ``names`` on every rank (in place)."""
    if dist_info.world == 1:
        return
    import torch.distributed as dist

    for name in names:
        dist.broadcast(getattr(module, name), src=0)


def stop_distributed(dist_info: DistInfo) -> None:
    """Destroy the process group if :func:`start_distributed` created it."""
    if dist_info.owned:
        import torch.distributed as dist

        dist.destroy_process_group()
