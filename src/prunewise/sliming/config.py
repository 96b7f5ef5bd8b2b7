"""Step (i) of SLIMING: the pruning configuration N_g from one global threshold.

N_g(tau) = max(min_channels, #{c : s_{g,c} >= tau}) on the normalized singular values s, and
tau is found by bisection so that the pruned architecture's exact cost (MACs, params or channel
count, from :class:`prunewise.surgery.CostModel`) is the largest that fits the budget. Because
channels are discrete, a final greedy top-up adds the next-largest normalized singular values
that still fit, so the result sits as close under the budget as one channel allows.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import PrunewiseError


def counts_at(s: Sequence[np.ndarray], tau: float, min_channels: int, round_to: int | None):
    """N_g for threshold ``tau`` (respecting the floor and rounding)."""
    out = []
    for sg in s:
        n = int(np.sum(sg >= tau))
        if round_to and round_to > 1:
            n = int(np.ceil(n / round_to) * round_to)
        out.append(min(len(sg), max(n, min(min_channels, len(sg)))))
    return np.array(out)


def configure(sigmas: Sequence[torch.Tensor], cost: Callable[[np.ndarray], float], budget: float,
              *, normalize: str = "max", min_channels: int = 1, round_to: int | None = None,
              what: str = "budget") -> np.ndarray:
    """Channels kept per group so that ``cost(counts) <= budget``, maximizing the kept
    normalized nuclear norm (one global threshold + greedy top-up)."""
    from .spectrum import normalized

    if normalize not in ("max", "sum"):
        raise PrunewiseError(f"normalize must be 'max' or 'sum', got {normalize!r}")
    if isinstance(min_channels, bool) or int(min_channels) != min_channels or min_channels < 1:
        raise PrunewiseError(f"min_channels must be an integer >= 1, got {min_channels!r}")
    s = [normalized(torch.as_tensor(sg, dtype=torch.float64), normalize).numpy() for sg in sigmas]
    sizes = np.array([len(sg) for sg in s])
    floor = counts_at(s, np.inf, min_channels, round_to)
    if cost(floor) > budget * (1 + 1e-12):
        raise PrunewiseError(f"{what} is below what min_channels={min_channels} allows: the floor "
                             f"is {cost(floor) / max(cost(sizes), 1e-300):.4f} of the original; "
                             f"ask for at least that or lower --min-channels")
    if cost(sizes) <= budget:
        return sizes
    lo, hi = 0.0, float(max((sg.max() for sg in s if len(sg)), default=1.0)) + 1.0
    # invariant: cost(counts_at(hi)) <= budget < cost(counts_at(lo))
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if cost(counts_at(s, mid, min_channels, round_to)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    counts = counts_at(s, hi, min_channels, round_to)
    # top-up: next channels in order of their normalized singular value, while they fit
    step = round_to if round_to and round_to > 1 else 1
    cand = sorted(((float(s[g][c]), g) for g in range(len(s)) for c in range(counts[g], sizes[g])),
                  reverse=True)
    for _, g in cand[:5000]:
        if counts[g] >= sizes[g]:
            continue
        trial = counts.copy()
        trial[g] = min(sizes[g], counts[g] + step)
        if cost(trial) <= budget:
            counts = trial
    return counts
