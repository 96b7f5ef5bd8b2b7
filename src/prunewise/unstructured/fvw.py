"""FVW: finding valuable weights by an adversarial attack that imitates pruning.

The method is specified in docs/methods.md (section "FVW").

Two layers:

* :func:`attribute` -- one attack pass. ``K`` sign steps of size ``alpha`` that only move weights
  toward zero (ascent raises the loss, descent lowers it), on a copy of the model in eval mode,
  with the gradient integrated along the path by the trapezoid rule. Returns ``A`` per prunable
  tensor and the loss change ``dloss``.
* :func:`prune` -- iterative global selection: each iteration attacks the already-pruned model,
  scores ``I = |A * w| * M`` and keeps the best elements over all prunable tensors, following a
  schedule that lands exactly on the target sparsity. The result is a :class:`~prunewise.plan.MaskPlan`.

This module holds only the attack pass and the FVW scorer (:class:`FVWScorer`); scope, data,
schedule, global selection and the iterative loop are the engine in :mod:`prunewise.masking`,
shared with the baselines (magnitude, Taylor, random), so a comparison isolates the score.

**Counting n.** ``n`` is the number of attribution samples the *unperturbed* model (step 0)
classifies correctly. The losses ``L_s`` sum the cross-entropy of the samples the model at
step ``s`` classifies correctly (re-evaluated at every step, as specified), and every term is
divided by the same ``n``: ``A = alpha/n * sum_s sign(g_{s-1}) (g_{s-1}+g_s)/2`` and
``dloss = (L_K - L_0)/n``. (The reference counts every sample of a batch that had one correct
prediction; counting only correct samples is the documented alternative.)

**Batches.** The attribution data is read ``K + 1`` times per pass. ``batches`` may be a
callable returning a fresh iterable of ``(x, y)``, or a re-iterable (list, DataLoader, ...);
both are streamed. A one-shot iterator (a generator) is read into memory once.

**Memory.** Besides the working copy of the model (whose prunable weights are ``w_s``; the
caller's model still holds ``w0``), a pass holds the accumulator ``A``, the gradient buffer
``g_s`` and ``sign(g_{s-1})`` as int8 (a quarter copy): the trapezoid sum is rewritten as
``sum_{s<K} |g_s| + sum_{s>0} sign(g_{s-1}) g_s``, so ``g_{s-1}`` itself never has to be kept.
All other temporaries are per tensor.

**Precision and devices.** The attack and the attribution always run in float32, never under
autocast or ``--amp``: the step ``alpha = 1e-8`` is far below bf16's resolution (about 3
significant digits) and below fp16's smallest normal steps near typical weights, so in half
precision the sign steps would not move the weights at all. They run on the model's device;
the batches follow it. Under torchrun the ranks share out whole batches and add their
gradients, losses and counts in batch order (:func:`prunewise.masking.gradient_sweep`), so
every rank holds exactly the ``A`` of one process and selects the same masks.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import nn

from .. import checks, methods, tasks, utils
from . import engine as masking
from ..errors import PrunewiseError
from .engine import PruningWarning, Source, mask_list, prunable
from ..plan import MaskPlan

DIRECTIONS = ("ascent", "descent")


# ------------------------------------------------------------------------------------------
# One attack pass
# ------------------------------------------------------------------------------------------


def check_attack(alpha, steps, direction) -> None:
    """Raise PrunewiseError unless ``alpha`` is a finite number > 0, ``steps`` an integer
    >= 1 and ``direction`` one of :data:`DIRECTIONS`."""
    checks.number("alpha", alpha, 0.0, low_open=True)
    checks.integer("steps", steps, 1)
    checks.choice("direction", direction, DIRECTIONS)


def correct_ce(out: torch.Tensor, y: torch.Tensor):
    """The attack's loss of one classification batch: the summed cross-entropy of the correctly
    classified samples (None when there is none), and their number
    (:meth:`prunewise.tasks.Task.attack_loss` of the classification task)."""
    return tasks.classification().attack_loss(out, (None, y))


def sweep(model: nn.Module, data: Iterable) -> tuple[float, int, int]:
    """Forward+backward over ``data``; the loss is the task's attack loss (classification: the
    summed loss of the correctly classified samples).

    Returns (loss sum, number counted, number seen); gradients accumulate in ``.grad`` of the
    parameters that require them. This is the sweep the attack runs ``steps + 1`` times.
    Batches move to the model's device; under torchrun the sums are the single-process ones
    on every rank (:func:`prunewise.masking.gradient_sweep`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return masking.gradient_sweep(model, params, data, masking.task_of(data).attack_loss)


def _attack_copy(model: nn.Module, names: list[str], masks) -> tuple[nn.Module, list, list]:
    """An eval-mode copy with masked weights zeroed; only the prunable weights need grads."""
    work, ps = masking.grad_copy(model, names)
    ms = mask_list(masks, names, dict(work.named_parameters()))
    with torch.no_grad():
        for p, m in zip(ps, ms):
            if m is not None:
                p.mul_(m)
    return work, ps, ms


@torch.no_grad()
def _accumulate(ps, ms, acc, sign_prev, s: int, steps: int, alpha: float, ascent: bool) -> None:
    """Step ``s`` of the attack: add this gradient to the trapezoid sum, then (but for the
    last step) move the weights one sign step."""
    for i, (p, m) in enumerate(zip(ps, ms)):
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if m is not None:
            g.mul_(m)
        if s > 0:  # trapezoid, second half: sign(g_{s-1}) * g_s
            acc[i].addcmul_(sign_prev[i].to(g.dtype), g)
        if s < steps:
            sg = g.sign()
            if sign_prev[i] is None:
                sign_prev[i] = torch.empty(p.shape, dtype=torch.int8, device=p.device)
            sign_prev[i].copy_(sg)
            acc[i].add_(g.abs_())  # first half: sign(g_s) * g_s (g is not needed again)
            opp = torch.mul(p, sg).lt_(0)  # signs disagree (exact: sg is -1, 0 or 1)
            if ascent:
                p.add_(sg.mul_(opp), alpha=alpha)
            else:
                p.add_(sg.mul_(opp.logical_not_()), alpha=-alpha)
            del sg, opp


def attribute(model: nn.Module, batches, *, alpha: float = 1e-8, steps: int = 2,
              direction: str = "ascent", masks: dict[str, torch.Tensor] | None = None,
              params: Any = None) -> tuple[dict[str, torch.Tensor], float]:
    """One FVW attack pass; returns (``A`` per prunable parameter name, ``dloss``).

    ``batches``: a callable returning an iterable of ``(x, y)``, or a re-iterable; it is read
    ``steps + 1`` times. ``masks`` (name -> 0/1) zero the gradients (and weights) of pruned
    elements. ``params`` picks the scope (see :func:`prunewise.masking.prunable`). ``model``
    is not modified. Float32 on the model's device (see the module notes); under torchrun pass
    each rank its share of the samples, the sums are taken over the ranks.
    """
    check_attack(alpha, steps, direction)
    return attack(model, batches, alpha, steps, direction == "ascent", masks,
                  prunable(model, params))


def attack(model: nn.Module, batches, alpha: float, steps: int, ascent: bool, masks,
           names: list[str]) -> tuple[dict[str, torch.Tensor], float]:
    """:func:`attribute` on checked arguments (the scorer's settings were checked when they
    were built): the prunable parameter ``names`` are given."""
    data = batches if isinstance(batches, Source) else Source(batches)
    work, ps, ms = _attack_copy(model, names, masks)
    largest = min((torch.finfo(p.dtype).max for p in ps), default=float("inf"))
    if alpha >= largest:
        raise PrunewiseError(f"FVW's attack step alpha={alpha:g} does not fit the weights' "
                             f"{str(ps[0].dtype).replace('torch.', '')} (at most "
                             f"{largest:.3g}); use a small step such as the paper's 1e-8")
    acc = [torch.zeros_like(p) for p in ps]  # unscaled A
    sign_prev: list[torch.Tensor | None] = [None] * len(ps)
    n = 0
    loss0 = lossk = 0.0
    for s in range(steps + 1):
        for p in ps:
            if p.grad is not None:
                p.grad.zero_()
        task = masking.task_of(data)
        loss, counted, seen = masking.gradient_sweep(work, ps, data, task.attack_loss)
        if s == 0:
            if seen == 0:
                raise PrunewiseError("the attribution data is empty: no samples to attack with")
            if counted == 0:
                raise PrunewiseError(f"the model classifies none of the {seen} attribution samples "
                                     f"correctly: nothing to attack"
                                     if isinstance(task, tasks.Classification) else
                                     f"task '{task.name}' counts no term of the {seen} "
                                     f"attribution samples: nothing to attack")
            n, loss0 = counted, loss
        if not math.isfinite(loss):
            raise PrunewiseError(f"FVW's attack with alpha={alpha:g} made the loss {loss} after "
                                 f"{s} step(s): the step is too large for these weights; use a "
                                 f"smaller --alpha (the paper's is 1e-8)")
        if s == steps:
            lossk = loss
        _accumulate(ps, ms, acc, sign_prev, s, steps, alpha, ascent)
    scale = alpha / (2.0 * n)
    out = {name: a.mul_(scale) for name, a in zip(names, acc)}
    del work
    return out, (lossk - loss0) / n


# ------------------------------------------------------------------------------------------
# The FVW scorer
# ------------------------------------------------------------------------------------------


def importance(score: dict, work: nn.Module, masks: dict) -> dict:
    """FVW importance ``I = |score * w| * M`` for every tensor in ``masks``."""
    named = dict(work.named_parameters())
    return {n: (score[n] * named[n].detach()).abs_().mul_(masks[n]) for n in masks}


@dataclass
class FVWScorer:
    """The FVW :class:`~prunewise.masking.Scorer`: one attack per class group, combined.

    Without ``class_groups``: one ascent pass over all data (with ``descent`` also a descent
    pass), importance ``|A * w| * M``. With ``class_groups=G``: labels ``y // ceil(C / G)``
    form the groups; each group's ascent attribution is normalised by its loss change (plus,
    with ``descent``, the inverted normalised descent attribution), and the groups are
    combined by ``aggregate`` ('union': best rank in any group; 'sum'). A group that cannot be
    attacked or has a zero loss change is skipped with a :class:`PruningWarning`.
    """

    alpha: float = 1e-8
    steps: int = 2
    class_groups: int | None = None
    aggregate: str = "union"
    descent: bool = False

    def __call__(self, work: nn.Module, masks: dict, data: Source, iteration: int):
        names = list(masks)
        info: dict = {}
        normed, raw, skipped = [], [], []
        for g, src, label in self._groups(work, data):
            try:
                a, dl = attack(work, src, self.alpha, self.steps, True, masks, names)
            except PrunewiseError as e:
                if g is None:
                    raise
                warnings.warn(f"{label} skipped: {e}", PruningWarning, stacklevel=3)
                skipped.append(g)
                continue
            info.setdefault("dloss", []).append(dl)
            if g is None and not self.descent:
                normed.append(a)  # one group: normalising by dloss changes no ranking
                continue
            raw.append(a)
            s = self._normalised(work, src, label, a, dl, masks)
            if s is None:
                skipped.append(g)
                continue
            normed.append(s)
        if skipped:
            info["skipped_groups"] = skipped
        if self.class_groups is None and info.get("dloss"):
            info["dloss"] = info["dloss"][0]
        return self._combine(normed, raw, work, masks), info

    def _groups(self, work: nn.Module, data: Source):
        """(group index or None, its data, its name) for every class group."""
        if self.class_groups is None:
            yield None, data, "all data"
            return
        task = masking.task_of(data)
        if not isinstance(task, tasks.Classification):
            raise PrunewiseError(f"class groups need a classification task, not "
                                 f"'{task.name}'; leave class_groups unset")
        num_classes = _num_classes(work, data)
        if self.class_groups > num_classes:
            raise PrunewiseError(f"class groups {self.class_groups} is more than the model's "
                                 f"{num_classes} classes; give at most {num_classes}")
        size = max(1, math.ceil(num_classes / self.class_groups))
        for g in range(math.ceil(num_classes / size)):
            yield g, data.filtered(lambda y, g=g, s=size: (y // s) == g), f"class group {g}"

    def _normalised(self, work, src, label, a, dl, masks) -> dict | None:
        """``|A / dloss|`` (+ the inverted descent score); None when dloss is unusable."""
        names = list(masks)
        if dl == 0 or not math.isfinite(dl):
            warnings.warn(f"{label} skipped: its loss change is {dl!r} (try a larger alpha)",
                          PruningWarning, stacklevel=4)
            return None
        s = {n: (a[n] / dl).abs_() for n in names}
        if self.descent:
            b, dl2 = attack(work, src, self.alpha, self.steps, False, masks, names)
            if dl2 == 0 or not math.isfinite(dl2):
                warnings.warn(f"{label}: descent pass ignored, its loss change is {dl2!r}",
                              PruningWarning, stacklevel=4)
            else:
                bn = {n: (b[n] / dl2).abs_() for n in names}
                top = max(float(bn[n][masks[n]].max()) if masks[n].any() else 0.0
                          for n in names)
                for n in names:
                    s[n].add_(top - bn[n])
        return s

    def _combine(self, normed: list, raw: list, work: nn.Module, masks: dict):
        """One importance dict ('sum' or a single group) or a list of them ('union')."""
        names = list(masks)
        if not normed:
            if not raw:
                raise PrunewiseError("no class group could be attacked (none has a correctly "
                                     "classified sample)")
            warnings.warn("no class group had a usable loss change; using unnormalised "
                          "attributions this iteration", PruningWarning, stacklevel=4)
            normed = [{n: a[n].abs() for n in names} for a in raw]
        if len(normed) == 1 or self.aggregate == "sum":
            total = normed[0]
            for s in normed[1:]:
                for n in names:
                    total[n] = total[n] + s[n]
            return importance(total, work, masks)
        return [importance(s, work, masks) for s in normed]


def _num_classes(model: nn.Module, data: Source) -> int:
    for x, _ in data:
        with torch.no_grad():
            return int(utils.forward(model, utils.take(x, slice(0, 1))).shape[1])
    raise PrunewiseError("the attribution data is empty: no samples to attack with")


# ------------------------------------------------------------------------------------------
# FVW pruning
# ------------------------------------------------------------------------------------------


def scorer(settings: methods.FVWSettings, seed: int = 0) -> FVWScorer:
    """The method table's builder: the FVW scorer for ``settings`` (``seed`` is not used)."""
    return FVWScorer(**asdict(settings))


def prune(model: nn.Module, batches, *, alpha: float = 1e-8, steps: int = 2,
          class_groups: int | None = None, aggregate: str = "union", descent: bool = False,
          **loop) -> MaskPlan:
    """FVW: iteratively prune ``model`` to ``sparsity``; returns a :class:`MaskPlan`.

    Each iteration runs one attack pass on the pruned (not fine-tuned) model over ``batches``
    (first ``samples`` samples), scores ``I = |A * w| * M`` and keeps the top ``keep`` fraction
    of the unpruned weights globally; the last iteration lands exactly on ``sparsity``.
    ``class_groups=G`` splits the classes into G groups (``label // ceil(C / G)``) with one
    ascent (and with ``descent=True`` one descent) pass each, normalised by its loss change and
    combined by ``aggregate`` ('union' or 'sum'); these five are
    :class:`prunewise.methods.FVWSettings`. The other keywords are the loop's
    (:class:`prunewise.masking.LoopSettings`: ``sparsity``, ``keep`` (default 0.98),
    ``samples``, ``params``, ``eval_batches`` (accuracy per iteration), ``checkpoint_dir``
    (resumable), ``levels`` / ``on_level``, ``seed``, ``callback``, ``progress`` (a bar, on by
    default), ``recalibrate`` / ``recalibrate_samples`` (BatchNorm re-estimated on the
    attribution data after every iteration, so the next attack sees statistics that match the
    pruned weights)). ``model`` is not modified.
    """
    options = methods.FVWSettings(alpha=alpha, steps=steps, class_groups=class_groups,
                                  aggregate=aggregate, descent=bool(descent))
    settings = masking.LoopSettings(**loop)
    return masking.run(model, batches, scorer(options), settings, method="fvw",
                       settings=asdict(options))
