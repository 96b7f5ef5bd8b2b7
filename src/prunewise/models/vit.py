"""A small Vision Transformer for 32x32 inputs (``vit_tiny``), written from standard layers.

Patches of 4x4 pixels (a strided conv) -> a class token and a learned position embedding ->
``depth`` pre-norm blocks of multi-head self-attention and a GELU MLP -> LayerNorm -> the
class token's logits. The attention projects queries, keys and values with three separate
linear layers and reads its head count from ``num_heads`` in ``forward``, so structured pruning
can remove whole heads (:mod:`prunewise.layers`) and the pruned model still runs and saves. At
another input size the position embedding is resized bilinearly (the token grid changes).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register


class Attention(nn.Module):
    """Multi-head self-attention from three linear projections and an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        inner = heads * self.head_dim
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5, dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32,
                 patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 hidden: int = 128):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.grid = image_size // patch
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _position(self, tokens: int) -> torch.Tensor:
        if tokens == self.pos.shape[1] - 1:
            return self.pos
        side = int(math.isqrt(tokens))
        grid = self.pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        return torch.cat([self.pos[:, :1], grid.flatten(2).transpose(1, 2)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self._position(x.shape[1])
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register("vit_tiny", 32)
def vit_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ViT for 32x32 images: 4x4 patches, width 64, 4 blocks of 4 heads, MLP 128 (0.14 M params)."""
    return ViT(num_classes, in_channels)
