"""SLIMING: singular-value-driven automated filter pruning (shared/METHODS.md section 2).

>>> pruned, plan = prunewise.sliming.prune(model, x, macs=0.5)

1. groups from Torch-Pruning's dependency graph; per group R_g (rows = channels) and its
   singular values (:mod:`.spectrum`);
2. step (i): one global threshold on the normalized singular values, bisected on the exact
   MACs / params / channel count of the pruned architecture (:mod:`.config`);
3. step (ii): GEM, greedy nuclear-norm selection of the kept channels (:mod:`.gem`);
4. surgery through Torch-Pruning (:mod:`prunewise.surgery`): a new, physically smaller model.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import surgery
from ..errors import PrunewiseError
from .config import configure
from .gem import EXACT_MAX, greedy_exact, greedy_fast, nuclear_norm, select
from .spectrum import gram, normalized, singular_values

__all__ = ["select", "prune", "analyze", "plan_counts", "Analysis", "configure", "one_thread",
           "greedy_exact", "greedy_fast", "nuclear_norm", "singular_values", "gram", "normalized",
           "EXACT_MAX"]


@contextlib.contextmanager
def one_thread():
    """Small dense linear algebra (Gram, eigvalsh, greedy steps) is fastest, and far steadier on
    a shared CPU, with one intra-op thread; restore the caller's setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class Analysis:
    """Everything the methods need about one (copied) model: graph, groups, R, spectra, cost."""
    model: nn.Module
    dg: object
    infos: list
    prunable: list
    R: dict
    sigma: dict
    cost: surgery.CostModel
    seconds: float


def analyze(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None, *,
            spectra: bool = True) -> Analysis:
    """Trace ``model`` (in place: pass a copy if it must stay untouched), enumerate its groups,
    build every prunable group's R and singular values, and the exact cost model."""
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor):
        raise PrunewiseError("example_inputs must be a tensor (one batch of inputs)")
    ignored = list(ignored_layers or [])
    dg = surgery.build_graph(model, example_inputs, ignored)
    infos = surgery.groups(dg, ignored)
    prunable = [g for g in infos if g.prunable]
    if not prunable:
        raise PrunewiseError("this model has no prunable channel group (all are outputs, "
                             "ignored, or on a zero-padding shortcut)")
    R, sigma = {}, {}
    if spectra:
        with one_thread():
            for g in prunable:
                R[g.name] = surgery.group_matrix(model, g)
                sigma[g.name] = singular_values(R[g.name])
    cost = surgery.CostModel(model, example_inputs, infos)
    return Analysis(model, dg, infos, prunable, R, sigma, cost, time.perf_counter() - t0)


def _budget(macs, params, channels, total_channels: int) -> tuple[str, float]:
    given = [(k, v) for k, v in (("macs", macs), ("params", params), ("channels", channels))
             if v is not None]
    if len(given) != 1:
        raise PrunewiseError(f"give exactly one budget (macs, params or channels), got "
                             f"{', '.join(k for k, _ in given) or 'none'}")
    kind, value = given[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PrunewiseError(f"{kind} budget must be a number, got {value!r}")
    if kind == "channels" and isinstance(value, int):
        if not 1 <= value <= total_channels:
            raise PrunewiseError(f"channels budget must be in [1, {total_channels}] (the prunable "
                                 f"channels), got {value}")
        return kind, float(value)
    if not 0 < value < 1:
        raise PrunewiseError(f"{kind} budget must be a fraction in (0, 1) of the original, "
                             f"got {value}")
    return kind, float(value)


def plan_counts(a: Analysis, sigmas=None, *, macs=None, params=None, channels=None,
                normalize: str = "max", min_channels: int = 1, min_ratio: float = 0.0,
                round_to: int | None = None) -> np.ndarray:
    """Step (i) on an analysis: N_g for every prunable group under exactly one budget."""
    total = int(sum(g.size for g in a.prunable))
    kind, value = _budget(macs, params, channels, total)
    if kind == "macs":
        cost, limit = a.cost.macs, value * a.cost.full_macs
    elif kind == "params":
        cost, limit = a.cost.params, value * a.cost.full_params
    else:
        cost = lambda c: float(np.sum(c))  # noqa: E731
        limit = value if value >= 1 else value * total
    sig = sigmas or [a.sigma[g.name] for g in a.prunable]
    return configure(sig, cost, limit, normalize=normalize, min_channels=min_channels,
                     min_ratio=min_ratio, round_to=round_to, what=f"{kind} budget {value:g}")


def prune(model: nn.Module, example_inputs: torch.Tensor, *, macs: float | None = None,
          params: float | None = None, channels: float | None = None, normalize: str = "max",
          min_channels: int = 1, ignored_layers=None, round_to: int | None = None,
          min_ratio: float = 0.0):
    """SLIMING: a NEW smaller model under exactly one budget, and its :class:`ChannelPlan`.

    ``macs`` / ``params``: fraction in (0, 1) of the original's; ``channels``: total kept
    channels over the prunable groups (an int) or a fraction. ``ignored_layers`` (modules of
    ``model``) keep their output channels. The input model is left untouched. Runs with one
    intra-op thread (restored afterwards): tracing and the small eigenproblems are faster so.
    ``min_ratio`` keeps at least that fraction of every group (0 = the paper's method; see
    :func:`prunewise.sliming.config.configure`).
    """
    with one_thread():
        return _prune(model, example_inputs, macs=macs, params=params, channels=channels,
                      normalize=normalize, min_channels=min_channels, min_ratio=min_ratio,
                      ignored_layers=ignored_layers, round_to=round_to)


def _prune(model, example_inputs, *, macs, params, channels, normalize, min_channels,
           min_ratio, ignored_layers, round_to):
    t0 = time.perf_counter()
    new, ignored_layers = surgery.copy_with_ignored(model, ignored_layers)
    a = analyze(new, example_inputs, ignored_layers)
    counts = plan_counts(a, macs=macs, params=params, channels=channels, normalize=normalize,
                         min_channels=min_channels, min_ratio=min_ratio, round_to=round_to)
    t1 = time.perf_counter()
    keep = {}
    with one_thread():
        for g, n in zip(a.prunable, counts):
            keep[g.name] = select(a.R[g.name], int(n)) if n < g.size else torch.arange(g.size)
    t2 = time.perf_counter()
    plan = surgery.make_plan(new, a.infos, keep, meta={
        "method": "sliming", "normalize": normalize, "min_channels": min_channels,
        "min_ratio": min_ratio,
        "budget": {"macs": macs, "params": params, "channels": channels},
        "predicted_macs": a.cost.macs(counts), "predicted_params": a.cost.params(counts),
        "original_macs": a.cost.full_macs, "original_params": a.cost.full_params,
        "groups": surgery.describe(a.infos),
        "seconds": {"spectra": a.seconds, "configuration": t1 - t0 - a.seconds,
                    "selection": t2 - t1}})
    plan.spectra = a.sigma
    surgery.prune_in_place(new, a.dg, a.infos, plan)
    plan.meta["seconds"]["surgery"] = time.perf_counter() - t2
    new.eval() if not model.training else new.train()
    return new, plan
