"""Layer-wise repair of a pruned model: refit the weights each pruned layer kept so that the
layer reproduces the dense layer's outputs on a few calibration batches (docs/methods.md,
"Repair").

For every repaired conv / linear layer, in the order the forward pass reaches them, with ``X``
the layer's input in the dense network and ``X^`` its input in the network repaired so far
(conv inputs unfolded into columns, one set per group), each output row ``r`` solves the
damped least-squares problem

    min over w_r (zero outside the kept set S_r):  || w_r X^ - W_r X ||^2 + lambda ||w_r||^2

through its normal equations ``(G[S,S] + lambda I) w_r[S] = (W_r C^T)[S]`` with ``G = X^ X^T``
and ``C = X^ X^T`` taken with the dense input ``X`` as second factor. ``lambda`` is ``damp``
times the mean of ``G``'s diagonal. An intercept (one more always-kept input of value 1) is
fitted when something can hold it: the layer's bias, or else a BatchNorm that takes the
layer's output directly (the intercept moves into its running mean); it absorbs the mean of
what the pruned weights or channels contributed (bias compensation).

* **Masks** (``masks=``): every masked layer that prunes anything is refit; pruned weights
  stay exactly zero; a layer whose mask keeps everything is left as it is.
* **Channels** (``plan=``, the smaller model a :class:`~prunewise.plan.ChannelPlan` cut):
  every layer that consumes a pruned channel group (fewer inputs than the dense layer) is
  refit from the kept channels to the dense layer's outputs at the rows it kept (Channel
  Pruning / ThiNet), with the intercept as above; which dense rows a layer kept is read by
  applying the plan to a copy of the dense model whose weights hold their own indices.

Layers are read through two walks (:mod:`prunewise.sequential`), one on the dense model and
one on the model being repaired, group by group (layers that read one tensor together):
a transformer's or a plain CNN's stack of blocks is walked with its calibration inputs cached
block by block, so the cost grows linearly with depth. Only one group's statistics matrices
are held at a time. Under torchrun every rank reads every calibration batch and solves exactly
the single-process systems.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, device, utils
from .structured import surgery
from . import layers as layers_mod
from .errors import PrunewiseError
from .data.sources import Source
from .plan import ChannelPlan
from .sequential import Walk
from .utils import progress_bar

REPAIRABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def groups(m: nn.Module) -> int:
    """How many groups a conv / linear layer's inputs fall into (1 for a linear layer)."""
    return 1 if isinstance(m, nn.Linear) else m.groups


