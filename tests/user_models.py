"""Networks a user brings (none is in the zoo): what prunewise must handle beyond plain CNNs.

Every factory takes no argument and returns a small model in eval mode; ``INPUTS[name]()`` is a
batch of example inputs for it (images, a waveform or token ids) and ``CLASSES`` their labels.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = 5


class SE(nn.Module):
    """Squeeze-excitation: channel gates from the pooled map."""

    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class OddCNN(nn.Module):
    """Grouped and dilated convs, squeeze-excitation, GroupNorm with several groups."""

    def __init__(self, in_channels: int = 3, num_classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, 16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False)
        self.gn2 = nn.GroupNorm(4, 32)
        self.dilated = nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False)
        self.gn3 = nn.GroupNorm(8, 32)
        self.se = SE(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.gn1(self.stem(x)))
        x = F.relu(self.gn2(self.grouped(x)))
        x = F.relu(self.gn3(self.dilated(x)))
        x = self.se(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AudioNet(nn.Module):
    """Conv1d over a waveform, with an InstanceNorm after the first conv."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.c1 = nn.Conv1d(1, 16, 9, stride=2, padding=4)
        self.b1 = nn.InstanceNorm1d(16, affine=True)
        self.c2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.b2 = nn.BatchNorm1d(32)
        self.c3 = nn.Conv1d(32, 32, 3, padding=1)
        self.b3 = nn.BatchNorm1d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean(-1))


class MHABlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MHAViT(nn.Module):
    """A ViT on nn.MultiheadAttention, with a cls token and a learned position embedding."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, depth: int = 2,
                 heads: int = 4, num_classes: int = CLASSES):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[MHABlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))


class QKVAttention(nn.Module):
    """Hand-written attention from three linear layers (num_heads is read in forward)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, -1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class QKVBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), QKVAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class QKVViT(MHAViT):
    """The same ViT with hand-written q/k/v attention."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, **kw):
        super().__init__(dim=dim, depth=depth, heads=heads, **kw)
        self.blocks = nn.Sequential(*[QKVBlock(dim, heads) for _ in range(depth)])


class EncoderText(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoder -> mean -> classes."""

    def __init__(self, vocab: int = 50, dim: int = 32, num_classes: int = CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, ids):
        return self.fc(self.encoder(self.embed(ids)).mean(1))


class LSTMText(nn.Module):
    """Token ids -> embedding -> LSTM -> last state -> classes."""

    def __init__(self, vocab: int = 50, dim: int = 32, hidden: int = 48,
                 num_classes: int = CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.fc(out[:, -1])


def hf_bert():
    """A tiny HuggingFace BERT classifier built from a config (no hub)."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=CLASSES)
    return BertForSequenceClassification(cfg)


def hf_vit():
    """A tiny HuggingFace ViT classifier built from a config (no hub)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    num_labels=CLASSES)
    return ViTForImageClassification(cfg)


FACTORIES = {"odd_cnn": OddCNN, "audio": AudioNet, "mha_vit": MHAViT, "qkv_vit": QKVViT,
             "encoder_text": EncoderText, "lstm_text": LSTMText, "hf_bert": hf_bert,
             "hf_vit": hf_vit}
HF = ("hf_bert", "hf_vit")


def _images(n=8):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _tokens(n=8):
    return torch.randint(0, 50, (n, 12), generator=torch.Generator().manual_seed(0))


INPUTS = {"odd_cnn": _images, "audio": lambda n=8: torch.randn(
              n, 1, 256, generator=torch.Generator().manual_seed(0)),
          "mha_vit": _images, "qkv_vit": _images, "encoder_text": _tokens,
          "lstm_text": _tokens, "hf_bert": _tokens, "hf_vit": _images}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FACTORIES[name]().eval()
