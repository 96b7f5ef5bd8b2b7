"""prunewise.runs: the one pruning run (prune -> measure -> recalibrate -> measure -> fine-tune
-> measure -> report) and train.recalibrate_bn, on tiny models."""
import copy

import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, measure, methods, models, report, runs, train
from prunewise.plan import MaskPlan

NO_LATENCY = runs.Measurement(latency=False)


def tiny(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(8)] if bn else []
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), *norm, nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), *([nn.BatchNorm2d(8)] if bn else []),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained_tiny(digits):
    torch.set_num_threads(1)
    model = tiny()
    train.fit(model, digits, epochs=4, lr=0.1, seed=0, progress=False)
    return model


def test_recalibration_restores_accuracy_lost_to_shifted_statistics(trained_tiny, digits):
    before = train.evaluate_split(trained_tiny, digits, "val")["top1"]
    shifted = copy.deepcopy(trained_tiny)
    for m in shifted.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean += 3.0
            m.running_var *= 20.0
    broken = train.evaluate_split(shifted, digits, "val")["top1"]
    assert broken < before - 0.2
    batches = runs.calibration_batches(digits, runs.Recalibration(samples=512), seed=0)
    train.recalibrate_bn(shifted, batches, samples=512)
    assert train.evaluate_split(shifted, digits, "val")["top1"] >= before - 0.03
    assert not shifted.training  # the mode is restored


def test_recalibration_leaves_a_model_without_batchnorm_bit_identical(digits):
    model = tiny(bn=False).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train.recalibrate_bn(model, runs.calibration_batches(digits, runs.Recalibration(), 0),
                               samples=64)
    assert out is model and model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unstructured_run_reports_every_stage_in_order(trained_tiny, digits, monkeypatch):
    calls = []
    real_recal, real_fit = train.recalibrate_bn, train.fit

    def recal(model, batches, **kw):
        calls.append("recalibrate")
        out = real_recal(model, batches, **kw)
        calls.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k})
        return out

    def fit(model, bundle, settings, **kw):
        stats = {k: v for k, v in model.state_dict().items() if "running" in k}
        assert all(torch.equal(stats[k], calls[-1][k]) for k in stats)  # starts recalibrated
        calls.append(("fit", settings.optimizer, settings.patience, kw["masks"] is not None))
        return real_fit(model, bundle, settings, **kw)

    monkeypatch.setattr(train, "recalibrate_bn", recal)
    monkeypatch.setattr(train, "fit", fit)
    pruned, plan, rep = runs.run_unstructured(
        trained_tiny, digits, "magnitude", runs.Unstructured(sparsity=0.7, keep=0.5),
        finetune=runs.FineTune(epochs=1, optimizer="adam", lr=1e-3, patience=3),
        measurement=runs.Measurement(repeats=1, warmup=1))
    assert calls[0] == "recalibrate" and calls[2] == ("fit", "adam", 3, True)
    acc = rep["accuracy"]
    assert set(acc) == set(runs.STAGES)
    assert acc["dense"] == runs.accuracy(trained_tiny, digits)
    assert acc["finetuned"] == runs.accuracy(pruned, digits)  # the model handed back
    assert rep["sparsity"] == plan.sparsity and abs(plan.sparsity - 0.7) < 1e-3
    assert rep["params"]["counted"] == "nonzero"
    assert rep["params"]["pruned"] == measure.params(pruned, nonzero=True)
    assert rep["macs"]["pruned"] == runs.nonzero_macs(pruned, digits.example())
    assert rep["macs"]["pruned"] < rep["macs"]["dense"]
    assert set(rep["latency_ms"]) == {"1", "64"} and rep["latency_ms"]["64"]["pruned"] > 0
    assert rep["config"]["finetune"]["optimizer"] == "adam"
    params = dict(pruned.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in plan.masks.items())
    report.validate({**rep, "versions": report.versions()})