def columns(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Layer ``m``'s input ``x`` as columns, one matrix (inputs x positions) per group, float32
    (a conv's input unfolded the way the layer reads it: padding mode, stride, dilation)."""
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


def trace(model: nn.Module, names: list[str], x) -> tuple[list[str], dict[str, nn.Module]]:
    """One eval-mode forward pass of ``model`` on ``x``: ``names`` in the order the pass
    reaches them (any it never reaches last), and, per layer, the BatchNorm (with running
    statistics) whose input is exactly that layer's output: where an intercept can be folded
    into the running mean."""
    order: list[str] = []
    outputs: dict[int, tuple] = {}   # the outputs are held, so that no id is reused
    found: dict[str, nn.Module] = {}

    def reached(module, args, name):
        if name not in order:
            order.append(name)

    def produced(module, args, out, name):
        outputs[id(out)] = (name, out)

    def consumes(module, args):
        hit = outputs.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            found.setdefault(hit[0], module)

    hooks = []
    for n in names:
        m = model.get_submodule(n)
        hooks.append(m.register_forward_pre_hook(lambda module, args, n=n: reached(module, args, n)))
        hooks.append(m.register_forward_hook(
            lambda module, args, out, n=n: produced(module, args, out, n)))
    hooks += [bn.register_forward_pre_hook(consumes) for bn in model.modules()
              if isinstance(bn, _BATCHNORMS) and bn.running_mean is not None]
    try:
        with torch.no_grad():
            utils.call(model, x)
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in names if n not in order], found


def _statistics(dense_walk, walk, group: list[str], intercepts: dict[str, bool]) -> dict:
    """Per layer of ``group``, per conv group: (G = X^ X^T, C = X^ X^T with the dense input X
    as second factor), float64, with a row of ones appended to both inputs when an intercept
    is fitted; read through the two walks (:mod:`prunewise.sequential`) batch by batch."""
    out: dict[str, list] = {}
    for dense_x, x in zip(dense_walk.inputs(group), walk.inputs(group)):
        for name in group:
            m, d = walk.model.get_submodule(name), dense_walk.model.get_submodule(name)
            parts = []
            for a, b in zip(columns(m, x[name]), columns(d, dense_x[name])):
                if intercepts[name]:
                    ones = torch.ones(1, a.shape[1], device=a.device)
                    a, b = torch.cat([a, ones]), torch.cat([b, ones])
                parts.append(((a @ a.T).double().cpu(), (a @ b.T).double().cpu()))
            if name in out:
                out[name] = [(G + g, C + c) for (G, C), (g, c) in zip(out[name], parts)]
            else:
                out[name] = parts
    return out


def _solve(G: torch.Tensor, C: torch.Tensor, W: torch.Tensor, keep: torch.Tensor | None,
           damp: float, name: str) -> torch.Tensor:
    """The refit rows of one group: ``W`` the dense rows (rows x dense inputs, float64),
    ``keep`` the bool mask of the refit inputs (rows x inputs; None: every input is free)."""
    diag = G.diagonal()
    scale = float(diag.mean())
    if not scale > 0:
        raise PrunewiseError(f"repair: the calibration inputs of layer '{name}' are all zero; "
                             f"there is nothing to fit (use other calibration data)")
    rhs = W @ C.T                              # row r: (W_r C^T), over the refit inputs
    lam = damp * scale
    A = G + lam * torch.eye(G.shape[0], dtype=G.dtype)
    if keep is None or bool(keep.all()):
        out = torch.linalg.solve(A, rhs.T).T
    else:
        out = torch.zeros_like(rhs)
        for r in range(rhs.shape[0]):
            s = keep[r].nonzero().flatten()
            if s.numel():
                out[r, s] = torch.linalg.solve(A[s][:, s], rhs[r, s])
    if not torch.isfinite(out).all():
        raise PrunewiseError(f"repair: the least-squares solution of layer '{name}' is not "
                             f"finite; raise damp")
    return out


def reconstruct(dense: nn.Module, pruned: nn.Module, batches, *,
                masks: dict[str, torch.Tensor] | None = None, plan: ChannelPlan | None = None,
                samples: int | None = 256, damp: float = 0.01,
                progress: bool = True) -> nn.Module:
    """Repair ``pruned`` in place and return it (see the module notes).

    ``pruned`` is either a masked copy of ``dense`` with ``masks`` (parameter name -> bool
    tensor, as in ``MaskPlan.masks``: every masked ``weight`` of a conv1d / conv2d, grouped and
    depthwise included, or linear layer that prunes anything is refit), or the smaller model
    that ``plan`` (a :class:`~prunewise.plan.ChannelPlan`) cut from ``dense`` (every layer that
    lost input channels is refit). Layers are refit in forward order from the first
    ``samples`` inputs of ``batches`` (a re-iterable or callable of ``(x, y)``; labels unused).
    ``damp``: the ridge term relative to the mean input energy. Works on any ``nn.Module``
    (BatchNorm, LayerNorm, GroupNorm or none); the caller recalibrates BatchNorm afterwards if
    it wants to.
    """
    checks.integer("repair samples", samples, 1, none=True)
    checks.number("damp", damp, 0.0, low_open=True)
    if (masks is None) == (plan is None):
        raise PrunewiseError("repair needs exactly one of masks= (a masked copy) or plan= (the "
                             "smaller model of a channel plan)")
    data = Source(batches, samples)
    first = next(iter(data), None)
    if first is None:
        raise PrunewiseError("repair needs calibration data: the batches were empty")
    x0 = device.to(first[0][:1], device.of(pruned))
    was = (dense.training, pruned.training)
    dense.eval()
    pruned.eval()
    try:
        layers = _masked_layers(pruned, masks) if masks is not None else \
            _consumers(dense, pruned, plan, x0)
        if not layers:
            return pruned
        order, norms = trace(pruned, list(layers), x0)
        try:
            walk, dense_walk = Walk(pruned, data, order), Walk(dense, data, order)
        except PrunewiseError as e:
            raise PrunewiseError(f"repair: {e}") from None
        bar = progress_bar(len(order), "repair", progress)
        for group in walk.groups:
            intercepts = {n: pruned.get_submodule(n).bias is not None or n in norms
                          for n in group}
            stats = _statistics(dense_walk, walk, group, intercepts)
            for name in group:
                _refit(dense, pruned, name, layers[name], norms.get(name), stats[name], damp)
                bar.update(1)
        bar.close()
    finally:
        dense.train(was[0])
        pruned.train(was[1])
    return pruned


def _masked_layers(pruned: nn.Module, masks: dict) -> dict[str, tuple]:
    """Layer name -> (dense rows, kept-input mask) for every masked conv / linear layer that
    prunes anything and is called as a layer (an ``nn.MultiheadAttention``'s output projection
    is read, not called: it keeps its masked weights)."""
    layers, unseen = {}, layers_mod.read_directly(pruned)
    for pname, mask in masks.items():
        module, _, leaf = pname.rpartition(".")
        m = pruned.get_submodule(module) if module else pruned
        if leaf == "weight" and isinstance(m, REPAIRABLE) and not bool(mask.all()) \
                and module not in unseen:
            if tuple(mask.shape) != tuple(m.weight.shape):
                raise PrunewiseError(f"repair: the mask of '{pname}' has shape "
                                     f"{tuple(mask.shape)}, the layer {tuple(m.weight.shape)}")
            layers[module] = (None, mask.reshape(mask.shape[0], -1).cpu().bool())
    return layers


def _double(x):
    """Floating inputs as float64 (token ids and other integer inputs stay as they are)."""
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_double(v) for v in x)
    return x.double() if x.is_floating_point() else x


