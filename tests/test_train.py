import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise import PrunewiseError, models, train
from prunewise import data as D


def test_fit_learns_digits(digits):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    before = train.evaluate_split(model, digits, "val")["top1"]
    hist = train.fit(model, digits, epochs=2, seed=0, progress=False)
    after = train.evaluate_split(model, digits, "val")["top1"]
    assert after > max(before, 0.5)
    assert hist["best_val_top1"] == pytest.approx(after)
    assert len(hist["history"]) == 2


def test_masks_keep_pruned_weights_exactly_zero(digits):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    gen = torch.Generator().manual_seed(1)
    masks = {n: (torch.rand(p.shape, generator=gen) > 0.7).float()
             for n, p in model.named_parameters() if p.dim() > 1}
    train.fit(model, digits, epochs=1, seed=0, progress=False, masks=masks)
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.all(params[n][m == 0] == 0), n
        assert torch.count_nonzero(params[n][m == 1]) > 0


def test_bad_mask_and_optimizer_are_errors(digits):
    model = models.create("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(PrunewiseError, match="unknown parameter"):
        train.MaskKeeper(model, {"nope.weight": torch.ones(1)})
    with pytest.raises(PrunewiseError, match="unknown optimizer 'lbfgs'"):
        train.fit(model, digits, epochs=1, optimizer="lbfgs", progress=False)


def test_evaluate_counts_by_hand():
    # logits chosen so that top-1 is right for sample 0 only and top-5 for samples 0 and 1
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0, 0],
                           [6.0, 5, 4, 3, 2, 0, 0],
                           [6.0, 5, 4, 3, 2, 1, 0]])
    y = torch.tensor([0, 4, 6])
    model = nn.Identity()
    r = train.evaluate(model, [(logits[:2], y[:2]), (logits[2:], y[2:])])
    assert r["n"] == 3 and r["top1"] == pytest.approx(1 / 3) and r["top5"] == pytest.approx(2 / 3)
    assert r["loss"] == pytest.approx(float(F.cross_entropy(logits, y)))


def test_recalibrate_bn_matches_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).double().eval()
    x = torch.randn(12, 1, 3, 3, dtype=torch.float64)
    train.recalibrate_bn(model, [(x[:5], None), (x[5:], None)], samples=8)
    feats = model[0](x[:8]).detach()  # the first 8 samples only
    per_batch = [feats[:5], feats[5:8]]
    mean = sum(f.mean(dim=(0, 2, 3)) for f in per_batch) / 2  # cumulative average over batches
    var = sum(f.var(dim=(0, 2, 3), unbiased=True) for f in per_batch) / 2
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert not model.training and model[1].momentum == 0.1


def test_evaluation_batches_shrink_with_the_input_size():
    from prunewise import train

    torch.manual_seed(0)
    bundle = D.load("digits", image_size=160, limit=200)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    assert train.EVAL_VALUES // (160 * 160) < 256          # this size gets smaller batches
    got = train.evaluate_split(model, bundle, "test")
    ref = train.evaluate(model, D.batches(bundle.test, bundle, 7))
    assert got["n"] == ref["n"] and got["top1"] == ref["top1"]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_a_model_that_fails_on_a_training_batch_is_one_error(digits):
    """BatchNorm on a batch of one 1x1 map (or any error the model raises on the data) stops
    training with one PrunewiseError naming the batch, not a traceback."""
    from torch import nn

    from prunewise import PrunewiseError

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4),
                          nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(PrunewiseError, match="failed on training batch 1 .1 samples.: "
                                             "ValueError: Expected more than 1 value"):
        train.fit(model, digits, epochs=1, batch_size=1, progress=False)
