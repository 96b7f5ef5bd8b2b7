"""Unstructured baselines on the shared mask engine (:mod:`prunewise.masking`), so a comparison
with FVW isolates the score.

* :func:`magnitude` -- global ``|w|``.
* :func:`taylor` -- first-order Taylor / SNIP-like ``|w * dL/dw|``: one gradient of the task's
  mean loss over all attribution samples, no attack.
* :func:`random` -- uniform random scores (seeded; reproducible and resumable).
* :func:`obd` -- ours: second-order (empirical Fisher) loss increase ``0.5 * F * w^2``.

Each is a :class:`~prunewise.masking.Scorer` of a few lines (:func:`magnitude_score`,
:func:`taylor_score`, :func:`obd_score`, :func:`random_scorer`), the builder its row of the
method table (:mod:`prunewise.methods`) names, and a keyword entry point that runs the shared
loop with the keywords of :class:`prunewise.masking.LoopSettings` (the scorers are cheap;
magnitude and random give the same result as one shot).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import device, methods
from . import engine as masking
from ..errors import PrunewiseError
from ..plan import MaskPlan
from ..utils import forward, take

#: Samples per backward pass when OBD estimates the curvature (squared per-chunk gradients).
OBD_CHUNK = 8


def magnitude_score(work, masks, data, iteration):
    """Scorer: ``|w| * M``."""
    named = dict(work.named_parameters())
    return {n: named[n].detach().abs() * masks[n] for n in masks}, {}


def taylor_score(work, masks, data, iteration):
    """Scorer: ``|w * dL/dw| * M`` with L the task's loss (:meth:`prunewise.tasks.Task.loss_sum`)
    over all of ``data``, divided by the number of samples, on the model's device; under
    torchrun the gradient is exactly the single-process one
    (:func:`prunewise.masking.gradient_sweep`)."""
    model, ps = masking.grad_copy(work, list(masks))
    named = dict(zip(masks, ps))
    _, _, seen = masking.gradient_sweep(model, ps, data, masking.task_of(data).loss_sum)
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
    model, ps = masking.grad_copy(work, list(masks))
    fisher = [torch.zeros_like(p, dtype=torch.float64) for p in ps]
    chunks = 0
    dev = device.of(model)
    task = masking.task_of(data)
    for x, y in data:
        x, y = device.pair(x, y, dev)
        for start in range(0, len(y), OBD_CHUNK):
            xc, yc = take(x, slice(start, start + OBD_CHUNK)), take(y, slice(start, start + OBD_CHUNK))
            loss, _ = task.loss_sum(forward(model, xc), (xc, yc))
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
            for f, g, p in zip(fisher, grads, ps):  # (sum of the chunk's gradients)^2 / its size
                g = torch.zeros_like(p) if g is None else g
                f.addcmul_(g, g, value=1.0 / len(yc))
            chunks += 1
    if chunks == 0:
        raise PrunewiseError("the attribution data is empty: no samples to score with")
    return {n: (f / chunks * p.detach().double().square() * 0.5).mul_(masks[n])
            for n, p, f in zip(masks, ps, fisher)}, {}


def magnitude_scorer(settings, seed: int = 0) -> masking.Scorer:
    """The method table's builder for ``magnitude``."""
    return magnitude_score


def taylor_scorer(settings, seed: int = 0) -> masking.Scorer:
    """The method table's builder for ``taylor``."""
    return taylor_score


def obd_scorer(settings, seed: int = 0) -> masking.Scorer:
    """The method table's builder for ``obd``."""
    return obd_score


def random_scorer(settings, seed: int = 0) -> masking.Scorer:
    """Scorer: uniform random scores, drawn from ``seed`` and the iteration (so resumable)."""
    def score(work, masks, data, iteration):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + iteration)
        return {n: torch.rand(masks[n].shape, generator=gen, dtype=torch.float64) for n in masks}, {}
    return score


def entry(name: str, doc: str) -> Callable[..., MaskPlan]:
    """The keyword entry point of one mask method (``baselines.magnitude(model, batches,
    sparsity=0.9)``): its row of the method table on the shared loop, with the row's
    allocation unless ``allocation=`` says otherwise."""
    row = methods.get(name, methods.UNSTRUCTURED)

    def prune(model: nn.Module, batches=None, **loop) -> MaskPlan:
        settings = masking.LoopSettings(**{"allocation": row.allocation, **loop})
        return masking.run(model, batches, row.builder()(row.options(), settings.seed), settings,
                           method=name, needs_data=row.needs_data)

    prune.__name__ = prune.__qualname__ = name
    prune.__doc__ = doc + _COMMON
    return prune


_COMMON = """

    The keywords are the shared loop's (:class:`prunewise.masking.LoopSettings`: ``sparsity``,
    ``keep``, ``samples``, ``params``, ``levels`` / ``on_level``, ``eval_batches``,
    ``checkpoint_dir``, ``seed``, ``callback``, ``progress``, ``recalibrate`` /
    ``recalibrate_samples``, ``allocation``), with the meaning :func:`prunewise.fvw.prune` gives them;
    ``model`` is not modified.
    """

magnitude = entry("magnitude", "Global magnitude pruning (``|w|``); ``batches`` is only "
                                "needed with ``recalibrate``.")
taylor = entry("taylor", "First-order Taylor pruning: ``|w * grad|`` with one gradient per "
                          "iteration, no attack.")
obd = entry("obd", "Optimal-brain-damage pruning with empirical-Fisher curvature (ours): "
                    "``0.5 * F * w^2`` per weight, recomputed every iteration.")
random = entry("random", "Random pruning (seeded by ``seed``); ``batches`` is only needed with "
                          "``recalibrate``.")
