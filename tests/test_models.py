"""Model zoo: registry, reference sizes, forward/backward, small inputs, Torch-Pruning tracing."""
import pickle

import pytest
import torch
import torch.nn.functional as F

from prunewise import measure, models
from prunewise.errors import PrunewiseError
from prunewise.models.cifar_resnet import PadShortcut

ALL = ["densenet40", "googlenet", "mobilenetv2", "mobilenetv2_imagenet", "resnet110", "resnet20",
       "resnet20_ln",
       "resnet32", "resnet50", "resnet56", "vgg16_bn", "vit_tiny"]
CIFAR = [n for n in ALL if n not in ("resnet50", "mobilenetv2_imagenet")]



def _model(name, num_classes=10, in_channels=3):
    torch.manual_seed(0)
    return models.create(name, num_classes=num_classes, in_channels=in_channels)


def test_names_and_input_sizes():
    assert models.names() == ALL
    assert all(models.input_size(n) == (224 if n not in CIFAR else 32) for n in ALL)


@pytest.mark.parametrize("name,classes,size,params,macs", [
    ("resnet56", 10, 32, 0.85e6, 125.49e6),
    ("resnet110", 10, 32, 1.73e6, 256.04e6),
    ("vgg16_bn", 10, 32, 14.98e6, 313.73e6),
    ("resnet50", 1000, 224, 25.56e6, 4.12e9),
])
def test_reference_counts(name, classes, size, params, macs):
    model = _model(name, classes)
    x = torch.randn(1, 3, size, size)
    assert measure.params(model) == pytest.approx(params, rel=0.01)
    assert measure.macs(model, x) == pytest.approx(macs, rel=0.02)
    if name == "resnet56":
        assert measure.macs(model, x) == 125_485_696


def _forward_backward(model, x, num_classes):
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_natural_size(name):
    classes = 7
    s = models.input_size(name)
    _forward_backward(_model(name, classes), torch.randn(2, 3, s, s), classes)


@pytest.mark.parametrize("name", CIFAR)
def test_forward_backward_16x16_gray(name):
    _forward_backward(_model(name, 10, 1), torch.randn(2, 1, 16, 16), 10)


@pytest.mark.parametrize("name", ALL)
def test_torch_pruning_traces(name):
    tp = pytest.importorskip("torch_pruning")
    s = models.input_size(name)
    model = _model(name).eval()
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, 3, s, s),
        customized_pruners=models.customized_pruners())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    missing = [m for m in convs if m not in dg.module2node]
    assert convs and not missing, f"{len(missing)} of {len(convs)} convs not traced"


def test_unknown_name_and_bad_args():
    with pytest.raises(PrunewiseError, match="foo") as e:
        models.create("foo")
    assert "resnet56" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PrunewiseError, match="foo"):
        models.input_size("foo")
    with pytest.raises(PrunewiseError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(PrunewiseError, match="in_channels"):
        models.create("resnet20", in_channels=0)
    with pytest.raises(PrunewiseError, match="resnet20"):
        models.create("resnet20", width_mult=2.0)


def test_register_rejects_a_duplicate_name():
    with pytest.raises(ValueError, match="resnet20"):
        models.register("resnet20", 32)(lambda num_classes, in_channels: None)
    assert models.names() == ALL


def test_config_rebuilds_same_model():
    model = models.create("mobilenetv2", num_classes=5, in_channels=1, width_mult=0.5)
    cfg = dict(model.prunewise_config)
    assert cfg == {"arch": "mobilenetv2", "num_classes": 5, "in_channels": 1, "width_mult": 0.5}
    again = models.create(cfg.pop("arch"), **cfg)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), again(x))


def test_cifar_resnet_is_picklable():
    model = _model("resnet20")
    clone = pickle.loads(pickle.dumps(model))
    model.eval(), clone.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), clone(x))


def test_pad_shortcut_is_option_a_and_prunes_exactly():
    x = torch.randn(2, 16, 8, 8)
    ps = PadShortcut(16, 32)
    assert torch.equal(ps(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    pruner = models.customized_pruners()[PadShortcut]
    pruner.prune_in_channels(ps, [3, 10])
    kept_in = [i for i in range(16) if i not in (3, 10)]
    zeroed = x.clone()
    zeroed[:, [3, 10]] = 0
    ref = F.pad(zeroed[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(ps(x[:, kept_in]), ref)
    pruner.prune_out_channels(ps, [0, 11, 30])
    kept_out = [k for k in range(32) if k not in (0, 11, 30)]
    assert torch.equal(ps(x[:, kept_in]), ref[:, kept_out])


def test_cifar_resnet_trunk_prunes_with_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = _model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=[model.fc], customized_pruners=models.customized_pruners())
    pruner.step()
    assert model.conv1.out_channels == 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert measure.params(model) < 0.3 * measure.params(_model("resnet20"))
