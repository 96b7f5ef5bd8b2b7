"""The zoo's registry and shared initialisation, kept apart from the package ``__init__`` so the
model files can register themselves without importing their own half-initialized package.

The package (:mod:`prunewise.models`) re-exports everything here and imports every model file.
"""
from __future__ import annotations

import inspect
import math
import operator
from typing import Callable

from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.schema import MAX_CLASSES, MAX_IN_CHANNELS

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZES: dict[str, int] = {}


def register(name: str, input_size: int) -> Callable:
    """Decorator: register ``fn(num_classes, in_channels, **kwargs) -> nn.Module`` as ``name``."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        _INPUT_SIZES[name] = int(input_size)
        return fn
    return deco


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_BUILDERS)


def _check(name: str) -> None:
    if name not in _BUILDERS:
        raise PrunewiseError(f"unknown model {name!r}; choose one of: {', '.join(names())}")


def input_size(name: str) -> int:
    """The model's natural square input side (32 for CIFAR models, 224 for ImageNet models)."""
    _check(name)
    return _INPUT_SIZES[name]


def _positive_int(what: str, value, most: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise PrunewiseError(f"{what} must be an integer >= 1, got {value!r}") from None
    if not 1 <= value <= most:
        raise PrunewiseError(f"{what} must be an integer in [1, {most}], got {value}")
    return value


def check_number(what: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); otherwise a PrunewiseError naming ``what``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise PrunewiseError(f"{what} must be a number in {span}, got {value!r}"[:200])
    return float(value)


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build model ``name``; sets ``model.prunewise_config`` to the construction arguments."""
    _check(name)
    num_classes = _positive_int("num_classes", num_classes, MAX_CLASSES)
    in_channels = _positive_int("in_channels", in_channels, MAX_IN_CHANNELS)
    fn = _BUILDERS[name]
    try:
        inspect.signature(fn).bind(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as e:
        allowed = [p for p in inspect.signature(fn).parameters
                   if p not in ("num_classes", "in_channels")]
        raise PrunewiseError(f"bad arguments for model {name!r}: {e}; extra arguments allowed: "
                             f"{', '.join(allowed) or 'none'}") from None
    model = fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.prunewise_config = {"arch": name, "num_classes": num_classes,
                              "in_channels": in_channels, **kwargs}
    return model


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal convs (fan_out, ReLU), BN weight 1 / bias 0, small-normal linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model
