"""DenseNet-40 for CIFAR (Huang et al. 2017; the HRank / CHIP variant).

Growth rate 12, 3 dense blocks of 12 BN-ReLU-Conv3x3 layers (no bottleneck), transitions
BN-ReLU-Conv1x1-AvgPool2d(2) without compression, 24-channel 3x3 stem, final BN-ReLU, global
average pool and Linear(456, classes). Each dense layer concatenates its output to its input
with ``torch.cat`` along channels.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import init_weights, register


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < 2:
                stages.append(Transition(c, c))
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("densenet40", 32)
def densenet40(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DenseNet(40, 12, num_classes, in_channels)
