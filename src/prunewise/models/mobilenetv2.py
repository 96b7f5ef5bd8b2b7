"""MobileNetV2 (Sandler et al. 2018): ImageNet ``mobilenetv2_imagenet`` and CIFAR ``mobilenetv2``.

Inverted residual blocks: [1x1 expand conv-BN-ReLU6] -> 3x3 depthwise conv-BN-ReLU6 -> 1x1
linear projection conv-BN; identity residual (plain ``+``) when stride is 1 and the channel
count is unchanged. Stem 3x3 conv (32 ch), final 1x1 conv to 1280, global average pool,
dropout and Linear(1280, classes).

The CIFAR variant (as in common CIFAR code bases) uses stride 1 in the stem and in the 24-channel
stage, so 32x32 inputs are downsampled only 8x (32 -> 16 -> 8 -> 4).
"""
from __future__ import annotations

import torch
from torch import nn

from ..schema import MAX_WIDTH_MULT
from .registry import check_number, init_weights, register

# expansion t, output channels c, repeats n, stride s (ImageNet strides)
CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
       (6, 160, 3, 2), (6, 320, 1, 1)]


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _cbr(cin, hidden, 1)
        layers += _cbr(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 cifar: bool = False, dropout: float = 0.2):
        super().__init__()
        width_mult = check_number("width_mult", width_mult, 0.0, MAX_WIDTH_MULT, low_open=True)
        dropout = check_number("dropout", dropout, 0.0, 1.0)
        c = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [nn.Sequential(*_cbr(in_channels, c, 3, 1 if cifar else 2))]
        for i, (t, ch, n, s) in enumerate(CFG):
            if cifar and i == 1:
                s = 1
            out = _make_divisible(ch * width_mult)
            for j in range(n):
                layers.append(InvertedResidual(c, out, s if j == 0 else 1, t))
                c = out
        layers.append(nn.Sequential(*_cbr(c, last, 1)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("mobilenetv2", 32)
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                dropout: float = 0.2) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult, cifar=True, dropout=dropout)


@register("mobilenetv2_imagenet", 224)
def mobilenetv2_imagenet(num_classes: int = 1000, in_channels: int = 3,
                         width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult, cifar=False, dropout=dropout)
