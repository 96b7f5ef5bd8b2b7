"""Allocation from measured layer errors (``--allocation errors``): the dynamic programme
against brute force, the exact budget, no layer emptied, the measured table itself, and
end-to-end runs of a scorer and a solver."""
import itertools

import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, masking, runs
from prunewise import data as D
from prunewise.unstructured import layer_errors


def interpolated(curve, k):
    for (k0, e0), (k1, e1) in zip(curve, curve[1:]):
        if k0 <= k <= k1:
            return e0 + (e1 - e0) * (k - k0) / (k1 - k0)
    return curve[-1][1]


TABLE = {"a": [(1, 1.0), (4, 0.5), (8, 0.3), (20, 0.0)],
         "b": [(1, 0.9), (3, 0.2), (6, 0.05), (10, 0.0)],
         "c": [(1, 2.0), (2, 1.0), (5, 0.8), (30, 0.0)]}
LIMITS = {"a": 20, "b": 10, "c": 30}


@pytest.mark.parametrize("kept", [3, 5, 9, 14, 22, 37, 60])
def test_counts_meet_the_budget_and_beat_every_combination_of_measured_points(kept):
    got = layer_errors.counts(TABLE, LIMITS, kept)
    assert sum(got.values()) == kept
    assert all(1 <= got[n] <= LIMITS[n] for n in TABLE)
    total = sum(interpolated(TABLE[n], got[n]) for n in TABLE)
    brute = min(sum(e for _, e in combo) for combo in itertools.product(*TABLE.values())
                if sum(k for k, _ in combo) <= kept)
    assert total <= brute + 1e-12


def test_counts_respect_what_is_left_unpruned_and_never_empty_a_layer():
    limits = {"a": 5, "b": 10, "c": 2}
    got = layer_errors.counts(TABLE, limits, 12)
    assert sum(got.values()) == 12 and got["c"] <= 2 and min(got.values()) >= 1
    assert layer_errors.counts(TABLE, LIMITS, 3) == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(PrunewiseError, match="without emptying a layer"):
        layer_errors.counts(TABLE, LIMITS, 2)
    with pytest.raises(PrunewiseError, match="only 60 are left"):
        layer_errors.counts(TABLE, LIMITS, 61)


