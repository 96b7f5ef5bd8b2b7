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

import torch
from torch import nn

from ..errors import PrunewiseError
from ..methods import SparseGPTSettings
from .posttrain import groups, scored_layers, gram, group_statistics
from .engine import shares, select, select_nm


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
    W = W.detach().clone().float()
    H = H.detach().clone().double()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * float(H.diagonal().mean()) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
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
            w, k = prune_matrix(w0, H, drop, block=self.settings.block_size,
                                damp=self.settings.hessian_damp, nm=nm)
            new_w.append(w)
            keep.append(k & old[rows])
        m.weight.copy_(torch.cat(new_w).reshape(m.weight.shape).to(m.weight))
        return torch.cat(keep).reshape(mask.shape).to(mask.device)


def sparsegpt_solver(settings, seed: int = 0) -> SparseGPT:
    """The method table's builder for ``sparsegpt``."""
    return SparseGPT(settings)
