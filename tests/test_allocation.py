"""Allocation apart from ranking (global, lamp, uniform, row) and the post-training peers
(Wanda, OBS): the counts each allocation gives, that no layer is emptied, that the ranking
within a layer is the score's, and that the peers' scores are the published formulas."""
import pytest
import torch
from torch import nn

from prunewise import PrunewiseError, masking, posttrain, runs


def weights():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 10, generator=g),
            "b.weight": torch.randn(8, 3, generator=g) * 0.01}


def full(w):
    return {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}


def counts(masks):
    return {k: int(v.sum()) for k, v in masks.items()}


def test_global_selection_can_empty_a_layer_lamp_and_uniform_cannot():
    w = weights()
    scores = {k: v.abs() for k, v in w.items()}
    assert counts(masking.select(scores, full(w), 20)) == {"a.weight": 20, "b.weight": 0}
    assert counts(masking.select(scores, full(w), 20, "global")) == \
        counts(masking.select(scores, full(w), 20))
    lamp = masking.select(scores, full(w), 20, "lamp", w)
    assert sum(counts(lamp).values()) == 20 and min(counts(lamp).values()) >= 1
    for kept in (2, 3, 7):  # as long as there are at least as many kept as layers
        assert min(masking.allocate("lamp", full(w), kept, w).values()) >= 1
    uni = masking.select(scores, full(w), 32, "uniform")
    assert counts(uni) == {"a.weight": 20, "b.weight": 12}  # half of each
    row = masking.select(scores, full(w), 32, "row")
    assert all(int(r.sum()) == 5 for r in row["a.weight"]) and \
        all(int(r.sum()) in (1, 2) for r in row["b.weight"])
    assert sum(counts(row).values()) == 32
    vec = masking.select({"v": torch.arange(4.0)}, {"v": torch.ones(4, dtype=torch.bool)}, 2,
                         "row")  # a 1-D tensor is one row
    assert vec["v"].tolist() == [False, False, True, True]


def test_within_a_layer_the_score_ranks_and_pruned_stay_pruned():
    w = weights()
    masks = full(w)
    masks["a.weight"][0, :5] = False
    scores = {k: -v.abs() for k, v in w.items()}  # the smallest weights rank first
    out = masking.select(scores, masks, 16, "uniform")
    assert not out["a.weight"][0, :5].any()  # pruned before: pruned now, whatever the score
    a = w["a.weight"].abs().flatten()[masks["a.weight"].flatten()]
    kept = w["a.weight"].abs()[out["a.weight"]]
    assert float(kept.max()) <= float(a.sort().values[kept.numel() - 1])


def test_lamp_with_magnitude_is_lamp():
    """LAMP's own rule: a weight's score is w^2 over the sum of the squares at least as large."""
    w = {"x.weight": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "y.weight": torch.tensor([[0.1, 0.2]])}
    # x: 16/16=1, 9/25=.36, 4/29=.138, 1/30=.033; y: .04/.04=1, .01/.05=.2
    assert masking.allocate("lamp", full(w), 3, w) == {"x.weight": 2, "y.weight": 1}
    assert masking.allocate("lamp", full(w), 4, w) == {"x.weight": 2, "y.weight": 2}


def test_allocation_reaches_the_pipeline_and_is_recorded(digits):
    from prunewise import models

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    settings = runs.Unstructured(sparsity=0.9, keep=0.5, samples=64, allocation="uniform")
    plan = runs.prune_masks(model, digits, "magnitude", settings)
    per = plan.per_layer()
    assert max(per.values()) - min(per.values()) < 0.01  # every layer at 90%
    assert plan.meta["settings"]["allocation"] == "uniform"
    glob = runs.prune_masks(model, digits, "magnitude", runs.Unstructured(sparsity=0.9, keep=0.5))
    assert "allocation" not in glob.meta["settings"]  # global plans are as they always were
    with pytest.raises(PrunewiseError, match="allocation"):
        runs.Unstructured(sparsity=0.9, allocation="best")


