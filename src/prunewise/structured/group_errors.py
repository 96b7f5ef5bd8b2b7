"""Channel counts from measured group errors (``allocation="errors"`` for structured pruning;
docs/methods.md, "Allocation from measured layer errors"): the structured twin of
:mod:`prunewise.unstructured.layer_errors`, usable with any channel selection (L1, CHIP, GEM).

1. **Measure** (:func:`measure`): every prunable group is cut on its own to each kept fraction
   of :data:`LADDER` (and to its floor), its channels chosen by the method's own selection
   step. The cut is simulated on the model itself: the dropped channels' output-side
   parameters (their rows in the group's convs / linears and norms) are set to zero, so every
   layer that reads the group sees zeros there, as it would see nothing after surgery. Each
   conv / linear layer that reads the group is then repaired as the repair stage would do it:
   its weights on the kept inputs and an intercept refit by damped least squares to its dense
   output, from the Gram matrix of its dense inputs (one forward pass per group). The error
   recorded is the relative error of the network's output, ``||f' - f||^2 / ||f||^2``, on
   :data:`SAMPLES` calibration samples: one forward pass per group and level.
2. **Choose** (:func:`choose`): the errors are taken as additive (as OBC and SPDY do). From the
   full widths, the group whose next cut costs the least error per MAC (or parameter) saved,
   on the exact cost model (a group's width changes its own and its readers' cost), is cut
   until the budget holds; channels are then given back, one step at a time, along the
   interpolated curves while they fit, so the result sits as close under the budget as one
   step allows. Floors (``min_channels``, whole heads, equal parts, ``round_to``) always hold.

The method's selection then picks the channels at those counts, as with its own configuration.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import device, utils
from ..data.sources import Source
from ..errors import BelowFloor, PrunewiseError
from . import engine as structured
from .surgery import CHANNEL_NORMS

#: Kept fractions of every group the errors are measured at (the floor is added).
LADDER = (0.875, 0.75, 0.625, 0.5, 0.4, 0.3, 0.2, 0.12, 0.06)
#: Calibration samples the network-output errors are measured on.
SAMPLES = 128
#: Ridge of the readers' refit, relative to the mean of the Gram matrix's diagonal.
DAMP = 1e-3
#: Readers with this many inputs per output or more are not refit (their Gram matrix would
#: take 8 * REFIT_MAX^2 bytes): the cut is measured without their repair.
REFIT_MAX = 4096


def configure(budget, select: structured.Select, data, spectrum=None) -> structured.Configure:
    """The ``configure`` step at ``budget``'s MACs / params (a :class:`prunewise.runs.Structured`
    or anything with ``macs``, ``params``, ``min_channels`` and ``round_to``), measured with the
    method's ``select`` step on calibration ``data``."""
    if data is None:
        raise PrunewiseError("allocation 'errors' measures every group on calibration data: "
                             "give batches")

    def step(a: structured.Analysis) -> np.ndarray:
        round_to = getattr(budget, "round_to", None)
        kind, value = structured.parse_budget(budget.macs, budget.params,
                                              latency=getattr(budget, "latency", None))
        cost, limit = structured.budget_cost(a.cost, kind, value)
        what = f"{kind} budget {value:g}"
        ends = [[(g.size, 0.0), (ladder(g, budget.min_channels, round_to)[-1], 1.0)]
                for g in a.prunable]
        choose(ends, cost, limit, what=what)   # a budget below the floors: before measuring
        table = measure(a, select, data, spectrum, min_channels=budget.min_channels,
                        round_to=round_to)
        steps = [math.lcm(g.unit, round_to or 1) for g in a.prunable]
        return choose(table, cost, limit, steps, what=what)
    return step


def ladder(g, min_channels: int = 1, round_to: int | None = None) -> list[int]:
    """Group ``g``'s kept counts to measure, descending from its full width to its floor."""
    lowest = structured.round_count(min(g.size, max(min_channels, 1)), g, round_to)
    counts = {g.size, lowest}
    for f in LADDER:
        counts.add(structured.round_count(max(lowest, int(round(f * g.size))), g, round_to))
    return sorted((k for k in counts if lowest <= k <= g.size), reverse=True)


