"""Allocation from measured layer errors (``allocation="errors"``; docs/methods.md,
"Allocation from measured layer errors"), after OBC's database of per-layer errors and
SPDY's dynamic programme.

1. **Measure** (:func:`measure`, once per run, on the calibration data of the model as it is
   when pruning starts): every conv / linear layer of the scope is pruned on its own to each
   kept fraction of :data:`LADDER` (and to a single weight per group, so that any budget has a
   solution) by SparseGPT's prune-and-update (:func:`prunewise.unstructured.sparsegpt.prune_matrix`,
   the OBS saliency with the weight updates that repair the layer's output), and the error of
   its output is recorded relative to the dense output's energy:
   ``tr((W - W') H (W - W')^T) / tr(W H W^T)`` with ``H`` the Gram matrix of the layer's
   inputs. Any other weight tensor of the scope (an LSTM's, an attention module's input
   projection) gets the magnitude error: the share of ``sum w^2`` its pruned weights hold.
   Each curve is then scaled so that, at its point nearest the run's target, it equals the
   relative error of the network's output when that tensor alone is pruned there
   (:func:`_to_network`: one forward pass per tensor).
2. **Choose** (:func:`counts`): the per-layer points that minimise the summed error
   with at most the kept count in all, by dynamic programming over a grid of :data:`GRID`
   budget units; what the grid's rounding leaves is then handed out along the interpolated
   error curves, steepest first, so the kept count is met exactly. No layer is ever emptied:
   every ladder keeps at least one weight.

The method's own scores then choose which weights each layer keeps (a solver such as
``exactobs`` gets the counts and prunes each layer to them).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import device, utils
from ..data.sources import Source
from ..errors import PrunewiseError
from .posttrain import OBS_DAMP, gram, group_statistics, groups, scored_layers
from .sparsegpt import prune_matrix

#: Kept fractions of every layer's unpruned weights the errors are measured at.
LADDER = (1.0, 0.8, 0.65, 0.5, 0.4, 0.33, 0.27, 0.22, 0.18, 0.15, 0.12, 0.1, 0.08, 0.065,
          0.05, 0.04, 0.03, 0.022, 0.015, 0.01, 0.005)
#: Budget units of the dynamic programme.
GRID = 4000


class Table(dict):
    """Tensor name -> its measured ``[(kept, error)]`` points; :meth:`counts` allocates."""

    def counts(self, limits: dict[str, int], kept: int) -> dict[str, int]:
        """:func:`counts` on this table."""
        return counts(self, limits, kept)


@torch.no_grad()
def measure(work: nn.Module, masks: dict[str, torch.Tensor], data, target: float = 0.1) -> Table:
    """Per tensor of ``masks``: ``[(kept, error)]``, kept ascending (module notes); ``target``:
    the kept fraction the run aims at (where each curve is scaled to the network's output)."""
    if data is None:
        raise PrunewiseError("allocation 'errors' measures every layer on calibration data: "
                             "give batches")
    layers = scored_layers(work, masks)
    named = dict(work.named_parameters())
    table: dict = {}
    at_target: dict[str, torch.Tensor] = {}   # each tensor pruned to the point nearest target
    for _, sums in group_statistics(work, layers, data, gram):
        for pname, per_group in sums.items():
            m, mask = layers[pname], masks[pname]
            count = groups(m)
            W = (m.weight.detach().cpu().double() * mask.cpu()).reshape(m.weight.shape[0], -1)
            per = W.shape[0] // count
            blocks = [(W[g * per:(g + 1) * per], H) for g, H in enumerate(per_group)]
            energy = sum(float(((w @ H) * w).sum()) for w, H in blocks)
            ladder = _ladder(int(mask.sum()), count)
            near = _nearest(ladder, target * int(mask.sum()))
            points = []
            for kept in ladder:
                err, parts = 0.0, []
                for w, H in blocks:   # each group keeps its share (largest remainders)
                    drop = w.numel() - _share(kept, count, w.numel())
                    new, _ = prune_matrix(w.float(), H, drop, damp=OBS_DAMP)
                    d = w - new.double()
                    err += float(((d @ H) * d).sum())
                    parts.append(new)
                points.append((kept, err / energy if energy > 0 else 0.0))
                if kept == near:
                    at_target[pname] = torch.cat(parts).reshape(m.weight.shape)
            table[pname] = points
    for n, mask in masks.items():
        if n not in layers:
            w = named[n].detach().double() * mask
            sq = w.square().flatten().sort().values
            total = float(sq.sum())
            tail = torch.cat([sq.new_zeros(1), sq.cumsum(0)])   # error of pruning the j smallest
            ladder = _ladder(int(mask.sum()), 1)
            table[n] = [(k, float(tail[sq.numel() - k]) / total if total > 0 else 0.0)
                        for k in ladder]
            keep = _nearest(ladder, target * int(mask.sum()))
            top = w.abs().flatten().topk(keep).indices
            at_target[n] = torch.zeros_like(w).flatten().index_put_((top,), w.flatten()[top]) \
                .view_as(w)
    _to_network(work, table, at_target, data, target, masks)
    return Table({n: table[n] for n in masks})


#: Calibration samples the network-output errors are measured on.
NETWORK_SAMPLES = 128


def _to_network(work: nn.Module, table: dict, at_target: dict, data, target: float,
                masks: dict) -> None:
    """Scale every tensor's curve so that, at its point nearest ``target``, it equals the error
    of the network's output (relative to the dense output's energy, on the first
    :data:`NETWORK_SAMPLES` calibration samples) when that tensor alone is pruned there: what
    an error in one layer costs at the output differs from layer to layer (a classifier's last
    layer writes the logits; a residual block's error is diluted by its skip path)."""

    dev = device.of(work)
    xs = [device.to(x, dev) for x, _ in Source(data, NETWORK_SAMPLES)]
    dense = [utils.forward(work, x).double() for x in xs]
    energy = sum(float(d.square().sum()) for d in dense)
    named = dict(work.named_parameters())
    for n, new in at_target.items():
        p = named[n]
        old = p.detach().clone()
        p.copy_(new.to(p))
        err = sum(float((utils.forward(work, x).double() - d).square().sum())
                  for x, d in zip(xs, dense))
        p.copy_(old)
        net = err / energy if energy > 0 else 0.0
        near = _nearest([k for k, _ in table[n]], target * int(masks[n].sum()))
        layer = dict(table[n])[near]
        gain = net / layer if layer > 1e-12 else 1.0
        table[n] = [(k, e * gain) for k, e in table[n]]


def _nearest(ladder: list[int], want: float) -> int:
    """The ladder's kept count nearest ``want``."""
    return min(ladder, key=lambda k: (abs(k - want), k))


def _ladder(unpruned: int, count: int) -> list[int]:
    """The kept counts measured for a tensor of ``unpruned`` weights in ``count`` groups: the
    :data:`LADDER` fractions and one weight per group, distinct, ascending."""
    floor = min(unpruned, count)
    return sorted({max(floor, round(f * unpruned)) for f in LADDER} | {floor})


def _share(kept: int, count: int, size: int) -> int:
    """One group's share of ``kept`` over ``count`` equal groups (at least one)."""
    return max(1, min(size, round(kept / count)))


def counts(table: dict, limits: dict[str, int], kept: int) -> dict[str, int]:
    """How many weights each tensor keeps: ``kept`` in all, each at most its ``limits`` entry
    (its unpruned count) and at least one, the summed interpolated error as small as the
    dynamic programme over :data:`GRID` units finds (module notes)."""
    names = list(limits)
    if kept < len(names):
        raise PrunewiseError(f"allocation 'errors' cannot keep only {kept} weights without "
                             f"emptying a layer: the scope has {len(names)} weight tensors; "
                             f"lower the sparsity")
    if kept > sum(limits.values()):
        raise PrunewiseError(f"cannot keep {kept} weights: only {sum(limits.values())} are "
                             f"left unpruned")
    curves = {n: _curve(table[n], limits[n]) for n in names}
    unit = max(1, math.ceil(kept / GRID))
    budget = kept // unit
    best = torch.full((budget + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    picks = []
    for n in names:
        nxt = torch.full_like(best, math.inf)
        pick = torch.full((budget + 1,), -1, dtype=torch.int32)
        for j, (k, e) in enumerate(curves[n]):
            c = math.ceil(k / unit)
            if c > budget:
                break
            cand = best[:budget + 1 - c] + e
            better = cand < nxt[c:]
            nxt[c:] = torch.where(better, cand, nxt[c:])
            pick[c:] = torch.where(better, torch.full_like(pick[c:], j), pick[c:])
        best = nxt
        picks.append(pick)
    if not math.isfinite(float(best.min())):   # the floors alone overflow the rounded grid
        chosen = {n: 0 for n in names}
    else:
        b = int(best.argmin())
        chosen = {}
        for n, pick in zip(reversed(names), reversed(picks)):
            j = int(pick[b])
            chosen[n] = j
            b -= math.ceil(curves[n][j][0] / unit)
    out = {n: curves[n][chosen[n]][0] for n in names}
    return _fill(curves, out, chosen, kept)


def _curve(points: list[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    """A tensor's measured points capped at ``limit`` kept (the point at the cap
    interpolated), error non-increasing in the kept count."""
    pts = sorted(points)
    out = [(k, e) for k, e in pts if k < limit]
    above = [(k, e) for k, e in pts if k >= limit]
    if above and above[0][0] == limit:
        out.append(above[0])
    elif above and out:
        (k0, e0), (k1, e1) = out[-1], above[0]
        out.append((limit, e0 + (e1 - e0) * (limit - k0) / (k1 - k0)))
    else:
        out.append((limit, above[0][1] if above else 0.0))
    best, mono = math.inf, []
    for k, e in out:
        best = min(best, e)
        mono.append((k, best))
    return mono


def _fill(curves: dict, out: dict[str, int], at: dict[str, int], kept: int) -> dict[str, int]:
    """Hand out what the grid's rounding left (``kept - sum(out)``) along the curves, the
    steepest error decrease per weight first; returns the counts, summing to ``kept``."""
    left = kept - sum(out.values())
    while left > 0:
        steep, pick = -math.inf, None
        for n, j in at.items():
            if j + 1 < len(curves[n]):
                (k0, e0), (k1, e1) = curves[n][j], curves[n][j + 1]
                slope = (e0 - e1) / (k1 - k0)
                if slope > steep:
                    steep, pick = slope, n
        if pick is None:
            raise PrunewiseError(f"cannot keep {kept} weights: every layer is full")
        nxt = curves[pick][at[pick] + 1][0]
        step = min(left, nxt - out[pick])
        out[pick] += step
        left -= step
        if out[pick] == nxt:
            at[pick] += 1
    while left < 0:   # only when the floors alone exceed the grid: take from the largest
        n = max(out, key=lambda k: (out[k], k))
        if out[n] <= 1:
            raise PrunewiseError(f"allocation 'errors' cannot keep only {kept} weights "
                                 f"without emptying a layer")
        step = min(-left, out[n] - 1)
        out[n] -= step
        left += step
    return out