def linear_data(n=64, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 3.0, d)
    return [(x[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, n, 16)]


def two_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_wanda_is_weight_times_input_norm():
    model, data = two_layers(), linear_data()
    masks = {"0.weight": torch.ones(6, 6, dtype=torch.bool)}
    scores, _ = posttrain.wanda_score(model, masks, masking.Source(data), 0)
    x = torch.cat([b[0] for b in data])
    want = model[0].weight.abs().double() * x.double().norm(dim=0)
    assert torch.allclose(scores["0.weight"], want)


def test_obs_is_the_obs_saliency():
    model, data = two_layers(), linear_data()
    masks = {"0.weight": torch.ones(6, 6, dtype=torch.bool)}
    scores, _ = posttrain.obs_score(model, masks, masking.Source(data), 0)
    x = torch.cat([b[0] for b in data]).double()
    H = x.T @ x
    H += posttrain.OBS_DAMP * H.diagonal().mean() * torch.eye(6, dtype=H.dtype)
    want = model[0].weight.double() ** 2 / torch.linalg.inv(H).diagonal()
    assert torch.allclose(scores["0.weight"], want)


def test_peers_on_a_conv_net_and_clear_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 2, 8, 8, generator=g), torch.zeros(8, dtype=torch.long))]
    for method in ("wanda", "obs"):
        settings = masking.LoopSettings(sparsity=0.5, keep=0.5, progress=False, allocation="row")
        score = posttrain.wanda_score if method == "wanda" else posttrain.obs_score
        plan = masking.run(model, data, score, settings, method=method)
        assert abs(plan.sparsity - 0.5) < 0.01
        for m in plan.masks.values():  # every row keeps half
            rows = m.reshape(m.shape[0], -1).sum(1)
            assert int(rows.max()) - int(rows.min()) <= 1
        with pytest.raises(PrunewiseError, match="calibration data"):
            score(model, plan.masks, None, 0)
    # a weight matrix that is not a conv / linear weight (an embedding, an attention module's
    # input projection) has no layer input to weigh: it is scored by its magnitude
    other = nn.Sequential(nn.Linear(4, 4), nn.Embedding(3, 4))
    got, _ = posttrain.wanda_score(other, {"1.weight": torch.ones(3, 4, dtype=torch.bool)}, [], 0)
    assert torch.equal(got["1.weight"], other[1].weight.detach().double().abs())


def test_one_shot_methods_default_to_one_iteration(digits):
    from prunewise import models

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    one = runs.prune_masks(model, digits, "wanda",
                           runs.Unstructured(sparsity=0.5, keep=None, samples=64))
    assert one.meta["iterations"] == 1 and abs(one.sparsity - 0.5) < 1e-4
    many = runs.prune_masks(model, digits, "taylor",
                            runs.Unstructured(sparsity=0.5, keep=None, samples=64))
    assert many.meta["iterations"] == 35  # 0.98 per iteration, as before
    # magnitude's scores do not depend on what was pruned: one shot by default, and the same
    # masks as iterating (with the in-loop recalibration too, which leaves weights alone)
    shot = runs.prune_masks(model, digits, "magnitude", runs.Unstructured(sparsity=0.5))
    steps = runs.prune_masks(model, digits, "magnitude",
                             runs.Unstructured(sparsity=0.5, keep=0.9, loop_recalibrate=True,
                                               samples=64))
    assert shot.meta["iterations"] == 1 and steps.meta["iterations"] == 7
    assert all(torch.equal(shot.masks[n], steps.masks[n]) for n in shot.masks)
    asked = runs.prune_masks(model, digits, "obs",
                             runs.Unstructured(sparsity=0.5, keep=0.8, samples=64))
    assert asked.meta["iterations"] == 4  # an explicit keep is honoured
