"""Classification data without downloads: scikit-learn's bundled handwritten digits (the built-in default), a
user's ImageFolder tree, or CIFAR-10 / Fashion-MNIST files already on disk (torchvision, ``download=False``).

``--data`` forms: ``digits``; ``imagefolder:DIR`` or a ``DIR`` holding ``train/`` and ``val/`` class folders;
``cifar10:DIR`` (``DIR/cifar-10-batches-py``); ``fashion-mnist:DIR`` (``DIR/FashionMNIST/raw``). Every sample is
a float image [C, S, S] in 0..1 and an integer label. Loaders reuse the detection loaders' seeded sampler, so
the order of epoch ``e`` is a pure function of ``(seed, e)`` (what makes ``--resume`` exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from yolo_prune.errors import DataError

FORMS = "digits, imagefolder:DIR (or a DIR with train/ and val/), cifar10:DIR, fashion-mnist:DIR"


@dataclass(frozen=True)
class ClassificationData:
    """Train and val splits with what a model needs to match them."""

    train: Dataset
    val: Dataset
    nc: int
    names: list[str]
    in_ch: int
    img_size: int
    source: str


def digits(img_size: int = 32, val_fraction: float = 0.2) -> ClassificationData:
    """scikit-learn's 1,797 handwritten 8x8 digits (0..16 grey levels), scaled to 0..1 and resized (bilinear) to
    ``img_size``; a fixed stratified split (``random_state=0``) so every run validates on the same images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(range(len(labels)), test_size=val_fraction, random_state=0,
                                          stratify=bunch.target)
    split = [TensorDataset(images[i], labels[i]) for i in (torch.tensor(train_idx), torch.tensor(val_idx))]
    return ClassificationData(split[0], split[1], 10, [str(d) for d in range(10)], 1, img_size, "digits")


def _transform(img_size: int, native: int | None = None):
    from torchvision import transforms

    steps = [] if native == img_size else [transforms.Resize((img_size, img_size))]
    return transforms.Compose(steps + [transforms.ToTensor()])


def _image_folder(root: Path, img_size: int) -> ClassificationData:
    from torchvision.datasets import ImageFolder

    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"--data {root}: an ImageFolder dataset needs {root}/train/<class>/... and "
                        f"{root}/val/<class>/...; missing {', '.join(missing)}/")
    try:
        train, val = (ImageFolder(str(root / s), transform=_transform(img_size)) for s in ("train", "val"))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"--data {root}: {exc}") from None
    if train.classes != val.classes:
        raise DataError(f"--data {root}: train classes {train.classes} differ from val classes {val.classes}")
    return ClassificationData(train, val, len(train.classes), list(train.classes), 3, img_size, str(root))


def _torchvision_files(kind: str, root: Path, img_size: int) -> ClassificationData:
    """CIFAR-10 or Fashion-MNIST from files already under ``root`` (never downloaded)."""
    from torchvision import datasets

    cls, native, in_ch, expected = {"cifar10": (datasets.CIFAR10, 32, 3, "cifar-10-batches-py/"),
                                    "fashion-mnist": (datasets.FashionMNIST, 28, 1, "FashionMNIST/raw/")}[kind]
    try:
        train, val = (cls(str(root), train=t, download=False, transform=_transform(img_size, native))
                      for t in (True, False))
    except RuntimeError:
        raise DataError(f"--data {kind}:{root}: dataset files not found or corrupted; expected {root}/{expected} "
                        f"(nothing is downloaded: put the files there)") from None
    return ClassificationData(train, val, len(train.classes), list(train.classes), in_ch, img_size, f"{kind}:{root}")


def load_classification_data(data: str = "digits", img_size: int = 32) -> ClassificationData:
    """The dataset ``data`` names (see the module docstring), images resized to ``img_size``."""
    kind, sep, rest = str(data).partition(":")
    if data == "digits":
        return digits(img_size)
    if sep and kind in ("cifar10", "fashion-mnist"):
        return _torchvision_files(kind, Path(rest), img_size)
    if sep and kind == "imagefolder":
        return _image_folder(Path(rest), img_size)
    if Path(data).is_dir():
        return _image_folder(Path(data), img_size)
    raise DataError(f"--data {data}: not a known dataset or directory; expected one of: {FORMS}")


def data_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0) -> Any:
    """Batches ``(images [B, C, S, S] float, labels [B] long)``; shuffled per ``(seed, epoch)`` when asked."""
    from yolo_prune.data.loader import EpochDataLoader, SeededSampler, seed_worker

    return EpochDataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(len(dataset), shuffle, seed),
                           num_workers=workers, worker_init_fn=seed_worker if workers > 0 else None,
                           generator=torch.Generator().manual_seed(seed))
