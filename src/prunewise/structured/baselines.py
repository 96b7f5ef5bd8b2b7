"""Structured baselines: other (configure, select) pairs on the SLIMING engine (same groups,
cost model, budget search and surgery: :func:`prunewise.structured.prune`).

Configuration: ``uniform`` keeps the same fraction p of every prunable group, with p bisected so
the pruned model meets the same MACs (or params) budget as SLIMING; ``sliming`` is SLIMING's
step (i). Selection: ``l1`` (largest L1 norm of the output-side weights, i.e. of the rows of
R_g), ``random``, ``chip`` (CHIP-style one-shot leave-one-out nuclear norm of the root layer's
feature maps on a few batches, computed once) and ``gem`` (SLIMING step ii).

Each method is a pair of these steps, named by its row of the method table
(:mod:`prunewise.methods`): sliming = sliming config + gem; l1 / random / chip = uniform config +
that selection; sliming-l1 = sliming config + l1 (separates the two steps). The pipeline
(:func:`prunewise.runs.prune_channels`) runs them; ``sliming.prune`` is SLIMING's keyword API.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from .. import device, dist, utils
from . import sliming, engine as structured
from ..errors import BelowFloor, PrunewiseError



# --------------------------------------------------------------------------- configuration
def uniform_counts(a: structured.Analysis, *, macs=None, params=None, min_channels: int = 1,
                   round_to: int | None = None, latency=None) -> np.ndarray:
    """One keep fraction p for every group (N_g = round(p C_g), >= min_channels), bisected on
    the exact MACs / params of the pruned architecture; every count rounded to whole heads /
    equal parts and to a multiple of ``round_to``."""
    kind, value = structured.parse_budget(macs, params, latency=latency)
    cost, limit = structured.budget_cost(a.cost, kind, value)
    sizes = np.array([g.size for g in a.prunable])

    def counts(p):
        n = np.minimum(sizes, np.maximum(np.minimum(min_channels, sizes),
                                         np.floor(p * sizes + 0.5).astype(int)))
        return np.array([structured.round_count(int(k), g, round_to) for k, g in zip(n, a.prunable)])

    if cost(counts(0.0)) > limit:
        floor = cost(counts(0.0)) / cost(sizes)
        raise BelowFloor(f"{kind} budget {value:g} is below what min_channels={min_channels} "
                         f"allows: the floor is {floor:.4f} of the original", floor)
    return counts(structured.bisect(lambda p: cost(counts(p)) <= limit, good=0.0, bad=1.0,
                                    steps=60))


# --------------------------------------------------------------------------- selection
def l1_select(R: torch.Tensor, k: int) -> torch.LongTensor:
    """The k rows with the largest L1 norm."""
    return R.abs().sum(1).topk(int(k)).indices.sort().values


def random_select(C: int, k: int, gen: torch.Generator) -> torch.LongTensor:
    return torch.randperm(C, generator=gen)[: int(k)].sort().values


def chip_scores(maps: torch.Tensor) -> torch.Tensor:
    """CHIP-style channel importance: mean over images of ||F||_* - ||F without channel c||_*.

    ``maps``: (N, C, H, W) or (N, C) feature maps. Computed once (one-shot), never recomputed,
    on the maps' device. Under torchrun the ranks share out the images and add the per-image
    scores in image order (:func:`prunewise.dist.in_order`): the single-process scores exactly.
    """
    F = maps.detach().double().reshape(maps.shape[0], maps.shape[1], -1)   # N x C x P
    N, C, P = F.shape
    scores = torch.zeros(C, dtype=torch.float64, device=F.device)
    eye = torch.eye(C, dtype=torch.bool, device=F.device)
    for s in dist.in_order(range(N), lambda n: chip_image(F[n], eye), C):
        scores += s.to(scores.device)
    return scores / max(N, 1)


def chip_image(A: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """One image's CHIP scores: ||A||_* - ||A without channel c||_* for every row c of ``A``
    (C x P, float64); ``eye`` is the C x C identity as bools."""
    C, P = A.shape
    full = torch.linalg.eigvalsh(A @ A.T if C <= P else A.T @ A).clamp_min(0).sqrt().sum()
    if P < C:   # P x P Gram minus the left-out channel's outer product
        G = (A.T @ A)[None] - A[:, :, None] * A[:, None, :]
    else:       # (C-1) x (C-1) Gram of the rows that stay
        K = A @ A.T
        keep = ~eye
        idx = torch.stack([keep[c].nonzero().flatten() for c in range(C)])
        G = K[idx[:, :, None], idx[:, None, :]]
    left = torch.linalg.eigvalsh(G).clamp_min(0).sqrt().sum(1)
    return full - left


def collect_maps(model: nn.Module, infos: list, batches: Iterable, n_images: int = 16) -> dict:
    """Output feature maps of every prunable group's root layer on up to ``n_images`` inputs."""
    mods = dict(model.named_modules())
    store: dict[str, list] = {g.name: [] for g in infos}
    hooks = [mods[g.name].register_forward_hook(
        lambda m, i, o, name=g.name: store[name].append(o.detach())) for g in infos]
    seen = 0
    was = model.training
    model.eval()
    dev = device.of(model)
    try:
        with torch.no_grad():
            for x, _ in batches:
                x = device.to(utils.take(x, slice(0, n_images - seen)), dev)
                utils.call(model, x)
                seen += utils.batch_size(x)
                if seen >= n_images:
                    break
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if seen == 0:
        raise PrunewiseError("CHIP needs data: the batches given were empty")
    return {k: torch.cat(v) for k, v in store.items()}