def test_no_recalibration_and_no_finetune_leave_those_stages_null(trained_tiny, digits):
    pruned, _, rep = runs.run_unstructured(
        trained_tiny, digits, "random",
        runs.Unstructured(sparsity=0.5, keep=0.5, repair=runs.Repair(enabled=False)),
        recalibration=runs.Recalibration(enabled=False), measurement=NO_LATENCY)
    assert rep["accuracy"]["repaired"] is None
    assert rep["config"]["prune"]["repair"]["enabled"] is False
    assert rep["accuracy"]["recalibrated"] is None and rep["accuracy"]["finetuned"] is None
    assert rep["latency_ms"] is None
    dense_stats = {k: v for k, v in trained_tiny.state_dict().items() if "running" in k}
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in dense_stats.items())
    assert rep["accuracy"]["pruned"] == runs.accuracy(pruned, digits)


def test_patience_stops_when_validation_stops_improving(digits):
    model = tiny(bn=False)
    plan = MaskPlan({"2.weight": torch.ones(8, 8, 3, 3, dtype=torch.bool)}, method="magnitude")
    _, rep = runs.finish_masks(model, digits, plan, steps=runs.Steps(
        measurement=NO_LATENCY, finetune=runs.FineTune(epochs=30, lr=1e-9, patience=2)))
    # lr 1e-9 and no BatchNorm: validation accuracy never changes after epoch 1
    assert rep["finetune"]["best_epoch"] == 1 and rep["finetune"]["epochs_run"] == 3


def test_nonzero_macs_count_only_the_kept_weights():
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 25, 3))
    x = torch.zeros(1, 2, 5, 5)
    assert runs.nonzero_macs(conv, x) == measure.macs(conv, x)
    with torch.no_grad():
        conv[0].weight[:2] = 0  # half the filters
        conv[2].weight[:, :50] = 0  # half the linear inputs
    assert runs.nonzero_macs(conv, x) == measure.macs(conv, x) // 2


def test_structured_run_is_smaller_and_reports_speed(digits):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    pruned, plan, rep = runs.run_structured(
        model, digits, "l1", runs.Structured(macs=0.5),
        measurement=runs.Measurement(repeats=2, warmup=1))
    assert 0.45 <= rep["macs"]["ratio"] <= 0.5 and rep["macs"]["counted"] == "all"
    assert rep["macs"]["pruned"] == measure.macs(pruned, digits.example())
    assert rep["params"]["pruned"] == measure.params(pruned) < rep["params"]["dense"]
    assert 0.3 < rep["sparsity"] < 0.7
    # no fine-tuning: repaired by default (and so not recalibrated), and the report says so
    assert rep["accuracy"]["repaired"] == runs.accuracy(pruned, digits)
    assert rep["accuracy"]["recalibrated"] is None
    assert rep["config"]["prune"]["repair"]["enabled"] is True
    assert rep["latency_ms"]["64"]["speedup"] > 0 and rep["counts"] == plan.counts
    report.validate({**rep, "versions": report.versions()})


def test_loop_recalibration_follows_the_table_and_the_settings(trained_tiny, digits):
    """The method table's default (fvw: on, magnitude: off) unless the settings say otherwise;
    what ran is recorded in the plan."""
    def ran(method, **kw):
        plan = runs.prune_masks(trained_tiny, digits, method,
                                runs.Unstructured(sparsity=0.5, keep=0.5, samples=64, **kw))
        return "recalibrate" in plan.meta["settings"]
    assert methods.get("fvw", "unstructured").loop_recalibrate and ran("fvw")
    assert not methods.get("magnitude", "unstructured").loop_recalibrate
    assert not ran("magnitude") and ran("magnitude", loop_recalibrate=True)
    assert not ran("fvw", loop_recalibrate=False)


@pytest.mark.parametrize("method, make, word", [
    ("lottery", lambda: runs.Unstructured(sparsity=0.5), "lottery"),
    ("magnitude", lambda: runs.Unstructured(sparsity=0.5, options=methods.FVWSettings()),
     "NoSettings"),
    ("fvw", lambda: runs.Unstructured(sparsity=0.5, options=methods.FVWSettings(alpha=0.0)),
     "alpha"),
    ("fvw", lambda: runs.Unstructured(sparsity=1.0), "sparsity"),
    ("fvw", lambda: runs.Unstructured(sparsity=0.5, samples=0), "samples"),
    ("fvw", lambda: runs.Unstructured(sparsity=0.5, recalibrate_samples=0), "recalibration"),
])
def test_bad_unstructured_settings(method, make, word):
    """Settings are checked once, when built; the method and its options together by
    check_unstructured."""
    with pytest.raises(PrunewiseError, match=word):
        runs.check_unstructured(method, make())


