"""Step (ii) of SLIMING: GEM, greedy nuclear-norm maximization of the kept rows.

Given R (C x D, rows = channels) and k, choose rows S, |S| = k, maximizing ||R[S]||_*.

* Exact greedy (C <= ``EXACT_MAX``): forward selection; at every step each remaining row is
  scored by the exact nuclear norm of R[S + {i}], computed as sum(sqrt(eig(K[S+i, S+i]))) with
  K = R R^T, all candidates in one batched ``eigvalsh``.
* Fast variant (C > ``EXACT_MAX``): the first-order form of forward selection. A row orthogonal
  to the span of the chosen rows adds exactly its norm to the nuclear norm, so we add the row
  with the largest residual after projecting out the chosen rows (pivoted Cholesky of K, i.e.
  pivoted QR of R), then recompute the residuals. O(C k) per step. It keeps exactly one copy of
  a duplicated row (the copy's residual drops to ~0 once its twin is chosen).
  ``tests/test_sliming.py`` checks it stays within 1% of exact greedy on random and redundant
  matrices.
"""
from __future__ import annotations

import torch

from ...errors import PrunewiseError

EXACT_MAX = 32  # groups up to this many channels get exact greedy (about 0.1 s each)


def nuclear_norm(R: torch.Tensor) -> float:
    """Sum of singular values."""
    return float(torch.linalg.svdvals(R.double()).sum())


def _check(R: torch.Tensor, k: int) -> torch.Tensor:
    if not isinstance(R, torch.Tensor) or R.dim() != 2:
        raise PrunewiseError(f"R must be a 2-D tensor (rows = channels), got "
                             f"{getattr(R, 'shape', type(R).__name__)}")
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= R.shape[0]:
        raise PrunewiseError(f"k must be an integer in [1, {R.shape[0]}], got {k!r}")
    return R.detach().double()


def greedy_exact(R: torch.Tensor, k: int, K: torch.Tensor | None = None) -> torch.LongTensor:
    """Exact greedy forward selection on the nuclear norm (batched eigvalsh per step);
    ``K``: R R^T in float64, when already computed."""
    R = _check(R, k)
    K = (R @ R.T) if K is None else K.double()
    C = K.shape[0]
    chosen: list[int] = []
    remaining = torch.ones(C, dtype=torch.bool, device=K.device)
    for t in range(int(k)):
        cand = remaining.nonzero().flatten()
        S = torch.tensor(chosen, dtype=torch.long, device=K.device)
        idx = torch.cat([S.expand(len(cand), t), cand[:, None]], 1)    # (n, t+1)
        sub = K[idx[:, :, None], idx[:, None, :]]                       # (n, t+1, t+1)
        score = torch.linalg.eigvalsh(sub).clamp_min(0).sqrt().sum(1)
        best = int(cand[int(torch.argmax(score))])
        chosen.append(best)
        remaining[best] = False
    return torch.tensor(sorted(chosen), dtype=torch.long)


def greedy_fast(R: torch.Tensor, k: int, K: torch.Tensor | None = None) -> torch.LongTensor:
    """First-order greedy: largest residual norm after projecting out the chosen rows."""
    R = _check(R, k)
    K = (R @ R.T) if K is None else K.double()
    C = K.shape[0]
    L = torch.zeros(C, int(k), dtype=torch.float64, device=K.device)
    resid = K.diagonal().clone()            # squared residual norm of every row
    scale = float(resid.max()) if C else 0.0
    chosen: list[int] = []
    taken = torch.zeros(C, dtype=torch.bool, device=K.device)
    for t in range(int(k)):
        score = resid.masked_fill(taken, -1.0)
        p = int(torch.argmax(score))
        chosen.append(p)
        taken[p] = True
        d = float(resid[p])
        if d <= 1e-12 * max(scale, 1e-300):
            # the rest lies in the span already chosen: keep the largest remaining rows
            rest = K.diagonal().masked_fill(taken, -1.0).argsort(descending=True)
            chosen.extend(int(i) for i in rest[: int(k) - len(chosen)])
            break
        col = (K[:, p] - L[:, :t] @ L[p, :t]) / d ** 0.5
        L[:, t] = col
        resid = (resid - col * col).clamp_min(0)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def select(R: torch.Tensor, k: int, *, exact_max: int = EXACT_MAX,
           K: torch.Tensor | None = None) -> torch.LongTensor:
    """GEM: indices (sorted) of the ``k`` rows of ``R`` kept, maximizing the nuclear norm
    (``K``: R R^T in float64, when the analysis kept it)."""
    R = _check(R, k)
    if k == R.shape[0]:
        return torch.arange(R.shape[0])
    if R.shape[0] <= exact_max:
        return greedy_exact(R, k, K)
    return greedy_fast(R, k, K)


def select_group(a, g, k: int) -> torch.LongTensor:
    """Step (ii) as a :func:`prunewise.structured.prune` ``select`` step: GEM on group ``g``'s
    R in the analysis ``a`` (with the Gram matrix it kept)."""
    return select(a.R[g.name], k, K=getattr(a, "gram", {}).get(g.name))
