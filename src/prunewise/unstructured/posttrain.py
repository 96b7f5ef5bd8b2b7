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
(``keep`` <= 1 - ``sparsity``). The inputs come through a walk (:mod:`prunewise.sequential`):
one forward pass per group of layers that read one tensor, a stack of blocks walked with its
calibration inputs cached, so the cost grows linearly with depth; only one group's
statistics are held at a time. Every torchrun rank reads every batch: the single-process
scores.
"""
from __future__ import annotations

import torch
from torch import nn

from . import engine as masking
from .. import layers as layers_mod
from .baselines import entry
from ..errors import PrunewiseError
from ..repair import REPAIRABLE, columns, groups
from ..sequential import Walk

#: The ridge term of OBS's Gram matrix, relative to its mean diagonal (SparseGPT's 1%).
OBS_DAMP = 0.01


def scored_layers(work: nn.Module, masks: dict) -> dict[str, nn.Module]:
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


def _per_row(m: nn.Module, per_group: list[torch.Tensor]) -> torch.Tensor:
    """Per-group vectors over a group's inputs -> one row per output of ``m``, shaped like its
    weight."""
    rows = m.weight.shape[0] // groups(m)
    full = torch.cat([v.expand(rows, -1) for v in per_group])
    return full.reshape(m.weight.shape)


def group_statistics(work: nn.Module, layers: dict[str, nn.Module], data, stat):
    """Per group of layers that read one tensor (:class:`prunewise.sequential.Walk`, in
    forward order, linear in depth): ``(group, {param name: summed stat})`` with ``stat(m,
    x)`` a list of float64 tensors per batch (one per conv group), summed over the
    calibration batches in order. ``layers``: masked parameter name -> its layer."""
    if not layers:
        return
    by_module = {p.rpartition(".")[0]: p for p in layers}
    walk = Walk(work, data, list(by_module))
    for group in walk.groups:
        sums: dict[str, list] = {}
        for xs in walk.inputs(group):
            for name in group:
                got = stat(layers[by_module[name]], xs[name])
                old = sums.get(name)
                sums[name] = got if old is None else [a + b for a, b in zip(old, got)]
        yield group, {by_module[n]: v for n, v in sums.items()}


@torch.no_grad()
def wanda_score(work, masks, data, iteration):
    """Scorer: ``|w| * ||x||`` per weight (module notes), on the model's device."""
    if data is None:
        raise PrunewiseError("wanda needs calibration data (batches)")
    layers = scored_layers(work, masks)

    def stat(m, x):
        return [(c.double() ** 2).sum(1).cpu() for c in columns(m, x)]

    out = {}
    for _, sums in group_statistics(work, layers, data, stat):
        for n, per_group in sums.items():
            m = layers[n]
            scale = _per_row(m, [v.sqrt()[None, :] for v in per_group]).to(m.weight.device)
            out[n] = m.weight.detach().double().abs() * scale * masks[n]
    return {**out, **_magnitudes(work, masks, layers)}, {}


def gram(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input Gram matrices ``X X^T`` (float64, on the CPU) of layer ``m`` on its input
    ``x``, one per conv group."""
    return [(c @ c.T).double().cpu() for c in columns(m, x)]


def damped(G: torch.Tensor, name: str, method: str) -> torch.Tensor:
    """``G + OBS_DAMP * mean(diag G) * I``; PrunewiseError when the inputs are all zero."""
    scale = float(G.diagonal().mean())
    if not scale > 0:
        raise PrunewiseError(f"{method}: the calibration inputs of layer '{name}' are all zero")
    return G + OBS_DAMP * scale * torch.eye(G.shape[0], dtype=G.dtype)


@torch.no_grad()
def obs_score(work, masks, data, iteration):
    """Scorer: ``w^2 / [H^-1]_jj`` per weight (module notes), one group's Gram matrices at a
    time."""
    if data is None:
        raise PrunewiseError("obs needs calibration data (batches)")
    layers = scored_layers(work, masks)
    out = {}
    for _, sums in group_statistics(work, layers, data, gram):
        for pname, per_group in sums.items():
            m = layers[pname]
            name = pname.rpartition(".")[0]
            inv_diag = [torch.cholesky_inverse(torch.linalg.cholesky(damped(G, name, "obs")))
                        .diagonal()[None, :] for G in per_group]
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
sparsegpt = entry("sparsegpt", "SparseGPT (:mod:`prunewise.unstructured.sparsegpt`): masks "
                               "chosen per column block with OBS weight updates, layer by "
                               "layer, from ``batches`` (calibration data); the plan carries "
                               "the updated weights (``plan.weights``).")
exactobs = entry("exactobs", "ExactOBS (:func:`prunewise.unstructured.sparsegpt.exact_obs_matrix`): "
                             "per output row, one weight at a time with the exact OBS update of "
                             "the rest, layer by layer, from ``batches`` (calibration data); the "
                             "plan carries the updated weights (``plan.weights``).")
