"""Shared fixtures: tiny data and tiny models so the suite stays fast on 2 cores."""
import pytest
import torch

from prunewise import data as D
from prunewise import models


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster than two, and steady on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    return D.load("digits", seed=0)


@pytest.fixture(scope="session")
def trained_resnet20(digits):
    """A resnet20 trained briefly on digits (good enough to have correct predictions)."""
    from prunewise import train

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    train.fit(model, digits, epochs=3, seed=0, progress=False)
    return model


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """An untrained resnet20 checkpoint folder that remembers it belongs to digits (CLI tests)."""
    from prunewise import checkpoints

    folder = tmp_path_factory.mktemp("ckpt") / "dense"
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    checkpoints.save_model(model, folder, meta={"data": {"name": "digits", "root": None,
                                                   "image_size": 16, "seed": 0}})
    return folder