@torch.no_grad()
def measure(a: structured.Analysis, select: structured.Select, data, spectrum=None, *,
            min_channels: int = 1, round_to: int | None = None) -> list[list[tuple[int, float]]]:
    """Per prunable group of ``a`` (in order): ``[(kept, error)]`` descending from its full
    width (error 0) to its floor (module notes)."""
    model = a.model
    was = model.training
    model.eval()
    dev = device.of(model)
    xs = [device.to(x, dev) for x, _ in Source(data, SAMPLES)]
    if not xs:
        raise PrunewiseError("allocation 'errors' got no calibration samples")
    try:
        dense = [utils.forward(model, x).detach().double() for x in xs]
        energy = sum(float(d.square().sum()) for d in dense) or 1.0
        table = []
        for g in a.prunable:
            readers = _readers(model, a.dg, g)
            grams = _grams(model, readers, xs)
            points = [(g.size, 0.0)]
            for k in ladder(g, min_channels, round_to)[1:]:
                kept = structured.select_valid(select, a, g, k, spectrum)
                gone = torch.ones(g.size, dtype=torch.bool)
                gone[kept] = False
                with _cut(model, a.dg, g, gone, readers, grams):
                    err = sum(float((utils.forward(model, x).double() - d).square().sum())
                              for x, d in zip(xs, dense))
                points.append((k, err / energy))
            table.append(points)
    finally:
        model.train(was)
    return table


def _readers(model: nn.Module, dg, g) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """The plain conv / linear layers that read group ``g``'s channels, each with its input
    channel indices and the group channel each one carries."""
    if g.group is None:
        return []
    names = {m: n for n, m in model.named_modules()}
    out = []
    for item in g.group:
        m = item.dep.target.module
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or m not in names:
            continue
        if dg.is_out_channel_pruning_fn(item.dep.handler) or getattr(m, "groups", 1) != 1:
            continue
        out.append((names[m], m, torch.as_tensor([int(i) for i in item.idxs]),
                    torch.as_tensor([int(i) for i in item.root_idxs])))
    return out


