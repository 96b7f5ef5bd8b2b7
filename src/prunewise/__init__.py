"""prunewise: faithful, fast pruning for PyTorch.

FVW (unstructured, CIKM 2023) and SLIMING (structured, Neural Networks 2025) on one pipeline:
score -> plan -> apply -> fine-tune -> measure -> report.
"""
from . import data, files, measure, models, train
from .errors import PrunewiseError
from .files import load_model, save_model

__version__ = "0.1.0"
__all__ = ["PrunewiseError", "data", "files", "load_model", "measure", "models", "save_model",
           "train"]
