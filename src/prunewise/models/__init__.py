"""The model zoo: a name -> builder registry.

>>> from prunewise import models
>>> net = models.create("resnet56", num_classes=10, in_channels=3)
>>> models.input_size("resnet56")
32

Every builder takes ``num_classes`` and ``in_channels`` (plus optional model-specific keyword
arguments); the built model carries ``prunewise_config`` so it can be rebuilt with
``create(**config)`` after renaming ``arch`` to ``name``.
"""
from __future__ import annotations

# The model files register themselves on import, through ``registry.register``.
from . import cifar_resnet, densenet, googlenet, mobilenetv2, resnet_imagenet, vgg, vit  # noqa: F401
from .registry import create, init_weights, input_size, names, register


def customized_pruners() -> dict:
    """Torch-Pruning pruners for the zoo's custom modules (pass as ``customized_pruners=``).

    Only the CIFAR ResNets' parameter-free ``PadShortcut`` needs one; without it their
    dependency graph still builds, but pruning the residual trunk channels would be wrong.
    """
    return cifar_resnet.customized_pruners()


__all__ = ["create", "customized_pruners", "init_weights", "input_size", "names", "register"]
