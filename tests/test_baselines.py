"""Baselines on the shared mask engine: magnitude, Taylor and random against direct computations."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import killed_then_resumed
from prunewise import PrunewiseError, baselines, fvw, methods, posttrain


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    return model, [(x[:20], y[:20]), (x[20:], y[20:])]


def pooled_top(scores: dict, k: int) -> dict:
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    out, pos = {}, 0
    for n, s in scores.items():
        out[n] = keep[pos:pos + s.numel()].view_as(s)
        pos += s.numel()
    return out


def test_every_unstructured_method_has_a_keyword_entry():
    """Each mask method of the table is reachable by name (fvw.prune, baselines.NAME or
    posttrain.NAME) and its
    builder makes a scorer; an unknown name names the choices."""
    for name in methods.names("unstructured"):
        fn = fvw.prune if name == "fvw" else getattr(baselines, name, None) or \
            getattr(posttrain, name)
        assert list(inspect.signature(fn).parameters)[:2] == ["model", "batches"]
        row = methods.get(name, "unstructured")
        assert callable(row.builder()(row.options(), 0))
    with pytest.raises(PrunewiseError, match="unknown unstructured method 'snip'.*magnitude"):
        methods.get("snip", "unstructured")


def test_magnitude_is_global_top_abs():
    model, _ = setup()
    plan = baselines.magnitude(model, sparsity=0.7, keep=0.8)
    assert plan.meta["iterations"] == 6  # 0.8**5 = 0.33 is not yet 0.3
    params = dict(model.named_parameters())
    ref = pooled_top({n: params[n].detach().abs() for n in plan.masks}, plan.total - round(0.7 * plan.total))
    assert list(plan.masks) == ["2.weight", "4.weight"]  # the first layer is the stem
    for n in plan.masks:
        assert torch.equal(plan.masks[n], ref[n])


def test_taylor_is_abs_w_times_grad_one_shot():
    model, batches = setup()
    plan = baselines.taylor(model, batches, sparsity=0.5, keep=0.5)  # one iteration
    assert plan.meta["iterations"] == 1
    loss = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in batches)
    names = list(plan.masks)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    ref = pooled_top({n: (params[n] * g).abs().detach() for n, g in zip(names, grads)},
                     plan.total - round(0.5 * plan.total))
    for n in names:
        assert torch.equal(plan.masks[n], ref[n])
    with pytest.raises(PrunewiseError, match="batches"):
        baselines.taylor(model, None, sparsity=0.5)


def test_random_seeded_and_exact():
    model, _ = setup()
    a = baselines.random(model, sparsity=0.9, keep=0.5, seed=1)
    b = baselines.random(model, sparsity=0.9, keep=0.5, seed=1)
    c = baselines.random(model, sparsity=0.9, keep=0.5, seed=2)
    assert a.kept == b.kept == c.kept == a.total - round(0.9 * a.total)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


@pytest.mark.parametrize("method", [m for m in methods.names("unstructured") if m != "fvw"])
def test_bad_sparsity_and_keep(method):
    model, batches = setup()
    fn = getattr(baselines, method, None) or getattr(posttrain, method)
    with pytest.raises(PrunewiseError, match="sparsity"):
        fn(model, batches, sparsity=1.0)
    with pytest.raises(PrunewiseError, match="keep"):
        fn(model, batches, sparsity=0.5, keep=1.5)


@pytest.mark.parametrize("method", ["taylor", "random", "wanda"])
def test_keyword_entry_resumes_bit_identical(method, tmp_path):
    model, batches = setup()
    fn = getattr(baselines, method, None) or getattr(posttrain, method)
    kw = dict(sparsity=0.8, keep=0.6, samples=30, eval_batches=batches[:1], seed=4)
    full = fn(model, lambda: iter(batches), **kw, checkpoint_dir=tmp_path / "a")
    assert full.method == method and full.meta["iterations"] == 4
    assert full.kept == full.total - round(0.8 * full.total)
    assert len(full.meta["history"]) == 4 and "accuracy" in full.meta["history"][-1]

    resumed, done = killed_then_resumed(lambda **k: fn(model, lambda: iter(batches), **kw, **k),
                                        tmp_path / "b", at=2)
    assert done == [3, 4]
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)


def test_taylor_uses_only_the_first_samples():
    model, batches = setup()
    limited = baselines.taylor(model, batches, sparsity=0.5, keep=0.5, samples=20)
    first = baselines.taylor(model, batches[:1], sparsity=0.5, keep=0.5)
    other = baselines.taylor(model, batches[1:], sparsity=0.5, keep=0.5)
    assert all(torch.equal(limited.masks[n], first.masks[n]) for n in first.masks)
    assert any(not torch.equal(limited.masks[n], other.masks[n]) for n in first.masks)


def test_obd_is_half_fisher_times_weight_squared(monkeypatch):
    """With one sample per chunk, F is exactly the mean squared per-sample gradient."""
    model, data = setup()
    monkeypatch.setattr(baselines, "OBD_CHUNK", 1)
    masks = {n: torch.ones_like(p) for n, p in model.named_parameters() if n.endswith("weight")}
    masks["0.weight"][0, :3] = 0
    scores, _ = baselines.obd_score(model, masks, data, 0)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    named = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(named[n], dtype=torch.float64) for n in masks}
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n in masks:
            fisher[n] += named[n].grad.double().square() / len(y)
    for n in masks:
        want = 0.5 * fisher[n] * named[n].detach().double().square() * masks[n]
        torch.testing.assert_close(scores[n], want, rtol=1e-6, atol=1e-12)
    assert float(scores["0.weight"][0, :3].abs().sum()) == 0.0


def test_obd_prunes_to_the_target_and_leaves_the_model_alone():
    model, data = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = baselines.obd(model, data, sparsity=0.7, keep=0.8)
    assert plan.method == "obd"
    assert abs(plan.sparsity - 0.7) < 0.01
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
