import torch
from torch import nn

from prunewise import measure


def test_macs_and_params_of_a_hand_counted_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    x = torch.zeros(3, 3, 10, 10)
    assert measure.macs(net, x) == 8 * 100 * 27 + 8 * 100 * 9 + 8 * 5
    assert measure.params(net) == 8 * 27 + 16 + (8 * 9 + 8) + (40 + 5)


def test_sparsity_counts_zeros():
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.zero_()
        net[1].weight.fill_(1.0)
    s = measure.sparsity(net)
    assert s["per_layer"]["0.weight"] == 1.0 and s["per_layer"]["1.weight"] == 0.0
    assert abs(s["global"] - 16 / 24) < 1e-12
    assert measure.params(net, nonzero=True) == 8


def test_latency_is_positive_and_model_mode_restored():
    net = nn.Sequential(nn.Linear(16, 16), nn.Dropout())
    net.train()
    ms = measure.latency_ms(net, torch.zeros(1, 16), warmup=1, repeats=3)
    assert ms > 0 and net.training


def test_paired_latency_alternates_the_two_models_in_one_window():
    """The passes alternate (a load that comes and goes reaches both), the ratio is the median
    of the per-pair ratios, and its spread brackets it."""
    from torch import nn

    from prunewise import measure

    calls = []

    class Tagged(nn.Module):
        def __init__(self, tag, width):
            super().__init__()
            self.tag, self.fc = tag, nn.Linear(256, width)

        def forward(self, x):
            calls.append(self.tag)
            return self.fc(x)
    small, big = Tagged("a", 8), Tagged("b", 4096)
    got = measure.paired_latency(small, big, torch.randn(64, 256), warmup=1, repeats=9)
    assert calls == ["a", "b"] * 10
    lo, hi = got["spread"]
    assert lo <= got["ratio"] <= hi and got["ratio"] > 1   # the big layer is the slower
    assert got["first"] > 0 and got["second"] > 0
