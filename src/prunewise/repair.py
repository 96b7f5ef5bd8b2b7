"""Layer-wise repair of a masked model: refit the weights each pruned layer kept so that the layer
reproduces the dense layer's outputs on a few calibration batches (docs/methods.md, "Repair").

For every pruned conv / linear layer, in the order the forward pass reaches them, with ``X`` the
layer's input in the dense network and ``X^`` its input in the network repaired so far (conv
inputs unfolded into columns, one set per group), each output row ``r`` solves the damped, masked
least-squares problem

    min over w_r (zero outside the kept set S_r):  || w_r X^ - W_r X ||^2 + lambda ||w_r||^2

through its normal equations ``(G[S,S] + lambda I) w_r[S] = (C W_r^T)[S]`` with ``G = X^ X^T``
and ``C = X^ X^T`` where the second factor of ``C`` is the dense input ``X`` (the bias, when the layer has one, is one more always-kept
input of value 1). ``lambda`` is ``damp`` times the mean of ``G``'s diagonal. Pruned weights stay
exactly zero; a layer whose mask keeps everything is left as it is. Only one layer's two
statistics matrices are held at a time. Under torchrun the ranks share out whole calibration
batches and add the statistics in batch order (:func:`prunewise.dist.in_order`), so every rank
solves exactly the single-process systems.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, device, dist
from .errors import PrunewiseError
from .masking import Source
from .utils import progress_bar

REPAIRABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _groups(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.Linear) else m.groups


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer's input has been seen."""