def test_a_large_budget_uses_the_grid_and_still_lands_exactly():
    table = {f"t{i}": [(1, 1.0), (500 * (i + 1), 0.5 / (i + 1)), (20_000, 0.0)]
             for i in range(6)}
    limits = {n: 20_000 for n in table}
    for kept in (6, 4_001, 33_333, 119_999):
        got = layer_errors.counts(table, limits, kept)
        assert sum(got.values()) == kept and min(got.values()) >= 1


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_measured_table_starts_at_no_error_and_grows_as_weights_go(digits):
    model = small_cnn().eval()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
             if n.endswith("weight")}
    data = list(D.batches(digits.train, digits, 64, limit=128))
    table = layer_errors.measure(model, masks, data)
    assert list(table) == list(masks)
    for n, points in table.items():
        ks = [k for k, _ in points]
        assert ks == sorted(set(ks)) and ks[-1] == masks[n].numel()
        assert ks[0] == (2 if n == "2.weight" else 1)   # one weight per conv group
        assert points[-1][1] < 1e-6 < points[len(points) // 2][1] < points[0][1]
    # scaled to the network's output: pruning the last layer (which writes the output) to the
    # point nearest the target costs what the table says, measured at the output
    near = layer_errors._nearest([k for k, _ in table["6.weight"]], 0.1 * 2560)
    from prunewise.unstructured.sparsegpt import prune_matrix
    from prunewise.unstructured.posttrain import gram
    x = torch.cat([b[0] for b in data]).float()
    with torch.no_grad():
        inp = model[:6](x)
        H = gram(model[6], inp)[0]
        new, _ = prune_matrix(model[6].weight, H, 2560 - near, damp=0.01)
        out, cut = model(x), torch.nn.functional.linear(inp, new, model[6].bias)
    want = float((cut - out).square().sum() / out.square().sum())
    assert dict(table["6.weight"])[near] == pytest.approx(want, rel=1e-3)


def test_errors_allocation_end_to_end_for_a_scorer_and_a_solver(digits):
    model = small_cnn()
    x = next(iter(D.batches(digits.train, digits, 128)))[0]
    plans = {}
    for method in ("magnitude", "exactobs"):
        for allocation in ("uniform", "errors"):
            s = runs.Unstructured(0.8, samples=128, track_accuracy=False, allocation=allocation)
            plans[method, allocation] = runs.prune_masks(model, digits, method, s)
    for (method, allocation), plan in plans.items():
        assert abs(plan.sparsity - 0.8) < 1e-4
        assert all(int(m.sum()) >= 1 for m in plan.masks.values())
        if allocation == "errors":
            assert plan.meta["settings"]["allocation"] == "errors"
            assert len(set(round(v, 3) for v in plan.per_layer().values())) > 1   # not uniform
    # the same measured counts whatever ranks the weights inside a layer
    assert plans["magnitude", "errors"].per_layer() == plans["exactobs", "errors"].per_layer()
    with torch.no_grad():
        dense = model(x)
        err = {k: float((p.apply(model)(x) - dense).norm()) for k, p in plans.items()}
    assert err["exactobs", "errors"] < err["exactobs", "uniform"]


def test_errors_allocation_needs_data_and_the_table():
    with pytest.raises(PrunewiseError, match="calibration data"):
        layer_errors.measure(nn.Linear(3, 2), {"weight": torch.ones(2, 3, dtype=torch.bool)},
                             None)
    with pytest.raises(PrunewiseError, match="layer_errors.measure"):
        masking.LoopSettings(0.5, allocation="errors")
    with pytest.raises(PrunewiseError, match="measured layer errors"):
        masking.allocate("errors", {"w": torch.ones(3, dtype=torch.bool)}, 2)


def test_loop_repair_scores_a_repaired_copy(digits):
    """``loop_repair``: the working copy is refit after every iteration, so magnitude's second
    iteration ranks repaired weights (other masks than one shot), and the plan records it."""
    model = small_cnn()
    plain = runs.prune_masks(model, digits, "magnitude", runs.Unstructured(
        0.8, keep=0.4, samples=128, track_accuracy=False))
    fixed = runs.prune_masks(model, digits, "magnitude", runs.Unstructured(
        0.8, keep=0.4, samples=128, track_accuracy=False, loop_repair=True))
    assert fixed.meta["settings"]["repair"] == {"samples": 256}
    assert "repair" not in plain.meta["settings"]
    assert abs(fixed.sparsity - plain.sparsity) < 1e-9
    assert any(not torch.equal(plain.masks[n], fixed.masks[n]) for n in plain.masks)
    with pytest.raises(PrunewiseError, match="attribution data"):
        masking.run(model, None, lambda *a: ({}, {}), masking.LoopSettings(0.5, repair=True),
                    method="x", needs_data=False)


def test_a_budget_that_would_empty_a_layer_is_refused_before_any_work(digits):
    model = small_cnn()
    total = sum(p.numel() for n, p in model.named_parameters() if n in ("2.weight", "6.weight"))
    sparsity = 1 - 1.5 / total    # one weight left for two tensors
    calls = []

    def measure(*a):
        calls.append(a)
        raise AssertionError("measured")

    loop = masking.LoopSettings(sparsity, allocation="errors", errors=measure, progress=False)
    with pytest.raises(PrunewiseError, match="without emptying a layer"):
        masking.run(model, list(D.batches(digits.train, digits, 32, limit=32)),
                    lambda *a: ({}, {}), loop, method="magnitude")
    assert not calls
