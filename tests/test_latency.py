"""Latency budgets (``--latency F``): the device's latency table (build, interpolation,
prediction, cache keyed by device and model), the search that corrects the table's prediction by
measured latency, what the plan and the report record, and budgets no model can meet. The
clock is replaced by a model of it in the search tests (a test must not depend on the machine's
load); the table's own timing runs for real on a tiny model."""
import json

import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, measure, runs, train
from prunewise.structured import latency

REST = 0.0   # the fake clock: all time is in the conv / linear layers


@pytest.fixture(scope="module")
def trained_tiny(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    train.fit(model, digits, epochs=1, lr=0.1, seed=0, progress=False)
    return model


def layer_ms(model, x):
    """The fake clock: a conv / linear layer takes its MACs in microseconds."""
    rows = {r["name"]: r["macs"] for r in measure.layer_table(model, x)}
    return {n: rows.get(n, 0) * 1e-3 for n, m in model.named_modules()
            if isinstance(m, latency.TIMED)}


def fake_clock(monkeypatch, error: float = 1.0, fixed: float | None = None):
    """Tables built from the fake clock; measured ratios ``error`` times what it predicts (or
    always ``fixed``)."""
    def build(model, x, batch, names=None, **kw):
        t = latency.Table(key=latency.key_of(model, x, batch))
        full = layer_ms(model, x)
        for n, m in model.named_modules():
            if not isinstance(m, latency.TIMED):
                continue
            cin0 = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            cout0 = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            ins, outs = latency._grid(cin0, 1), latency._grid(cout0, 1)
            t.layers[n] = {"ins": ins, "outs": outs, "depthwise": False,
                           "ms": [[full[n] * ci * co / (cin0 * cout0) for co in outs]
                                  for ci in ins]}
        t.dense_ms = REST + sum(full.values())
        return t

    def paired(first, second, x, warmup=0, repeats=1):
        a = REST + sum(layer_ms(first, x[:1]).values())
        b = REST + sum(layer_ms(second, x[:1]).values())
        ratio = min(1.0, error * b / a) if fixed is None else fixed
        return {"first": a, "second": ratio * a, "ratio": ratio, "spread": [ratio, ratio]}
    monkeypatch.setattr(latency, "build", build)
    monkeypatch.setattr(measure, "paired_latency", paired)


@pytest.mark.parametrize("method", ["l1", "sliming"])
@pytest.mark.parametrize("error", [1.0, 1.25])
def test_the_search_meets_the_latency_and_corrects_the_table(trained_tiny, digits, monkeypatch,
                                                            tmp_path, method, error):
    """The configuration step searches under the table's predicted latency; when the machine
    runs 25% slower than the table predicts, measuring corrects the budget until it fits."""
    fake_clock(monkeypatch, error)
    x = digits.example()
    small, plan = runs.channel_plan(trained_tiny, x, method, runs.Structured(
        latency=0.6, latency_batch=16, latency_cache=str(tmp_path)))
    search = plan.meta["latency_search"]
    final = [t for t in search if t["ratio"] <= 0.6]
    assert final and max(t["ratio"] for t in final) >= 0.6 - 0.1
    assert len(search) <= runs.LATENCY_STEPS
    if error == 1.0:   # the prediction is the measurement (one prune, unless widths jump)
        assert search[0]["predicted"] == pytest.approx(search[0]["ratio"])
        assert len(search) == 1 or search[0]["ratio"] < 0.6 - runs.LATENCY_TOLERANCE
    else:
        assert len(search) > 1 and search[-1]["asked"] < 0.6
    assert plan.meta["budget"] == {"latency": 0.6, "latency_batch": 16}
    assert plan.meta["latency_table"]["reused"] is False


def test_a_latency_run_reports_and_a_second_run_reuses_the_table(trained_tiny, digits,
                                                                 monkeypatch, tmp_path):
    fake_clock(monkeypatch)
    settings = runs.Structured(latency=0.8, latency_batch=4, latency_cache=str(tmp_path))
    _, _, rep = runs.run_structured(trained_tiny, digits, "l1", settings,
                                    measurement=runs.Measurement(latency=False))
    got = rep["latency_budget"]
    assert got["requested"] == 0.8 and got["batch"] == 4 and got["measured"] <= 0.8
    assert got["table"]["reused"] is False and rep["budget"]["latency"] == 0.8
    saved = list(tmp_path.glob("latency-*.json"))
    assert len(saved) == 1
    _, plan = runs.channel_plan(trained_tiny, digits.example(), "l1", settings)
    assert plan.meta["latency_table"]["reused"] is True
    # a table of another batch size (or device, thread count, model) is never reused
    _, plan = runs.channel_plan(trained_tiny, digits.example(), "l1", runs.Structured(
        latency=0.8, latency_batch=8, latency_cache=str(tmp_path)))
    assert plan.meta["latency_table"]["reused"] is False
    # a table file whose key was changed is measured again, not trusted
    data = json.loads(saved[0].read_text())
    data["key"]["threads"] = 999
    saved[0].write_text(json.dumps(data))
    _, plan = runs.channel_plan(trained_tiny, digits.example(), "l1", settings)
    assert plan.meta["latency_table"]["reused"] is False


def test_a_latency_no_model_meets_is_one_error(trained_tiny, digits, monkeypatch, tmp_path):
    fake_clock(monkeypatch, fixed=0.9)    # nothing this machine runs gets faster than 0.9
    with pytest.raises(PrunewiseError, match="latency budget 0.5 at batch 64 cannot be reached"):
        runs.channel_plan(trained_tiny, digits.example(), "l1",
                          runs.Structured(latency=0.5, latency_cache=str(tmp_path)))
    with pytest.raises(PrunewiseError, match="exactly one budget"):
        runs.Structured(latency=0.5, macs=0.5)
    with pytest.raises(PrunewiseError, match="latency budget"):
        runs.Structured(latency=1.5)


def test_the_table_times_every_layer_on_its_grid_and_predicts_the_dense_time(tmp_path):
    """Real timing on a tiny model: every conv / linear layer on its grid of widths (whole
    groups of a grouped conv, a depthwise conv along its width only), and the prediction of the
    full widths is the dense model's measured time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 12, 1, groups=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(1, 3, 8, 8)
    table = latency.build(model, x, 4, warmup=1, repeats=2)
    assert set(table.layers) == {"0", "2", "3", "6"}
    assert table.layers["2"]["depthwise"] and len(table.layers["2"]["ins"]) == 1
    assert all(k % 2 == 0 for k in table.layers["3"]["ins"] + table.layers["3"]["outs"])
    assert table.layers["0"]["outs"][-1] == 8 and table.layers["6"]["ins"][-1] == 12
    assert all(v > 0 for r in table.layers.values() for row in r["ms"] for v in row)
    full = {n: (r["ins"][-1], r["outs"][-1]) for n, r in table.layers.items()}
    assert table.rest_ms + table.layers_ms(full) == pytest.approx(max(
        table.dense_ms, table.layers_ms(full)))
    got, reused = latency.cached(model, x, 4, tmp_path, warmup=1, repeats=2)
    assert not reused
    again, reused = latency.cached(model, x, 4, tmp_path)
    assert reused and again.layers == got.layers


def test_info_prints_the_latency_table(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import invoke

    monkeypatch.setenv("PRUNEWISE_CACHE", str(tmp_path))
    r = invoke("info", "resnet20", "--input-size", "8", "--in-channels", "1",
               "--latency-batch", "2", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["latency"]
    assert got["batch"] == 2 and got["dense_ms"] > 0 and not got["reused"]
    assert "conv1" in got["layers"] and len(list((tmp_path / "latency").glob("*.json"))) == 1
    r = invoke("info", "resnet20", "--input-size", "8", "--in-channels", "1",
               "--latency-batch", "2")
    assert r.returncode == 0 and "table reused" in r.stdout and "ms at full width" in r.stdout


def test_a_bench_grid_in_latency(tmp_path, monkeypatch, digits_checkpoint):
    """``bench --latency 0.8`` prunes every cell to measured latency (the tables kept in the
    grid's folder), and a grid in MACs is not mixed into it."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import assert_bad_input, invoke

    fake_clock(monkeypatch)
    bases = tmp_path / "bases"
    shutil.copytree(digits_checkpoint, bases / "seed-0")
    out = tmp_path / "grid"
    common = ["--methods", "l1", "--seeds", "0", "--base", bases, "--finetune-epochs", "0",
              "--no-repair", "--latency-repeats", "0", "--out", out]
    r = invoke("bench", "--latency", "0.8", "--latency-batch", "8", *common)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "settings.json").read_text())["latency_batch"] == 8
    cell = json.loads((out / "cells" / "l1-0.8-s0.json").read_text())
    assert cell["macs"]["ratio"] < 0.8
    assert list((out / "latency-tables").glob("latency-*.json"))
    assert "latency kept (batch 8)" in (out / "grid.md").read_text()
    assert_bad_input(invoke("bench", "--macs", "0.5", *common), "latency_batch")


def test_a_damaged_table_file_is_measured_again(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(1, 1, 8, 8)
    table, reused = latency.cached(model, x, 2, tmp_path, warmup=0, repeats=1)
    path = next(tmp_path.glob("latency-*.json"))
    bad_rows = {"0": {"ins": [1], "outs": [4], "ms": [["x"]], "depthwise": False}}
    for text in ("{broken", json.dumps({"format": 1, "key": table.key, "layers": 5}),
                 json.dumps({"format": 1, "key": table.key, "layers": bad_rows,
                             "dense_ms": 1.0})):
        path.write_text(text)
        again, reused = latency.cached(model, x, 2, tmp_path, warmup=0, repeats=1)
        assert not reused and set(again.layers) == {"0", "2"}