def _columns(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's input as columns, one matrix (inputs x positions) per group, float32."""
    x = x.detach().float()
    if isinstance(m, nn.Linear):
        return [x.reshape(-1, x.shape[-1]).T]
    if isinstance(m, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *m.kernel_size), (1, *m.stride), (1, *m.dilation)
    else:
        kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
    if m.padding_mode != "zeros":  # what the layer itself does before a zero-padding conv
        pad = m._reversed_padding_repeated_twice  # noqa: SLF001 (torch's own field)
        x = F.pad(x.squeeze(2) if isinstance(m, nn.Conv1d) else x, pad, mode=m.padding_mode)
        if isinstance(m, nn.Conv1d):
            x = x.unsqueeze(2)
        padding = (0, 0)
    elif isinstance(m.padding, str):
        if m.padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            x = F.pad(x, [p for t in reversed(total) for p in (t // 2, t - t // 2)])
        padding = (0, 0)
    else:
        padding = (0, *m.padding) if isinstance(m, nn.Conv1d) else m.padding
    per_group = x.shape[1] // m.groups
    out = []
    for g in range(m.groups):
        cols = F.unfold(x[:, g * per_group:(g + 1) * per_group], kernel, dilation=dilation,
                        padding=padding, stride=stride)          # N x (c k) x P
        out.append(cols.transpose(0, 1).reshape(cols.shape[1], -1))
    return out


def _layer_input(model: nn.Module, name: str, x) -> torch.Tensor:
    """The input ``model``'s layer ``name`` receives on the batch ``x`` (the pass stops there)."""
    seen = {}

    def hook(module, args):
        seen["x"] = args[0]
        raise _Reached

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if "x" not in seen:
        raise PrunewiseError(f"repair: the forward pass never reached layer '{name}'")
    return seen["x"]


def _order(model: nn.Module, names: list[str], x) -> list[str]:
    """``names`` in the order one forward pass reaches them."""
    order: list[str] = []
    mods = {model.get_submodule(n): n for n in names}
    hooks = [m.register_forward_pre_hook(
        lambda module, args: order.append(mods[module]) if mods[module] not in order else None)
        for m in mods]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in names if n not in order]


def _statistics(dense, pruned, name: str, data: Iterable, bias: bool) -> list[tuple]:
    """Per group: (G = X^ X^T, C = X^ X^T with the dense input X as second factor), float64,
    with the bias's row of ones appended when the layer has a bias."""
    m = pruned.get_submodule(name)
    dev = device.of(pruned)

    def batch_terms(batch) -> torch.Tensor:
        x = device.to(batch[0], dev)
        dense_cols = _columns(m, _layer_input(dense, name, x))
        cols = _columns(m, _layer_input(pruned, name, x))
        parts = []
        for a, b in zip(cols, dense_cols):
            if bias:
                ones = torch.ones(1, a.shape[1], device=a.device)
                a, b = torch.cat([a, ones]), torch.cat([b, ones])
            parts += [(a @ a.T).double().reshape(-1), (a @ b.T).double().reshape(-1)]
        return torch.cat(parts).cpu()

    k = m.weight[0].numel() + bias
    size = 2 * _groups(m) * k * k
    total = torch.zeros(size, dtype=torch.float64)
    for v in dist.in_order(data, batch_terms, size):
        total += v
    stats = total.view(_groups(m), 2, k, k)
    return [(stats[g, 0], stats[g, 1]) for g in range(_groups(m))]


def _solve(G: torch.Tensor, C: torch.Tensor, W: torch.Tensor, keep: torch.Tensor,
           damp: float, name: str) -> torch.Tensor:
    """The refit rows of one group: ``W`` (rows x k, float64), ``keep`` its bool mask."""
    diag = G.diagonal()
    scale = float(diag.mean())
    if not scale > 0:
        raise PrunewiseError(f"repair: the calibration inputs of layer '{name}' are all zero; "
                             f"there is nothing to fit (use other calibration data)")
    rhs = W @ C.T                              # row r: (C W_r^T)^T
    out = torch.zeros_like(W)
    lam = damp * scale
    for r in range(W.shape[0]):
        s = keep[r].nonzero().flatten()
        if s.numel() == 0:
            continue
        A = G[s][:, s] + lam * torch.eye(s.numel(), dtype=G.dtype)
        out[r, s] = torch.linalg.solve(A, rhs[r, s])
    if not torch.isfinite(out).all():
        raise PrunewiseError(f"repair: the least-squares solution of layer '{name}' is not "
                             f"finite; raise damp")
    return out


def reconstruct(dense: nn.Module, pruned: nn.Module, batches, *, masks: dict[str, torch.Tensor],
                samples: int | None = 256, damp: float = 0.01,
                progress: bool = True) -> nn.Module:
    """Repair ``pruned`` (a masked copy of ``dense``) in place and return it.

    ``masks``: parameter name -> bool tensor (as in ``MaskPlan.masks``); every masked ``weight``
    of a conv1d / conv2d (grouped and depthwise included) or linear layer that prunes anything
    is refit, in forward order, from the first ``samples`` inputs of ``batches`` (a re-iterable
    or callable of ``(x, y)``; labels unused). ``damp``: the ridge term relative to the mean
    input energy. Works on any ``nn.Module`` (BatchNorm, LayerNorm, GroupNorm or none); the
    caller recalibrates BatchNorm afterwards if it wants to.
    """
    checks.integer("repair samples", samples, 1, none=True)
    checks.number("damp", damp, 0.0, low_open=True)
    data = Source(batches, samples)
    layers = {}
    for pname, mask in masks.items():
        module, _, leaf = pname.rpartition(".")
        m = pruned.get_submodule(module) if module else pruned
        if leaf == "weight" and isinstance(m, REPAIRABLE) and not bool(mask.all()):
            layers[module] = mask
    if not layers:
        return pruned
    first = next(iter(data), None)
    if first is None:
        raise PrunewiseError("repair needs calibration data: the batches were empty")
    was = (dense.training, pruned.training)
    dense.eval()
    pruned.eval()
    try:
        order = _order(pruned, list(layers), device.to(first[0], device.of(pruned)))
        bar = progress_bar(len(order), "repair", progress)
        for name in order:
            _refit(dense, pruned, name, layers[name], data, damp)
            bar.update(1)
        bar.close()
    finally:
        dense.train(was[0])
        pruned.train(was[1])
    return pruned


@torch.no_grad()
def _refit(dense, pruned, name: str, mask: torch.Tensor, data, damp: float) -> None:
    """Refit one layer of ``pruned`` from the dense layer of ``dense`` (see the module notes)."""
    m, d = pruned.get_submodule(name), dense.get_submodule(name)
    bias = m.bias is not None
    stats = _statistics(dense, pruned, name, data, bias)
    rows = m.weight.shape[0] // _groups(m)
    W = d.weight.detach().double().reshape(d.weight.shape[0], -1).cpu()
    keep = mask.reshape(mask.shape[0], -1).cpu().bool()
    if bias:
        W = torch.cat([W, d.bias.detach().double().cpu()[:, None]], dim=1)
        keep = torch.cat([keep, torch.ones(keep.shape[0], 1, dtype=torch.bool)], dim=1)
    new = torch.cat([_solve(G, C, W[g * rows:(g + 1) * rows], keep[g * rows:(g + 1) * rows],
                            damp, name) for g, (G, C) in enumerate(stats)])
    if bias:
        m.bias.copy_(new[:, -1].to(m.bias.dtype))
        new = new[:, :-1]
    m.weight.copy_(new.reshape(m.weight.shape).to(m.weight.dtype))
