"""The mask engine every unstructured method shares: scope, schedule, selection, the loop.

A method (FVW in :mod:`.fvw`; magnitude, Taylor, random and OBD in :mod:`.baselines`; Wanda and
OBS in :mod:`.posttrain`) only supplies a :class:`Scorer`; everything else lives here, so a
comparison between methods isolates the score. The task (:mod:`prunewise.tasks`) gives the loss
a gradient scorer differentiates and the metric tracked per iteration.

* **Scope** -- :class:`Scope` and :func:`prunable`: which parameters may be pruned (by default
  every conv/linear weight matrix, attention and recurrent ones included, except the input
  stem and embeddings); :func:`left_out` says why each other matrix stays dense.
* **Data** -- :class:`prunewise.data.sources.Source` (re-exported here): attribution batches as
  a re-iterable, optionally limited and filtered by label; :func:`gradient_sweep`: the
  torchrun-exact forward and backward pass over them.
* **Schedule** -- :func:`iterations`, :func:`kept_count`, :func:`schedule`,
  :func:`check_targets`: keep ``keep`` of the weights per iteration and land exactly on the
  target sparsity (and on any intermediate ``levels``).
* **Selection** -- :func:`select`: pool the scores of all unpruned elements of all prunable
  tensors and keep the top ``kept`` globally, or share ``kept`` out first (:func:`allocate`:
  LAMP's layer-adaptive counts, uniform per tensor, uniform per row) and rank within each share.
* **Loop** -- :func:`stops` (a generator of the levels it lands on) and :func:`run`: score the
  pruned working copy, select, apply, log, write the resume file (:data:`RESUME_FILE`). Its
  settings travel as one :class:`LoopSettings`.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, Union

import torch
from torch import nn

from .. import checks, device, dist, files, methods, schema, tasks
from ..errors import PrunewiseError
from ..data.sources import Source
from ..plan import MaskPlan, apply_masks, check_masks, check_shapes
from ..train import evaluate, recalibrate_bn
from ..utils import LAYER_TYPES, forward, progress_bar

#: The modules whose weight matrices the default scope prunes (:func:`weight_matrices`).
PRUNABLE_TYPES = LAYER_TYPES + (nn.MultiheadAttention, nn.RNNBase)
RESUME_FILE = "resume.safetensors"


class PruningWarning(UserWarning):
    """A recoverable problem during pruning (e.g. a class group skipped for a zero loss change)."""


# ------------------------------------------------------------------------------------------
# Scope: which tensors are prunable
# ------------------------------------------------------------------------------------------


def weight_matrices(module: nn.Module) -> list[str]:
    """The names (in ``module``, not recursing) of its prunable weight matrices: a conv's or
    linear layer's ``weight``; an ``nn.MultiheadAttention``'s input projections (its output
    projection is a linear child); an RNN / LSTM / GRU's ``weight_ih_l*`` / ``weight_hh_l*``
    (and ``weight_hr_l*``); an embedding's ``weight``."""
    if isinstance(module, LAYER_TYPES + (nn.Embedding,)):
        w = getattr(module, "weight", None)
        return ["weight"] if isinstance(w, nn.Parameter) else []
    if isinstance(module, nn.MultiheadAttention):
        return [n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
                if isinstance(getattr(module, n, None), nn.Parameter)]
    if isinstance(module, nn.RNNBase):
        return [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]
    return []


@dataclass
class Scope:
    """Which weights are prunable: the weight matrices (:func:`weight_matrices`) of modules of
    ``types`` minus exclusions.

    ``include`` / ``exclude`` hold module-name glob patterns (``"layer3.*"``) or module types
    (``nn.Linear``); ``include=None`` means every module of ``types``. ``skip_first`` leaves the
    input stem dense: the first module in ``named_modules()`` order that has weight matrices,
    when it is a conv or linear layer (an embedding is the stem of a text model, and
    embeddings stay dense unless ``embeddings``). ``embeddings=True`` prunes ``nn.Embedding``
    weights too.
    """

    include: Sequence[Any] | None = None
    exclude: Sequence[Any] = ()
    types: tuple = PRUNABLE_TYPES
    skip_first: bool = True
    embeddings: bool = False

    def names(self, model: nn.Module) -> list[str]:
        return [p for p, why in self.decisions(model) if why is None]

    def decisions(self, model: nn.Module) -> list[tuple[str, str | None]]:
        """Every weight matrix of ``model`` (parameters of two or more dimensions) and why it is
        left out of this scope (None: it is pruned)."""
        types = tuple(self.types) + ((nn.Embedding,) if self.embeddings else ())
        stem = next((n for n, m in model.named_modules() if weight_matrices(m)), None)
        heads = output_embeddings(model)
        params = dict(model.named_parameters())
        out, owned = [], set()
        for n, m in model.named_modules():
            for leaf in weight_matrices(m):
                name = f"{n}.{leaf}" if n else leaf
                owned.add(name)
                if name not in params:   # a tied weight: it is another module's parameter
                    continue
                if not isinstance(m, types):
                    why = ("embedding (embeddings=True / --embeddings prunes it)"
                           if isinstance(m, nn.Embedding) else f"{type(m).__name__} is not in "
                           f"the scope's layer types")
                elif self.skip_first and n == stem and isinstance(m, LAYER_TYPES):
                    why = "input stem (left dense)"
                elif n in heads and not self.embeddings:
                    why = ("language-model output head, the embeddings' transpose (left dense "
                           "like them; embeddings=True / --embeddings prunes it)")
                elif self.include is not None and not _matches(n, m, self.include):
                    why = "not included"
                elif _matches(n, m, self.exclude):
                    why = "excluded"
                else:
                    why = None
                out.append((name, why))
        for name, p in model.named_parameters():
            if p.dim() >= 2 and name not in owned:
                out.append((name, "not a layer's weight matrix (a loose parameter, or a layer "
                                  "prunewise does not prune)"))
        return out


