"""prunewise: faithful, fast pruning for PyTorch.

FVW (unstructured, CIKM 2023) and SLIMING (structured, Neural Networks 2025) on one pipeline:
score -> plan -> apply -> fine-tune -> measure -> report.

    plan = prunewise.fvw.prune(model, batches, sparsity=0.9)          # a MaskPlan
    small, plan = prunewise.sliming.prune(model, example, macs=0.5)  # a smaller model + ChannelPlan

Every submodule (``prunewise.runs``, ``prunewise.methods``, ...) is reachable from a plain
``import prunewise``; they are imported on first use, so the command line answers ``--help``
without importing torch.
"""
from __future__ import annotations

import importlib

from .errors import PrunewiseError

__version__ = "0.1.0"
__all__ = ["ChannelPlan", "MaskPlan", "PrunewiseError", "baselines", "bench", "checkpoints", "data",
           "files", "filters", "fvw", "interop", "layers", "load_model", "masking", "measure",
           "methods", "posttrain", "repair",
           "models", "runs", "save_model", "sliming", "structured", "surgery", "toy", "train"]
_NAMES = {"ChannelPlan": "plan", "MaskPlan": "plan", "load_model": "checkpoints",
          "save_model": "checkpoints"}


def __getattr__(name: str):
    """The submodule or public name ``name``, imported the first time it is asked for."""
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'prunewise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
