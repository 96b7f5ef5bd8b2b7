"""Latency budgets (``--latency F``): the search over the method's MACs budget against measured
latency, what the plan and the report record, and budgets no model can meet. Timing itself is
replaced by a model of it here (a test must not depend on the machine's load); the real
measurement is ``measure.paired_latency`` (tests/test_measure.py)."""
import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, measure, runs, train


@pytest.fixture(scope="module")
def trained_tiny(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    train.fit(model, digits, epochs=1, lr=0.1, seed=0, progress=False)
    return model


def fake_timing(monkeypatch, power=0.5, floor=0.0):
    """Pruned / dense time = floor + (1 - floor) * (pruned MACs / dense MACs) ** power."""
    calls = []

    def paired(first, second, x, warmup=0, repeats=1):
        r = measure.macs(second, x[:1]) / measure.macs(first, x[:1])
        ratio = floor + (1 - floor) * r ** power
        calls.append(int(x.shape[0]) if isinstance(x, torch.Tensor) else None)
        return {"first": 1.0, "second": ratio, "ratio": ratio, "spread": [ratio, ratio]}
    monkeypatch.setattr(measure, "paired_latency", paired)
    return calls


@pytest.mark.parametrize("method", ["l1", "sliming"])
def test_the_search_finds_the_largest_macs_budget_that_meets_the_latency(trained_tiny, digits,
                                                                         monkeypatch, method):
    calls = fake_timing(monkeypatch)
    x = digits.example()
    small, plan = runs.channel_plan(trained_tiny, x, method,
                                    runs.Structured(latency=0.7, latency_batch=16))
    ratio = (measure.macs(small, x) / measure.macs(trained_tiny, x)) ** 0.5
    assert ratio <= 0.7 and ratio > 0.62          # close under the budget (0.7^2 = 0.49 MACs)
    assert set(calls) == {16}                      # timed at the budget's batch size
    assert plan.meta["budget"]["latency"] == 0.7 and plan.meta["budget"]["latency_batch"] == 16
    assert len(plan.meta["latency_search"]) <= runs.LATENCY_STEPS
    fitting = [t["macs"] for t in plan.meta["latency_search"] if t["ratio"] <= 0.7]
    assert plan.meta["budget"]["macs_searched"] == max(fitting)


def test_a_latency_run_reports_what_was_asked_and_measured(trained_tiny, digits, monkeypatch):
    fake_timing(monkeypatch)
    _, _, rep = runs.run_structured(trained_tiny, digits, "l1", runs.Structured(
        latency=0.8, latency_batch=4), measurement=runs.Measurement(latency=False))
    got = rep["latency_budget"]
    assert got["requested"] == 0.8 and got["batch"] == 4 and got["measured"] <= 0.8
    assert rep["budget"] == {"macs": None, "params": None, "latency": 0.8}


def test_a_latency_no_model_meets_is_one_error(trained_tiny, digits, monkeypatch):
    fake_timing(monkeypatch, floor=0.9)            # nine tenths of the time does not shrink
    with pytest.raises(PrunewiseError, match="latency budget 0.5 at batch 64 cannot be reached"):
        runs.channel_plan(trained_tiny, digits.example(), "l1", runs.Structured(latency=0.5))
    with pytest.raises(PrunewiseError, match="exactly one budget"):
        runs.Structured(latency=0.5, macs=0.5)
    with pytest.raises(PrunewiseError, match="latency"):
        runs.Structured(latency=1.5)
