"""Step (i) of SLIMING: the pruning configuration N_g from one global threshold.

N_g(tau) = max(floor_g, #{c : s_{g,c} >= tau}) on the normalized singular values s, where
floor_g = max(min_channels, ceil(min_ratio * C_g)) (``min_ratio`` is our addition: a global
guard against layer collapse, see ``configure``), and
tau is found by bisection so that the pruned architecture's exact cost (MACs, params or channel
count, from :class:`prunewise.surgery.CostModel`) is the largest that fits the budget
(:func:`prunewise.structured.bisect`). Because channels are discrete, a final greedy top-up adds
the next-largest normalized singular values that still fit, so the result sits as close under
the budget as one channel allows. :func:`plan_counts` applies it to a model's analysis.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .. import engine as structured
from ...errors import BelowFloor, PrunewiseError
from ...methods import SlimingSettings
from ...settings import Structured
from .spectrum import normalized


def floors(sizes: Sequence[int], min_channels: int, min_ratio: float = SlimingSettings.min_ratio) -> np.ndarray:
    """The fewest channels each group may keep: max(min_channels, ceil(min_ratio * C_g)), <= C_g."""
    sizes = np.asarray(sizes)
    lo = np.maximum(min_channels, np.ceil(min_ratio * sizes - 1e-9).astype(int))
    return np.minimum(sizes, lo)


def counts_at(s: Sequence[np.ndarray], tau: float, floor: np.ndarray, round_to: int | None):
    """N_g for threshold ``tau``: at least the per-group floor, then rounded up to a multiple
    of ``round_to`` (the floor too, so every count is a multiple unless it is the whole group)."""
    out = []
    for sg, lo, r in zip(s, floor, _per_group(round_to, len(s))):
        n = max(int(np.sum(sg >= tau)), int(lo))
        if r > 1:
            n = int(np.ceil(n / r) * r)
        out.append(min(len(sg), n))
    return np.array(out)


def _per_group(round_to, n: int) -> list[int]:
    """``round_to`` as one step per group (an int applies to all; None is 1)."""
    if round_to is None:
        return [1] * n
    if isinstance(round_to, (int, np.integer)):
        return [int(round_to)] * n
    return [int(r) for r in round_to]


def configure(sigmas: Sequence[torch.Tensor], cost: Callable[[np.ndarray], float], budget: float,
              *, normalize: str = SlimingSettings.normalize, min_channels: int = Structured.min_channels, min_ratio: float = SlimingSettings.min_ratio,
              round_to: int | None = None, what: str = "budget") -> np.ndarray:
    """Channels kept per group so that ``cost(counts) <= budget``, maximizing the kept
    normalized nuclear norm (one global threshold + greedy top-up).

    ``min_ratio`` keeps at least that fraction of every group. The paper's threshold alone can
    starve a group whose spectrum is short (a first conv on grayscale input has rank <= 9) or
    steep (a classifier layer), which on our digits benchmark wrecked vgg16_bn; 0 is the
    method exactly as specified. ``round_to`` rounds every count (floors included) up to a
    multiple of it, capped at the group's size; the top-up then moves in steps of ``round_to``.
    """
    if normalize not in ("max", "sum"):
        raise PrunewiseError(f"normalize must be 'max' or 'sum', got {normalize!r}")
    if isinstance(min_channels, bool) or int(min_channels) != min_channels or min_channels < 1:
        raise PrunewiseError(f"min_channels must be an integer >= 1, got {min_channels!r}")
    if not 0 <= min_ratio < 1:
        raise PrunewiseError(f"min_ratio must be in [0, 1), got {min_ratio!r}")
    for r in ([] if round_to is None else [round_to] if not isinstance(round_to, (list, tuple,
                                                                                   np.ndarray))
              else list(round_to)):
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise PrunewiseError(f"round_to must be an integer >= 1, got {r!r}")
    # numpy (the bisection and the top-up) needs the spectra on the CPU
    s = [normalized(torch.as_tensor(sg, dtype=torch.float64), normalize).cpu().numpy()
         for sg in sigmas]
    sizes = np.array([len(sg) for sg in s])
    lowest = floors(sizes, min_channels, min_ratio)
    floor = counts_at(s, np.inf, lowest, round_to)
    if cost(floor) > budget * (1 + 1e-12):
        steps = set(_per_group(round_to, len(s)))
        rounding = ("" if steps <= {1} else f", round_to={steps.pop()}" if len(steps) == 1
                    else ", whole heads / equal parts")
        least = cost(floor) / max(cost(sizes), 1e-300)
        raise BelowFloor(f"{what} is below what min_channels={min_channels}, "
                         f"min_ratio={min_ratio:g}{rounding} allow: the floor is "
                         f"{least:.4f} of the original; "
                         f"ask for at least that or lower --min-channels / --min-ratio", least)
    if cost(sizes) <= budget:
        return sizes
    # above the largest value every group sits at its floor (fits); at 0 it keeps all (does not)
    top = float(max((sg.max() for sg in s if len(sg)), default=1.0)) + 1.0
    tau = structured.bisect(lambda t: cost(counts_at(s, t, lowest, round_to)) <= budget,
                            good=top, bad=0.0, steps=100, tol=1e-12)
    counts = counts_at(s, tau, lowest, round_to)
    # top-up: next channels in order of their normalized singular value, while they fit
    step = _per_group(round_to, len(s))
    cand = sorted(((float(s[g][c]), g) for g in range(len(s)) for c in range(counts[g], sizes[g])),
                  reverse=True)
    for _, g in cand[:5000]:
        if counts[g] >= sizes[g]:
            continue
        trial = counts.copy()
        trial[g] = min(sizes[g], counts[g] + step[g])
        if cost(trial) <= budget:
            counts = trial
    return counts


def plan_counts(a: "structured.Analysis", sigmas=None, *, macs=None, params=None, channels=None,
                latency=None,
                normalize: str = SlimingSettings.normalize, min_channels: int = Structured.min_channels, min_ratio: float = SlimingSettings.min_ratio,
                round_to: int | None = None) -> np.ndarray:
    """Step (i) on an analysis: N_g for every prunable group under exactly one budget."""
    total = int(sum(g.size for g in a.prunable))
    kind, value = structured.parse_budget(macs, params, channels, total, latency=latency)
    cost, limit = structured.budget_cost(a.cost, kind, value, total)
    sig = sigmas or [a.sigma[g.name] for g in a.prunable]
    steps = [math.lcm(g.unit, round_to or 1) for g in a.prunable]
    return configure(sig, cost, limit, normalize=normalize, min_channels=min_channels,
                     min_ratio=min_ratio, round_to=steps, what=f"{kind} budget {value:g}")