def _columns(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from ..repair import columns
    return columns(m, x)[0].double()


def _grams(model: nn.Module, readers, xs) -> dict[str, torch.Tensor]:
    """Every reader's Gram matrix of its dense inputs, with a row of ones (the intercept)."""
    grams: dict[str, torch.Tensor] = {}

    def hook(m, args, name):
        if m.weight[0].numel() >= REFIT_MAX:   # too wide to refit: the cut is measured as is
            return
        cols = _columns(m, args[0])
        cols = torch.cat([cols, cols.new_ones(1, cols.shape[1])])
        G = cols @ cols.T
        grams[name] = grams[name] + G if name in grams else G

    handles = [m.register_forward_pre_hook(lambda mod, args, name=n: hook(mod, args, name))
               for n, m, _, _ in readers]
    try:
        for x in xs:
            utils.forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return grams


class _cut:
    """Context: group ``g``'s ``gone`` channels zeroed on their output side, every reader
    refit on what stays (module notes); everything restored on exit."""

    def __init__(self, model, dg, g, gone, readers, grams):
        self.model, self.dg, self.g, self.gone, self.readers, self.grams = (
            model, dg, g, gone, readers, grams)
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles: list = []

    def _zero(self, t: torch.Tensor | None, rows) -> None:
        if t is None or len(rows) == 0:
            return
        self.saved.append((t, t.detach().clone()))
        t.data[rows] = 0

    def __enter__(self):
        try:
            self._apply()
        except BaseException:
            self.__exit__()   # a half-made cut is undone: the model is the analysis's copy
            raise
        return self

    def _apply(self) -> None:
        g, gone = self.g, self.gone
        if g.group is None:   # attention heads cut by prunewise: the q / k / v rows
            mods = dict(self.model.named_modules())
            for n, idxs in g.out_layers:
                rows = torch.as_tensor(idxs)[gone]
                self._zero(mods[n].weight, rows)
                self._zero(getattr(mods[n], "bias", None), rows)
        else:
            for item in g.group:
                m = item.dep.target.module
                if not isinstance(m, nn.Module) or getattr(m, "weight", None) is None:
                    continue
                if not (self.dg.is_out_channel_pruning_fn(item.dep.handler)
                        or isinstance(m, CHANNEL_NORMS)):
                    continue
                if isinstance(m, nn.LSTM):
                    continue
                idxs = torch.as_tensor([int(i) for i in item.idxs])
                roots = torch.as_tensor([int(i) for i in item.root_idxs])
                rows = idxs[gone[roots]]
                self._zero(m.weight, rows)
                self._zero(getattr(m, "bias", None), rows)
        for name, m, idxs, roots in self.readers:
            self._refit(name, m, idxs[gone[roots]])

    def _refit(self, name: str, m: nn.Module, dropped: torch.Tensor) -> None:
        if len(dropped) == 0 or name not in self.grams:
            return
        W = m.weight.detach()
        rows = W.shape[0]
        per = W[0].numel() // W.shape[1]            # columns per input channel (kernel size)
        cols = (dropped[:, None] * per + torch.arange(per)).flatten()
        G = self.grams[name]
        D = G.shape[0]
        keep = torch.ones(D, dtype=torch.bool)
        keep[cols] = False
        Wd = torch.cat([W.reshape(rows, -1).double().cpu(),
                        (m.bias.detach().double().cpu()[:, None] if m.bias is not None
                         else torch.zeros(rows, 1, dtype=torch.float64))], 1)
        Gk = G[keep][:, keep]
        ridge = DAMP * float(Gk.diagonal().mean()) if Gk.numel() else 0.0
        Gk = Gk + ridge * torch.eye(Gk.shape[0], dtype=Gk.dtype)
        try:
            sol = torch.linalg.solve(Gk, (Wd @ G[:, keep]).T).T
        except RuntimeError:
            sol = torch.linalg.lstsq(Gk, (Wd @ G[:, keep]).T).solution.T
        new = torch.zeros_like(Wd)
        new[:, keep] = sol
        self.saved.append((m.weight, m.weight.detach().clone()))
        m.weight.data.copy_(new[:, :-1].reshape(W.shape).to(W))
        shift = (new[:, -1] - Wd[:, -1]).to(W)
        view = (1, -1) + (1,) * (W.dim() - 2) if not isinstance(m, nn.Linear) else (-1,)
        self.handles.append(m.register_forward_hook(
            lambda mod, args, out, s=shift.view(*view): out + s))

    def __exit__(self, *exc) -> bool:
        for h in self.handles:
            h.remove()
        for t, old in reversed(self.saved):
            t.data.copy_(old)
        return False


def choose(table: list[list[tuple[int, float]]], cost, limit: float, steps=None, *,
           what: str = "budget") -> np.ndarray:
    """Per group, a kept count on its measured curve (``table``, from :func:`measure`) so
    that ``cost(counts) <= limit`` with the least summed error (module notes); ``steps``: the
    count step of every group (whole heads, parts, round_to; 1 each by default)."""
    curves = [sorted(points, reverse=True) for points in table]   # descending kept counts
    at = [0] * len(curves)

    def counts_of(pos):
        return np.array([c[p][0] for c, p in zip(curves, pos)])

    floor = counts_of([len(c) - 1 for c in curves])
    if cost(floor) > limit:
        least = cost(floor) / max(cost(counts_of(at)), 1e-300)
        raise BelowFloor(f"{what} is below what the floors allow (min_channels, whole heads, "
                         f"equal parts, round_to): the floor is {least:.4f} of the original",
                         least)
    now = counts_of(at)
    spent = cost(now)
    while spent > limit:
        best = None
        for g, c in enumerate(curves):
            for j in range(at[g] + 1, len(c)):
                trial = now.copy()
                trial[g] = c[j][0]
                saved = spent - cost(trial)
                if saved <= 0:
                    continue
                rate = (c[j][1] - c[at[g]][1]) / saved
                if best is None or rate < best[0]:
                    best = (rate, g, j)
        if best is None:
            break
        _, g, j = best
        at[g] = j
        now = counts_of(at)
        spent = cost(now)
    return _give_back(curves, now, cost, limit, steps or [1] * len(curves))


def _give_back(curves, counts: np.ndarray, cost, limit: float, steps,
               rounds: int = 20000) -> np.ndarray:
    """Add channels back while the budget holds: each round, the group whose next step up
    lowers its interpolated error the most per unit of cost, among the steps that fit."""
    counts = counts.copy()
    for _ in range(rounds):
        spent = cost(counts)
        best = None
        for g, c in enumerate(curves):
            up = min(counts[g] + steps[g], c[0][0])
            if up <= counts[g]:
                continue
            trial = counts.copy()
            trial[g] = up
            more = cost(trial) - spent
            if cost(trial) > limit:
                continue
            gain = _error(c, counts[g]) - _error(c, up)
            rate = gain / more if more > 0 else np.inf
            if best is None or rate > best[0]:
                best = (rate, g, up)
        if best is None:
            break
        counts[best[1]] = best[2]
    return counts


def _error(curve, k: int) -> float:
    """The measured error at ``k`` kept, linear between measured counts."""
    ks = [p[0] for p in curve][::-1]
    es = [p[1] for p in curve][::-1]
    return float(np.interp(k, ks, es))