def output_embeddings(model: nn.Module) -> set[str]:
    """Names of a language model's output head: the module a HuggingFace model's
    ``get_output_embeddings()`` names, else every linear layer whose weight is shaped like the
    largest embedding table's (the vocabulary back from the model width) or is that table."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return {n for n, m in model.named_modules() if m is head}
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        return set()
    vocab = max(tables, key=lambda w: w.shape[0])
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and (m.weight is vocab or tuple(m.weight.shape) == tuple(vocab.shape))}


def left_out(model: nn.Module, masked: Iterable[str], scope: Scope | None = None) -> list[dict]:
    """Every weight matrix of ``model`` (two or more dimensions) outside ``masked`` (the
    parameter names a plan prunes), with the reason ``scope`` (default: the default scope)
    gives: ``[{"layer", "reason"}]``, the report's ``left_out``."""
    masked = set(masked)
    why = dict((scope or Scope()).decisions(model))
    return [{"layer": n, "reason": why.get(n) or "not in the plan's scope"}
            for n, p in model.named_parameters() if p.dim() >= 2 and n not in masked]


def _matches(name: str, module: nn.Module, patterns: Sequence[Any]) -> bool:
    if isinstance(patterns, (str, type)):
        patterns = [patterns]
    for p in patterns:
        if isinstance(p, type):
            if isinstance(module, p):
                return True
        elif isinstance(p, str):
            if fnmatch.fnmatchcase(name, p):
                return True
        else:
            raise PrunewiseError(f"scope pattern {p!r} must be a module-name pattern or a module type")
    return False


def prunable(model: nn.Module, params: Any = None) -> list[str]:
    """Names of the prunable parameters (as in ``model.named_parameters()``).

    ``params``: None (default scope: every conv/linear ``weight`` but the input stem), a
    :class:`Scope`, a dict of Scope's arguments, or a list of parameter names / glob patterns
    over parameter names. A scope that matches no tensor raises PrunewiseError.
    """
    named = dict(model.named_parameters())
    if params is None:
        names = Scope().names(model)
    elif isinstance(params, Scope):
        names = params.names(model)
    elif isinstance(params, dict):
        try:
            names = Scope(**params).names(model)
        except TypeError as e:
            raise PrunewiseError(f"bad scope {params!r}: {e}") from None
    else:
        pats = [params] if isinstance(params, str) else list(params)
        names = []
        for p in pats:
            if not isinstance(p, str):
                raise PrunewiseError(f"scope entry {p!r} must be a parameter name or pattern")
            hit = [n for n in named if fnmatch.fnmatchcase(n, p)]
            names += [n for n in hit if n not in names]
    if not names:
        raise PrunewiseError(f"the pruning scope {params!r} matches no tensor of the model")
    for n in names:
        if not named[n].is_floating_point():
            raise PrunewiseError(f"parameter '{n}' is not floating point and cannot be pruned")
    return names


