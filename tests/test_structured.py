"""The structured engine: the one budget bisection, budgets, a custom (configure, select) pair,
SLIMING's min_ratio and round_to, and the baseline steps and aliases."""
import math

import numpy as np
import pytest
import torch

from prunewise import PrunewiseError, filters, measure, models, runs, sliming, structured

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ bisect
def test_bisect_finds_the_budget_on_an_increasing_cost():
    calls = []

    def fits(x):
        calls.append(x)
        return x * x <= 2.0
    got = structured.bisect(fits, good=0.0, bad=2.0, steps=60)
    assert got * got <= 2.0 and abs(got - math.sqrt(2)) < 1e-12
    assert len(calls) == 60


def test_bisect_finds_the_budget_on_a_decreasing_cost_and_stops_at_tol():
    # cost(t) = 10 / t falls as t grows: t >= 4 fits a budget of 2.5
    calls = []

    def fits(t):
        calls.append(t)
        return 10.0 / t <= 2.5
    got = structured.bisect(fits, good=100.0, bad=1e-3, steps=200, tol=1e-9)
    assert 10.0 / got <= 2.5 and abs(got - 4.0) < 1e-9
    assert len(calls) < 200                     # stopped by tol, not by the step count


def test_bisect_on_a_step_cost_returns_a_fitting_point():
    # integer counts, as the configuration steps see them: cost jumps at every 1/8
    sizes = np.array([8, 16])
    cost = lambda p: float(np.sum(np.floor(p * sizes + 0.5)))  # noqa: E731
    p = structured.bisect(lambda q: cost(q) <= 11, good=0.0, bad=1.0, steps=60)
    assert cost(p) == 11 and cost(p + 1e-9) > 11


def test_budget_cost_matches_the_cost_model():
    model = models.create("resnet20")
    a = sliming.analyze(model, X, spectra=False)
    assert a.R == {} and a.sigma == {}
    sizes = np.array([g.size for g in a.prunable])
    for kind, full in (("macs", a.cost.full_macs), ("params", a.cost.full_params)):
        cost, limit = structured.budget_cost(a.cost, kind, 0.5)
        assert limit == 0.5 * full and cost(sizes) == full
    cost, limit = structured.budget_cost(a.cost, "channels", 0.5, int(sizes.sum()))
    assert cost(sizes) == sizes.sum() and limit == 0.5 * sizes.sum()
    assert structured.budget_cost(a.cost, "channels", 100.0, int(sizes.sum()))[1] == 100.0
    with pytest.raises(PrunewiseError, match="exactly one"):
        structured.parse_budget(macs=0.5, channels=3, total_channels=10)


# ------------------------------------------------------------------ a custom method
def test_engine_runs_any_configure_select_pair():
    torch.manual_seed(0)
    model = models.create("resnet20").eval()
    dense_out = model(X)
    seen = []

    def configure(a):
        return np.array([g.size // 2 for g in a.prunable])

    def select(a, g, n):
        seen.append((g.name, n))
        return torch.arange(n)                  # keep the first half of every group

    pruned, plan = structured.prune(model, X, configure, select, meta={"method": "first-half"})
    assert plan.meta["method"] == "first-half" and plan.spectra == {}
    assert seen == [(k, plan.sizes[k] // 2) for k in plan.keep]
    assert all(torch.equal(v, torch.arange(plan.sizes[k] // 2)) for k, v in plan.keep.items())
    assert plan.meta["predicted_macs"] == measure.macs(pruned, X)
    assert plan.meta["predicted_params"] == measure.params(pruned)
    assert set(plan.meta["seconds"]) == {"spectra", "configuration", "selection", "surgery"}
    assert not pruned.training
    assert torch.equal(model(X), dense_out)    # the input model is untouched


def test_engine_does_not_call_select_for_a_full_group():
    model = models.create("resnet20")
    calls = []
    _, plan = structured.prune(model, X, lambda a: np.array([g.size for g in a.prunable]),
                               lambda a, g, n: calls.append(g.name))
    assert calls == [] and plan.counts == plan.sizes


# ------------------------------------------------------------------ SLIMING settings
def test_min_ratio_keeps_a_fraction_of_every_group():
    model = models.create("resnet20")
    _, plain = sliming.prune(model, X, macs=0.35)
    _, floored = sliming.prune(model, X, macs=0.35, min_ratio=0.3)
    floor = {k: math.ceil(0.3 * c) for k, c in floored.sizes.items()}
    # the threshold alone starves some group below the floor; min_ratio lifts it
    assert any(plain.counts[k] < floor[k] for k in floor)
    assert all(floored.counts[k] >= floor[k] for k in floor)
    assert floored.meta["min_ratio"] == 0.3
    assert floored.meta["predicted_macs"] <= 0.35 * floored.meta["original_macs"]


@pytest.mark.parametrize("macs", [0.35, 0.5])
def test_round_to_gives_multiples(macs):
    model = models.create("resnet20")
    _, plan = sliming.prune(model, X, macs=macs, round_to=8)
    for k, n in plan.counts.items():
        assert n % 8 == 0 or n == plan.sizes[k], (k, n, plan.sizes[k])
    assert plan.meta["predicted_macs"] <= macs * plan.meta["original_macs"]
    # 8 channels per group cost about 0.3 of resnet20's MACs: below that is an error
    with pytest.raises(PrunewiseError, match="round_to=8"):
        sliming.prune(model, X, macs=0.2, round_to=8)


def test_round_to_applies_to_the_floor_and_small_groups():
    s = [torch.linspace(1, 0.01, 20), torch.linspace(1, 0.01, 5), torch.linspace(1, 0.5, 40)]
    cost = lambda c: float(np.sum(c))  # noqa: E731
    counts = sliming.configure(s, cost, 30, round_to=8, min_ratio=0.1)
    assert counts[1] == 5                       # a group smaller than 8 is kept whole
    assert all(c % 8 == 0 for c in (counts[0], counts[2])) and cost(counts) <= 30
    with pytest.raises(PrunewiseError, match="round_to"):
        sliming.configure(s, cost, 30, round_to=0)


# ------------------------------------------------------------------ baselines and aliases
def test_uniform_counts_keep_one_fraction():
    a = sliming.analyze(models.create("vgg16_bn"), X)
    counts = filters.uniform_counts(a, macs=0.5)
    sizes = np.array([g.size for g in a.prunable])
    assert a.cost.macs(counts) <= 0.5 * a.cost.full_macs
    ratios = counts / sizes
    assert ratios.max() - ratios.min() <= 1.0 / sizes.min()   # one p, rounded per group
    with pytest.raises(PrunewiseError, match="floor"):
        filters.uniform_counts(a, macs=0.01, min_channels=64)


def test_random_step_is_seeded():
    model = models.create("resnet20")
    _, p1 = runs.channel_plan(model, X, "random", runs.Structured(macs=0.5), seed=3)
    _, p2 = runs.channel_plan(model, X, "random", runs.Structured(macs=0.5), seed=3)
    _, p3 = runs.channel_plan(model, X, "random", runs.Structured(macs=0.5), seed=4)
    assert all(torch.equal(p1.keep[k], p2.keep[k]) for k in p1.keep)
    assert any(not torch.equal(p1.keep[k], p3.keep[k]) for k in p1.keep)


