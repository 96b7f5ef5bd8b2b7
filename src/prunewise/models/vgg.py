"""VGG-16-BN for CIFAR as in the HRank / CHIP code bases.

13 conv3x3 layers (cfg below) each followed by BN + ReLU, 4 max pools, a global average pool
(``AdaptiveAvgPool2d(1)``; the same as their ``AvgPool2d(2)`` at 32x32, and it also works at
16x16), then Linear(512, 512) + BatchNorm1d + ReLU + Linear(512, classes).
The convs keep their bias (``bias=True``, as in HRank's ``vgg_16_bn``); this gives
14.99M params (HRank reports 14.98M) and 313.46M conv+linear MACs at 32x32.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import init_weights, register

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG(nn.Module):
    def __init__(self, cfg=CFG, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=True), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("vgg16_bn", 32)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG(CFG, num_classes, in_channels)
