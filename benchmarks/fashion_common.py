"""What the Fashion-MNIST benchmark scripts share: the budgets, and where the base checkpoints,
the results and the plots live (imported by fashion_quality, fashion_summary and the probes, so
none of them imports another)."""
from __future__ import annotations

from pathlib import Path

from common import HERE

OUT = HERE / "results" / "fashion"
LEVELS = (0.8, 0.9, 0.95, 0.98)
BUDGETS = (0.5, 0.25)


def results_dir(model: str) -> Path:
    """Where a base model's results go: resnet20's in ``fashion/``, any other's beside it."""
    return OUT if model == "resnet20" else OUT.parent / f"fashion-{model}"


def plot_path(model: str) -> Path:
    """The summary's unstructured plot: ``docs/fashion-unstructured.png`` for resnet20 (the one
    the README shows first), ``docs/fashion-unstructured-MODEL.png`` for any other."""
    return HERE.parent / "docs" / ("fashion-unstructured.png" if model == "resnet20"
                                   else f"fashion-unstructured-{model}.png")


def base_path(model: str, seed: int) -> Path:
    return HERE / "checkpoints" / f"{model}-fashion-mnist-s{seed}"
