"""MaskPlan: sparsity, apply (a masked copy), save/load round trip, clear errors."""
import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, interop
from prunewise.plan import MASKS_FILE, PLAN_FILE, MaskPlan


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def a_plan():
    g = torch.Generator().manual_seed(1)
    return MaskPlan({"0.weight": torch.rand(4, 1, 3, 3, generator=g) > 0.5,
                     "3.weight": torch.rand(3, 64, generator=g) > 0.7},
                    method="magnitude", meta={"settings": {"keep": 0.9}, "history": [{"it": 1}]})


def test_sparsity_counts_prunable_weights():
    p = a_plan()
    kept = int(p.masks["0.weight"].sum() + p.masks["3.weight"].sum())
    assert p.total == 36 + 192 and p.kept == kept
    assert p.sparsity == pytest.approx(1 - kept / 228)
    assert MaskPlan({"w": torch.ones(3)}).sparsity == 0.0


def test_apply_returns_masked_copy_and_leaves_input():
    model, plan = net(), a_plan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = plan.apply(model)
    assert out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    params = dict(out.named_parameters())
    for k, m in plan.masks.items():
        assert bool((params[k][~m] == 0).all())
        assert torch.equal(params[k][m], before[k][m])
    assert torch.equal(params["0.bias"], before["0.bias"])


def test_save_load_round_trip(tmp_path):
    plan = a_plan()
    plan.save(tmp_path / "p")
    assert (tmp_path / "p" / MASKS_FILE).is_file() and (tmp_path / "p" / PLAN_FILE).is_file()
    back = MaskPlan.load(tmp_path / "p")
    assert list(back.masks) == list(plan.masks)
    assert all(torch.equal(back.masks[k], plan.masks[k]) for k in plan.masks)
    assert back.masks["0.weight"].dtype == torch.bool
    assert back.method == "magnitude" and back.meta == plan.meta
    assert back.sparsity == plan.sparsity


def test_load_errors(tmp_path):
    with pytest.raises(PrunewiseError, match="not found"):
        MaskPlan.load(tmp_path / "missing")
    a_plan().save(tmp_path / "p")
    (tmp_path / "p" / MASKS_FILE).write_bytes(b"garbage")
    with pytest.raises(PrunewiseError, match="corrupt"):
        MaskPlan.load(tmp_path / "p")
    a_plan().save(tmp_path / "q")
    (tmp_path / "q" / PLAN_FILE).write_text("{not json")
    with pytest.raises(PrunewiseError, match="corrupt"):
        MaskPlan.load(tmp_path / "q")
    a_plan().save(tmp_path / "r")
    (tmp_path / "r" / MASKS_FILE).unlink()
    with pytest.raises(PrunewiseError, match="not found"):
        MaskPlan.load(tmp_path / "r")


def test_apply_to_mismatched_model_is_clear():
    plan = a_plan()
    other = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 3))
    with pytest.raises(PrunewiseError, match="shape"):
        plan.apply(other)
    renamed = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(PrunewiseError, match="3.weight"):
        plan.apply(renamed)


def test_masks_must_be_binary():
    with pytest.raises(PrunewiseError, match="0 and 1"):
        MaskPlan({"w": torch.tensor([0.0, 0.5, 1.0])})
    assert MaskPlan({"w": torch.tensor([0.0, 1.0])}).masks["w"].dtype == torch.bool


def test_torch_prune_form_matches_apply():
    model, plan = net(), a_plan()
    tp = interop.to_torch_prune(model, plan)
    assert hasattr(tp[0], "weight_orig") and torch.equal(tp[0].weight_mask.bool(), plan.masks["0.weight"])
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(tp(x), plan.apply(model)(x))
    assert not hasattr(model[0], "weight_orig")  # input untouched
    back = interop.from_torch_prune(tp)
    assert all(torch.equal(back.masks[k], plan.masks[k]) for k in plan.masks)


def test_float_masks_and_per_layer():
    plan = a_plan()
    fm = plan.float_masks()
    assert fm["0.weight"].dtype == torch.float32
    assert torch.equal(fm["0.weight"] != 0, plan.masks["0.weight"])
    per = plan.per_layer()
    assert per["3.weight"] == pytest.approx(1 - float(plan.masks["3.weight"].sum()) / 192)


def test_apply_in_place_zeroes_only_masked_weights():
    model, plan = net(), a_plan()
    before = model[3].weight.detach().clone()
    assert plan.apply_(model) is model
    m = plan.masks["3.weight"]
    assert bool((model[3].weight[~m] == 0).all()) and torch.equal(model[3].weight[m], before[m])