@torch.no_grad()
def _consumers(dense: nn.Module, pruned: nn.Module, plan: ChannelPlan, x) -> dict[str, tuple]:
    """Layer name -> (the dense rows it kept, None) for every layer of the smaller model that
    lost input channels. The rows come from cutting a float64 copy of ``dense`` whose weights
    hold their own (row, input) indices with the same plan."""
    tagged = copy.deepcopy(dense).double()
    for m in tagged.modules():
        if isinstance(m, REPAIRABLE):
            O, I = m.weight.shape[:2]
            idx = (torch.arange(O, dtype=torch.float64)[:, None] * I
                   + torch.arange(I, dtype=torch.float64)[None, :])
            m.weight.copy_(idx.reshape(O, I, *([1] * (m.weight.dim() - 2))).expand_as(m.weight))
    cut = surgery.apply(tagged, plan, _double(x))
    small = dict(pruned.named_modules())
    layers = {}
    for name, m in cut.named_modules():
        if not isinstance(m, REPAIRABLE):
            continue
        own, full = small.get(name), dense.get_submodule(name)
        if own is None or tuple(own.weight.shape) != tuple(m.weight.shape):
            raise PrunewiseError(f"repair: layer '{name}' of the pruned model does not match the "
                                 f"plan applied to the dense model (was it cut by this plan?)")
        I = full.weight.shape[1]
        v = m.weight.reshape(m.weight.shape[0], m.weight.shape[1], -1)[:, :, 0].round().long()
        rows, cols = v[:, 0] // I, v[0] % I
        if not torch.equal(v, rows[:, None] * I + cols[None, :]):
            raise PrunewiseError(f"repair: cannot follow the channels of layer '{name}'")
        if cols.numel() < I and groups(own) == 1:
            layers[name] = (rows, None)
    return layers


@torch.no_grad()
def _refit(dense, pruned, name: str, layer: tuple, norm: nn.Module | None, stats: list,
           damp: float) -> None:
    """Refit one layer of ``pruned`` from the dense layer of ``dense`` with its statistics
    (:func:`_statistics`; see the module notes)."""
    rows, keep = layer
    m, d = pruned.get_submodule(name), dense.get_submodule(name)
    intercept = m.bias is not None or norm is not None
    W = d.weight.detach().double().reshape(d.weight.shape[0], -1).cpu()
    b = d.bias.detach().double().cpu() if d.bias is not None else torch.zeros(W.shape[0],
                                                                              dtype=W.dtype)
    if rows is not None:
        W, b = W[rows], b[rows]
    if intercept:
        W = torch.cat([W, b[:, None]], dim=1)
        if keep is not None:
            keep = torch.cat([keep, torch.ones(keep.shape[0], 1, dtype=torch.bool)], dim=1)
    per = m.weight.shape[0] // groups(m)
    new = torch.cat([_solve(G, C, W[g * per:(g + 1) * per],
                            None if keep is None else keep[g * per:(g + 1) * per], damp, name)
                     for g, (G, C) in enumerate(stats)])
    if intercept:
        shift = new[:, -1]
        if m.bias is not None:
            m.bias.copy_(shift.to(m.bias.dtype))
        else:  # BN(y + s) with running mean mu is BN(y) with running mean mu - s
            norm.running_mean.sub_(shift.to(norm.running_mean))
        new = new[:, :-1]
    m.weight.copy_(new.reshape(m.weight.shape).to(m.weight.dtype))