def mask_list(masks: dict[str, torch.Tensor] | None, names: Sequence[str],
              named: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
    """Validated bool masks in the order of ``names`` (None where ``masks`` has no entry).

    ``named`` maps parameter names to the parameters; a mask naming an unknown parameter or
    with the wrong shape raises PrunewiseError. Masks move to their parameter's device.
    """
    out = []
    masks = masks or {}
    check_shapes(masks, named, "masks")
    for n in names:
        m = masks.get(n)
        if m is not None:
            m = m.to(device=named[n].device) != 0
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------
# Attribution data
# ------------------------------------------------------------------------------------------


def task_of(data) -> tasks.Task:
    """The task that scores ``data``: a :class:`Source`'s (classification when it names none,
    or for a plain list of batches handed to a scorer directly)."""
    return tasks.of(data.task if isinstance(data, Source) else None)


def grad_copy(model: nn.Module, names: Sequence[str]) -> tuple[nn.Module, list[torch.Tensor]]:
    """An eval-mode copy of ``model`` in which only the parameters ``names`` take gradients
    (every gradient cleared), and those parameters in order: what a gradient scorer works on,
    so the caller's model is never touched."""
    work = copy.deepcopy(model)
    work.eval()
    named = dict(work.named_parameters())
    for p in work.parameters():
        p.requires_grad_(False)
        p.grad = None
    ps = [named[n] for n in names]
    for p in ps:
        p.requires_grad_(True)
    return work, ps


def gradient_sweep(model: nn.Module, params: Sequence[torch.Tensor], data: Iterable,
                   loss_of: Callable) -> tuple[float, int, int]:
    """Forward and backward over every batch of ``data``; returns (loss sum, counted, seen).

    ``loss_of(outputs, (x, y)) -> (loss or None, counted)`` gives each batch's loss (None: nothing
    to back-propagate); the gradients of ``params`` accumulate in their ``.grad`` in batch
    order, on the model's device. Under torchrun whole batches are shared out and their
    gradients, losses and counts added in batch order (:func:`prunewise.dist.in_order`), so
    every rank ends with exactly the gradients one process computes."""
    dev = device.of(model)

    def one(batch) -> tuple[float, int, int]:
        x, y = device.pair(batch[0], batch[1], dev)
        loss, counted = loss_of(forward(model, x), (x, y))
        if loss is None:
            return 0.0, counted, len(y)
        loss.backward()
        return float(loss.detach()), counted, len(y)

    if not dist.active():
        total, counted, seen = 0.0, 0, 0
        for batch in data:
            l, c, n = one(batch)
            total, counted, seen = total + l, counted + c, seen + n
        return total, counted, seen
    acc = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    sizes = [p.numel() for p in params]
    # float32 holds float32 gradients and a batch's float32 loss and counts exactly
    wide = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32

    def contribution(batch) -> torch.Tensor:
        for p in params:
            p.grad = None
        head = torch.tensor(one(batch), dtype=wide)
        return torch.cat([head] + [(p.grad if p.grad is not None else torch.zeros_like(p))
                                   .detach().reshape(-1).cpu().to(wide) for p in params])

    total, counted, seen = 0.0, 0, 0
    for v in dist.in_order(data, contribution, 3 + sum(sizes), wide):
        total, counted, seen = total + float(v[0]), counted + int(v[1]), seen + int(v[2])
        pos = 3
        for a, k in zip(acc, sizes):
            a.add_(v[pos:pos + k].view(a.shape).to(dtype=a.dtype, device=a.device))
            pos += k
    for p, a in zip(params, acc):
        p.grad = a
    return total, counted, seen


# ------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------


def check_targets(sparsity, keep) -> None:
    """Raise PrunewiseError unless ``0 <= sparsity < 1`` and ``0 < keep < 1``."""
    checks.fraction("sparsity", sparsity, zero=True)
    checks.fraction("keep", keep)


def iterations(sparsity: float, keep: float) -> int:
    """Number of iterations to reach ``sparsity`` keeping ``keep`` per iteration."""
    check_targets(sparsity, keep)
    if sparsity == 0:
        return 0
    return max(1, math.ceil(math.log(1.0 - sparsity) / math.log(keep) - 1e-9))


def kept_count(total: int, sparsity: float) -> int:
    """Weights kept at ``sparsity`` (rounded to the nearest element)."""
    return total - int(math.floor(sparsity * total + 0.5))


def schedule(total: int, sparsity: float, keep: float, levels: Sequence[float] = ()) -> list[int]:
    """Kept count after each iteration: ``total * keep**t``, the last one trimmed to the target.

    ``levels`` (sparsities below the target) insert extra stops that land exactly on them.
    """
    final = kept_count(total, sparsity)
    if final < 1:
        raise PrunewiseError(f"sparsity {sparsity!r} keeps no weight of the {total} prunable ones; "
                             f"ask for at most {1 - 1 / total:.10g}")
    t_max = iterations(sparsity, keep)
    counts = [max(final, int(round(total * keep ** t))) for t in range(1, t_max + 1)]
    if counts:
        counts[-1] = final
    for lv in levels:
        check_targets(lv, keep)
        c = kept_count(total, lv)
        if lv <= sparsity and c < total and c not in counts:
            counts.append(c)
    return sorted(counts, reverse=True)


# ------------------------------------------------------------------------------------------
# Global selection
# ------------------------------------------------------------------------------------------


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool vector keeping the ``k`` largest values; ties go to the lower position; NaN is lowest."""
    n = values.numel()
    keep = torch.zeros(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return keep
    if k >= n:
        return ~keep
    v = values.detach().to(torch.float64).nan_to_num(nan=-math.inf)
    t = torch.kthvalue(v, n - k + 1).values
    keep = v > t
    need = k - int(keep.sum())
    if need > 0:
        ties = torch.nonzero(v == t).flatten()[:need]
        keep[ties] = True
    return keep


Scores = Union[dict, Sequence[dict]]


#: How the kept count is shared out between tensors (``allocation``; see :func:`select`).
ALLOCATIONS = methods.ALLOCATIONS


def select(scores: Scores, masks: dict[str, torch.Tensor], kept: int,
           allocation: str = "global", weights: dict | None = None,
           errors: dict | None = None) -> dict[str, torch.Tensor]:
    """Selection, the primitive every unstructured method ends in.

    ``allocation`` decides how many elements each tensor keeps, apart from the ranking:
    ``"global"`` pools every tensor's scores (below); ``"lamp"`` takes each tensor's count from
    LAMP's layer-adaptive scores of the current ``weights`` (name -> tensor, required; no
    tensor is emptied while ``kept`` covers one element per tensor); ``"errors"`` takes them
    from the measured per-layer error table ``errors`` (required; see :func:`allocate`);
    ``"uniform"`` keeps the same fraction of every tensor; ``"row"`` the same fraction of every
    output row (dim 0) of every tensor. Within a tensor (or row) the ``scores`` rank as in global selection.

    Pools the scores of every currently unpruned element (``masks[name]`` True) of every
    tensor in ``masks`` into one vector and keeps the ``kept`` highest; returns new bool masks
    (same names, order and shapes) that are True exactly there. Pruned elements stay pruned
    whatever their score. Ties go to the element that comes first (tensors in the order of
    ``masks``, elements in flattened order); NaN ranks lowest.

    ``scores`` is one dict (name -> score tensor shaped like the mask) or, for union mode, a
    list of dicts: an element is kept when it ranks high in any of them (smallest best rank
    over the lists; exactly ``kept`` elements).

    Runs on the masks' device (the weights' device; scores move there); the result is exact
    and the same on every device.
    """
    checks.choice("allocation", allocation, ALLOCATIONS)
    if allocation != "global":
        return _allocated(scores, masks, kept, allocation, weights, errors)
    names = list(masks)
    flat_m = [masks[n].flatten() for n in names]

    def pooled(sc):
        return torch.cat([sc[n].detach().flatten().to(fm.device)[fm]
                          for n, fm in zip(names, flat_m)])

    if isinstance(scores, (list, tuple)):
        if not scores:
            raise PrunewiseError("no scores to select from")
        best = None
        for sc in scores:
            v = pooled(sc).to(torch.float64).nan_to_num(nan=-math.inf)
            order = torch.sort(v, descending=True, stable=True).indices
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=order.device)
            best = rank if best is None else torch.minimum(best, rank)
        keep = _top(-best.to(torch.float64), kept)
    else:
        keep = _top(pooled(scores), kept)
    out, pos = {}, 0
    for n, fm in zip(names, flat_m):
        k = int(fm.sum())
        new = torch.zeros_like(fm)
        new[fm] = keep[pos:pos + k]
        pos += k
        out[n] = new.view_as(masks[n])
    return out


def _allocated(scores: Scores, masks: dict, kept: int, allocation: str,
               weights: dict | None, errors: dict | None = None) -> dict[str, torch.Tensor]:
    """Selection with per-tensor (or per-row) counts from :func:`allocate`."""
    if allocation == "row":  # a tensor of fewer than two dimensions is one row
        def rows_of(t):
            return t.reshape(t.shape[0] if t.dim() > 1 else 1, -1)

        rows = {(n, r): m for n in masks for r, m in enumerate(rows_of(masks[n]))}
        counts = shares({k: m.numel() for k, m in rows.items()},
                         {k: int(m.sum()) for k, m in rows.items()}, kept)
        many = isinstance(scores, (list, tuple))
        out = {}
        for n in masks:
            parts = []
            for r, m in enumerate(rows_of(masks[n])):
                one = [{"r": rows_of(sc[n])[r]} for sc in scores] if many \
                    else {"r": rows_of(scores[n])[r]}
                parts.append(select(one, {"r": m}, counts[(n, r)])["r"])
            out[n] = torch.stack(parts).view_as(masks[n])
        return out
    counts = allocate(allocation, masks, kept, weights, errors)
    out = {}
    for n in masks:
        one = [{n: sc[n]} for sc in scores] if isinstance(scores, (list, tuple)) else {n: scores[n]}
        out.update(select(one, {n: masks[n]}, counts[n]))
    return out


def check_nm_sparsity(nm: tuple[int, int], sparsity: float) -> None:
    """Refuse a sparsity other than the ``1 - N/M`` an N:M pattern prunes."""
    want = 1.0 - nm[0] / nm[1]
    if abs(sparsity - want) > 1e-9:
        raise PrunewiseError(f"N:M {nm[0]}:{nm[1]} prunes exactly {want:g} of the weights; "
                             f"give sparsity {want:g} (or leave it out on the command line)")


def select_nm(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], n: int,
              m: int) -> dict[str, torch.Tensor]:
    """N:M selection: in every group of ``m`` consecutive weights of a row (a tensor's first
    dimension is its rows; a row's weights in memory order, so a conv's are grouped over its
    flattened input channels and kernel), keep the ``n`` highest-scoring unpruned ones (ties to
    the earlier weight, NaN lowest). A row whose width is not a multiple of ``m`` is refused,
    naming the tensor."""
    if isinstance(scores, (list, tuple)):
        raise PrunewiseError("N:M masks take one score per weight; class-group union mode gives "
                             "several (leave class_groups unset)")
    out = {}
    for name, mask in masks.items():
        rows = mask.reshape(mask.shape[0] if mask.dim() > 1 else 1, -1)
        if rows.shape[1] % m:
            raise PrunewiseError(f"N:M {n}:{m}: '{name}' has rows of {rows.shape[1]} weights, "
                                 f"not a multiple of {m}; leave that layer dense (exclude) or "
                                 f"choose another M")
        sc = scores[name].detach().to(device=mask.device, dtype=torch.float64)
        sc = torch.nan_to_num(sc.reshape(rows.shape), nan=-math.inf)
        sc = torch.where(rows, sc, torch.full_like(sc, -math.inf)).reshape(rows.shape[0], -1, m)
        order = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :n]
        keep = torch.zeros(sc.shape, dtype=torch.bool, device=mask.device)
        keep.scatter_(-1, order, True)
        out[name] = keep.reshape(mask.shape) & mask
    return out


def allocate(allocation: str, masks: dict[str, torch.Tensor], kept: int,
             weights: dict | None = None, errors: dict | None = None) -> dict[str, int]:
    """How many elements each tensor of ``masks`` keeps when ``kept`` are kept in all.

    ``"uniform"``: the same fraction of every tensor's size (largest remainders round, no
    tensor above its unpruned count). ``"lamp"`` (Lee et al., ICLR 2021): every unpruned
    weight scores ``w^2 / (sum of w'^2 over the weights of its tensor at least as large)``;
    the ``kept`` best scores over all tensors give the counts. A tensor's largest weight
    scores 1, the most any weight can, so no tensor is emptied while ``kept`` >= the number of
    tensors. ``"global"``: the counts global magnitude selection would give (what a solver,
    which picks its own weights, gets for ``global``). ``"errors"``: the counts that minimise
    the summed measured layer errors (``errors``, the table
    :func:`prunewise.unstructured.layer_errors.measure` returns; its ``counts`` method runs the
    dynamic programme); no tensor is emptied."""
    checks.choice("allocation", allocation, ("lamp", "uniform", "errors", "global"))
    if allocation == "global":
        if weights is None:
            raise PrunewiseError("global allocation needs the weights")
        chosen = select({n: weights[n].detach().abs() for n in masks}, masks, kept)
        return {n: int(c.sum()) for n, c in chosen.items()}
    if allocation == "errors":
        if errors is None:
            raise PrunewiseError("errors allocation needs the measured layer errors")
        return errors.counts({n: int(m.sum()) for n, m in masks.items()}, kept)
    if allocation == "uniform":
        return shares({n: m.numel() for n, m in masks.items()},
                       {n: int(m.sum()) for n, m in masks.items()}, kept)
    if weights is None:
        raise PrunewiseError("lamp allocation needs the weights")
    lamp = {}
    for n, m in masks.items():
        sq = weights[n].detach().to(device=m.device, dtype=torch.float64).square()
        v = sq.flatten()[m.flatten()]
        order = torch.argsort(v, stable=True)
        tail = v[order].flip(0).cumsum(0).flip(0)      # sum over the weights at least as large
        s = torch.zeros_like(v)
        s[order] = torch.where(tail > 0, v[order] / tail.clamp_min(1e-300), torch.zeros_like(tail))
        full = torch.zeros(m.numel(), dtype=torch.float64, device=m.device)
        full[m.flatten()] = s
        lamp[n] = full.view_as(m)
    chosen = select(lamp, masks, kept)
    return {n: int(c.sum()) for n, c in chosen.items()}


def shares(sizes: dict[str, int], limits: dict[str, int], kept: int) -> dict[str, int]:
    """``kept`` shared out in proportion to ``sizes`` (largest remainders first), each share at
    most its ``limits`` entry (what is left over goes to the others, in proportion)."""
    total = sum(sizes.values())
    want = {k: kept * v / total for k, v in sizes.items()}
    out = {k: min(limits[k], int(math.floor(w))) for k, w in want.items()}
    left = kept - sum(out.values())
    position = {k: i for i, k in enumerate(sizes)}
    order = sorted(sizes, key=lambda k: (-(want[k] - math.floor(want[k])), position[k]))
    while left > 0:
        moved = 0
        for k in order:
            if left and out[k] < limits[k]:
                out[k] += 1
                left -= 1
                moved += 1
        if not moved:
            raise PrunewiseError(f"cannot keep {kept} elements: only {sum(limits.values())} are "
                                 f"left unpruned")
    return out


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


class Scorer(Protocol):
    """What a method supplies to :func:`run`: scores for the current pruned working copy.

    ``score(work, masks, data, iteration) -> (scores, info)``. ``work`` is the working copy
    (eval mode, pruned weights already zero; the scorer may read it but must not change it),
    ``masks`` the current bool masks (name -> tensor; ``list(masks)`` is the scope),
    ``data`` the attribution :class:`Source` (None for a data-free method run without
    batches), ``iteration`` the 0-based iteration. ``scores`` is what :func:`select` takes
    (one dict or, for union mode, a list of dicts); ``info`` is a dict merged into this
    iteration's history row (``{}`` if nothing to log).

    A *solver* (SparseGPT) has a ``solve(work, masks, data, counts, nm) -> (masks, info)``
    method instead: it chooses the new masks itself, ``counts[name]`` kept per tensor (the
    loop's allocation, ``uniform`` or ``lamp``) or the N:M pattern ``nm``, and updates the
    working copy's weights in place; the plan then carries those weights
    (:attr:`prunewise.plan.MaskPlan.weights`).
    """

    def __call__(self, work: nn.Module, masks: dict[str, torch.Tensor], data: Source | None,
                 iteration: int) -> tuple[Scores, dict]: ...


@dataclass
class LoopSettings:
    """Settings of :func:`run` that every unstructured method shares.

    ``sparsity``: target fraction of pruned weights; ``keep``: fraction of the unpruned weights
    kept per iteration; ``samples``: use only the first samples of the attribution data;
    ``params``: the scope (see :func:`prunable`); ``levels``: extra sparsities to land on,
    each reported through ``on_level(sparsity, plan)``; ``eval_batches``: log accuracy per
    iteration; ``checkpoint_dir``: folder of the resume file; ``seed``: recorded (and used by
    seeded scorers); ``callback(row)``: called with every history row; ``progress``: a bar
    (on by default: a person is usually waiting); ``recalibrate``: after each iteration's masks are applied, re-estimate the working copy's
    BatchNorm statistics on the attribution data (at most ``recalibrate_samples`` samples;
    all of it when None), so the next score sees statistics that match the pruned weights;
    ``allocation``: how each iteration's kept count is shared between tensors (one of
    :data:`ALLOCATIONS`, see :func:`select`; ``"errors"`` takes ``errors``, the function that
    measures the table it allocates from, :func:`prunewise.unstructured.layer_errors.measure`,
    called once on the unpruned working copy); ``repair``: after each iteration's masks, refit
    the working copy's kept weights to the unpruned model's layer outputs
    (:func:`prunewise.repair.reconstruct` on at most 256 attribution samples; instead of
    ``recalibrate``), so the next score sees a repaired network; ``task``: what the model is for
    (:mod:`prunewise.tasks`; its loss drives gradient scorers and its primary metric is the
    per-iteration ``score``; default classification).
    """

    sparsity: float
    keep: float = 0.98
    samples: int | None = None
    params: Any = None
    levels: Sequence[float] = ()
    eval_batches: Any = None
    checkpoint_dir: str | Path | None = None
    seed: int = 0
    callback: Callable[[dict], None] | None = None
    on_level: Callable[[float, MaskPlan], None] | None = None
    progress: bool = True
    recalibrate: bool = False
    recalibrate_samples: int | None = None
    allocation: str = "global"
    task: Any = None
    nm: tuple[int, int] | None = None
    repair: bool = False
    errors: Callable | None = None

    def __post_init__(self) -> None:
        """Raise PrunewiseError for a bad target, keep, sample count, recalibration setting or
        allocation (once, here: the loop does not check again)."""
        check_targets(self.sparsity, self.keep)
        checks.choice("allocation", self.allocation, ALLOCATIONS)
        checks.integer("samples", self.samples, 1, none=True)
        checks.flag("recalibrate", self.recalibrate)
        checks.flag("repair", self.repair)
        if self.allocation == "errors" and self.errors is None:
            raise PrunewiseError("allocation 'errors' needs the function that measures the layer "
                                 "errors: errors=prunewise.unstructured.layer_errors.measure")
        checks.integer("recalibrate_samples", self.recalibrate_samples, 1, none=True)
        self.task = tasks.of(self.task)
        if self.nm is not None:   # one shot to exactly 1 - N/M
            self.nm = checks.nm("nm", self.nm)
            check_nm_sparsity(self.nm, self.sparsity)
            if self.levels:
                raise PrunewiseError("N:M masks are chosen in one shot: no intermediate levels")
            self.keep = 1.0 - self.sparsity


@dataclass
class _State:
    """What one run carries between iterations."""

    method: str
    config: dict
    counts: list[int]
    level_at: dict
    total: int
    masks: dict
    history: list
    start: int
    ckpt: Path | None
    weights: dict | None = None   # a solver's updated weights of the scope
    errors: dict | None = None    # the measured layer errors (allocation "errors")
    dense: nn.Module | None = None   # the unpruned model (what loop repair fits to)


def run(model: nn.Module, batches, score: Scorer, loop: LoopSettings, *, method: str,
        settings: dict | None = None, needs_data: bool = True) -> MaskPlan:
    """The selection loop every unstructured method shares; returns a :class:`MaskPlan`.

    Each iteration ``score`` rates the current (already pruned) working copy of ``model`` and
    :func:`select` keeps the scheduled count. After every iteration: BatchNorm recalibration
    (if ``loop.recalibrate``), the task's primary metric on ``loop.eval_batches`` (if given),
    the resume file in ``loop.checkpoint_dir`` (if given), ``loop.callback(row)``, and
    ``loop.on_level(sparsity, plan)`` when the iteration landed on one of ``loop.levels``.
    A run with an existing resume file continues after its last finished iteration and ends
    with the same masks as an uninterrupted run (levels passed before the interruption are not
    reported again); the file is rejected when it was made with other settings or weights.
    ``method`` names the plan; ``settings`` (method-specific, JSON-able) are recorded in the
    plan and the resume file; ``needs_data=False`` lets ``batches`` be None. ``model`` is not
    modified. :func:`stops` is the same loop as a generator of the levels it lands on.
    """
    plan = None
    for level, plan in stops(model, batches, score, loop, method=method, settings=settings,
                             needs_data=needs_data):
        if level is not None and loop.on_level is not None:
            loop.on_level(level, plan)
    return plan


def stops(model: nn.Module, batches, score: Scorer, loop: LoopSettings, *, method: str,
          settings: dict | None = None, needs_data: bool = True
          ) -> Iterator[tuple[float | None, MaskPlan]]:
    """:func:`run` as a generator: ``(level, plan)`` each time an iteration lands on one of
    ``loop.levels`` or on the target, then ``(None, final plan)`` once the loop is done (so a
    caller finishes every level in the order the loop reaches it, with no callback)."""
    data = (Source(batches, loop.samples, task=loop.task)
            if (needs_data or batches is not None) else None)
    if (loop.recalibrate or loop.repair) and data is None:
        raise PrunewiseError(f"{'repair' if loop.repair else 'recalibrate'} inside the loop needs "
                             f"attribution data (batches) to work on")
    evals = Source(loop.eval_batches) if loop.eval_batches is not None else None
    st = _start(model, loop, method, settings)
    final = kept_count(st.total, loop.sparsity)
    if loop.nm is None and loop.allocation in ("lamp", "errors") and final < len(st.masks):
        raise PrunewiseError(f"allocation '{loop.allocation}' cannot keep only {final} weights "
                             f"without emptying a layer: the scope has {len(st.masks)} weight "
                             f"tensors; lower the sparsity")
    if getattr(score, "solve", None) is not None:
        if loop.nm is None and loop.allocation == "row":
            raise PrunewiseError(f"{method} chooses each layer's mask itself: give it a count "
                                 f"per layer (allocation 'uniform', 'lamp', 'global' or "
                                 f"'errors'), not 'row'")
        st.ckpt = None   # a solver runs in one shot: nothing to resume
    work = copy.deepcopy(model)
    work.eval()
    if loop.allocation == "errors" and loop.nm is None:   # once, on the unpruned model
        st.errors = loop.errors(work, {n: torch.ones_like(m) for n, m in st.masks.items()},
                                data, 1.0 - loop.sparsity)
    apply_masks(work, st.masks)
    st.dense = model
    if st.start > 0:  # resumed: the statistics (or weights) an uninterrupted run would have now
        _recalibrate(work, data, loop, st)
    bar = progress_bar(len(st.counts), f"prune {method}", loop.progress, initial=st.start)
    try:
        for t in range(st.start, len(st.counts)):
            row = _iteration(work, score, data, evals, loop, st, t)
            bar.update(1)
            post = {"sparsity": f"{row['sparsity']:.3f}"}
            if "score" in row:
                post[loop.task.primary] = f"{row['score']:.3f}"
            bar.set_postfix(post, refresh=False)
            if loop.callback is not None:
                loop.callback(row)
            if st.counts[t] in st.level_at:
                yield st.level_at[st.counts[t]], _plan(st)
    finally:
        bar.close()
    yield None, _plan(st)


def _start(model: nn.Module, loop: LoopSettings, method: str, settings: dict | None) -> _State:
    """Scope, schedule, run config and the starting masks (from the resume file if any)."""
    names = prunable(model, loop.params)
    named = dict(model.named_parameters())
    total = sum(named[n].numel() for n in names)
    counts = schedule(total, loop.sparsity, loop.keep, loop.levels)
    level_at = {kept_count(total, lv): lv for lv in list(loop.levels) + [loop.sparsity]}
    config = {"method": method, "sparsity": loop.sparsity, "keep": loop.keep,
              "samples": loop.samples, "seed": loop.seed, "scope": names, "total": total,
              "levels": sorted(loop.levels), "settings": settings or {},
              "weights": _fingerprint(model, names)}
    if loop.recalibrate:  # only when on, so that plans and resume files without it are unchanged
        config["recalibrate"] = {"samples": loop.recalibrate_samples}
    if loop.repair:
        config["repair"] = {"samples": LOOP_REPAIR_SAMPLES}
    if loop.allocation != "global":  # the same: global plans and resume files stay as they were
        config["allocation"] = loop.allocation
    if loop.nm is not None:
        config["nm"] = list(loop.nm)
    masks = {n: torch.ones(named[n].shape, dtype=torch.bool, device=named[n].device)
             for n in names}
    history: list[dict] = []
    start = 0
    ckpt = Path(loop.checkpoint_dir) / RESUME_FILE if loop.checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        masks, start, history = _read_resume(ckpt, config, masks, counts)
        masks = {n: m.to(named[n].device) for n, m in masks.items()}  # masks live by their weight
    return _State(method, config, counts, level_at, total, masks, history, start, ckpt)


def _iteration(work, score, data, evals, loop: LoopSettings, st: _State, t: int) -> dict:
    """One scored, selected and applied iteration; returns its history row."""
    t0 = time.perf_counter()
    named = dict(work.named_parameters())
    if getattr(score, "solve", None) is not None:   # it picks the masks and updates weights
        counts = None if loop.nm is not None else allocate(loop.allocation, st.masks,
                                                           st.counts[t], named, st.errors)
        st.masks, info = score.solve(work, st.masks, data, counts, loop.nm)
        st.weights = {n: named[n].detach().clone() for n in st.masks}
    else:
        scores, info = score(work, st.masks, data, t)
        if loop.nm is not None:
            st.masks = select_nm(scores, st.masks, *loop.nm)
        else:
            st.masks = select(scores, st.masks, st.counts[t], loop.allocation, named,
                              st.errors)
        del scores
    apply_masks(work, st.masks)
    _recalibrate(work, data, loop, st)
    kept = int(sum(int(m.sum()) for m in st.masks.values()))
    row = {"iteration": t + 1, "kept": kept, "sparsity": 1.0 - kept / st.total, **info}
    if evals is not None:
        score = evaluate(work, evals, loop.task)[loop.task.primary]
        row.update({k: score for k in ("score",) + loop.task.aliases})
    row["seconds"] = time.perf_counter() - t0
    st.history.append(row)
    if st.ckpt is not None:
        _write_resume(st.ckpt, st.config, st.masks, t + 1, st.history)
    return row


#: Attribution samples the in-loop repair fits on.
LOOP_REPAIR_SAMPLES = 256


def _recalibrate(work: nn.Module, data: Source | None, loop: LoopSettings, st: _State) -> None:
    if loop.repair:   # a repaired copy is not recalibrated (docs/methods.md, "Repair")
        from ..repair import reconstruct
        reconstruct(st.dense, work, data, masks=st.masks, samples=LOOP_REPAIR_SAMPLES,
                    progress=False)
    elif loop.recalibrate:
        recalibrate_bn(work, data, samples=loop.recalibrate_samples)


def _fingerprint(model: nn.Module, names: list[str]) -> str:
    named = dict(model.named_parameters())
    # on CPU, so that a run resumes on another device (a GPU sum may differ in the last bits)
    return repr(float(sum(float(named[n].detach().cpu().double().abs().sum()) for n in names)))


def _plan(st: _State) -> MaskPlan:
    meta = {"settings": {k: v for k, v in st.config.items() if k != "weights"},
            "iterations": len(st.counts), "history": list(st.history)}
    return MaskPlan({k: v.clone() for k, v in st.masks.items()}, method=st.method, meta=meta,
                    weights=st.weights)


def _write_resume(path: Path, config: dict, masks, done: int, history: list) -> None:
    files.write_tensors(path, masks, metadata={
        "config": json.dumps(config, sort_keys=True, default=files.jsonable),
        "iteration": str(done), "history": json.dumps(history, default=files.jsonable)})


def _read_resume(path: Path, config: dict, masks: dict, counts: list[int]):
    _, meta = files.read_header(path, "resume checkpoint")
    saved, done, history = schema.decode_resume(meta, str(path))
    tensors = files.read_tensors(path, "resume checkpoint")
    check_masks(tensors, str(path))
    want = json.loads(json.dumps(config, sort_keys=True, default=files.jsonable))
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise PrunewiseError(f"resume checkpoint {path} was made with different settings or "
                             f"another model ({', '.join(diff)} differ); use a new folder")
    if set(tensors) != set(masks) or any(tensors[k].shape != masks[k].shape for k in masks):
        raise PrunewiseError(f"corrupt resume checkpoint {path}: masks do not match the model")
    # consistent with the schedule: the iteration exists, its masks keep what it keeps, and
    # the history has one row per finished iteration
    kept = int(sum(int(torch.count_nonzero(t)) for t in tensors.values()))
    if not 0 <= done <= len(counts):
        raise PrunewiseError(f"corrupt resume checkpoint {path}: it claims iteration {done} of a "
                             f"{len(counts)}-iteration schedule; use a new folder")
    if kept != (counts[done - 1] if done else config["total"]) or len(history) != done:
        raise PrunewiseError(f"corrupt resume checkpoint {path}: its masks keep {kept} weights "
                             f"and it records {len(history)} iterations, which iteration {done} "
                             f"of this schedule cannot have; use a new folder")
    return {k: tensors[k].to(torch.bool) for k in masks}, done, history
