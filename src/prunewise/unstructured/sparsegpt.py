"""SparseGPT (Frantar and Alistarh, ICML 2023): masks chosen and the kept weights updated in
one pass per layer, sequentially through the model (docs/methods.md, "SparseGPT").

For a layer with weight ``W`` (rows x inputs; a conv's inputs unfolded, per group) and input
Gram matrix ``H = X X^T`` on the calibration data (inputs of the model pruned so far, read
group by group through :class:`prunewise.sequential.Walk`):

1. inputs that are always zero get ``H_jj = 1`` and their weights are zeroed; ``H`` is damped
   by ``damp`` times its mean diagonal;
2. ``U`` is the upper Cholesky factor of ``H^-1``;
3. the inputs are taken in column blocks of ``block_size``. In each block the mask is chosen
   once, adaptively: the block's share of the layer's pruned count goes to the smallest
   ``w_ij^2 / U_jj^2`` over the block (N:M: the ``M - N`` smallest of every ``M``
   consecutive inputs of a row, chosen when the walk reaches the first of them);
4. column by column inside the block, the pruned weights are set to zero and the error
   ``(w - q) / U_jj`` is spread over the block's later columns through row ``j`` of ``U``;
   the block's errors then update every later column at once (the lazy batch update).

The layer's pruned count is the one the mask engine allocates to it (``uniform``: the same
fraction of every layer, as SparseGPT does; or ``lamp``), shared between blocks in proportion
to their size. Weights outside conv / linear layers in the scope are pruned by magnitude.
With a block of one column the update is exact OBS, one weight at a time.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import PrunewiseError
from ..methods import SparseGPTSettings
from .posttrain import groups, scored_layers, gram, group_statistics
from .engine import PruningWarning, shares, select, select_nm


def _block_counts(cols: int, rows: int, pruned: int, block: int) -> list[int]:
    """The layer's ``pruned`` count shared between column blocks by size (largest remainder)."""
    sizes = {i: rows * min(block, cols - i) for i in range(0, cols, block)}
    kept = shares(sizes, sizes, rows * cols - pruned)
    return [sizes[i] - kept[i] for i in sorted(sizes)]


