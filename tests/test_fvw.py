"""FVW: the attack pass against an independent computation of docs/methods.md (section "FVW"),
the schedule, class-group mode, resume, BatchNorm recalibration in the loop, fine-tuning with
masks, bad input (library and CLI)."""
import copy
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from helpers import invoke, killed_then_resumed, run
from prunewise import checkpoints, fvw, masking, PrunewiseError, train
from prunewise import data as D
from prunewise.plan import MaskPlan


class Tiny(nn.Module):
    """Stem conv + BN + conv + linear: the stem and the BN are out of the default scope."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.conv(x))
        return self.fc(x.flatten(1))


def tiny_setup(dtype=torch.float64, n=48, classes=4, seed=0):
    torch.manual_seed(seed)
    model = Tiny(classes).to(dtype)
    with torch.no_grad():  # non-trivial BN statistics (eval mode uses them)
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(n, 1, 4, 4, dtype=dtype)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    y = pred.clone()
    y[::3] = (pred[::3] + 1) % classes  # a third misclassified: they must not count
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]
    return model, batches


def reference_attack(model, batches, names, masks, alpha, K, direction):
    """docs/methods.md (section "FVW") written out literally: per-step gradients, sign steps,
    trapezoid sums."""
    model = copy.deepcopy(model).eval()
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    w = {k: base[k].clone() for k in names}
    A = {k: torch.zeros_like(w[k]) for k in names}
    g_prev, n, losses = None, None, []
    for s in range(K + 1):
        leaves = {k: w[k].clone().requires_grad_(True) for k in names}
        L, count = 0.0, 0
        g = {k: torch.zeros_like(w[k]) for k in names}
        for x, y in batches:
            out = functional_call(model, {**base, **leaves, **buffers}, (x,))
            ok = out.argmax(1) == y
            if ok.sum() == 0:
                continue
            loss = F.cross_entropy(out[ok], y[ok], reduction="none").sum()
            grads = torch.autograd.grad(loss, [leaves[k] for k in names])
            for k, gk in zip(names, grads):
                g[k] += gk
            L += float(loss.detach())
            count += int(ok.sum())
        g = {k: g[k] * masks[k] for k in names}
        if s == 0:
            n = count
        losses.append(L)
        if s > 0:
            for k in names:
                A[k] = A[k] + alpha * torch.sign(g_prev[k]) * (g_prev[k] + g[k]) / 2 / n
        if s < K:
            for k in names:
                opp = ((w[k] < 0) & (g[k] > 0)) | ((w[k] > 0) & (g[k] < 0))
                if direction == "ascent":
                    w[k] = w[k] + alpha * torch.sign(g[k]) * opp
                else:
                    w[k] = w[k] - alpha * torch.sign(g[k]) * (~opp)
        g_prev = g
    return A, losses[-1] / n - losses[0] / n


@pytest.mark.parametrize("direction", ["ascent", "descent"])
def test_attribute_matches_reference(direction):
    model, batches = tiny_setup()
    masks = {"conv.weight": (torch.rand(4, 3, 3, 3) > 0.3), "fc.weight": torch.rand(4, 64) > 0.2}
    with torch.no_grad():  # masked weights are zero in a pruned model
        model.conv.weight.mul_(masks["conv.weight"])
        model.fc.weight.mul_(masks["fc.weight"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    A, dloss = fvw.attribute(model, batches, alpha=1e-3, steps=3, direction=direction, masks=masks)
    assert list(A) == ["conv.weight", "fc.weight"]  # stem and BN are out of scope
    ref, ref_dloss = reference_attack(model, batches, list(A), masks, 1e-3, 3, direction)
    for k in A:
        torch.testing.assert_close(A[k], ref[k], rtol=1e-7, atol=1e-14)
        assert bool((A[k][~masks[k]] == 0).all())
        assert A[k].abs().sum() > 0
    assert dloss == pytest.approx(ref_dloss, rel=1e-6, abs=1e-12)
    assert dloss != 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # caller's model untouched
    assert model.training  # its mode too


def test_attribute_accepts_callable_and_generator():
    model, batches = tiny_setup(dtype=torch.float32)
    a1, d1 = fvw.attribute(model, batches, alpha=1e-3)
    a2, d2 = fvw.attribute(model, lambda: iter(batches), alpha=1e-3)
    a3, d3 = fvw.attribute(model, (b for b in batches), alpha=1e-3)  # one-shot: read once
    for k in a1:
        assert torch.equal(a1[k], a2[k]) and torch.equal(a1[k], a3[k])
    assert d1 == d2 == d3


def test_scope_default_override_and_empty():
    model, batches = tiny_setup()
    assert masking.prunable(model) == ["conv.weight", "fc.weight"]
    assert masking.prunable(model, {"exclude": [nn.Linear]}) == ["conv.weight"]
    assert masking.prunable(model, {"skip_first": False, "include": ["stem", "fc"]}) == \
        ["stem.weight", "fc.weight"]
    assert masking.prunable(model, ["fc.*"]) == ["fc.weight", "fc.bias"]
    A, _ = fvw.attribute(model, batches, params=["fc.weight"])
    assert list(A) == ["fc.weight"]
    with pytest.raises(PrunewiseError, match="matches no tensor"):
        fvw.attribute(model, batches, params={"include": ["nothing*"]})


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": 0.5, "keep": 0.0}, "keep"), ({"sparsity": 0.5, "keep": 1.0}, "keep"),
    ({"sparsity": 0.5, "alpha": 0.0}, "alpha"), ({"sparsity": 0.5, "alpha": -1e-8}, "alpha"),
    ({"sparsity": 0.5, "steps": 0}, "steps"),
    ({"sparsity": 0.5, "params": ["nope.weight"]}, "matches no tensor"),
])
def test_prune_bad_input(kwargs, words):
    model, batches = tiny_setup()
    with pytest.raises(PrunewiseError, match=words):
        fvw.prune(model, batches, **kwargs)


def test_empty_data_and_nothing_correct():
    model, batches = tiny_setup()
    with pytest.raises(PrunewiseError, match="empty"):
        fvw.prune(model, [], sparsity=0.5)
    wrong = [(x, (model.eval()(x).argmax(1) + 1) % 4) for x, _ in batches]
    with pytest.raises(PrunewiseError, match="none of the 48"):
        fvw.attribute(model, wrong)


def test_schedule_count_and_exact_landing():
    assert masking.iterations(0.9, 0.98) == 114
    assert masking.iterations(0.9, 0.9) == 22
    assert masking.iterations(0.9, 0.8) == 11 and masking.iterations(0.0, 0.9) == 0
    counts = masking.schedule(270_000, 0.9, 0.98)
    assert len(counts) == 114 and counts[-1] == 27_000
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    model, batches = tiny_setup(dtype=torch.float32)
    rows = []
    val = batches[:1]
    plan = fvw.prune(model, batches, sparsity=0.9, keep=0.6, alpha=1e-3, eval_batches=val,
                     callback=rows.append)
    total = 4 * 3 * 9 + 4 * 64
    assert plan.total == total and plan.kept == total - round(0.9 * total)
    assert abs(plan.sparsity - 0.9) <= 1 / total
    assert len(rows) == plan.meta["iterations"] == 5
    # 364 * 0.6**t rounded: 218.4, 131.04, 78.6, 47.2, then the target 364 - 328 = 36
    assert [r["kept"] for r in rows] == [218, 131, 79, 47, 36]
    # the logged accuracy is the pruned model's (no recalibration: the caller's BN statistics)
    assert rows[-1]["accuracy"] == train.evaluate(plan.apply(model), val)["top1"]


def test_levels_land_exactly():
    model, batches = tiny_setup(dtype=torch.float32)
    seen = {}
    final = fvw.prune(model, batches, sparsity=0.9, keep=0.5, alpha=1e-3, levels=[0.8, 0.5],
                      on_level=lambda lv, p: seen.__setitem__(lv, p))
    assert sorted(seen) == [0.5, 0.8, 0.9]
    for lv, p in seen.items():
        assert p.kept == p.total - round(lv * p.total)
    assert torch.equal(seen[0.9].masks["fc.weight"], final.masks["fc.weight"])
    # nested: what is pruned at 80% stays pruned at 90%
    assert not bool((final.masks["fc.weight"] & ~seen[0.8].masks["fc.weight"]).any())


@pytest.mark.parametrize("aggregate", ["union", "sum"])
def test_class_groups_zero_dloss_never_nan(aggregate):
    model, batches = tiny_setup(dtype=torch.float32)
    # alpha so small that no weight moves: every group's loss change is exactly 0
    with pytest.warns(masking.PruningWarning, match="loss change"):
        plan = fvw.prune(model, batches, sparsity=0.5, keep=0.5, alpha=1e-30, class_groups=2,
                         aggregate=aggregate)
    assert plan.kept == plan.total - round(0.5 * plan.total)
    assert all(m.dtype == torch.bool for m in plan.masks.values())
    assert plan.meta["history"][0]["skipped_groups"] == [0, 1]


def test_class_groups_skip_one_group_with_warning():
    model, batches = tiny_setup(dtype=torch.float32)
    # group 1 (labels 2, 3): make every such sample misclassified -> nothing to attack there
    fixed = []
    for x, y in batches:
        pred = model.eval()(x).argmax(1)
        y = pred.clone()
        hi = pred >= 2
        y[hi] = 5 - pred[hi]  # 2 <-> 3: still group 1, always wrong
        fixed.append((x, y))
    with pytest.warns(masking.PruningWarning, match="class group 1 skipped"):
        plan = fvw.prune(model, fixed, sparsity=0.5, keep=0.5, alpha=1e-3, class_groups=2,
                         descent=True)
    assert plan.meta["history"][0]["skipped_groups"] == [1]
    assert plan.kept == plan.total - round(0.5 * plan.total)
    # with one usable group, union = that group's own ranking
    with pytest.warns(masking.PruningWarning, match="class group 1 skipped"):
        ref = fvw.prune(model, [(x[y < 2], y[y < 2]) for x, y in fixed], sparsity=0.5, keep=0.5,
                        alpha=1e-3, class_groups=2, descent=True)
    for k in plan.masks:
        assert torch.equal(plan.masks[k], ref.masks[k])


def test_resume_after_kill_is_bit_identical(tmp_path):
    model, batches = tiny_setup(dtype=torch.float32)
    kw = dict(sparsity=0.9, keep=0.7, alpha=1e-3, class_groups=2)
    full = fvw.prune(model, batches, **kw, checkpoint_dir=tmp_path / "a")

    resumed, done = killed_then_resumed(lambda **k: fvw.prune(model, batches, **kw, **k),
                                        tmp_path / "b", at=3)
    assert done[0] == 4  # iterations 1-3 were not redone
    assert len(resumed.meta["history"]) == full.meta["iterations"]
    for k in full.masks:
        assert torch.equal(full.masks[k], resumed.masks[k])
    with pytest.raises(PrunewiseError, match="different settings"):
        fvw.prune(model, batches, **{**kw, "keep": 0.8}, checkpoint_dir=tmp_path / "b")


class BNTiny(nn.Module):
    """A BatchNorm right after a prunable conv: pruning the conv shifts its statistics."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


