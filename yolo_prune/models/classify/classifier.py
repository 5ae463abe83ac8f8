"""``Classifier``: a classification network with the spec that rebuilds it (arch, classes, input, width).

Input: float [B, in_ch, S, S] (0..1, normalised by the data pipeline); output: logits [B, nc] in train and eval
mode. Pruned networks rebuild from the spec plus the tensor shapes of their state dict (:func:`conform_to_state`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError
from yolo_prune.models.classify import nets

ARCHS: dict[str, Callable[[int, int, int, float], nn.Module]] = {
    "scnnb": nets.scnnb,
    "vgg16_bn": nets.vgg16_bn,
    "resnet18": nets.resnet18,
    "resnet50": nets.resnet50,
}


def is_arch(name: object) -> bool:
    """Whether ``name`` names a classification architecture (``scnnb``, ``vgg16_bn``, ``resnet18``, ``resnet50``)."""
    return isinstance(name, str) and name in ARCHS


@dataclass(frozen=True)
class ArchSpec:
    """What builds a classifier: architecture name, classes, input channels, input size, width multiplier."""

    arch: str
    nc: int = 10
    in_ch: int = 3
    img_size: int = 32
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown classification arch {self.arch!r}; known: {', '.join(ARCHS)}")
        for name, minimum in (("nc", 2), ("in_ch", 1), ("img_size", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{self.arch}: {name} must be an integer >= {minimum}, got {value!r}")
        if self.arch == "scnnb" and self.img_size % 4:
            raise ConfigError(f"scnnb: img_size must be a multiple of 4 (two 2x2 max-pools), got {self.img_size}")
        if not isinstance(self.width, (int, float)) or not 0 < float(self.width) <= 4:
            raise ConfigError(f"{self.arch}: width must be a number in (0, 4], got {self.width!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "arch" not in known:
            raise ConfigError(f"classifier spec lacks 'arch': {dict(d)!r}")
        return cls(**known)


class Classifier(nn.Module):
    """``net`` (torchvision-style module tree) plus ``spec`` and class ``names``; forward returns logits."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = ARCHS[spec.arch](spec.nc, spec.in_ch, spec.img_size, float(spec.width))
        self.names = [str(i) for i in range(spec.nc)]

    @property
    def nc(self) -> int:
        return self.spec.nc

    @property
    def ch_in(self) -> int:
        return self.spec.in_ch

    @property
    def img_size(self) -> int:
        """The input size the network is built for (SCNNB's flatten size depends on it)."""
        return self.spec.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def conv_modules(self) -> list[nn.Conv2d]:
        """Every Conv2d in module order."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def widths(self) -> list[int]:
        """Output channels of every Conv2d in module order (what pruning changes)."""
        return [m.out_channels for m in self.conv_modules()]


def build_classifier(spec: ArchSpec | str, **kwargs: Any) -> Classifier:
    """A randomly initialised classifier (torchvision's initialisation); nothing is downloaded."""
    return Classifier(spec if isinstance(spec, ArchSpec) else ArchSpec(spec, **kwargs))


def _resized(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A fresh module like ``module`` whose weight has ``shape`` (only channel/feature counts may differ)."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape[1] * module.groups, shape[0], module.kernel_size, module.stride, module.padding,
                         module.dilation, module.groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], module.bias is not None)
    raise ConfigError(f"cannot resize {type(module).__name__}")


def conform_to_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Resize Conv2d/BatchNorm2d/Linear modules of ``model`` (in place) to the shapes in ``state`` (a pruned
    network's state dict), so a strict load can follow. Kernel sizes never change here: a mismatch is left for
    the strict loader to report."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            continue
        key = f"{name}.weight" if module.weight is not None else f"{name}.running_mean"
        if key not in state or tuple(state[key].shape) == tuple(getattr(module, key.rsplit(".", 1)[1]).shape):
            continue
        shape = tuple(state[key].shape)
        if isinstance(module, nn.Conv2d) and shape[2:] != tuple(module.weight.shape[2:]):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, _resized(module, shape))
    return model
