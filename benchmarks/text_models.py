"""Two text classifiers of "a user's own", for ``benchmarks/text_cli.py`` (``--model
benchmarks/text_models.py:lstm`` or ``:transformer``): token ids (batch x 32, vocabulary 100)
-> 4 classes. Plain PyTorch, nothing from prunewise."""
import torch
from torch import nn

VOCAB, CLASSES, LENGTH = 100, 4, 32


class LSTMClassifier(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        return self.fc(out.mean(1))


class TransformerClassifier(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, ids):
        return self.fc(self.encoder(self.embed(ids) + self.pos).mean(1))


def lstm():
    return LSTMClassifier()


def transformer():
    return TransformerClassifier()
