"""Unstructured baselines on the shared mask engine (:mod:`prunewise.masking`), so a comparison
with FVW isolates the score.

* :func:`magnitude` -- global ``|w|``.
* :func:`taylor` -- first-order Taylor / SNIP-like ``|w * dL/dw|``: one gradient of the mean
  cross-entropy over all attribution samples, no attack.
* :func:`random` -- uniform random scores (seeded; reproducible and resumable).
* :func:`obd` -- ours: second-order (empirical Fisher) loss increase ``0.5 * F * w^2``.

Each is a :class:`~prunewise.masking.Scorer` of a few lines (:func:`magnitude_score`,
:func:`taylor_score`, :func:`random_scorer`) plus an entry point that takes the arguments of
:func:`prunewise.fvw.prune` that are not FVW-specific and iterates the same schedule (the
scorers are cheap; magnitude and random give the same result as one shot).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import device, fvw, masking
from .errors import PrunewiseError
from .plan import MaskPlan

METHODS = ("magnitude", "taylor", "random", "obd")
#: Samples per backward pass when OBD estimates the curvature (squared per-chunk gradients).
OBD_CHUNK = 8


def magnitude_score(work, masks, data, iteration):
    """Scorer: ``|w| * M``."""
    named = dict(work.named_parameters())
    return {n: named[n].detach().abs() * masks[n] for n in masks}, {}


def summed_ce(out: torch.Tensor, y: torch.Tensor):
    """Taylor's loss of one batch: the summed cross-entropy of every sample, and their number."""
    return F.cross_entropy(out, y, reduction="sum"), len(y)


def taylor_score(work, masks, data, iteration):
    """Scorer: ``|w * dL/dw| * M`` with L the mean cross-entropy over all of ``data``, on the
    model's device; under torchrun the gradient is exactly the single-process one
    (:func:`prunewise.masking.gradient_sweep`)."""
    model = copy.deepcopy(work)
    model.eval()
    named = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in masks:
        named[n].requires_grad_(True)
    _, _, seen = masking.gradient_sweep(model, [named[n] for n in masks], data, summed_ce)
    if seen == 0:
        raise PrunewiseError("the attribution data is empty: no samples to score with")
    out = {}
    for n in masks:
        g = named[n].grad if named[n].grad is not None else torch.zeros_like(named[n])
        out[n] = (g * named[n].detach()).abs_().mul_(masks[n]) / seen
    return out, {}


def obd_score(work, masks, data, iteration):
    """Scorer (ours): the second-order loss increase of removing each weight,
    ``0.5 * F * w^2 * M``, with ``F`` the diagonal empirical Fisher (the mean squared
    per-sample gradient, estimated from chunks of :data:`OBD_CHUNK` samples).

    Why: at a trained network the data-set gradient nearly cancels (it is zero at a minimum),
    so first-order scores such as ``|w * grad|`` rank weights by sampling noise; the curvature
    term does not cancel. See docs/methods.md, section "Why gradient scores lose to |w|".
    Under torchrun every rank computes it on all of ``data`` (the same result as one process).
    """
    model = copy.deepcopy(work)
    model.eval()
    named = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    ps = [named[n] for n in masks]
    for p in ps:
        p.requires_grad_(True)
    fisher = [torch.zeros_like(p, dtype=torch.float64) for p in ps]
    chunks = 0
    dev = device.of(model)
    for x, y in data:
        x, y = device.pair(x, y, dev)
        for xc, yc in zip(x.split(OBD_CHUNK), y.split(OBD_CHUNK)):
            grads = torch.autograd.grad(F.cross_entropy(model(xc), yc, reduction="sum"), ps)
            for f, g in zip(fisher, grads):  # (sum of the chunk's gradients)^2 / its size
                f.addcmul_(g, g, value=1.0 / len(yc))
            chunks += 1
    if chunks == 0:
        raise PrunewiseError("the attribution data is empty: no samples to score with")
    return {n: (f / chunks * p.detach().double().square() * 0.5).mul_(masks[n])
            for n, p, f in zip(masks, ps, fisher)}, {}


def random_scorer(seed: int) -> masking.Scorer:
    """Scorer: uniform random scores, drawn from ``seed`` and the iteration (so resumable)."""
    def score(work, masks, data, iteration):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + iteration)
        return {n: torch.rand(masks[n].shape, generator=gen, dtype=torch.float64) for n in masks}, {}
    return score


def _entry(method: str, scorer: Callable[[int], masking.Scorer], needs_data: bool,
           doc: str) -> Callable[..., MaskPlan]:
    """The public entry point of one baseline: every baseline takes the same arguments (those
    of :func:`prunewise.fvw.prune` that are not FVW-specific); only the scorer differs.
    ``scorer(seed)`` builds the scorer; with ``needs_data`` the batches are required."""

    def prune(model: nn.Module, batches=None, *, sparsity: float, keep: float = 0.98,
              samples: int | None = None, params: Any = None, eval_batches=None,
              checkpoint_dir: str | Path | None = None, seed: int = 0,
              callback: Callable[[dict], None] | None = None, progress: bool = False,
              levels: Sequence[float] = (), on_level: Callable | None = None,
              recalibrate: bool = False, recalibrate_samples: int | None = None) -> MaskPlan:
        loop = masking.LoopSettings(
            sparsity=sparsity, keep=keep, samples=samples, params=params, levels=levels,
            eval_batches=eval_batches, checkpoint_dir=checkpoint_dir, seed=seed,
            callback=callback, on_level=on_level, progress=progress, recalibrate=recalibrate,
            recalibrate_samples=recalibrate_samples)
        return masking.run(model, batches, scorer(seed), loop, method=method,
                           needs_data=needs_data)

    if needs_data:  # no default for batches: the scorer cannot run without data
        prune.__defaults__ = None
    prune.__name__ = prune.__qualname__ = method
    prune.__doc__ = doc
    return prune


_COMMON = """

    The arguments are those of :func:`prunewise.fvw.prune` that are not FVW-specific, with the
    same meaning (see :class:`prunewise.masking.LoopSettings`); ``model`` is not modified.
    """

magnitude = _entry("magnitude", lambda seed: magnitude_score, False,
                   "Global magnitude pruning (``|w|``); ``batches`` is only needed with "
                   "``recalibrate``." + _COMMON)
taylor = _entry("taylor", lambda seed: taylor_score, True,
                "First-order Taylor pruning: ``|w * grad|`` with one gradient per iteration, "
                "no attack." + _COMMON)
obd = _entry("obd", lambda seed: obd_score, True,
             "Optimal-brain-damage pruning with empirical-Fisher curvature (ours): "
             "``0.5 * F * w^2`` per weight, recomputed every iteration." + _COMMON)
random = _entry("random", random_scorer, False,
                "Random pruning (seeded by ``seed``); ``batches`` is only needed with "
                "``recalibrate``." + _COMMON)


def get(method: str) -> Callable[..., MaskPlan]:
    """The pruning function for ``method`` ('fvw', 'magnitude', 'taylor' or 'random')."""
    if method == "fvw":
        return fvw.prune
    if method in METHODS:
        return globals()[method]
    raise PrunewiseError(f"unknown method '{method}'; choose one of: fvw, {', '.join(METHODS)}")
