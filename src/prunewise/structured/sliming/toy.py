"""The SLIMING paper's toy, SVGG (docs/methods.md, section SLIMING): can a method find the unique
"core" filters among redundant copies, and can step (i) recover how many there are?

5 conv layers, 3x3 kernels, C = (64, 128, 256, 512, 512), redundant rates
(0.25, 0.30, 0.35, 0.40, 0.45), so N = (48, 90, 166, 307, 282) cores, 893 in all. Layer l's
filters are C_{l-1} x 3 x 3 with C_0 = 32. Cores ~ N(0, 1); a redundant filter is a random core
plus Gaussian noise of variance 0.01. Rows are shuffled. Selection accuracy = distinct cores
among the N_l kept rows / N_l.

Methods: ``gem`` (:func:`prunewise.sliming.select`), ``random`` (N_l rows at random),
``one_shot`` (CHIP-style leave-one-out nuclear norm computed once, in its first-order form
0.5 * sum_j sigma_j U_ij^2, and the top N_l kept) and, on a reduced copy small enough to
enumerate, ``complete`` search. ``config``: step (i) given the 893 total.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from .config import configure
from .gem import select
from .spectrum import singular_values

CHANNELS = (64, 128, 256, 512, 512)
RATES = (0.25, 0.30, 0.35, 0.40, 0.45)
C0 = 32
NOISE_STD = 0.1   # variance 0.01
SMALL = (8, 12, 16)             # the reduced SVGG for complete search
SMALL_RATES = (0.25, 0.30, 0.35)


def cores_of(channels, rates) -> list[int]:
    return [c - int(round(r * c)) for c, r in zip(channels, rates)]


def make_layers(seed: int = 0, channels=CHANNELS, rates=RATES, c0: int = C0):
    """[(R (C x C_prev*9), core id of every row)] for every layer, seeded."""
    gen = torch.Generator().manual_seed(seed)
    out, prev = [], c0
    for c, n in zip(channels, cores_of(channels, rates)):
        d = prev * 9
        cores = torch.randn(n, d, generator=gen, dtype=torch.float64)
        src = torch.randint(n, (c - n,), generator=gen)
        red = cores[src] + NOISE_STD * torch.randn(c - n, d, generator=gen, dtype=torch.float64)
        R = torch.cat([cores, red])
        ids = torch.cat([torch.arange(n), src])
        perm = torch.randperm(c, generator=gen)
        out.append((R[perm], ids[perm]))
        prev = c
    return out


def accuracy(ids: torch.Tensor, kept: torch.Tensor, n: int) -> float:
    return len(set(ids[kept].tolist())) / n


def one_shot(R: torch.Tensor, k: int) -> torch.LongTensor:
    """Leave-one-out nuclear-norm importance, computed once (first order), top k rows."""
    U, S, _ = torch.linalg.svd(R, full_matrices=False)
    score = 0.5 * (U * U * S[None, :]).sum(1)
    return score.topk(k).indices.sort().values


def complete_search(R: torch.Tensor, k: int) -> torch.LongTensor:
    """The k-subset with the largest nuclear norm, by enumeration (small C only)."""
    K = R @ R.T
    subsets = torch.tensor(list(itertools.combinations(range(R.shape[0]), k)))
    best, best_val = None, -1.0
    for chunk in subsets.split(4096):
        G = K[chunk[:, :, None], chunk[:, None, :]]
        val = torch.linalg.eigvalsh(G).clamp_min(0).sqrt().sum(1)
        i = int(val.argmax())
        if float(val[i]) > best_val:
            best_val, best = float(val[i]), chunk[i]
    return best


def run(seed: int = 0, *, complete: bool = True) -> dict:
    """The whole toy for one seed: per-layer selection accuracies and the recovered config."""
    gen = torch.Generator().manual_seed(seed + 1)
    layers = make_layers(seed)
    n_true = cores_of(CHANNELS, RATES)
    res = {"seed": seed, "channels": list(CHANNELS), "true_config": n_true,
           "gem": [], "random": [], "one_shot": []}
    for (R, ids), n in zip(layers, n_true):
        res["gem"].append(accuracy(ids, select(R, n), n))
        res["random"].append(accuracy(ids, torch.randperm(len(ids), generator=gen)[:n], n))
        res["one_shot"].append(accuracy(ids, one_shot(R, n), n))
    sig = [singular_values(R) for R, _ in layers]
    cfg = configure(sig, lambda c: float(np.sum(c)), float(sum(n_true)), normalize="max",
                    what="channel budget")
    res["config"] = [int(c) for c in cfg]
    res["config_error"] = [int(c) - n for c, n in zip(cfg, n_true)]
    res["config_accuracy"] = 1 - sum(abs(e) for e in res["config_error"]) / sum(n_true)
    res["last_core_singular_value"] = [float(s[n - 1]) for s, n in zip(sig, n_true)]
    res["next_singular_value"] = [float(s[n]) if n < len(s) else 0.0 for s, n in zip(sig, n_true)]
    for key in ("gem", "random", "one_shot"):
        res[f"{key}_total"] = sum(a * n for a, n in zip(res[key], n_true)) / sum(n_true)
    if complete:
        small = make_layers(seed, SMALL, SMALL_RATES)
        n_small = cores_of(SMALL, SMALL_RATES)
        res["complete_search"] = {
            "channels": list(SMALL), "cores": n_small,
            "complete": [accuracy(ids, complete_search(R, n), n) for (R, ids), n in zip(small, n_small)],
            "gem": [accuracy(ids, select(R, n), n) for (R, ids), n in zip(small, n_small)]}
    return res