@pytest.mark.parametrize("make, word", [
    (lambda: runs.Structured(), "exactly one"),
    (lambda: runs.Structured(macs=0.5, params=0.5), "exactly one"),
    (lambda: runs.Structured(macs=1.5), "0 < x < 1"),
    (lambda: runs.Structured(macs=0.5, plan="p"), "plan"),
    (lambda: methods.SlimingSettings(normalize="l2"), "normalization"),
])
def test_bad_structured_settings(make, word):
    with pytest.raises(PrunewiseError, match=word):
        make()


@pytest.mark.parametrize("make, word", [(lambda: runs.FineTune(epochs=-1), "epochs"),
                                        (lambda: runs.FineTune(optimizer="lbfgs"), "lbfgs"),
                                        (lambda: runs.FineTune(lr=0.0), "learning rate"),
                                        (lambda: runs.Recalibration(samples=0), "samples"),
                                        (lambda: runs.Measurement(repeats=0), "repeats")])
def test_bad_step_settings(make, word):
    with pytest.raises(PrunewiseError, match=word):
        make()


ADDED_STAGE = """
import json, sys, torch
from torch import nn
import prunewise.stages as st

def run_check(work):          # one function ...
    return {"zeros": int(sum(int((p == 0).sum()) for p in work.pruned.parameters()))}

st.TABLE = st.TABLE + (st.Stage("checked", "checked", "check", run_check, record="check"),)
st.STAGES, st.STAGE_TITLES = st.names(st.TABLE)   # ... and one row
from prunewise import data as D, report, runs
torch.manual_seed(0)
x, y = torch.randn(64, 4), torch.arange(64) % 2
bundle = D.from_tensors((x, y), (x[:16], y[:16]))
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
_, plan, rep = runs.run_unstructured(model, bundle, "magnitude", runs.Unstructured(0.5),
                                     measurement=runs.Measurement(latency=False))
written = report.write(sys.argv[1], rep, kind=rep["kind"])
print(json.dumps({"scores": list(rep["scores"]), "check": rep["check"],
                  "seconds": list(rep["stage_seconds"])}))
"""


def test_a_stage_added_to_the_table_runs_and_is_reported(tmp_path):
    """docs/architecture.md, "How to add a stage": one function and one row of the table, and
    the run, the report, report.md and the schema follow."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ADDED_STAGE, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["scores"][-1] == "checked" and got["seconds"][-1] == "check"
    assert got["check"]["zeros"] > 0                  # it ran on the pruned model
    assert "checked" in (tmp_path / "report.md").read_text().splitlines()[4]  # the table head


def test_sample_counts_beyond_the_data_record_what_was_used(trained_tiny, digits):
    """Asking for more attribution, repair or recalibration samples than the training split
    holds uses the split, and the report says how many that was."""
    n = len(digits.train)
    big = 10 ** 6
    settings = runs.Unstructured(0.5, samples=big, recalibrate_samples=big, track_accuracy=False,
                                 repair=runs.Repair(samples=big))
    _, _, rep = runs.run_unstructured(trained_tiny, digits, "magnitude", settings,
                                      recalibration=runs.Recalibration(samples=big))
    prune = rep["config"]["prune"]
    assert prune["samples"] == prune["recalibrate_samples"] == prune["repair"]["samples"] == n
    assert rep["config"]["recalibration"]["samples"] == n
    _, _, rep = runs.run_structured(trained_tiny, digits, "l1", runs.Structured(
        macs=0.6, repair=runs.Repair(samples=big)))
    assert rep["config"]["prune"]["repair"]["samples"] == n


def test_a_smaller_model_is_timed_with_the_dense_one(trained_tiny, digits):
    m = runs.Measurement(batch_sizes=(1, 8), repeats=3, warmup=1)
    _, _, rep = runs.run_structured(trained_tiny, digits, "l1", runs.Structured(macs=0.5),
                                    measurement=m)
    for b in ("1", "8"):
        t = rep["latency_ms"][b]
        assert t["ratio"] > 0 and t["spread"][0] <= t["ratio"] <= t["spread"][1]
        assert t["speedup"] == pytest.approx(1 / t["ratio"])
