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
import importlib.abc
import importlib.util
import sys

from .errors import PrunewiseError

__version__ = "0.1.0"

#: Where the modules of the flat layout live now (packages by kind); the old names stay
#: importable (``import prunewise.runs``, ``from prunewise.masking import Source``) and are the
#: very same module objects as the new ones.
MOVED = {"runs": "pipeline.runs", "stages": "pipeline.stages", "bench": "pipeline.bench",
         "demo": "pipeline.demo", "report": "pipeline.report",
         "masking": "unstructured.engine", "fvw": "unstructured.fvw",
         "baselines": "unstructured.baselines", "posttrain": "unstructured.posttrain",
         "filters": "structured.baselines", "surgery": "structured.surgery",
         "sliming": "structured.sliming", "toy": "structured.sliming.toy"}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``prunewise.OLD[.sub]`` as the module that now holds it (one module object
    under both names)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head != __name__ or not rest:
            return None
        first, _, tail = rest.partition(".")
        if first not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        first, _, tail = spec.name.partition(".")[2].partition(".")
        real = importlib.import_module(f"{__name__}.{MOVED[first]}" + (f".{tail}" if tail else ""))
        spec.loader_state = real.__spec__
        return real

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state   # the real module keeps its own spec


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.insert(0, _Moved())

__all__ = ["ChannelPlan", "MaskPlan", "PrunewiseError", "baselines", "bench", "checkpoints", "data",
           "files", "filters", "fvw", "interop", "layers", "load_model", "masking", "measure",
           "methods", "pipeline", "posttrain", "repair", "settings", "stages", "tasks",
           "models", "runs", "save_model", "sliming", "structured", "surgery", "toy", "train",
           "unstructured"]
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