# --------------------------------------------------------------------------- (configure, select) steps
def l1_step(a: structured.Analysis, g, k: int) -> torch.LongTensor:
    return l1_select(a.R[g.name], k)


def random_step(seed: int) -> structured.Select:
    gen = torch.Generator().manual_seed(seed)
    return lambda a, g, k: random_select(g.size, k, gen)


def chip_step(batches: Iterable, n_images: int = 16) -> structured.Select:
    """CHIP selection; the feature maps of every prunable group are collected once, on the
    pruned copy, the first time a channel has to go."""
    maps: dict = {}
    scores: dict = {}

    def step(a, g, k):
        if not maps:
            maps.update(collect_maps(a.model, a.prunable, batches, n_images))
        if g.parent:  # a view (whole heads, or one part): its units' summed channel scores
            key = g.parent
            if key not in scores:
                scores[key] = chip_scores(maps[key])
            unit = torch.stack([scores[key][u].sum() for u in g.units])
            return unit.topk(k).indices.sort().values
        return chip_scores(maps[g.name]).topk(k).indices.sort().values
    return step


def uniform_configure(budget) -> structured.Configure:
    """The uniform configuration at ``budget``'s MACs / params (a :class:`prunewise.runs.Structured`
    or anything with ``macs``, ``params`` and ``min_channels``)."""
    return lambda a: uniform_counts(a, macs=budget.macs, params=budget.params,
                                    min_channels=budget.min_channels,
                                    round_to=getattr(budget, "round_to", None),
                                    latency=getattr(budget, "latency", None))


def sliming_configure(settings, budget) -> structured.Configure:
    """SLIMING's step (i) at ``budget`` with its own ``settings``
    (:class:`prunewise.methods.SlimingSettings`: ``normalize`` and ``min_ratio``)."""
    return lambda a: sliming.plan_counts(a, macs=budget.macs, params=budget.params,
                                         latency=getattr(budget, "latency", None),
                                         normalize=settings.normalize,
                                         min_channels=budget.min_channels,
                                         min_ratio=settings.min_ratio,
                                         round_to=getattr(budget, "round_to", None))


# The method table's builders: ``(own settings, budget, batches, seed) -> (configure, select)``.
def sliming_pair(settings, budget, batches, seed: int):
    """SLIMING: step (i) and GEM."""
    return sliming_configure(settings, budget), sliming.select_group


def sliming_l1_pair(settings, budget, batches, seed: int):
    """SLIMING's configuration with L1 selection."""
    return sliming_configure(settings, budget), l1_step


def l1_pair(settings, budget, batches, seed: int):
    """L1-uniform."""
    return uniform_configure(budget), l1_step


def random_pair(settings, budget, batches, seed: int):
    """Uniform configuration, random channels drawn from ``seed``."""
    return uniform_configure(budget), random_step(seed)


def chip_pair(settings, budget, batches, seed: int):
    """Uniform configuration, CHIP selection on ``batches``."""
    if batches is None:
        raise PrunewiseError("method 'chip' needs data batches for its feature maps")
    return uniform_configure(budget), chip_step(batches)
