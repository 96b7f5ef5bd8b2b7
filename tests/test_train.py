import pytest
import torch

from prunewise import PrunewiseError, models, train


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


def test_evaluate_top5_at_least_top1(trained_resnet20, digits):
    r = train.evaluate_split(trained_resnet20, digits, "test")
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["n"] == len(digits.test)
