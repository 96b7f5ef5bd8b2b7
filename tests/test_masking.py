"""The mask engine: global selection, schedule, data source, the loop with a custom scorer,
BatchNorm recalibration inside the loop, and the resume file."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import killed_then_resumed
from prunewise import PrunewiseError, baselines, masking, train
import json


def test_select_pools_unpruned_elements_of_all_tensors():
    masks = {"a": torch.tensor([True, True, False, True]),
             "b": torch.tensor([[True, True], [True, False]])}
    scores = {"a": torch.tensor([3.0, 1.0, 9.0, 2.0]), "b": torch.tensor([[2.0, 5.0], [0.0, 7.0]])}
    out = masking.select(scores, masks, 3)
    # unpruned: a = 3, 1, 2 and b = 2, 5, 0; top 3 = 5, 3 and the first of the tied 2s (a[3]);
    # the pruned 9 and 7 stay pruned
    assert out["a"].tolist() == [True, False, False, True]
    assert out["b"].tolist() == [[False, True], [False, False]]
    assert list(out) == ["a", "b"] and out["a"].dtype == torch.bool


def test_select_union_keeps_the_best_rank_in_any_list_and_nan_is_lowest():
    masks = {"a": torch.ones(4, dtype=torch.bool)}
    up = {"a": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    down = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    assert masking.select([up, down], masks, 2)["a"].tolist() == [True, False, False, True]
    assert masking.select([up, down], masks, 3)["a"].tolist() == [True, True, False, True]
    nan = {"a": torch.tensor([float("nan"), 1.0, 2.0, 0.5])}
    assert masking.select(nan, masks, 2)["a"].tolist() == [False, True, True, False]
    with pytest.raises(PrunewiseError, match="no scores"):
        masking.select([], masks, 2)


def test_schedule_literals():
    assert masking.iterations(0.9, 0.9) == 22
    assert masking.iterations(0.5, 0.8) == 4
    assert masking.kept_count(10, 0.25) == 7  # 2.5 pruned rounds to 3
    assert masking.schedule(100, 0.5, 0.8) == [80, 64, 51, 50]
    assert masking.schedule(100, 0.5, 0.8, levels=[0.3]) == [80, 70, 64, 51, 50]
    assert masking.schedule(100, 0.0, 0.8) == []
    with pytest.raises(PrunewiseError, match="keep"):
        masking.check_targets(0.5, 1.0)


def test_source_limits_filters_and_reads_a_generator_once():
    x = torch.arange(10.0)[:, None]
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    src = masking.Source(batches, samples=6)
    assert [b[1].tolist() for b in src] == [[0, 1, 2, 3], [0, 1]]
    assert [b[1].tolist() for b in src.filtered(lambda t: t >= 2)] == [[2, 3]]
    gen = masking.Source((b for b in batches), samples=5)
    assert sum(len(b[1]) for b in gen) == sum(len(b[1]) for b in gen) == 5
    with pytest.raises(PrunewiseError, match="pair"):
        list(masking.Source([torch.zeros(3)]))
    with pytest.raises(PrunewiseError, match="samples"):
        masking.Source(batches, samples=0)


class Net(nn.Module):
    """Stem, a prunable conv followed by BatchNorm, a prunable classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(F.relu(self.stem(x))))).flatten(1))


def setup():
    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(40, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]


class Recorder:
    """A scorer that scores by magnitude and records what the loop hands it."""

    def __init__(self):
        self.calls = []

    def __call__(self, work, masks, data, iteration):
        named = dict(work.named_parameters())
        self.calls.append({"iteration": iteration, "masks": dict(masks), "data": data,
                           "training": work.training,
                           "zero": all(bool((named[n][~m] == 0).all()) for n, m in masks.items()),
                           "bn": (work.bn.running_mean.clone(), work.bn.running_var.clone())})
        return {n: named[n].detach().abs() for n in masks}, {"note": iteration * 10}


def test_run_hands_the_scorer_the_pruned_working_copy():
    model, batches = setup()
    rec = Recorder()
    plan = masking.run(model, None, rec, masking.LoopSettings(sparsity=0.5, keep=0.7),
                       method="mine", settings={"k": 1}, needs_data=False)
    assert [c["iteration"] for c in rec.calls] == [0, 1]
    assert all(c["data"] is None and not c["training"] and c["zero"] for c in rec.calls)
    assert [r["note"] for r in plan.meta["history"]] == [0, 10]
    assert plan.method == "mine" and plan.meta["settings"]["settings"] == {"k": 1}
    assert list(plan.masks) == ["conv.weight", "fc.weight"]
    assert plan.kept == 300 - 150


