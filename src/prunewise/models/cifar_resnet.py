"""CIFAR ResNets (He et al. 2016, section 4.2) as used by HRank / CHIP: resnet20/32/56/110.

3x3 stem (16 ch) + BN + ReLU, three stages of n = (depth - 2) / 6 BasicBlocks with 16/32/64
channels (stride 2 at the start of stages 2 and 3), global average pool, Linear(64, classes).
Shortcuts are the parameter-free "option A": subsample and zero-pad channels (``PadShortcut``).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import init_weights, register


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample ``x[:, :, ::stride, ::stride]`` and zero-pad channels.

    Output channel ``k`` is input channel ``index[k]``, or zero where ``index[k] == -1``;
    initially ``(out - in) / 2`` zero channels on each side (the HRank/CHIP layout). The
    explicit map lets :func:`customized_pruners` prune either side with Torch-Pruning and keep
    the block exact.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        pad = (out_channels - in_channels) // 2
        index = [k - pad if pad <= k < pad + in_channels else -1 for k in range(out_channels)]
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.in_channels = in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        zero = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        gather = torch.where(self.index < 0, self.in_channels, self.index)
        return torch.cat([x, zero], 1).index_select(1, gather)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.index.numel()}, stride={self.stride}"


def customized_pruners() -> dict:
    """``{PadShortcut: pruner}`` for ``torch_pruning`` (``customized_pruners=`` argument of
    ``tp.DependencyGraph().build_dependency`` or of a ``tp.pruner`` class), so the residual trunk
    of a CIFAR ResNet can be pruned structurally, not only the inner conv of each block."""
    import torch_pruning as tp

    class PadShortcutPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = (PadShortcut,)

        def prune_out_channels(self, layer, idxs):
            drop = set(int(i) for i in idxs)
            keep = [k for k in range(layer.index.numel()) if k not in drop]
            layer.index = layer.index[keep]
            return layer

        def prune_in_channels(self, layer, idxs):
            drop = torch.tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
            shift = torch.searchsorted(drop, layer.index)  # dropped input channels below each
            dropped = torch.isin(layer.index, drop)
            layer.index = torch.where(dropped | (layer.index < 0), -1, layer.index - shift)
            layer.in_channels -= len(drop)
            return layer

        def get_out_channels(self, layer):
            return layer.index.numel()

        def get_in_channels(self, layer):
            return layer.in_channels

    return {PadShortcut: PadShortcutPruner()}


def layer_norm(channels: int) -> nn.Module:
    """A LayerNorm over (channels, height, width) with a per-channel affine: ``GroupNorm`` with
    one group, so any channel count (a pruned one too) is valid."""
    return nn.GroupNorm(1, channels)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 norm=nn.BatchNorm2d):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.norm = norm
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = norm(16)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 16
        self.layer1 = self._stage(16, n, 1)
        self.layer2 = self._stage(32, n, 2)
        self.layer3 = self._stage(64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, self.norm))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnet20", 32)
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register("resnet20_ln", 32)
def resnet20_ln(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """resnet20 with a LayerNorm (one-group GroupNorm) in place of every BatchNorm: a network
    that BatchNorm recalibration cannot help after pruning."""
    return CifarResNet(20, num_classes, in_channels, norm=layer_norm)


@register("resnet32", 32)
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels)


@register("resnet56", 32)
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@register("resnet110", 32)
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels)
