"""Channel counts from measured group errors (structured ``allocation="errors"``): the cut
simulated on the model is the surgery's model, the measured curves, the budget and floors, the
choice against brute force, and end-to-end runs with two selections."""
import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, runs, structured
from prunewise import data as D
from prunewise.structured import group_errors


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 16), nn.ReLU(),
                        nn.Linear(16, 10))
    with torch.no_grad():   # BatchNorm with statistics and shifts of its own
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_zeroing_a_groups_channels_is_what_the_surgery_cuts(which):
    """Every layer that reads the group sees zeros where the surgery leaves nothing, BatchNorm
    shifts and a flattened linear reader included: the outputs agree."""
    net = small_net()
    a = structured.analyze(copy.deepcopy(net), X)
    g = a.prunable[which]
    kept = torch.tensor([0, 2, 3, 5])
    gone = torch.ones(g.size, dtype=torch.bool)
    gone[kept] = False
    with torch.no_grad(), group_errors._cut(a.model, a.dg, g, gone, [], {}):
        simulated = a.model(X)
    counts = np.array([len(kept) if h.name == g.name else h.size for h in a.prunable])
    small, _ = structured.prune(net, X, lambda _: counts, lambda _a, _g, k: kept)
    with torch.no_grad():
        assert torch.allclose(simulated, small(X), atol=1e-5)
        assert torch.equal(a.model(X), net(X))   # everything restored


def test_measured_curves_start_at_no_error_and_leave_the_model_as_it_was():
    net = small_net()
    a = structured.analyze(copy.deepcopy(net), X)
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    data = [(X, torch.zeros(6, dtype=torch.long))]
    table = group_errors.measure(a, lambda a_, g, k: torch.arange(k), data)
    assert len(table) == len(a.prunable)
    for g, points in zip(a.prunable, table):
        ks = [k for k, _ in points]
        assert ks == sorted(set(ks), reverse=True) and ks[0] == g.size and ks[-1] == 1
        assert points[0][1] == 0.0 and all(e > 0 for _, e in points[1:])
    assert all(torch.equal(before[k], v) for k, v in a.model.state_dict().items())


def test_the_reader_refit_repairs_the_readers_output():
    """With the reader refit the layer after the cut reproduces its dense output better than
    with the dropped inputs merely gone."""
    net = small_net()
    a = structured.analyze(copy.deepcopy(net), X)
    g = next(h for h in a.prunable if h.name == "0")
    readers = group_errors._readers(a.model, a.dg, g)
    assert [n for n, *_ in readers] == ["3"]
    grams = group_errors._grams(a.model, readers, [X])
    gone = torch.zeros(g.size, dtype=torch.bool)
    gone[:4] = True
    reader = a.model[3]
    with torch.no_grad():
        inp = a.model[:3](X)
        dense = reader(inp)
        with group_errors._cut(a.model, a.dg, g, gone, [], {}):
            plain = reader(a.model[:3](X))
        with group_errors._cut(a.model, a.dg, g, gone, readers, grams):
            fixed = reader(a.model[:3](X))
    assert (fixed - dense).norm() < 0.9 * (plain - dense).norm()


TABLE = [[(8, 0.0), (6, 0.05), (4, 0.2), (2, 0.9), (1, 2.0)],
         [(12, 0.0), (9, 0.01), (6, 0.02), (3, 0.5), (1, 1.0)],
         [(16, 0.0), (12, 0.3), (8, 0.6), (4, 1.2), (1, 3.0)]]


def cost(counts):   # not additive: the middle group is read by both its neighbours
    c = np.asarray(counts, dtype=float)
    return 9 * c[0] + c[0] * c[1] + c[1] * c[2] + 2 * c[2]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.9])
def test_the_choice_meets_the_budget_and_is_near_the_best_measured_combination(fraction):
    full = cost([8, 12, 16])
    limit = fraction * full
    got = group_errors.choose(TABLE, cost, limit)
    assert cost(got) <= limit
    assert all(1 <= k <= c[0][0] for k, c in zip(got, TABLE))
    total = sum(group_errors._error(c, k) for c, k in zip(TABLE, got))
    brute = min(sum(e for _, e in combo) for combo in itertools.product(*TABLE)
                if cost([k for k, _ in combo]) <= limit)
    assert total <= brute + 0.05
    # nothing more fits: no group can take one more channel within the budget
    for g in range(3):
        up = got.copy()
        up[g] += 1
        assert up[g] > TABLE[g][0][0] or cost(up) > limit


