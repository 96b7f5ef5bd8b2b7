"""FVW: finding valuable weights by an adversarial attack that imitates pruning (METHODS.md §1).

Two layers:

* :func:`attribute` -- one attack pass. ``K`` sign steps of size ``alpha`` that only move weights
  toward zero (ascent raises the loss, descent lowers it), on a copy of the model in eval mode,
  with the gradient integrated along the path by the trapezoid rule. Returns ``A`` per prunable
  tensor and the loss change ``dloss``.
* :func:`prune` -- iterative global selection: each iteration attacks the already-pruned model,
  scores ``I = |A * w| * M`` and keeps the best elements over all prunable tensors, following a
  schedule that lands exactly on the target sparsity. The result is a :class:`~prunewise.plan.MaskPlan`.

The selection loop (:func:`iterative_prune`) is shared with the baselines (magnitude, Taylor,
random), so a comparison isolates the score.

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
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import files
from .errors import PrunewiseError
from .plan import MaskPlan

DIRECTIONS = ("ascent", "descent")
AGGREGATES = ("union", "sum")
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RESUME_FILE = "resume.safetensors"


class PruningWarning(UserWarning):
    """A recoverable problem during pruning (e.g. a class group skipped for a zero loss change)."""


# ------------------------------------------------------------------------------------------
# Scope: which tensors are prunable
# ------------------------------------------------------------------------------------------


@dataclass
class Scope:
    """Which weights are prunable: the ``weight`` of modules of ``types`` minus exclusions.

    ``include`` / ``exclude`` hold module-name glob patterns (``"layer3.*"``) or module types
    (``nn.Linear``); ``include=None`` means every module of ``types``. ``skip_first`` drops the
    first conv/linear module in ``named_modules()`` order (the input stem).
    """

    include: Sequence[Any] | None = None
    exclude: Sequence[Any] = ()
    types: tuple = PRUNABLE_TYPES
    skip_first: bool = True

    def names(self, model: nn.Module) -> list[str]:
        mods = [(n, m) for n, m in model.named_modules()
                if isinstance(m, self.types) and isinstance(getattr(m, "weight", None), nn.Parameter)]
        if self.skip_first and mods:
            mods = mods[1:]
        out = []
        for n, m in mods:
            if self.include is not None and not _matches(n, m, self.include):
                continue
            if _matches(n, m, self.exclude):
                continue
            out.append(f"{n}.weight" if n else "weight")
        return out


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


# ------------------------------------------------------------------------------------------
# Attribution data
# ------------------------------------------------------------------------------------------


class Source:
    """Re-iterable attribution data: a callable or re-iterable of ``(x, y)``, optionally
    limited to the first ``samples`` samples and filtered to some labels."""

    def __init__(self, batches, samples: int | None = None, where: Callable | None = None):
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise PrunewiseError(f"samples must be an integer >= 1 (or None for all), got {samples!r}")
        if batches is None:
            raise PrunewiseError("this method needs attribution data (batches), got None")
        if isinstance(batches, Source):
            self.base, self.samples = batches.base, batches.samples
            if samples is not None:
                self.samples = samples if self.samples is None else min(samples, self.samples)
            inner = batches.where
            self.where = where if inner is None else (
                inner if where is None else (lambda y: inner(y) & where(y)))
            return
        if not callable(batches):
            try:
                it = iter(batches)
            except TypeError:
                raise PrunewiseError(f"batches must be an iterable of (x, y) or a callable "
                                     f"returning one, got {type(batches).__name__}") from None
            if it is batches:  # a one-shot iterator: read it once (bounded by samples)
                batches = list(_limited(it, samples))
        self.base, self.samples, self.where = batches, samples, where

    def filtered(self, where: Callable) -> "Source":
        return Source(self, None, where)

    def __iter__(self):
        src = self.base() if callable(self.base) else self.base
        for x, y in _limited(iter(src), self.samples):
            if self.where is not None:
                keep = self.where(y)
                x, y = x[keep], y[keep]
            if len(y):
                yield x, y


def _limited(it, samples):
    left = samples
    for batch in it:
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise PrunewiseError("every batch must be a pair (x, y) of tensors") from None
        if left is not None:
            if left <= 0:
                break
            if len(y) > left:
                x, y = x[:left], y[:left]
            left -= len(y)
        yield x, y


# ------------------------------------------------------------------------------------------
# One attack pass
# ------------------------------------------------------------------------------------------


def _check_attack(alpha, steps, direction):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or alpha <= 0:
        raise PrunewiseError(f"alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrunewiseError(f"steps must be an integer >= 1, got {steps!r}")
    if direction not in DIRECTIONS:
        raise PrunewiseError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def _sweep(model: nn.Module, data: Iterable) -> tuple[float, int, int]:
    """Forward+backward over ``data``; the loss sums the CE of correctly classified samples.

    Returns (loss sum, number counted, number seen); gradients accumulate in ``.grad``.
    """
    total, counted, seen = 0.0, 0, 0
    for x, y in data:
        seen += len(y)
        out = model(x)
        ok = out.argmax(dim=1) == y
        k = int(ok.sum())
        if k == 0:
            continue
        loss = F.cross_entropy(out[ok], y[ok], reduction="sum")
        loss.backward()
        total += float(loss.detach())
        counted += k
    return total, counted, seen


def _mask_dict(masks, names, named) -> list:
    out = []
    masks = masks or {}
    for n in masks:
        if n not in named:
            raise PrunewiseError(f"mask names unknown parameter '{n}'")
    for n in names:
        m = masks.get(n)
        if m is not None:
            if tuple(m.shape) != tuple(named[n].shape):
                raise PrunewiseError(f"mask for '{n}' has shape {tuple(m.shape)}, parameter has "
                                     f"{tuple(named[n].shape)}")
            m = m.to(device=named[n].device) != 0
        out.append(m)
    return out


def attribute(model: nn.Module, batches, *, alpha: float = 1e-8, steps: int = 2,
              direction: str = "ascent", masks: dict[str, torch.Tensor] | None = None,
              params: Any = None) -> tuple[dict[str, torch.Tensor], float]:
    """One FVW attack pass; returns (``A`` per prunable parameter name, ``dloss``).

    ``batches``: a callable returning an iterable of ``(x, y)``, or a re-iterable; it is read
    ``steps + 1`` times. ``masks`` (name -> 0/1) zero the gradients (and weights) of pruned
    elements. ``params`` picks the scope (see :func:`prunable`). ``model`` is not modified.
    """
    _check_attack(alpha, steps, direction)
    names = prunable(model, params)
    data = batches if isinstance(batches, Source) else Source(batches)
    work = copy.deepcopy(model)
    work.eval()
    named = dict(work.named_parameters())
    for p in work.parameters():
        p.requires_grad_(False)
        p.grad = None
    ps = [named[n] for n in names]
    ms = _mask_dict(masks, names, named)
    with torch.no_grad():
        for p, m in zip(ps, ms):
            if m is not None:
                p.mul_(m)
    for p in ps:
        p.requires_grad_(True)
    acc = [torch.zeros_like(p) for p in ps]  # unscaled A
    sign_prev: list[torch.Tensor | None] = [None] * len(ps)
    ascent = direction == "ascent"
    n = 0
    loss0 = lossk = 0.0
    for s in range(steps + 1):
        for p in ps:
            if p.grad is not None:
                p.grad.zero_()
        loss, counted, seen = _sweep(work, data)
        if s == 0:
            if seen == 0:
                raise PrunewiseError("the attribution data is empty: no samples to attack with")
            if counted == 0:
                raise PrunewiseError(f"the model classifies none of the {seen} attribution samples "
                                     f"correctly: nothing to attack")
            n, loss0 = counted, loss
        if s == steps:
            lossk = loss
        with torch.no_grad():
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
    scale = alpha / (2.0 * n)
    out = {name: a.mul_(scale) for name, a in zip(names, acc)}
    del work
    return out, (lossk - loss0) / n


# ------------------------------------------------------------------------------------------
# Schedule and global selection (shared with the baselines)
# ------------------------------------------------------------------------------------------


def check_targets(sparsity, keep) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not (0.0 <= sparsity < 1.0):
        raise PrunewiseError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0.0 < keep < 1.0):
        raise PrunewiseError(f"keep must be in (0, 1), got {keep!r}")


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


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool vector keeping the ``k`` largest values; ties go to the lower position; NaN is lowest."""
    n = values.numel()
    keep = torch.zeros(n, dtype=torch.bool)
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


