"""DataLoader factory: worker processes, YOLO collate, and reproducible order/augmentation per (seed, epoch).

Determinism does not depend on ``workers``: sample ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)`` (see :class:`YoloDataset`), and the shuffle order is a pure function of ``(seed, e)``.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .dataset import YoloDataset, collate_fn


class SeededSampler(Sampler[int]):
    """Indices ``0..n-1`` in order, or permuted by a generator seeded with ``(seed, epoch)`` when shuffling."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation is produced next."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class EpochDataLoader(DataLoader):
    """DataLoader that passes its epoch to the dataset and sampler before each pass, then advances it.

    Workers are (re)started per pass, so they see the epoch; call :meth:`set_epoch` to jump to an epoch
    (e.g. when resuming training).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass reproduce epoch ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return super().__iter__()


def seed_worker(worker_id: int) -> None:
    """Seed a worker's global Python/NumPy RNGs from torch's per-worker seed (for any third-party code)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(
    image_paths: Sequence[str], nc: int, img_size: int, batch_size: int, *,
    augment: bool = False, hyp: Optional[Mapping[str, Any]] = None, rect: bool = False, workers: int = 2,
    shuffle: bool = False, seed: int = 0, distributed_sampler: Optional[Sampler[int]] = None,
    stride: int = 32, pad: float = 0.5, pin_memory: Optional[bool] = None, cache_images: bool = False,
) -> tuple[EpochDataLoader, YoloDataset]:
    """Build a :class:`YoloDataset` and a loader yielding ``(imgs uint8 [B,3,H,W], labels [N,6], paths, shapes)``.

    ``rect`` forces ``shuffle=False`` (batch shapes follow the sorted order). ``distributed_sampler`` replaces
    the built-in sampler. ``pin_memory`` defaults to CUDA availability. ``cache_images`` decodes and resizes every
    image once, up front, and keeps it in RAM (worker processes share it; see :meth:`YoloDataset.cache_images`).
    """
    dataset = YoloDataset(image_paths, nc, img_size, batch_size, augment, hyp, rect, stride, pad, seed=seed)
    if cache_images:
        dataset.cache_images()
    if rect and shuffle:
        warnings.warn("rect=True is incompatible with shuffle; using shuffle=False", stacklevel=2)
        shuffle = False
    sampler = distributed_sampler if distributed_sampler is not None else SeededSampler(len(dataset), shuffle, seed)
    loader = EpochDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=seed_worker if workers > 0 else None, generator=torch.Generator().manual_seed(seed),
    )
    return loader, dataset
