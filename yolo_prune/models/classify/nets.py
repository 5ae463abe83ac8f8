"""The network bodies. torchvision's own classes and blocks are used, so at ``width=1`` and ``in_ch=3`` the
modules, names and shapes equal ``torchvision.models.vgg16_bn/resnet18/resnet50(num_classes=nc)`` (a user's
torchvision weights file loads 1:1); ``width`` scales every layer's channels for small experiments and tests.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import VGG, cfgs

VGG16 = cfgs["D"]  # [64, 64, 'M', 128, ...]: torchvision's configuration "D" = VGG-16


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming (fan_out) convs, BN 1/0, Linear N(0, 0.01) / 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


class _ScaledVGG(VGG):
    """torchvision's VGG (its ``forward``) with scaled widths and ``in_ch`` input channels."""

    def __init__(self, nc: int, in_ch: int, width: float, dropout: float = 0.5) -> None:
        nn.Module.__init__(self)
        layers: list[nn.Module] = []
        c = in_ch
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = scaled(int(v), width)
            layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        hidden = scaled(4096, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout), nn.Linear(hidden, nc))
        _init_like_torchvision(self)


class _ScaledResNet(ResNet):
    """torchvision's ResNet (its ``_make_layer`` and ``forward``) with scaled widths and ``in_ch`` inputs."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], nc: int, in_ch: int,
                 width: float) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = scaled(64, width), 1, 1, 64
        self.conv1 = nn.Conv2d(in_ch, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, scaled(64, width), layers[0])
        self.layer2 = self._make_layer(block, scaled(128, width), layers[1], stride=2)
        self.layer3 = self._make_layer(block, scaled(256, width), layers[2], stride=2)
        self.layer4 = self._make_layer(block, scaled(512, width), layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(scaled(512, width) * block.expansion, nc)
        for m in self.modules():  # torchvision's ResNet initialisation (its Linear keeps PyTorch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class SCNNB(nn.Module):
    """Shallow CNN with batch normalisation in the style of SCNNB (Lei et al., 2019): two 3x3 conv-BN-ReLU-maxpool
    stages (32, 64 filters) and a 1280-unit fully connected layer with dropout. Input [B, in_ch, S, S], S % 4 == 0.
    """

    def __init__(self, nc: int, in_ch: int, img_size: int, width: float, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(1280, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2))
        side = img_size // 4
        self.classifier = nn.Sequential(nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(p=dropout), nn.Linear(hidden, nc))
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16_bn(nc: int, in_ch: int, img_size: int, width: float) -> nn.Module:
    return _ScaledVGG(nc, in_ch, width)


def resnet18(nc: int, in_ch: int, img_size: int, width: float) -> nn.Module:
    return _ScaledResNet(BasicBlock, [2, 2, 2, 2], nc, in_ch, width)


def resnet50(nc: int, in_ch: int, img_size: int, width: float) -> nn.Module:
    return _ScaledResNet(Bottleneck, [3, 4, 6, 3], nc, in_ch, width)


def scnnb(nc: int, in_ch: int, img_size: int, width: float) -> nn.Module:
    return SCNNB(nc, in_ch, img_size, width)
