"""prunewise: faithful, fast pruning for PyTorch.

FVW (unstructured, CIKM 2023) and SLIMING (structured, Neural Networks 2025) on one pipeline:
score -> plan -> apply -> fine-tune -> measure -> report.

    plan = prunewise.fvw.prune(model, batches, sparsity=0.9)          # a MaskPlan
    small, plan = prunewise.sliming.prune(model, example, macs=0.5)  # a smaller model + ChannelPlan
"""
from . import baselines, data, files, fvw, interop, measure, models, sliming, train
from .errors import PrunewiseError
from .files import load_model, save_model
from .plan import MaskPlan
from .surgery import ChannelPlan

__version__ = "0.1.0"
__all__ = ["ChannelPlan", "MaskPlan", "PrunewiseError", "baselines", "data", "files", "fvw",
           "interop", "load_model", "measure", "models", "save_model", "sliming", "train"]
