"""GoogLeNet for CIFAR (the widely used variant also used by HRank / CHIP).

3x3 stem (192 ch) + BN + ReLU, Inception a3, b3, max pool, a4..e4, max pool, a5, b5, global
average pool, Linear(1024, classes). Each Inception module has four branches (1x1; 1x1 -> 3x3;
1x1 -> 3x3 -> 3x3 standing in for 5x5; 3x3 max pool -> 1x1), every conv followed by BN + ReLU,
joined with ``torch.cat``. Convs keep their bias, as in that code.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import init_weights, register


def _cbr(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    def __init__(self, in_planes, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes):
        super().__init__()
        self.branch1x1 = nn.Sequential(*_cbr(in_planes, n1x1, 1))
        self.branch3x3 = nn.Sequential(*_cbr(in_planes, n3x3red, 1), *_cbr(n3x3red, n3x3, 3))
        self.branch5x5 = nn.Sequential(*_cbr(in_planes, n5x5red, 1), *_cbr(n5x5red, n5x5, 3),
                                       *_cbr(n5x5, n5x5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(in_planes, pool_planes, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x),
                          self.branch_pool(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.pre_layers = nn.Sequential(*_cbr(in_channels, 192, 3))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool1 = nn.MaxPool2d(3, 2, 1)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool2 = nn.MaxPool2d(3, 2, 1)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b3(self.a3(self.pre_layers(x)))
        x = self.maxpool1(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool2(x)
        x = self.b5(self.a5(x))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register("googlenet", 32)
def googlenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return GoogLeNet(num_classes, in_channels)
