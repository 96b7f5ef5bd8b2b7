"""Structured surgery: every zoo model pruned to 50% / 25% MACs, a hand-made model with a
residual add, a concat and a depthwise conv, the channel plan's save / load / apply, errors."""
import json

import pytest
import torch
from torch import nn

from prunewise import checkpoints, measure, models, PrunewiseError, sliming, surgery
from prunewise.plan import PLAN_JSON, ChannelPlan


def _input(name):
    size = 32 if models.input_size(name) <= 32 else 64   # ImageNet models at a reduced size
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", models.names())
def test_zoo_model_pruned_to_half_and_quarter_macs(name, tmp_path):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3).eval()
    x = _input(name)
    dense_macs, dense_out = measure.macs(model, x), model(x)
    widths = checkpoints.layer_widths(model)
    for budget in (0.5, 0.25):
        pruned, plan = sliming.prune(model, x, macs=budget)
        got = measure.macs(pruned, x)
        assert abs(got / dense_macs - budget) <= 0.02 * budget, (budget, got / dense_macs)
        assert got <= budget * dense_macs
        assert plan.meta["predicted_macs"] == got                      # exact cost model
        assert plan.meta["predicted_params"] == measure.params(pruned)
        pruned.eval()
        out = pruned(x)
        assert out.shape == (1, 10) and torch.isfinite(out).all()
        folder = checkpoints.save_model(pruned, tmp_path / f"m{budget}")
        again = checkpoints.load_model(folder).eval()
        assert torch.equal(again(x), out)
    # the input model is untouched
    assert checkpoints.layer_widths(model) == widths
    assert torch.equal(model(x), dense_out)


class Toy(nn.Module):
    """A user model with a residual add, a channel concat and a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                 nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.left = nn.Conv2d(16, 12, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 20, 1), nn.BatchNorm2d(20), nn.ReLU(),
                                   nn.Conv2d(20, 20, 3, padding=1, groups=20), nn.BatchNorm2d(20))
        self.mix = nn.Conv2d(32, 24, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = self.mix(x).mean((2, 3))
        return self.head(x)


def test_user_model_with_add_concat_depthwise(tmp_path):
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(2, 3, 12, 12)
    dense = measure.macs(model, x)
    pruned, plan = sliming.prune(model, x, macs=0.5)
    pruned.eval()
    got = measure.macs(pruned, x)
    assert abs(got / dense - 0.5) <= 0.01 and plan.meta["predicted_macs"] == got
    assert pruned(x).shape == (2, 5)
    assert pruned.head.out_features == 5                     # classifier outputs never pruned
    assert pruned.right[3].groups == pruned.right[3].out_channels   # still depthwise
    assert pruned.mix.in_channels == pruned.left.out_channels + pruned.right[3].out_channels
    assert pruned.res[3].out_channels == pruned.stem[0].out_channels   # residual add coupled
    # the plan alone, saved and loaded, rebuilds the same pruned model from the original
    plan.save(tmp_path / "plan")
    again = surgery.apply(model, ChannelPlan.load(tmp_path / "plan"), x).eval()
    assert torch.equal(again(x), pruned(x))


def test_cifar_resnet_prunes_inner_channels_and_reports_skipped():
    model = models.create("resnet20", num_classes=10, in_channels=3)
    pruned, plan = sliming.prune(model, torch.randn(1, 3, 32, 32), macs=0.5)
    g = plan.meta["groups"]
    assert all(n.endswith(".conv1") and n.startswith("layer") for n in g["prunable"])
    assert len(g["prunable"]) == 9
    assert any("zero-padding" in why for why in g["skipped"].values())
    assert "fc" in g["skipped"]
    assert pruned.layer1[0].conv2.out_channels == 16 and pruned.fc.out_features == 10


def test_plan_on_a_different_architecture_is_an_error(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    _, plan = sliming.prune(models.create("resnet20"), x, macs=0.5)
    plan.save(tmp_path / "p")
    with pytest.raises(PrunewiseError, match="different architecture"):
        surgery.apply(models.create("resnet32"), ChannelPlan.load(tmp_path / "p"), x)


def test_corrupt_or_missing_plan_is_an_error(tmp_path):
    with pytest.raises(PrunewiseError, match="not found"):
        ChannelPlan.load(tmp_path / "nope")
    x = torch.randn(1, 3, 32, 32)
    _, plan = sliming.prune(models.create("resnet20"), x, macs=0.5)
    folder = plan.save(tmp_path / "p")
    cfg = json.loads((folder / PLAN_JSON).read_text())
    (folder / PLAN_JSON).write_text(json.dumps({**cfg, "sizes": {**cfg["sizes"], "x": 3}}))
    with pytest.raises(PrunewiseError, match="corrupt channel plan"):
        ChannelPlan.load(folder)
    (folder / PLAN_JSON).write_text(json.dumps({**cfg, "kind": "masks"}))
    with pytest.raises(PrunewiseError, match="not a channel plan"):
        ChannelPlan.load(folder)


@pytest.mark.parametrize("keep, sizes, words", [
    ({"fc": torch.arange(5)}, {"fc": 10}, "cannot be pruned"),
    ({"nowhere": torch.arange(5)}, {"nowhere": 10}, "does not have"),
    ({"layer1.0.conv1": torch.arange(5)}, {"layer1.0.conv1": 12}, "has 12 channels"),
])
def test_plan_that_does_not_fit_the_model_is_an_error(keep, sizes, words):
    plan = ChannelPlan(keep=keep, sizes=sizes)
    with pytest.raises(PrunewiseError, match=words):
        surgery.apply(models.create("resnet20"), plan, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("kept", [[], [3, 3], [-1], [16]])
def test_bad_kept_channels_are_an_error(kept):
    model = models.create("resnet20")
    a = sliming.analyze(model, torch.randn(1, 3, 32, 32), spectra=False)
    with pytest.raises(PrunewiseError, match="bad kept channels"):
        surgery.make_plan(model, a.infos, {"layer1.0.conv1": torch.tensor(kept, dtype=torch.long)})


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.a(x).detach()           # breaks the autograd trace of layer 'a'
        return self.fc(self.b(x).mean((2, 3)))


class OwnWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = Scale()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.scale(self.conv(x)).mean((2, 3)))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x):
        return x * self.w


def test_a_module_with_its_own_parameter_is_pruned_with_its_channels():
    """A parameter outside any known layer (a per-channel scale) follows the channels it
    multiplies (Torch-Pruning's unwrapped parameters), and the smaller model runs."""
    torch.manual_seed(0)
    model = OwnWeight().eval()
    x = torch.randn(2, 3, 8, 8)
    new, plan = sliming.prune(model, x, channels=5)
    assert plan.counts == {"conv": 5}
    assert new.scale.w.shape == (1, 5, 1, 1)
    assert new(x).shape == (2, 2)


@pytest.mark.parametrize("model, layer", [(Detached(), "'a'")])
def test_untraceable_model_names_the_layer(model, layer):
    with pytest.raises(PrunewiseError, match=layer):
        sliming.prune(model, torch.randn(1, 3, 8, 8), macs=0.5)


def test_cost_model_params_budget():
    model = models.create("vgg16_bn")
    x = torch.randn(1, 3, 32, 32)
    pruned, plan = sliming.prune(model, x, params=0.3)
    ratio = measure.params(pruned) / measure.params(model)
    assert 0.3 * 0.98 <= ratio <= 0.3