@torch.no_grad()
def prune_matrix(W: torch.Tensor, H: torch.Tensor, pruned: int | None, *, block: int = 128,
                 damp: float = 0.01, nm: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight matrix (module notes): ``W`` rows x inputs, ``H`` inputs x
    inputs (float64), ``pruned`` weights to remove (or an ``nm`` pattern ``(N, M)``: keep N of
    every M). Returns (updated ``W``, bool keep mask), float32 as the reference computes."""
    W, Hinv = _prepared(W, H, damp)
    W = W.float()
    rows, cols = W.shape
    U = torch.linalg.cholesky(Hinv, upper=True).float()
    prune = torch.zeros(rows, cols, dtype=torch.bool)
    counts = _block_counts(cols, rows, pruned, block) if nm is None else None
    for b, i1 in enumerate(range(0, cols, block)):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        d = U1.diagonal()
        P1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None and counts[b]:
            score = (W1.square() / d.square()[None, :]).flatten()
            P1.view(-1)[torch.topk(score, counts[b], largest=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                part = W1[:, i:i + nm[1]].square() / d[i:i + nm[1]].square()[None, :]
                drop = nm[1] - nm[0]
                if part.shape[1] == nm[1]:
                    P1[:, i:i + nm[1]].scatter_(1, torch.topk(part, drop, dim=1,
                                                              largest=False).indices, True)
            w = W1[:, i]
            q = torch.where(P1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i1:i2] = Q1
        prune[:, i1:i2] = P1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W, ~prune


def _prepared(W: torch.Tensor, H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` (float64 copy, weights of always-zero inputs zeroed) and ``H^-1`` of the damped
    Gram matrix (always-zero inputs given ``H_jj = 1``), as SparseGPT prepares them."""
    W = W.detach().clone().double()
    H = H.detach().clone().double()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scale = float(H.diagonal().mean())
    for tries in range(4):   # damp, then 10x, 100x, 1000x damp if H is still not definite
        L, info = torch.linalg.cholesky_ex(H + damp * 10 ** tries * scale *
                                           torch.eye(H.shape[0], dtype=H.dtype))
        if int(info) == 0:
            if tries:
                warnings.warn(f"a layer's input Gram matrix ({H.shape[0]} inputs) was not "
                              f"positive definite at damping {damp:g}: used {damp * 10 ** tries:g} "
                              f"(too few or too alike calibration samples? give more)",
                              PruningWarning, stacklevel=3)
            return W, torch.cholesky_inverse(L)
    raise PrunewiseError(f"a layer's input Gram matrix ({H.shape[0]} inputs) is not positive "
                         f"definite even at damping {damp * 1000:g}: the calibration inputs are "
                         f"not finite or degenerate")


#: Rows whose inverse Hessians ExactOBS updates together: at most this many float64 entries.
EXACT_CHUNK = 1 << 24


@torch.no_grad()
def exact_obs_matrix(W: torch.Tensor, H: torch.Tensor, pruned: int | None, *,
                     damp: float = 0.01, nm: tuple[int, int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """ExactOBS (Frantar and Alistarh, "Optimal Brain Compression", 2022) on one weight matrix:
    ``W`` rows x inputs, ``H`` their inputs' Gram matrix, ``pruned`` weights to remove (or
    ``nm``: keep N of every M inputs of each row). Every row is pruned greedily, one weight at a
    time: the weight whose removal raises the row's reconstruction error least
    (``w_p^2 / [H^-1]_pp``, over the weights still there) goes, the rest of the row takes the
    exact OBS update ``-w_p / [H^-1]_pp * H^-1[:, p]``, and ``p`` is eliminated from ``H^-1``.
    The layer's count is shared between rows as the paper does: each row is first pruned all
    the way, and the ``pruned`` smallest step errors over all rows say how far each row goes;
    each row's weights are then those its first removals leave (:func:`_refit`, the same
    weights the greedy updates reach, in one solve). Returns (updated ``W`` float32, bool keep
    mask)."""
    W, Hinv = _prepared(W, H, damp)
    rows, cols = W.shape
    out, keep = [], []
    if nm is not None:
        per_row = torch.full((rows,), (cols // nm[1]) * (nm[1] - nm[0]), dtype=torch.long)
        for r in _chunks(rows, cols):
            w, k, _, _ = _greedy(W[r], Hinv, per_row[r], nm)
            out.append(w)
            keep.append(k)
        return torch.cat(out).float(), torch.cat(keep)
    paths = [_greedy(W[r], Hinv, None, None) for r in _chunks(rows, cols)]
    errors = torch.cat([p[2] for p in paths])
    order = torch.cat([p[3] for p in paths])
    per_row = torch.zeros(rows, dtype=torch.long)
    if pruned:
        picked = torch.topk(errors.flatten(), pruned, largest=False).indices
        per_row = torch.bincount(picked // cols, minlength=rows)
    gone = torch.zeros(rows, cols, dtype=torch.bool)
    steps = torch.arange(cols)[None, :] < per_row[:, None]
    gone.scatter_(1, order, steps)
    for r in _chunks(rows, cols):
        out.append(_refit(W[r], Hinv, gone[r]))
    return torch.cat(out).float(), ~gone


def _refit(W: torch.Tensor, Hinv: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """Rows of ``W`` with the inputs ``gone`` removed and the rest updated as OBS removing them
    all does: ``w - H^-1[:, P] (H^-1[P, P])^-1 w_P`` (the least-squares optimum on the kept
    inputs), solved per row with ``H^-1[P, P]`` padded by the identity outside ``P``."""
    R, C = W.shape
    if not bool(gone.any()):
        return W.clone()
    both = gone[:, :, None] & gone[:, None, :]
    A = torch.where(both, Hinv.expand(R, C, C), torch.zeros((), dtype=W.dtype))
    A.diagonal(dim1=1, dim2=2).add_((~gone).to(W.dtype))
    z = torch.cholesky_solve((W * gone)[:, :, None], torch.linalg.cholesky(A))[:, :, 0]
    return (W - z @ Hinv).masked_fill(gone, 0.0)


def _chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, EXACT_CHUNK // max(cols * cols, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _greedy(W: torch.Tensor, Hinv: torch.Tensor, counts, nm):
    """The greedy OBS removals of :func:`exact_obs_matrix` for a chunk of rows together: each
    row removes ``counts[row]`` weights (all of them when ``counts`` is None; with ``nm`` never
    more than ``M - N`` of any ``M`` consecutive inputs). Returns (updated rows, keep mask,
    the error of every step in order, the input removed at every step)."""
    W = W.clone()
    R, C = W.shape
    Hi = Hinv.expand(R, C, C).clone()
    gone = torch.zeros(R, C, dtype=torch.bool)
    errs = torch.full((R, C), float("inf"), dtype=W.dtype)
    order = torch.zeros((R, C), dtype=torch.long)
    todo = torch.full((R,), C, dtype=torch.long) if counts is None else counts.clone()
    at = torch.arange(R)
    for t in range(int(todo.max()) if R else 0):
        live = todo > t
        d = Hi.diagonal(dim1=1, dim2=2)
        score = W.square() / d
        blocked = gone.clone()
        if nm is not None:   # a group that already lost M - N inputs gives no more
            whole = (C // nm[1]) * nm[1]
            full = gone[:, :whole].reshape(R, -1, nm[1]).sum(2) >= nm[1] - nm[0]
            blocked[:, :whole] |= full.repeat_interleave(nm[1], 1)
            blocked[:, whole:] = True
        score[blocked] = float("inf")
        p = score.argmin(1)
        dp = d[at, p]
        errs[:, t] = score[at, p]
        order[:, t] = p
        col = Hi[at, :, p].masked_fill(gone, 0.0)            # R x C; removed inputs stay 0
        step = (W[at, p] / dp) * live
        W -= step[:, None] * col
        W[at[live], p[live]] = 0.0
        Hi.baddbmm_(col[:, :, None], (col * (live / dp)[:, None])[:, None, :], alpha=-1.0)
        gone[at[live], p[live]] = True
    return W.masked_fill(gone, 0.0), ~gone, errs, order


def _magnitude(work: nn.Module, masks: dict, counts: dict | None, nm) -> dict:
    """Keep masks for the scope's weights outside conv / linear layers: by magnitude."""
    named = dict(work.named_parameters())
    out = {}
    for n in masks:
        w = named[n].detach().abs().double()
        if nm is not None:
            out[n] = select_nm({n: w}, {n: masks[n]}, *nm)[n]
        else:
            out[n] = select({n: w}, {n: masks[n]}, counts[n])[n]
    return out


class SparseGPT:
    """The method table's solver for ``sparsegpt``: it chooses the masks and updates the
    weights of the working copy itself (``solve``), sequentially through the model."""

    def __init__(self, settings: SparseGPTSettings):
        self.settings = settings

    def __call__(self, work, masks, data, iteration):   # the Scorer protocol: not used
        raise NotImplementedError("sparsegpt chooses its masks itself (solve)")

    def matrix(self, W: torch.Tensor, H: torch.Tensor, pruned: int | None, nm):
        """One weight matrix pruned: (updated weights, keep mask)."""
        return prune_matrix(W, H, pruned, block=self.settings.block_size,
                            damp=self.settings.hessian_damp, nm=nm)

    @torch.no_grad()
    def solve(self, work: nn.Module, masks: dict, data, counts: dict | None,
              nm: tuple[int, int] | None) -> tuple[dict, dict]:
        """New keep masks for ``masks``' tensors, ``counts[name]`` kept each (or the ``nm``
        pattern), with ``work``'s weights updated in place; and a history row's info."""
        if data is None:
            raise PrunewiseError("sparsegpt needs calibration data (batches)")
        layers = scored_layers(work, masks)
        out = _magnitude(work, {n: m for n, m in masks.items() if n not in layers}, counts, nm)
        for _, sums in group_statistics(work, layers, data, gram):
            for pname, per_group in sums.items():
                out[pname] = self._layer(layers[pname], masks[pname], per_group,
                                         None if counts is None else counts[pname], nm)
        named = dict(work.named_parameters())
        for n, keep in out.items():
            named[n].mul_(keep.to(named[n].dtype))
        return out, {}

    def _layer(self, m: nn.Module, mask: torch.Tensor, per_group: list, kept: int | None, nm):
        count = groups(m)
        W = m.weight.detach().reshape(m.weight.shape[0], -1).cpu()
        per = W.shape[0] // count
        old = mask.reshape(W.shape[0], -1).cpu()
        pruned = None if kept is None else W.numel() - kept
        quota = None if pruned is None else shares(
            {g: per * W.shape[1] for g in range(count)},
            {g: per * W.shape[1] for g in range(count)}, W.numel() - pruned)
        new_w, keep = [], []
        for g, H in enumerate(per_group):
            rows = slice(g * per, (g + 1) * per)
            w0 = W[rows].float() * old[rows]
            drop = None if quota is None else per * W.shape[1] - quota[g]
            w, k = self.matrix(w0, H, drop, nm)
            new_w.append(w)
            keep.append(k & old[rows])
        m.weight.copy_(torch.cat(new_w).reshape(m.weight.shape).to(m.weight))
        return torch.cat(keep).reshape(mask.shape).to(mask.device)


class ExactOBS(SparseGPT):
    """The method table's solver for ``exactobs``: SparseGPT's sequential walk and bookkeeping,
    with every matrix pruned by :func:`exact_obs_matrix`."""

    def matrix(self, W: torch.Tensor, H: torch.Tensor, pruned: int | None, nm):
        return exact_obs_matrix(W, H, pruned, damp=self.settings.hessian_damp, nm=nm)


def sparsegpt_solver(settings, seed: int = 0) -> SparseGPT:
    """The method table's builder for ``sparsegpt``."""
    return SparseGPT(settings)


def exactobs_solver(settings, seed: int = 0) -> ExactOBS:
    """The method table's builder for ``exactobs``."""
    return ExactOBS(settings)
