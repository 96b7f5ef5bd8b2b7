"""The structured (filter / channel) pruning engine, shared by every structured method.

A structured method is a pair of steps on an :class:`Analysis` of a copy of the model:

* ``configure(a) -> counts``: how many channels each prunable group keeps (an int per group of
  ``a.prunable``, in order), usually found by :func:`bisect` on the exact cost model so the
  pruned model meets a MACs / params / channel budget;
* ``select(a, g, n) -> indices``: which ``n`` channels of group ``g`` stay (called only when
  ``n < g.size``, group by group in ``a.prunable`` order).

:func:`prune` runs the skeleton: copy, trace the groups (Torch-Pruning's dependency graph, see
:mod:`prunewise.surgery`), build the cost model, configure, select, write the
:class:`~prunewise.plan.ChannelPlan` with its metadata, and cut the copy down.
SLIMING (:mod:`prunewise.sliming`) and the baselines (:mod:`prunewise.filters`) are such pairs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import device
from . import surgery
from ..errors import PrunewiseError
from ..plan import ChannelPlan
from ..utils import one_thread

Configure = Callable[["Analysis"], np.ndarray]
Select = Callable[["Analysis", surgery.GroupInfo, int], torch.Tensor]
Spectrum = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Analysis:
    """Everything the methods need about one (copied) model: graph, groups, R, spectra, cost."""
    model: nn.Module
    dg: object
    infos: list
    prunable: list
    R: dict          # group name -> R_g (C x D, rows = channels), see surgery.group_matrix
    sigma: dict      # group name -> singular values of R_g (empty without a spectrum)
    cost: surgery.CostModel
    seconds: float
    gram: dict = field(default_factory=dict)   # group name -> R_g R_g^T (float64), when kept


#: The largest C x C Gram matrix (bytes) an analysis keeps for the selection step to reuse.
GRAM_KEPT = 64 << 20


def gram(R: torch.Tensor) -> torch.Tensor:
    """K = R R^T in float64 (C x C): what both the spectrum and GEM need."""
    R = R.detach().double()
    return R @ R.T


def analyze(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None, *,
            matrices: bool = True, spectrum: Spectrum | None = None) -> Analysis:
    """Trace ``model`` (in place: pass a copy if it must stay untouched), enumerate its groups,
    build every prunable group's R (``matrices``) and its ``spectrum(R)`` when one is given, and
    the exact cost model."""
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise PrunewiseError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, (torch.Tensor, tuple, list, dict)):
        raise PrunewiseError("example_inputs must be one batch of inputs: a tensor, or a tuple "
                             "or dict of tensors")
    ignored = list(ignored_layers or [])
    example_inputs = device.to(example_inputs, device.of(model))  # trace where the model is
    dg = surgery.build_graph(model, example_inputs, ignored)
    infos = surgery.groups(dg, model, ignored)
    prunable = [g for g in infos if g.prunable]
    if not prunable:
        why = sorted({g.reason for g in infos if g.reason})
        raise PrunewiseError(f"this model has no prunable channel group: "
                             f"{'; '.join(why[:4]) or 'none was found'}")
    R, sigma, grams = {}, {}, {}
    if matrices:
        with one_thread():
            for g in prunable:
                R[g.name] = surgery.group_matrix(model, g)
                C, D = R[g.name].shape
                if spectrum is not None and C <= D and C * C * 8 <= GRAM_KEPT:
                    grams[g.name] = gram(R[g.name])   # computed once: the spectrum and GEM
                    sigma[g.name] = spectrum(R[g.name], grams[g.name])
                elif spectrum is not None:
                    sigma[g.name] = spectrum(R[g.name])
    cost = surgery.CostModel(model, example_inputs, infos)
    return Analysis(model, dg, infos, prunable, R, sigma, cost, time.perf_counter() - t0, grams)


# --------------------------------------------------------------------------- budgets
def parse_budget(macs=None, params=None, channels=None, total_channels: int = 0,
                 latency=None) -> tuple[str, float]:
    """Check that exactly one budget is given; ``(kind, value)``. ``macs`` / ``params`` /
    ``latency``: a fraction in (0, 1) of the original; ``channels``: an int in [1,
    total_channels] or a fraction."""
    given = [(k, v) for k, v in (("macs", macs), ("params", params), ("channels", channels),
                                 ("latency", latency)) if v is not None]
    if len(given) != 1:
        raise PrunewiseError(f"give exactly one budget (macs, params, channels or latency), got "
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


def budget_cost(cost: surgery.CostModel, kind: str, value: float, total_channels: int = 0
                ) -> tuple[Callable[[np.ndarray], float], float]:
    """The cost function of a configuration (counts per prunable group) for budget ``kind``,
    and the largest cost allowed."""
    if kind == "macs":
        return cost.macs, value * cost.full_macs
    if kind == "params":
        return cost.params, value * cost.full_params
    if kind == "latency":   # predicted by the device's table (prunewise.structured.latency)
        table = getattr(cost, "latency_table", None)
        if table is None:
            raise PrunewiseError("a latency budget needs the device's latency table "
                                 "(runs.channel_plan builds it)")
        return (lambda c: table.predict(cost, c)), value * table.predict(cost, cost.sizes)
    return (lambda c: float(np.sum(c))), (value if value >= 1 else value * total_channels)


def bisect(fits: Callable[[float], bool], good: float, bad: float, *, steps: int = 100,
           tol: float = 0.0) -> float:
    """Budget search: the point between ``good`` (where ``fits`` holds) and ``bad`` (where it
    does not) closest to the boundary, after ``steps`` halvings or once the bracket is below
    ``tol``. ``fits`` must be monotone along the segment; ``good`` may be above or below
    ``bad``. Always returns a point where ``fits`` held (or ``good`` itself)."""
    for _ in range(steps):
        mid = 0.5 * (good + bad)
        if fits(mid):
            good = mid
        else:
            bad = mid
        if abs(good - bad) < tol:
            break
    return good


# --------------------------------------------------------------------------- valid selections
def round_count(n: int, g: surgery.GroupInfo, round_to: int | None = None) -> int:
    """``n`` channels of group ``g`` rounded to the nearest count its structure allows (a
    multiple of its heads' or parts' size and of ``round_to``, at least one such step, at most
    the group)."""
    u = math.lcm(g.unit, round_to or 1)
    if u == 1:
        return int(n)
    return int(min(g.size, max(u, u * int(np.floor(n / u + 0.5)))))


def views(a: Analysis, g: surgery.GroupInfo, spectrum: Spectrum | None = None) -> list:
    """What a selection step ranks for group ``g``: ``[g]`` for a plain group; one view per
    head for an attention group (a "channel" of the view is a whole head, its row of R the
    head's rows side by side, so SLIMING ranks heads by the singular values of their weight
    blocks); one view per part for a GroupNorm / grouped-conv / multi-head group (each part
    keeps the same count); one view of heads per key-value group for grouped-query attention.
    A view's ``units`` map its channels to ``g``'s."""
    from dataclasses import replace

    if g.unit == 1:
        return [g]
    R = a.R.get(g.name)
    per = g.size // g.parts          # channels per part; a unit inside it is one head (or one)
    step = g.head
    out = [replace(g, name=f"{g.name}#part{p}" if g.parts > 1 else f"{g.name}#heads",
                   size=per // step, head=1, parts=1, parent=g.name,
                   units=[torch.arange(p * per + u * step, p * per + (u + 1) * step)
                          for u in range(per // step)])
           for p in range(g.parts)]
    for v in out:
        if R is not None:
            a.R[v.name] = torch.stack([R[u].reshape(-1) for u in v.units])
            if spectrum is not None:
                a.sigma[v.name] = spectrum(a.R[v.name])
    return out


def select_valid(select: Select, a: Analysis, g: surgery.GroupInfo, n: int,
                 spectrum: Spectrum | None = None) -> torch.Tensor:
    """``select``'s ``n`` channels of ``g``, as whole heads, equally from every part, or (with
    grouped-query attention) as the same number of whole heads from every part."""
    vs = views(a, g, spectrum)
    if vs == [g]:
        return select(a, g, n)
    k = n // g.unit
    kept = [torch.cat([v.units[int(i)] for i in select(a, v, k)]) for v in vs]
    return torch.cat(kept).sort().values


# --------------------------------------------------------------------------- the skeleton
def prune(model: nn.Module, example_inputs: torch.Tensor, configure: Configure, select: Select,
          *, ignored_layers=None, spectrum: Spectrum | None = None, meta: dict | None = None,
          latency_table=None) -> tuple[nn.Module, ChannelPlan]:
    """Run one structured method (a ``configure`` and a ``select`` step, see the module doc) on
    a copy of ``model``: a NEW, physically smaller model and its ChannelPlan.

    ``ignored_layers`` (modules of ``model``) keep their output channels; ``spectrum`` (R ->
    singular values) fills ``a.sigma`` and ``plan.spectra``; ``meta`` (the method's settings)
    starts the plan's metadata, to which the predicted and original cost, the groups and the
    timings are added; ``latency_table`` (:class:`prunewise.structured.latency.Table`) prices
    a latency budget. The input model is left untouched; runs with one intra-op thread.
    """
    with one_thread():
        t0 = time.perf_counter()
        new, ignored = surgery.copy_with_ignored(model, ignored_layers)
        a = analyze(new, example_inputs, ignored, spectrum=spectrum)
        a.cost.latency_table = latency_table   # what a latency budget is predicted with
        expected = surgery.output_shapes(model, example_inputs)
        counts = configure(a)
        for g, n in zip(a.prunable, counts):
            if n < g.size and n % g.unit:
                raise PrunewiseError(f"the configuration keeps {n} channels of group '{g.name}', "
                                     f"not a multiple of its {g.unit} (heads or parts)")
        t1 = time.perf_counter()
        keep = {g.name: select_valid(select, a, g, int(n), spectrum) if n < g.size
                else torch.arange(g.size) for g, n in zip(a.prunable, counts)}
        t2 = time.perf_counter()
        plan = surgery.make_plan(new, a.infos, keep, meta={
            **(meta or {}),
            "predicted_macs": a.cost.macs(counts), "predicted_params": a.cost.params(counts),
            **({"predicted_latency_ms": latency_table.predict(a.cost, counts),
                "original_latency_ms": latency_table.predict(a.cost, a.cost.sizes)}
               if latency_table is not None else {}),
            "original_macs": a.cost.full_macs, "original_params": a.cost.full_params,
            "groups": surgery.describe(a.infos),
            "seconds": {"spectra": a.seconds, "configuration": t1 - t0 - a.seconds,
                        "selection": t2 - t1}})
        plan.spectra = a.sigma
        surgery.prune_in_place(new, a.dg, a.infos, plan)
        surgery.check_runs(model, new, plan, example_inputs, expected)
        plan.meta["seconds"]["surgery"] = time.perf_counter() - t2
    new.train(model.training)
    return surgery.record(model, new, plan, example_inputs), plan
