"""SLIMING: GEM selection (exact and fast), step (i) configuration and budgets, baselines,
bad input, and the `prunewise prune sliming` command."""
import json

import numpy as np
import pytest
import torch

from helpers import invoke, run
from prunewise import (PrunewiseError, checkpoints, data as D, measure, methods, models, runs,
                       sliming, toy)
from prunewise.plan import ChannelPlan
from prunewise.sliming import gem


def _duplicated(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(2 * n, generator=g)
    R = torch.cat([core, core])[perm]
    pair = torch.cat([torch.arange(n), torch.arange(n)])[perm]
    return R, pair


@pytest.mark.parametrize("n, exact", [(12, True), (40, False)])
def test_gem_keeps_exactly_one_of_each_duplicate_pair(n, exact):
    R, pair = _duplicated(n, 5 * n, seed=n)
    kept = (gem.greedy_exact if exact else gem.greedy_fast)(R, n)
    assert sorted(pair[kept].tolist()) == list(range(n))
    assert sorted(pair[sliming.select(R, n)].tolist()) == list(range(n))
    # a one-shot leave-one-out score rates both copies of a pair alike: it keeps pairs together
    assert len(set(pair[toy.one_shot(R, n)].tolist())) <= n // 2 + 1


def _redundant(C, D, seed):
    g = torch.Generator().manual_seed(seed)
    n = C * 2 // 3
    core = torch.randn(n, D, generator=g, dtype=torch.float64)
    red = core[torch.randint(n, (C - n,), generator=g)] + 0.1 * torch.randn(C - n, D, generator=g,
                                                                            dtype=torch.float64)
    return torch.cat([core, red])[torch.randperm(C, generator=g)]


@pytest.mark.parametrize("kind", ["random", "redundant", "scaled"])
@pytest.mark.parametrize("C, D, k", [(32, 288, 16), (48, 48, 24), (60, 200, 40)])
def test_fast_variant_within_one_percent_of_exact_greedy(kind, C, D, k):
    g = torch.Generator().manual_seed(C + D + k)
    if kind == "random":
        R = torch.randn(C, D, generator=g, dtype=torch.float64)
    elif kind == "scaled":
        R = torch.randn(C, D, generator=g, dtype=torch.float64) * 3 * torch.rand(C, 1, generator=g)
    else:
        R = _redundant(C, D, C + D)
    exact = gem.nuclear_norm(R[gem.greedy_exact(R, k)])
    fast = gem.nuclear_norm(R[gem.greedy_fast(R, k)])
    assert fast >= 0.99 * exact, (fast, exact)
    # and greedy beats a random subset of the same size
    rnd = gem.nuclear_norm(R[torch.randperm(C, generator=g)[:k]])
    assert exact > rnd


def test_select_contract_and_bad_k():
    R = torch.randn(10, 7)
    idx = sliming.select(R, 4)
    assert idx.dtype == torch.long and idx.shape == (4,) and len(set(idx.tolist())) == 4
    assert torch.equal(sliming.select(R, 10), torch.arange(10))
    for k in (0, 11, 2.5):
        with pytest.raises(PrunewiseError, match="k must be"):
            sliming.select(R, k)
    with pytest.raises(PrunewiseError, match="2-D"):
        sliming.select(torch.randn(3, 4, 5), 2)


def test_configuration_threshold_follows_the_spectra():
    # group 0 has 3 strong directions, group 1 only 1: a channel budget of 4 finds them
    s = [torch.tensor([5.0, 4.9, 4.8, 0.01, 0.01]), torch.tensor([2.0, 0.001, 0.001, 0.001])]
    counts = sliming.configure(s, lambda c: float(np.sum(c)), 4.0)
    assert counts.tolist() == [3, 1]
    counts = sliming.configure(s, lambda c: float(np.sum(c)), 4.0, normalize="sum")
    assert counts.sum() == 4
    with pytest.raises(PrunewiseError, match="floor"):
        sliming.configure(s, lambda c: float(np.sum(c)), 5.0, min_channels=3)
    with pytest.raises(PrunewiseError, match="normalize"):
        sliming.configure(s, lambda c: float(np.sum(c)), 4.0, normalize="l2")


X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("kwargs, words", [
    ({"macs": 1.5}, "(0, 1)"), ({"macs": 0.0}, "(0, 1)"), ({"params": -0.2}, "(0, 1)"),
    ({}, "exactly one"), ({"macs": 0.5, "params": 0.5}, "exactly one"),
    ({"macs": 0.5, "min_channels": 16}, "floor"), ({"macs": 0.5, "min_channels": 0}, "min_channels"),
    ({"macs": 0.5, "normalize": "l2"}, "normalize"), ({"channels": 10_000}, "channels"),
])
def test_bad_budgets_are_errors(kwargs, words):
    with pytest.raises(PrunewiseError) as e:
        sliming.prune(models.create("resnet20"), X, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_channel_budget_min_channels_and_ignored_layers():
    model = models.create("resnet20")
    pruned, plan = sliming.prune(model, X, channels=100, min_channels=4,
                                 ignored_layers=[model.layer3[0].conv1])
    assert sum(plan.counts.values()) == 100
    assert min(plan.counts.values()) >= 4
    assert "layer3.0.conv1" not in plan.counts and pruned.layer3[0].conv1.out_channels == 64
    assert plan.meta["groups"]["skipped"]["layer3.0.conv1"].startswith("ignored")


def test_sliming_keeps_duplicated_filters_once_in_a_real_model():
    # duplicate half of a layer's filters: rank 32, so step (i) keeps <= 32 and GEM one per pair
    model = models.create("vgg16_bn")
    conv = model.features[3]
    with torch.no_grad():
        conv.weight[32:] = conv.weight[:32]
    pruned, plan = sliming.prune(model, X, macs=0.5)
    kept = plan.keep["features.3"]
    assert 1 <= kept.numel() <= 32
    assert len({int(i) % 32 for i in kept}) == kept.numel()


@pytest.mark.parametrize("method", methods.names("structured"))
def test_baselines_meet_the_same_macs_budget(method, digits):
    model = models.create("resnet20", num_classes=10, in_channels=1)
    x = torch.zeros(1, 1, 16, 16)
    batches = D.batches(digits.train, digits, 32)
    pruned, plan = runs.channel_plan(model, x, method, runs.Structured(macs=0.5),
                                     batches=batches, seed=1)
    ratio = measure.macs(pruned, x) / measure.macs(model, x)
    assert 0.49 <= ratio <= 0.5, ratio
    assert plan.meta.get("method") == method
    assert pruned(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_chip_without_data_is_an_error():
    with pytest.raises(PrunewiseError, match="batches"):
        runs.channel_plan(models.create("resnet20"), X, "chip", runs.Structured(macs=0.5))


# ------------------------------------------------------------------ the command
def test_cli_prune_sliming_writes_model_report_and_plot(digits_checkpoint, tmp_path):
    out = tmp_path / "run"
    r = invoke("prune", "sliming", str(digits_checkpoint), "--macs", "0.5", "--finetune-epochs",
               "1", "--latency-repeats", "0", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "layer1.0.conv1" in r.stdout                      # the per-layer table
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "sliming" and 0.49 <= rep["macs"]["ratio"] <= 0.5
    for stage in ("dense", "pruned", "finetuned"):
        assert 0 <= rep["accuracy"][stage]["test"] <= 1
    assert rep["params"]["pruned"] < rep["params"]["dense"]
    assert (out / "spectra.png").stat().st_size > 1000
    model = checkpoints.load_model(out / "model")
    assert measure.macs(model, torch.zeros(1, 1, 16, 16)) == rep["macs"]["pruned"]
    assert ChannelPlan.load(out / "plan").counts == rep["counts"]


@pytest.mark.parametrize("args, words", [
    (["--macs", "1.5"], ["1.5", "0 < x < 1"]),
    (["--macs", "0.5", "--min-channels", "16"], ["floor", "min_channels=16"]),
    (["--macs", "0.5", "--params", "0.5"], ["exactly one"]),
])
def test_cli_bad_input_is_exit_2_one_line(digits_checkpoint, tmp_path, args, words):
    r = run("prune", "sliming", str(digits_checkpoint), *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_cli_saved_plan_reapplies_and_rejects_another_architecture(digits_checkpoint, tmp_path):
    first = tmp_path / "first"
    fast = ("--quiet", "--latency-repeats", "0")
    assert invoke("prune", "sliming", str(digits_checkpoint), "--macs", "0.4", *fast,
                  "--out", str(first)).returncode == 0
    again = tmp_path / "again"
    r = invoke("prune", "sliming", str(digits_checkpoint), "--plan", str(first / "plan"), *fast,
               "--out", str(again))
    assert r.returncode == 0, r.stderr
    a = json.loads((first / "report.json").read_text())
    b = json.loads((again / "report.json").read_text())
    assert a["macs"] == b["macs"] and a["counts"] == b["counts"]
    assert a["accuracy"]["pruned"] == b["accuracy"]["pruned"]
    other = tmp_path / "r32"
    checkpoints.save_model(models.create("resnet32", num_classes=10, in_channels=1), other,
                     meta={"data": {"name": "digits", "root": None, "image_size": 16, "seed": 0}})
    r = invoke("prune", "sliming", str(other), "--plan", str(first / "plan"), "--out",
               str(tmp_path / "bad"))
    assert r.returncode == 2 and "different architecture" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