def expected_stats(model, masks, batches, samples=None):
    ref = copy.deepcopy(model)
    named = dict(ref.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            named[n].mul_(m.to(named[n].dtype))
    train.recalibrate_bn(ref, batches, samples=samples)
    return ref.bn.running_mean, ref.bn.running_var


@pytest.mark.parametrize("samples", [None, 20])
def test_recalibrate_re_estimates_the_working_copy_only(samples):
    model, batches = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = Recorder()
    loop = masking.LoopSettings(sparsity=0.8, keep=0.6, recalibrate=True,
                                recalibrate_samples=samples)
    masking.run(model, batches, rec, loop, method="mine")
    assert len(rec.calls) == 4
    # the first score sees the caller's statistics, every later one re-estimated statistics
    assert torch.equal(rec.calls[0]["bn"][0], model.bn.running_mean)
    for c in rec.calls[1:]:
        mean, var = expected_stats(model, c["masks"], batches, samples)
        assert torch.equal(c["bn"][0], mean) and torch.equal(c["bn"][1], var)
        assert not torch.equal(mean, model.bn.running_mean)
        assert not c["training"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    rec_off = Recorder()
    masking.run(model, batches, rec_off, masking.LoopSettings(sparsity=0.8, keep=0.6), method="m")
    assert all(torch.equal(c["bn"][0], model.bn.running_mean) for c in rec_off.calls)


def test_recalibrate_settings_and_data_required():
    model, batches = setup()
    with pytest.raises(PrunewiseError, match="recalibrate inside the loop needs"):
        baselines.magnitude(model, sparsity=0.5, recalibrate=True)
    with pytest.raises(PrunewiseError, match="recalibrate must be"):
        baselines.magnitude(model, batches, sparsity=0.5, recalibrate="yes")
    with pytest.raises(PrunewiseError, match="recalibrate_samples"):
        baselines.taylor(model, batches, sparsity=0.5, recalibrate=True, recalibrate_samples=0)
    # magnitude ignores BatchNorm: same masks with and without recalibration
    a = baselines.magnitude(model, batches, sparsity=0.8, keep=0.6)
    b = baselines.magnitude(model, batches, sparsity=0.8, keep=0.6, recalibrate=True)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_taylor_recalibrated_differs_and_resumes_bit_identical(tmp_path):
    model, batches = setup()
    kw = dict(sparsity=0.8, keep=0.6, recalibrate=True)
    plain = baselines.taylor(model, batches, sparsity=0.8, keep=0.6)
    full = baselines.taylor(model, batches, **kw)
    assert any(not torch.equal(full.masks[k], plain.masks[k]) for k in full.masks)

    resumed, done = killed_then_resumed(lambda **k: baselines.taylor(model, batches, **kw, **k),
                                        tmp_path, at=2)
    assert done[0] == 3
    assert all(torch.equal(full.masks[k], resumed.masks[k]) for k in full.masks)
    with pytest.raises(PrunewiseError, match="recalibrate"):  # another setting: not resumed
        baselines.taylor(model, batches, sparsity=0.8, keep=0.6, checkpoint_dir=tmp_path)


def test_a_sparsity_that_keeps_nothing_is_refused():
    with pytest.raises(PrunewiseError, match="keeps no weight"):
        masking.schedule(1000, 0.9999999999999999, 0.5)
    assert masking.schedule(1000, 0.999, 0.5)[-1] == 1   # the last weight can stay


def test_a_resume_file_that_claims_another_iteration_is_refused(tmp_path):
    from prunewise import baselines
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    baselines.magnitude(model, sparsity=0.9, keep=0.5, checkpoint_dir=tmp_path)
    path = tmp_path / masking.RESUME_FILE
    with safe_open(str(path), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    rows = json.loads(meta["history"])
    for n in (99, 1):   # past the 4-iteration schedule; the finished masks called iteration 1
        history = json.dumps([{**rows[0], "iteration": i + 1} for i in range(n)])
        save_file(tensors, str(path), metadata={**meta, "iteration": str(n), "history": history})
        with pytest.raises(PrunewiseError, match="corrupt resume checkpoint"):
            baselines.magnitude(model, sparsity=0.9, keep=0.5, checkpoint_dir=tmp_path)


def test_nm_masks_keep_the_best_n_of_every_m_weights_of_a_row():
    from prunewise import baselines

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    plan = baselines.magnitude(model, sparsity=0.5, nm=(2, 4), progress=False)
    w = model[2].weight.detach()
    got = plan.masks["2.weight"].reshape(4, -1, 4)
    assert bool((got.sum(-1) == 2).all()) and plan.sparsity == 0.5
    groups = w.abs().reshape(4, -1, 4)
    best = groups.topk(2, dim=-1).indices
    assert bool(torch.zeros_like(got).scatter_(-1, best, True).eq(got).all())
    with pytest.raises(PrunewiseError, match="prunes exactly 0.5"):
        baselines.magnitude(model, sparsity=0.7, nm=(2, 4), progress=False)
    with pytest.raises(PrunewiseError, match="not a multiple of 3"):
        baselines.magnitude(model, sparsity=1 - 1 / 3, nm=(1, 3), progress=False)
    for bad in ["4:2", "2-4", (0, 4), "2:65"]:
        with pytest.raises(PrunewiseError, match="N:M pattern"):
            masking.LoopSettings(sparsity=0.5, nm=bad)