def select(scores, masks: dict[str, torch.Tensor], kept: int) -> dict[str, torch.Tensor]:
    """New masks keeping ``kept`` of the currently unpruned elements, chosen globally.

    ``scores`` is one dict (name -> score) or, for union mode, a list of dicts: an element is
    kept when it ranks high in any of them (smallest best rank over the lists; exactly ``kept``).
    """
    names = list(masks)
    flat_m = [masks[n].flatten() for n in names]

    def pooled(sc):
        return torch.cat([sc[n].detach().flatten().cpu()[fm] for n, fm in zip(names, flat_m)])

    if isinstance(scores, (list, tuple)):
        if not scores:
            raise PrunewiseError("no scores to select from")
        best = None
        for sc in scores:
            v = pooled(sc).to(torch.float64).nan_to_num(nan=-math.inf)
            order = torch.sort(v, descending=True, stable=True).indices
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel())
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


def _fingerprint(model: nn.Module, names: list[str]) -> str:
    named = dict(model.named_parameters())
    return repr(float(sum(float(named[n].detach().double().abs().sum()) for n in names)))


def iterative_prune(model: nn.Module, batches, score: Callable, *, method: str, sparsity: float,
                    keep: float = 0.98, samples: int | None = None, params: Any = None,
                    eval_batches=None, checkpoint_dir: str | Path | None = None, seed: int = 0,
                    callback: Callable[[dict], None] | None = None, progress: bool = False,
                    levels: Sequence[float] = (), on_level: Callable | None = None,
                    settings: dict | None = None, needs_data: bool = True) -> MaskPlan:
    """The selection loop every unstructured method shares.

    ``score(model, masks, iteration, data, names) -> (scores, info)`` scores the current
    (already pruned) working copy; :func:`select` keeps the scheduled count. After every
    iteration: accuracy on ``eval_batches`` (if given), a resume checkpoint in
    ``checkpoint_dir`` (if given), ``callback(row)``, and ``on_level(sparsity, plan)`` when the
    iteration landed on one of ``levels``. A run with an existing checkpoint continues after its
    last finished iteration and ends with the same masks as an uninterrupted run (levels passed
    before the interruption are not reported again).
    """
    check_targets(sparsity, keep)
    names = prunable(model, params)
    data = Source(batches, samples) if (needs_data or batches is not None) else None
    evals = Source(eval_batches) if eval_batches is not None else None
    named = dict(model.named_parameters())
    total = sum(named[n].numel() for n in names)
    counts = schedule(total, sparsity, keep, levels)
    level_at = {kept_count(total, lv): lv for lv in list(levels) + [sparsity]}
    config = {"method": method, "sparsity": sparsity, "keep": keep, "samples": samples,
              "seed": seed, "scope": names, "total": total, "levels": sorted(levels),
              "settings": settings or {}, "weights": _fingerprint(model, names)}
    masks = {n: torch.ones(named[n].shape, dtype=torch.bool) for n in names}
    history: list[dict] = []
    start = 0
    ckpt = Path(checkpoint_dir) / RESUME_FILE if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        masks, start, history = _read_resume(ckpt, config, masks)
    work = copy.deepcopy(model)
    work.eval()
    _apply(work, masks)
    bar = tqdm(total=len(counts), initial=start, desc=f"prune {method}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for t in range(start, len(counts)):
        t0 = time.perf_counter()
        scores, info = score(work, masks, t, data, names)
        masks = select(scores, masks, counts[t])
        del scores
        _apply(work, masks)
        kept = int(sum(int(m.sum()) for m in masks.values()))
        row = {"iteration": t + 1, "kept": kept, "sparsity": 1.0 - kept / total, **info}
        if evals is not None:
            from .train import evaluate
            row["accuracy"] = evaluate(work, evals)["top1"]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if ckpt is not None:
            _write_resume(ckpt, config, masks, t + 1, history)
        bar.update(1)
        post = {"sparsity": f"{row['sparsity']:.3f}"}
        if "accuracy" in row:
            post["acc"] = f"{row['accuracy']:.3f}"
        bar.set_postfix(post)
        if callback is not None:
            callback(row)
        if on_level is not None and counts[t] in level_at:
            on_level(level_at[counts[t]], _plan(masks, method, config, history, len(counts)))
    bar.close()
    return _plan(masks, method, config, history, len(counts))


def _plan(masks, method, config, history, n_iter) -> MaskPlan:
    meta = {"settings": {k: v for k, v in config.items() if k != "weights"},
            "iterations": n_iter, "history": list(history)}
    return MaskPlan({k: v.clone() for k, v in masks.items()}, method=method, meta=meta)


@torch.no_grad()
def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    for n, m in masks.items():
        named[n].mul_(m.to(named[n].dtype))


def _write_resume(path: Path, config: dict, masks, done: int, history: list) -> None:
    files.write_tensors(path, masks, metadata={
        "config": json.dumps(config, sort_keys=True, default=files._jsonable),
        "iteration": str(done), "history": json.dumps(history, default=files._jsonable)})


def _read_resume(path: Path, config: dict, masks: dict):
    from safetensors import safe_open

    tensors = files.read_tensors(path, "resume checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        saved = json.loads(meta["config"])
        done = int(meta["iteration"])
        history = json.loads(meta["history"])
    except (KeyError, ValueError, OSError) as e:
        raise PrunewiseError(f"corrupt resume checkpoint {path}: {e}") from None
    want = json.loads(json.dumps(config, sort_keys=True, default=files._jsonable))
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise PrunewiseError(f"resume checkpoint {path} was made with different settings or "
                             f"another model ({', '.join(diff)} differ); use a new folder")
    if set(tensors) != set(masks) or any(tensors[k].shape != masks[k].shape for k in masks):
        raise PrunewiseError(f"corrupt resume checkpoint {path}: masks do not match the model")
    return {k: tensors[k].to(torch.bool) for k in masks}, done, history


# ------------------------------------------------------------------------------------------
# FVW pruning
# ------------------------------------------------------------------------------------------


def _importance(score: dict, work: nn.Module, masks: dict) -> dict:
    named = dict(work.named_parameters())
    return {n: (score[n] * named[n].detach()).abs_().mul_(masks[n]) for n in masks}


def _fvw_scorer(alpha, steps, class_groups, aggregate, descent):
    def score(work, masks, t, data, names):
        if class_groups is None:
            groups = [None]
        else:
            num_classes = _num_classes(work, data)
            size = max(1, math.ceil(num_classes / class_groups))
            groups = list(range(math.ceil(num_classes / size)))
        info: dict = {}
        normed, raw, skipped = [], [], []
        for g in groups:
            src = data if g is None else data.filtered(lambda y, g=g, s=size: (y // s) == g)
            label = "all data" if g is None else f"class group {g}"
            try:
                a, dl = attribute(work, src, alpha=alpha, steps=steps, masks=masks, params=names)
            except PrunewiseError as e:
                if g is None:
                    raise
                warnings.warn(f"{label} skipped: {e}", PruningWarning, stacklevel=2)
                skipped.append(g)
                continue
            info.setdefault("dloss", []).append(dl)
            if g is None and not descent:
                normed.append(a)  # one group: normalising by dloss changes no ranking
                continue
            raw.append(a)
            if dl == 0 or not math.isfinite(dl):
                warnings.warn(f"{label} skipped: its loss change is {dl!r} (try a larger alpha)",
                              PruningWarning, stacklevel=2)
                skipped.append(g)
                continue
            s = {n: (a[n] / dl).abs_() for n in names}
            if descent:
                b, dl2 = attribute(work, src, alpha=alpha, steps=steps, direction="descent",
                                   masks=masks, params=names)
                if dl2 == 0 or not math.isfinite(dl2):
                    warnings.warn(f"{label}: descent pass ignored, its loss change is {dl2!r}",
                                  PruningWarning, stacklevel=2)
                else:
                    bn = {n: (b[n] / dl2).abs_() for n in names}
                    top = max(float(bn[n][masks[n]].max()) if masks[n].any() else 0.0
                              for n in names)
                    for n in names:
                        s[n].add_(top - bn[n])
            normed.append(s)
        if skipped:
            info["skipped_groups"] = skipped
        if groups == [None] and info.get("dloss"):
            info["dloss"] = info["dloss"][0]
        if not normed:
            if not raw:
                raise PrunewiseError("no class group could be attacked (none has a correctly "
                                     "classified sample)")
            warnings.warn("no class group had a usable loss change; using unnormalised "
                          "attributions this iteration", PruningWarning, stacklevel=2)
            normed = [{n: a[n].abs() for n in names} for a in raw]
        if len(normed) == 1 or aggregate == "sum":
            total = normed[0]
            for s in normed[1:]:
                for n in names:
                    total[n] = total[n] + s[n]
            return _importance(total, work, masks), info
        return [_importance(s, work, masks) for s in normed], info
    return score


def _num_classes(model: nn.Module, data: Source) -> int:
    for x, _ in data:
        with torch.no_grad():
            return int(model(x[:1]).shape[1])
    raise PrunewiseError("the attribution data is empty: no samples to attack with")


def prune(model: nn.Module, batches, *, sparsity: float, keep: float = 0.98, alpha: float = 1e-8,
          steps: int = 2, samples: int | None = None, params: Any = None,
          class_groups: int | None = None, aggregate: str = "union", descent: bool = False,
          eval_batches=None, checkpoint_dir: str | Path | None = None, seed: int = 0,
          callback: Callable[[dict], None] | None = None, progress: bool = False,
          levels: Sequence[float] = (), on_level: Callable | None = None) -> MaskPlan:
    """FVW: iteratively prune ``model`` to ``sparsity``; returns a :class:`MaskPlan`.

    Each iteration runs one attack pass on the pruned (not fine-tuned) model over ``batches``
    (first ``samples`` samples), scores ``I = |A * w| * M`` and keeps the top ``keep`` fraction
    of the unpruned weights globally; the last iteration lands exactly on ``sparsity``.
    ``class_groups=G`` splits the classes into G groups (``label // ceil(C / G)``) with one
    ascent (and with ``descent=True`` one descent) pass each, normalised by its loss change and
    combined by ``aggregate`` ('union' or 'sum'). ``eval_batches`` logs accuracy per iteration;
    ``checkpoint_dir`` makes the run resumable. ``model`` is not modified.
    """
    check_targets(sparsity, keep)
    _check_attack(alpha, steps, "ascent")
    if class_groups is not None and (isinstance(class_groups, bool) or not isinstance(class_groups, int)
                                     or class_groups < 1):
        raise PrunewiseError(f"class_groups must be an integer >= 1, got {class_groups!r}")
    if aggregate not in AGGREGATES:
        raise PrunewiseError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    settings = {"alpha": alpha, "steps": steps, "class_groups": class_groups,
                "aggregate": aggregate, "descent": bool(descent)}
    return iterative_prune(model, batches, _fvw_scorer(alpha, steps, class_groups, aggregate, descent),
                           method="fvw", sparsity=sparsity, keep=keep, samples=samples,
                           params=params, eval_batches=eval_batches, checkpoint_dir=checkpoint_dir,
                           seed=seed, callback=callback, progress=progress, levels=levels,
                           on_level=on_level, settings=settings)
