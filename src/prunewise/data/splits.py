"""Seeded, stratified division of a training pool into train / held-out positions."""

from __future__ import annotations

import math

import numpy as np
import torch

from prunewise.errors import PrunewiseError

from .core import Split


def split_pool(
    labels: np.ndarray, fraction: float, seed: int, what: str, *, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..n-1`` divided into (keep, held_out) with ``fraction`` held out, seeded.

    Stratified by label when every class can be represented on both sides, else a plain
    seeded random split.  Order within each part is random (so an unshuffled ``limit`` still
    sees a mix of classes).  ``count`` (optional) holds out exactly that many positions
    instead of ``ceil(fraction * n)`` (``fraction`` is then ignored); scikit-learn draws the
    same split for a count as for a fraction that rounds up to that count.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    positions = np.arange(n)
    rs = int(seed) % (2**32)
    if count is None:
        if fraction <= 0.0:
            return np.random.RandomState(rs).permutation(n), np.empty(0, dtype=np.int64)
        n_held, test_size, asked = math.ceil(fraction * n), fraction, f"a fraction of {fraction}"
    else:
        if count <= 0:
            return np.random.RandomState(rs).permutation(n), np.empty(0, dtype=np.int64)
        n_held = test_size = int(count)
        asked = f"{n_held} sample(s)"
    if n_held >= n:
        raise PrunewiseError(
            f"{what}: {n} sample(s) are too few to hold out {asked}; "
            "use more data (a larger limit) or a smaller val_fraction"
        )
    try:
        keep, held = train_test_split(positions, test_size=test_size, random_state=rs, stratify=labels)
    except ValueError:  # some class too small to stratify
        keep, held = train_test_split(positions, test_size=test_size, random_state=rs, stratify=None)
    return np.asarray(keep, dtype=np.int64), np.asarray(held, dtype=np.int64)


def make_split(x: torch.Tensor, y: torch.Tensor, pos: np.ndarray, index: torch.Tensor | None = None) -> Split:
    """The samples of ``x``/``y`` at positions ``pos``; ``index`` records ``pos`` (or ``index[pos]``)."""
    p = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64))
    return Split(x=x[p].contiguous(), y=y[p].contiguous(), index=(p.clone() if index is None else index[p]))