def test_recalibrate_changes_the_attack_not_the_caller():
    torch.manual_seed(0)
    model = BNTiny()
    x = torch.randn(96, 1, 4, 4)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(sparsity=0.9, keep=0.6, alpha=1e-3, eval_batches=batches)
    off = fvw.prune(model, batches, **kw)
    on = fvw.prune(model, batches, **kw, recalibrate=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    h_off, h_on = off.meta["history"], on.meta["history"]
    assert h_on[0]["dloss"] == h_off[0]["dloss"]  # the first attack sees the caller's statistics
    assert h_on[1]["dloss"] != h_off[1]["dloss"]  # later ones the re-estimated statistics
    assert any(not torch.equal(on.masks[k], off.masks[k]) for k in on.masks)
    assert on.meta["settings"]["recalibrate"] == {"samples": None}
    assert "recalibrate" not in off.meta["settings"]
    # the logged accuracy is that of the pruned model with re-estimated statistics
    final = train.recalibrate_bn(on.apply(model), batches)
    assert h_on[-1]["accuracy"] == train.evaluate(final, batches)["top1"]


def test_finetune_keeps_pruned_weights_zero(digits):
    torch.manual_seed(0)
    small = replace(digits, train=digits.train.subset(range(256)), val=digits.val.subset(range(64)))
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    src = lambda: D.batches(small.train, small, 64)
    plan = fvw.prune(net, src, sparsity=0.8, keep=0.5, alpha=1e-3)
    pruned = plan.apply(net)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    train.fit(pruned, small, epochs=2, lr=0.05, masks=plan.masks, seed=0, progress=False)
    params = dict(pruned.named_parameters())
    for k, m in plan.masks.items():
        assert bool((params[k][~m] == 0).all())
        assert not torch.equal(params[k][m], before[k][m])  # kept weights did train


def test_cli_prune_fvw_report(digits_checkpoint, tmp_path):
    out = tmp_path / "p"
    r = invoke("prune", "fvw", str(digits_checkpoint), "--sparsity", "0.5", "--keep", "0.5",
               "--samples", "64", "--alpha", "1e-4", "--finetune-epochs", "1", "--quiet",
               "--latency-repeats", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "fvw" and rep["iterations"] == 1
    assert abs(rep["sparsity"] - 0.5) < 1e-5
    saved = checkpoints.load_model(out / "model")  # the fine-tuned model the report measured last
    bundle = D.load("digits", image_size=16, seed=0)
    assert rep["accuracy"]["finetuned"]["test"] == train.evaluate_split(saved, bundle, "test")["top1"]
    plan = MaskPlan.load(out)
    assert plan.sparsity == rep["sparsity"]
    params = dict(saved.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in plan.masks.items())


@pytest.mark.parametrize("args, word", [(["--sparsity", "1.0"], "sparsity"),
                                        (["--sparsity", "0.5", "--alpha", "0"], "alpha")])
def test_cli_bad_input_exit_2(digits_checkpoint, tmp_path, args, word):
    r = run("prune", "fvw", str(digits_checkpoint), *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr and word in lines[0]


def test_more_class_groups_than_classes_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(12, 16), torch.arange(12) % 3)]
    with pytest.raises(PrunewiseError, match="class groups 1000 is more than the model's 3"):
        fvw.prune(model, batches, sparsity=0.5, keep=0.5, class_groups=1000)
