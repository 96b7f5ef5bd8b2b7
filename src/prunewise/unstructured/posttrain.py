"""The field's post-training mask methods as scorers on the shared mask engine
(:mod:`prunewise.masking`), computed from the same layer inputs the repair uses
(:mod:`prunewise.repair`; docs/methods.md, "Post-training peers").

* :func:`wanda_score` -- Wanda (Sun et al., ICLR 2024): ``|w_ij| * ||x_j||``, the weight's
  magnitude times the norm of the input feature it multiplies over the calibration data
  (for a conv, ``x_j`` is one unfolded (channel, kernel position) column). Wanda compares
  weights within each output row: its table row allocates per row.
* :func:`obs_score` -- the OBS saliency SparseGPT (Frantar and Alistarh, ICML 2023) selects
  by: ``w_ij^2 / [H^-1]_jj`` with ``H = X X^T + lambda I`` the layer's input Gram matrix, the
  loss of the layer's output when ``w_ij`` alone is removed and the rest of its row optimally
  updated. The update itself is the repair stage (an exact per-row least-squares refit), so
  ``obs`` with ``--repair`` is SparseGPT's selection and reconstruction without its
  column-by-column sequential mask choice. Per row, as in SparseGPT.

Both read the inputs of the working copy (the network pruned so far), so with several
iterations each one sees what the earlier ones removed; they are meant for one shot
(``keep`` <= 1 - ``sparsity``). Under torchrun the ranks share whole batches and add the
statistics in batch order (:func:`prunewise.dist.in_order`): the single-process scores.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import device, dist, utils
from . import engine as masking
from .. import layers as layers_mod
from .baselines import entry
from ..errors import PrunewiseError
from ..repair import REPAIRABLE, columns, layer_input

#: The ridge term of OBS's Gram matrix, relative to its mean diagonal (SparseGPT's 1%).
OBS_DAMP = 0.01


def _layers(work: nn.Module, masks: dict) -> dict[str, nn.Module]:
    """Masked parameter name -> its conv / linear layer (the weights these methods score from
    their inputs; any other weight matrix in the scope, such as an attention module's input
    projection or an LSTM's, is scored by its magnitude: :func:`_magnitudes`)."""
    out, unseen = {}, layers_mod.read_directly(work)
    for pname in masks:
        module, _, leaf = pname.rpartition(".")
        m = work.get_submodule(module) if module else work
        if leaf == "weight" and isinstance(m, REPAIRABLE) and module not in unseen:
            out[pname] = m
    return out


def _magnitudes(work: nn.Module, masks: dict, layers: dict) -> dict[str, torch.Tensor]:
    """``|w|`` of the masked weights that are not a conv / linear weight."""
    named = dict(work.named_parameters())
    return {n: named[n].detach().double().abs() * masks[n] for n in masks if n not in layers}


def _groups(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.Linear) else m.groups


def _per_row(m: nn.Module, per_group: list[torch.Tensor]) -> torch.Tensor:
    """Per-group vectors over a group's inputs -> one row per output of ``m``, shaped like its
    weight."""
    rows = m.weight.shape[0] // _groups(m)
    full = torch.cat([v.expand(rows, -1) for v in per_group])
    return full.reshape(m.weight.shape)


@torch.no_grad()
def wanda_score(work, masks, data, iteration):
    """Scorer: ``|w| * ||x||`` per weight (module notes), on the model's device."""
    if data is None:
        raise PrunewiseError("wanda needs calibration data (batches)")
    layers = _layers(work, masks)
    names = list(layers)
    sizes = [_groups(m) * m.weight[0].numel() for m in layers.values()]
    dev = device.of(work)

    def batch_terms(batch) -> torch.Tensor:
        seen: dict[str, torch.Tensor] = {}

        def hook(module, args, name):
            cols = columns(module, args[0])
            v = torch.cat([(c.double() ** 2).sum(1) for c in cols])
            seen[name] = seen[name] + v if name in seen else v

        hooks = [layers[n].register_forward_pre_hook(
            lambda module, args, n=n: hook(module, args, n)) for n in names]
        try:
            utils.call(work, device.to(batch[0], dev))
        finally:
            for h in hooks:
                h.remove()
        return torch.cat([seen.get(n, torch.zeros(k, dtype=torch.float64, device=dev)).cpu()
                          for n, k in zip(names, sizes)])

    total = torch.zeros(sum(sizes), dtype=torch.float64)
    for v in dist.in_order(data, batch_terms, total.numel()):
        total += v
    out, pos = {}, 0
    for n, k in zip(names, sizes):
        m = layers[n]
        norm = total[pos:pos + k].sqrt().view(_groups(m), -1)
        pos += k
        scale = _per_row(m, [g[None, :] for g in norm]).to(m.weight.device)
        out[n] = m.weight.detach().double().abs() * scale * masks[n]
    return {**out, **_magnitudes(work, masks, layers)}, {}


@torch.no_grad()
def obs_score(work, masks, data, iteration):
    """Scorer: ``w^2 / [H^-1]_jj`` per weight (module notes), one layer's Gram matrix at a time."""
    if data is None:
        raise PrunewiseError("obs needs calibration data (batches)")
    layers = _layers(work, masks)
    dev = device.of(work)
    out = {}
    for pname, m in layers.items():
        name = pname.rpartition(".")[0]
        k, g = m.weight[0].numel(), _groups(m)

        def batch_terms(batch, m=m, name=name) -> torch.Tensor:
            cols = columns(m, layer_input(work, name, device.to(batch[0], dev)))
            return torch.cat([(c @ c.T).double().reshape(-1) for c in cols]).cpu()

        total = torch.zeros(g * k * k, dtype=torch.float64)
        for v in dist.in_order(data, batch_terms, total.numel()):
            total += v
        inv_diag = []
        for G in total.view(g, k, k):
            scale = float(G.diagonal().mean())
            if not scale > 0:
                raise PrunewiseError(f"obs: the calibration inputs of layer '{name}' are all zero")
            H = G + OBS_DAMP * scale * torch.eye(k, dtype=G.dtype)
            inv_diag.append(torch.cholesky_inverse(torch.linalg.cholesky(H)).diagonal()[None, :])
        denom = _per_row(m, inv_diag).to(m.weight.device)
        out[pname] = m.weight.detach().double().square() / denom * masks[pname]
    return {**out, **_magnitudes(work, masks, layers)}, {}


def wanda_scorer(settings, seed: int = 0) -> masking.Scorer:
    """The method table's builder for ``wanda``."""
    return wanda_score


def obs_scorer(settings, seed: int = 0) -> masking.Scorer:
    """The method table's builder for ``obs``."""
    return obs_score


wanda = entry("wanda", "Wanda: ``|w| * ||x||`` per weight, from ``batches`` (calibration data; "
                       "use ``keep <= 1 - sparsity`` for one shot), per output row by default.")
obs = entry("obs", "OBS / SparseGPT saliency ``w^2 / [H^-1]_jj`` from each layer's input Gram "
                   "matrix on ``batches`` (one shot with ``keep <= 1 - sparsity``), per output "
                   "row by default; follow it with :func:`prunewise.repair.reconstruct`.")
