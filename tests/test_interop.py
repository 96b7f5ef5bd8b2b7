"""torch.nn.utils.prune round trip and ONNX export checked with onnxruntime."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn.utils import prune as tprune

from prunewise import PrunewiseError, interop, models
from prunewise.plan import MaskPlan


def random_plan(model, p=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MaskPlan({n: torch.rand(w.shape, generator=g) > p for n, w in model.named_parameters()
                     if w.dim() > 1}, method="random")


def test_torch_prune_round_trip_gives_the_same_masks():
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    plan = random_plan(model)
    tp_model = interop.to_torch_prune(model, plan)
    assert not hasattr(model.layer1[0].conv1, "weight_orig")  # input untouched
    conv = tp_model.layer1[0].conv1
    assert tprune.is_pruned(tp_model) and hasattr(conv, "weight_orig") and hasattr(conv, "weight_mask")
    back = interop.from_torch_prune(tp_model)
    assert set(back.masks) == set(plan.masks)
    assert all(torch.equal(back.masks[k], plan.masks[k]) for k in plan.masks)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(tp_model(x), plan.apply(model)(x))
    tprune.remove(conv, "weight")  # the user's usual final step works
    assert torch.all(conv.weight[~plan.masks["layer1.0.conv1.weight"]] == 0)


def test_from_torch_prune_reads_users_own_pruning():
    model = models.create("resnet20", num_classes=10, in_channels=1)
    tprune.l1_unstructured(model.fc, "weight", amount=0.5)
    plan = interop.from_torch_prune(model)
    assert list(plan.masks) == ["fc.weight"] and plan.sparsity == pytest.approx(0.5)
    with pytest.raises(PrunewiseError, match="no torch.nn.utils.prune masks"):
        interop.from_torch_prune(models.create("resnet20"))


def onnx_max_diff(model, path, x):
    interop.export_onnx(model, path, x[:1])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    return float(np.abs(got - want).max())


def test_onnx_masked_resnet20(tmp_path):
    model = models.create("resnet20", num_classes=10, in_channels=3).eval()
    masked = random_plan(model).apply(model)
    x = torch.randn(4, 3, 32, 32)
    assert onnx_max_diff(masked, tmp_path / "m.onnx", x) < 1e-4
    tp_model = interop.to_torch_prune(model, random_plan(model))  # hooks are baked in
    assert onnx_max_diff(tp_model, tmp_path / "t.onnx", x) < 1e-4


def test_onnx_sliming_pruned_resnet56(tmp_path):
    from prunewise import measure, sliming

    model = models.create("resnet56", num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = sliming.prune(model, x[:1], macs=0.5)
    assert measure.macs(pruned, x) < 0.55 * measure.macs(model, x)
    assert onnx_max_diff(pruned, tmp_path / "s.onnx", x) < 1e-4
