"""Unstructured baselines on FVW's plan type and selection loop, so a comparison isolates the score.

* :func:`magnitude` -- global ``|w|``.
* :func:`taylor` -- first-order Taylor / SNIP-like ``|w * dL/dw|``: one gradient of the mean
  cross-entropy over all attribution samples, no attack.
* :func:`random` -- uniform random scores (seeded; reproducible and resumable).

All take the arguments of :func:`prunewise.fvw.prune` that are not FVW-specific and iterate the
same schedule (the scorers are cheap; magnitude and random give the same result as one shot).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PrunewiseError
from .fvw import iterative_prune
from .plan import MaskPlan

METHODS = ("magnitude", "taylor", "random")


def _magnitude_score(work, masks, t, data, names):
    named = dict(work.named_parameters())
    return {n: named[n].detach().abs() * masks[n] for n in names}, {}


def _taylor_score(work, masks, t, data, names):
    model = copy.deepcopy(work)
    model.eval()
    named = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        named[n].requires_grad_(True)
    seen = 0
    for x, y in data:
        loss = F.cross_entropy(model(x), y, reduction="sum")
        loss.backward()
        seen += len(y)
    if seen == 0:
        raise PrunewiseError("the attribution data is empty: no samples to score with")
    out = {}
    for n in names:
        g = named[n].grad if named[n].grad is not None else torch.zeros_like(named[n])
        out[n] = (g * named[n].detach()).abs_().mul_(masks[n]) / seen
    return out, {}


def _random_scorer(seed: int):
    def score(work, masks, t, data, names):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + t)
        return {n: torch.rand(masks[n].shape, generator=gen, dtype=torch.float64) for n in names}, {}
    return score


def _run(method: str, scorer, needs_data: bool, model, batches, *, sparsity, keep, samples, params,
         eval_batches, checkpoint_dir, seed, callback, progress, levels, on_level) -> MaskPlan:
    return iterative_prune(model, batches, scorer, method=method, sparsity=sparsity, keep=keep,
                           samples=samples, params=params, eval_batches=eval_batches,
                           checkpoint_dir=checkpoint_dir, seed=seed, callback=callback,
                           progress=progress, levels=levels, on_level=on_level,
                           needs_data=needs_data)


def magnitude(model: nn.Module, batches=None, *, sparsity: float, keep: float = 0.98,
              samples: int | None = None, params: Any = None, eval_batches=None,
              checkpoint_dir: str | Path | None = None, seed: int = 0,
              callback: Callable[[dict], None] | None = None, progress: bool = False,
              levels: Sequence[float] = (), on_level: Callable | None = None) -> MaskPlan:
    """Global magnitude pruning (``|w|``); ``batches`` is not needed (accepted for symmetry)."""
    return _run("magnitude", _magnitude_score, False, model, batches, sparsity=sparsity, keep=keep,
                samples=samples, params=params, eval_batches=eval_batches,
                checkpoint_dir=checkpoint_dir, seed=seed, callback=callback, progress=progress,
                levels=levels, on_level=on_level)


def taylor(model: nn.Module, batches, *, sparsity: float, keep: float = 0.98,
           samples: int | None = None, params: Any = None, eval_batches=None,
           checkpoint_dir: str | Path | None = None, seed: int = 0,
           callback: Callable[[dict], None] | None = None, progress: bool = False,
           levels: Sequence[float] = (), on_level: Callable | None = None) -> MaskPlan:
    """First-order Taylor pruning: ``|w * grad|`` with one gradient per iteration, no attack."""
    return _run("taylor", _taylor_score, True, model, batches, sparsity=sparsity, keep=keep,
                samples=samples, params=params, eval_batches=eval_batches,
                checkpoint_dir=checkpoint_dir, seed=seed, callback=callback, progress=progress,
                levels=levels, on_level=on_level)


def random(model: nn.Module, batches=None, *, sparsity: float, keep: float = 0.98,
           samples: int | None = None, params: Any = None, eval_batches=None,
           checkpoint_dir: str | Path | None = None, seed: int = 0,
           callback: Callable[[dict], None] | None = None, progress: bool = False,
           levels: Sequence[float] = (), on_level: Callable | None = None) -> MaskPlan:
    """Random pruning (seeded by ``seed``); ``batches`` is not needed."""
    return _run("random", _random_scorer(seed), False, model, batches, sparsity=sparsity,
                keep=keep, samples=samples, params=params, eval_batches=eval_batches,
                checkpoint_dir=checkpoint_dir, seed=seed, callback=callback, progress=progress,
                levels=levels, on_level=on_level)


def get(method: str) -> Callable[..., MaskPlan]:
    """The pruning function for ``method`` ('fvw', 'magnitude', 'taylor' or 'random')."""
    if method == "fvw":
        from .fvw import prune
        return prune
    if method in METHODS:
        return globals()[method]
    raise PrunewiseError(f"unknown method '{method}'; choose one of: fvw, {', '.join(METHODS)}")