def test_the_choice_keeps_steps_and_refuses_a_budget_below_the_floors():
    table = [[(8, 0.0), (4, 0.5), (2, 1.0)], [(12, 0.0), (6, 0.2), (3, 0.9)]]
    def two(c):
        return 5.0 * c[0] + c[0] * c[1]

    for limit in (60, 75, 90, 110):
        got = group_errors.choose(table, two, limit, steps=[2, 3])
        assert two(got) <= limit and got[0] % 2 == 0 and got[1] % 3 == 0
    with pytest.raises(PrunewiseError, match="below what the floors allow"):
        group_errors.choose(table, lambda c: float(np.sum(c)), 4.0, what="macs budget 0.01")


def test_errors_allocation_end_to_end_with_two_selections(digits):
    net = small_net()
    x = next(iter(D.batches(digits.train, digits, 64)))[0][:, :, :8, :8]
    data = [(x, torch.zeros(len(x), dtype=torch.long))]
    for method in ("l1", "chip"):
        own, own_plan = runs.channel_plan(net, x, method, runs.Structured(macs=0.5),
                                          batches=data)
        small, plan = runs.channel_plan(net, x, method,
                                        runs.Structured(macs=0.5, allocation="errors"),
                                        batches=data)
        assert plan.meta["allocation"] == "errors" and "allocation" not in own_plan.meta
        assert plan.meta["predicted_macs"] <= 0.5 * plan.meta["original_macs"]
        assert plan.meta["predicted_macs"] > 0.4 * plan.meta["original_macs"]
        assert plan.counts != own_plan.counts
        assert small(x).shape == (len(x), 10)


def test_errors_allocation_needs_data_and_a_budget():
    net = small_net()
    with pytest.raises(PrunewiseError, match="calibration data"):
        runs.channel_plan(net, X, "l1", runs.Structured(macs=0.5, allocation="errors"))
    with pytest.raises(PrunewiseError, match="replaces the allocation"):
        runs.Structured(plan="somewhere", allocation="errors")
    with pytest.raises(PrunewiseError, match="allocation"):
        runs.Structured(macs=0.5, allocation="global")


def test_the_command_line_takes_errors_for_channels_and_refuses_mask_allocations(
        digits_checkpoint, tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import assert_bad_input, invoke

    out = tmp_path / "s"
    r = invoke("prune", "sliming", digits_checkpoint, "--method", "l1", "--macs", "0.5",
               "--allocation", "errors", "--no-repair", "--latency-repeats", "0", "--quiet",
               "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["prune"]["allocation"] == "errors"
    assert json.loads((out / "plan" / "plan.json").read_text())["meta"]["allocation"] == "errors"
    r = invoke("prune", "sliming", digits_checkpoint, "--macs", "0.5", "--allocation", "lamp",
               "--out", tmp_path / "x")
    assert_bad_input(r, "--allocation lamp", "--allocation errors")


def test_a_budget_below_the_floors_is_refused_before_measuring(monkeypatch):
    net = small_net()
    measured = []
    monkeypatch.setattr(group_errors, "measure", lambda *a, **k: measured.append(1))
    with pytest.raises(PrunewiseError, match="below what the floors allow"):
        runs.channel_plan(net, X, "l1", runs.Structured(macs=0.01, allocation="errors",
                                                        min_channels=4),
                          batches=[(X, torch.zeros(6, dtype=torch.long))])
    assert measured == []


def test_a_cut_that_fails_half_way_leaves_the_model_as_it_was(monkeypatch):
    net = small_net()
    a = structured.analyze(copy.deepcopy(net), X)
    g = next(h for h in a.prunable if h.name == "0")
    readers = group_errors._readers(a.model, a.dg, g)
    grams = group_errors._grams(a.model, readers, [X])
    before = {k: v.clone() for k, v in a.model.state_dict().items()}

    def broken(*args, **kwargs):
        raise RuntimeError("refit failed")
    monkeypatch.setattr(group_errors._cut, "_refit", broken)
    gone = torch.zeros(g.size, dtype=torch.bool)
    gone[:3] = True
    with pytest.raises(RuntimeError, match="refit failed"):
        with group_errors._cut(a.model, a.dg, g, gone, readers, grams):
            pass
    assert all(torch.equal(before[k], v) for k, v in a.model.state_dict().items())
