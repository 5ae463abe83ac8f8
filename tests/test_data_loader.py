"""create_dataloader: worker processes give the same batches as in-process loading; epochs and seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_prune.data import YoloDataset, create_dataloader


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Eight small images with one or two labelled boxes each."""
    root = tmp_path_factory.mktemp("loader")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        hw = (40 + 4 * i, 64 - 3 * i)
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines = ["0 0.5 0.5 0.4 0.4"] + (["1 0.25 0.25 0.2 0.3"] if i % 2 else [])
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
        out.append(str(root / "images" / f"{i}.png"))
    return out


def _epoch(loader) -> list[tuple]:
    """All batches of one pass as (images, labels, paths)."""
    return [(imgs, labels, paths) for imgs, labels, paths, _ in loader]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """True if two passes yielded identical batches."""
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))


def test_two_workers_match_in_process(paths: list[str]) -> None:
    kwargs = dict(augment=True, hyp={"degrees": 5.0, "mixup": 0.5}, shuffle=True, seed=3)
    loader0, _ = create_dataloader(paths, 2, 64, 3, workers=0, **kwargs)
    loader2, ds = create_dataloader(paths, 2, 64, 3, workers=2, **kwargs)
    assert isinstance(ds, YoloDataset) and loader2.num_workers == 2
    assert loader2.pin_memory == torch.cuda.is_available()
    first0, first2 = _epoch(loader0), _epoch(loader2)
    assert _same(first0, first2)
    imgs, labels, batch_paths = first0[0]
    assert imgs.shape == (3, 3, 64, 64) and imgs.dtype == torch.uint8 and labels.shape[1] == 6
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0, 2.0} and len(batch_paths) == 3
    second0, second2 = _epoch(loader0), _epoch(loader2)
    assert _same(second0, second2) and not _same(first0, second0)  # new epoch: new order/augmentation
    loader0.set_epoch(0)
    assert _same(_epoch(loader0), first0)


def test_rect_eval_loader(paths: list[str]) -> None:
    with pytest.warns(UserWarning, match="shuffle"):
        loader, ds = create_dataloader(paths, 2, 64, 4, rect=True, shuffle=True, workers=0)
    batches = list(loader)
    assert [tuple(b[0].shape[2:]) for b in batches] == [tuple(s) for s in ds.batch_shapes.tolist()]
    assert all(s is not None and len(s) == 2 for b in batches for s in b[3])


def test_distributed_sampler_is_used(paths: list[str]) -> None:
    sampler = torch.utils.data.distributed.DistributedSampler(list(range(8)), num_replicas=2, rank=1, shuffle=False)
    loader, _ = create_dataloader(paths, 2, 64, 2, workers=0, distributed_sampler=sampler)
    got = [p for batch in loader for p in batch[2]]
    assert got == [paths[i] for i in range(1, 8, 2)]
