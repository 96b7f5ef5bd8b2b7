"""Structured baselines on the SLIMING machinery (same groups, cost model and surgery).

Configuration: ``uniform`` keeps the same fraction p of every prunable group, with p bisected so
the pruned model meets the same MACs (or params) budget as SLIMING; ``sliming`` is SLIMING's
step (i). Selection: ``l1`` (largest L1 norm of the output-side weights, i.e. of the rows of
R_g), ``random``, ``chip`` (CHIP-style one-shot leave-one-out nuclear norm of the root layer's
feature maps on a few batches, computed once) and ``gem`` (SLIMING step ii).

Methods (``METHODS``): sliming = sliming config + gem; l1 / random / chip = uniform config +
that selection; sliming-l1 = sliming config + l1 (separates the two steps).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from . import sliming, surgery
from .errors import PrunewiseError

METHODS = ("sliming", "l1", "random", "chip", "sliming-l1")


def uniform_counts(a: "sliming.Analysis", *, macs=None, params=None, min_channels: int = 1
                   ) -> np.ndarray:
    """One keep fraction p for every group (N_g = round(p C_g), >= min_channels), bisected on
    the exact MACs / params of the pruned architecture."""
    kind, value = sliming._budget(macs, params, None, 0)
    cost = a.cost.macs if kind == "macs" else a.cost.params
    limit = value * (a.cost.full_macs if kind == "macs" else a.cost.full_params)
    sizes = np.array([g.size for g in a.prunable])

    def counts(p):
        return np.minimum(sizes, np.maximum(np.minimum(min_channels, sizes),
                                            np.floor(p * sizes + 0.5).astype(int)))

    if cost(counts(0.0)) > limit:
        raise PrunewiseError(f"{kind} budget {value:g} is below what min_channels={min_channels} "
                             f"allows: the floor is {cost(counts(0.0)) / cost(sizes):.4f} of the "
                             f"original")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cost(counts(mid)) <= limit:
            lo = mid
        else:
            hi = mid
    return counts(lo)


def l1_select(R: torch.Tensor, k: int) -> torch.LongTensor:
    """The k rows with the largest L1 norm."""
    return R.abs().sum(1).topk(int(k)).indices.sort().values


def random_select(C: int, k: int, gen: torch.Generator) -> torch.LongTensor:
    return torch.randperm(C, generator=gen)[: int(k)].sort().values


def chip_scores(maps: torch.Tensor) -> torch.Tensor:
    """CHIP-style channel importance: mean over images of ||F||_* - ||F without channel c||_*.

    ``maps``: (N, C, H, W) or (N, C) feature maps. Computed once (one-shot), never recomputed.
    """
    F = maps.detach().double().reshape(maps.shape[0], maps.shape[1], -1)   # N x C x P
    N, C, P = F.shape
    scores = torch.zeros(C, dtype=torch.float64)
    eye = torch.eye(C, dtype=torch.bool)
    for n in range(N):
        A = F[n]
        full = torch.linalg.eigvalsh(A @ A.T if C <= P else A.T @ A).clamp_min(0).sqrt().sum()
        if P < C:   # P x P Gram minus the left-out channel's outer product
            G = (A.T @ A)[None] - A[:, :, None] * A[:, None, :]
        else:       # (C-1) x (C-1) Gram of the rows that stay
            K = A @ A.T
            keep = ~eye
            idx = torch.stack([keep[c].nonzero().flatten() for c in range(C)])
            G = K[idx[:, :, None], idx[:, None, :]]
        left = torch.linalg.eigvalsh(G).clamp_min(0).sqrt().sum(1)
        scores += full - left
    return scores / max(N, 1)


def collect_maps(model: nn.Module, infos: list, batches: Iterable, n_images: int = 16) -> dict:
    """Output feature maps of every prunable group's root layer on up to ``n_images`` inputs."""
    mods = dict(model.named_modules())
    store: dict[str, list] = {g.name: [] for g in infos}
    hooks = [mods[g.name].register_forward_hook(
        lambda m, i, o, name=g.name: store[name].append(o.detach())) for g in infos]
    seen = 0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                x = x[: n_images - seen]
                model(x)
                seen += len(x)
                if seen >= n_images:
                    break
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if seen == 0:
        raise PrunewiseError("CHIP needs data: the batches given were empty")
    return {k: torch.cat(v) for k, v in store.items()}


def prune(model: nn.Module, example_inputs: torch.Tensor, method: str = "sliming", *,
          macs=None, params=None, normalize: str = "max", min_channels: int = 1,
          batches: Iterable | None = None, n_images: int = 16, seed: int = 0,
          ignored_layers=None, min_ratio: float = 0.0):
    """Prune with ``method`` (one of ``METHODS``) at a MACs or params budget; a NEW model + plan.

    ``batches`` (``(x, y)`` pairs) are needed by ``chip`` only. ``min_ratio`` (the per-group
    floor) applies to the SLIMING configuration (``sliming``, ``sliming-l1``).
    """
    if method not in METHODS:
        raise PrunewiseError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "sliming":
        return sliming.prune(model, example_inputs, macs=macs, params=params,
                             normalize=normalize, min_channels=min_channels,
                             ignored_layers=ignored_layers, min_ratio=min_ratio)
    if method == "chip" and batches is None:
        raise PrunewiseError("method 'chip' needs data batches for its feature maps")
    with sliming.one_thread():
        return _prune(model, example_inputs, method, macs=macs, params=params,
                      normalize=normalize, min_channels=min_channels, batches=batches,
                      n_images=n_images, seed=seed, ignored_layers=ignored_layers,
                      min_ratio=min_ratio)


def _prune(model, example_inputs, method, *, macs, params, normalize, min_channels, batches,
           n_images, seed, ignored_layers, min_ratio):
    new, ignored_layers = surgery.copy_with_ignored(model, ignored_layers)
    a = sliming.analyze(new, example_inputs, ignored_layers)
    if method == "sliming-l1":
        counts = sliming.plan_counts(a, macs=macs, params=params, normalize=normalize,
                                     min_channels=min_channels, min_ratio=min_ratio)
    else:
        counts = uniform_counts(a, macs=macs, params=params, min_channels=min_channels)
    gen = torch.Generator().manual_seed(seed)
    maps = collect_maps(new, a.prunable, batches, n_images) if method == "chip" else {}
    keep = {}
    with sliming.one_thread():
        for g, n in zip(a.prunable, counts):
            n = int(n)
            if n >= g.size:
                keep[g.name] = torch.arange(g.size)
            elif method in ("l1", "sliming-l1"):
                keep[g.name] = l1_select(a.R[g.name], n)
            elif method == "random":
                keep[g.name] = random_select(g.size, n, gen)
            else:
                keep[g.name] = chip_scores(maps[g.name]).topk(n).indices.sort().values
    plan = surgery.make_plan(new, a.infos, keep, meta={
        "method": method, "budget": {"macs": macs, "params": params},
        "min_channels": min_channels, "min_ratio": min_ratio, "predicted_macs": a.cost.macs(counts),
        "predicted_params": a.cost.params(counts), "original_macs": a.cost.full_macs,
        "original_params": a.cost.full_params, "groups": surgery.describe(a.infos)})
    plan.spectra = a.sigma
    surgery.prune_in_place(new, a.dg, a.infos, plan)
    return new, plan
