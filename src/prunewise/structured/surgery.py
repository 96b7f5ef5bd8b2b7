"""Structured surgery: channel groups from Torch-Pruning's dependency graph, the channel plan,
an exact cost model of a candidate configuration, and applying a :class:`~prunewise.plan.ChannelPlan`
(a physically smaller model).

A *group* is a set of channels that must go together (a conv's outputs, its BN, the next layers'
inputs, everything tied to them by residual adds or concats). Groups come from
``torch_pruning.DependencyGraph``; we never write our own graph surgery.

Not prunable, and recorded why: the classifier's outputs (any layer whose output reaches the
model output without passing another conv/linear), groups holding an ignored layer, and groups
touching a CIFAR ResNet's zero-padding shortcut (``PadShortcut``, "option A"): there only the
inner channels of each residual block are pruned, as in HRank / CHIP / SLIMING.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .. import device, layers, measure, models, utils
from ..errors import PrunewiseError
from ..plan import ChannelPlan
from ..models.cifar_resnet import PadShortcut
from ..utils import LAYER_TYPES, one_thread

_LAYERS = LAYER_TYPES
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
CHANNEL_NORMS = _NORMS + (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                           nn.InstanceNorm3d, nn.LayerNorm)  # a (weight, bias) pair per channel
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------- graph and groups
def copy_with_ignored(model: nn.Module, ignored_layers=None) -> tuple[nn.Module, list]:
    """A deep copy of ``model`` and the copy's modules that correspond to ``ignored_layers``
    (modules of ``model``), so the copy can be pruned while the original stays untouched."""
    new = copy.deepcopy(model)
    if not ignored_layers:
        return new, []
    index = {m: n for n, m in model.named_modules()}
    mods = dict(new.named_modules())
    return new, [mods[index[m]] for m in ignored_layers if m in index]


def pruners() -> dict:
    """The Torch-Pruning pruners prunewise adds: the zoo's custom modules and LSTMs."""
    return {**models.customized_pruners(), **layers.customized_pruners()}


def build_graph(model: nn.Module, example_inputs, ignored_layers=None):
    """Trace ``model`` with Torch-Pruning; an untraceable model is a PrunewiseError.

    Parameters that belong to no layer Torch-Pruning knows (a ViT's class token and position
    embedding, a custom module's own weights) are handed to it as *unwrapped parameters*
    (their last non-singleton dimension follows the channels); whatever that gets wrong, the
    check after surgery (:func:`check_runs`) refuses."""
    import warnings

    import torch_pruning as tp

    ignored = list(ignored_layers or [])
    example_inputs = device.to(example_inputs, device.of(model))  # trace on the model's device
    was_training = model.training
    model.eval()
    heads = layers.attention_heads(model)   # per-head tables are cut by heads, not traced
    tables = [model.get_parameter(t) for n in heads for t in layers.head_tables(model, n, heads)]
    frozen = [p for p in tables if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, customized_pruners=pruners(),
                verbose=False)
    except PrunewiseError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing failure is the model's, name it
        msg = " ".join(str(e).split())[:200]
        raise PrunewiseError(f"Torch-Pruning cannot trace this model: {type(e).__name__}: "
                             f"{msg}") from None
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    recorded: dict = {}

    def seen() -> dict:   # the module calls, recorded by one extra pass only if a check needs them
        if "calls" not in recorded:
            recorded["calls"] = calls(model, example_inputs)
        return recorded["calls"]
    dg.prunewise_calls = seen
    dg.prunewise_heads = checked_heads(model, example_inputs, seen)
    inside_mha = {c for m in model.modules() if isinstance(m, nn.MultiheadAttention)
                  for c in m.modules() if c is not m}  # its forward reads their weights directly
    for n, m in model.named_modules():
        if isinstance(m, _LAYERS) and m not in dg.module2node and m not in ignored \
                and m not in inside_mha:
            raise PrunewiseError(f"Torch-Pruning cannot trace layer '{n}' ({type(m).__name__}): "
                                 f"it is not connected to the output through autograd (detached, "
                                 f"no_grad or unused); pass it in ignored_layers or fix forward()")
    return dg


@dataclass
class GroupInfo:
    """One channel group: its root layer, size, and how its channels sit in every layer."""
    name: str                 # root layer name: the key in a plan
    size: int                 # channels C
    prunable: bool
    reason: str = ""          # why not prunable
    out_layers: list = field(default_factory=list)   # [(layer name, row idxs ordered by root channel)]
    dims: list = field(default_factory=list)         # [(layer name, "out"|"in", n idxs)]
    group: object = None      # the Torch-Pruning group (full indices)
    root: nn.Module | None = None
    head: int = 1             # attention head size: whole blocks of this many channels go together
    parts: int = 1            # channels split into this many equal parts that keep equal counts
    parent: str = ""          # a view of another group (see structured.views): its name
    halves: str = ""          # the layer reading a root split in two halves (see _halves)
    units: list = field(default_factory=list)  # a view's channels -> the parent's channels

    @property
    def unit(self) -> int:
        """Every kept count is a multiple of this (unless it is the whole group)."""
        return self.head * self.parts


def _output_layers(dg) -> set:
    """Conv/linear modules whose output reaches a graph output without another conv/linear."""
    out = set()
    for m, node in dg.module2node.items():
        if not isinstance(m, _LAYERS):
            continue
        stack, seen = list(node.outputs), set()
        if not stack:
            out.add(m)
            continue
        while stack:
            nd = stack.pop()
            if nd in seen:
                continue
            seen.add(nd)
            if isinstance(nd.module, _LAYERS):
                continue
            if not nd.outputs:
                out.add(m)
                break
            stack.extend(nd.outputs)
    return out


ROOTS = _LAYERS + (nn.LSTM,)
_WIDTH = (nn.Embedding, nn.LayerNorm, nn.MultiheadAttention)  # a transformer's model width


def groups(dg, model: nn.Module, ignored_layers=None) -> list[GroupInfo]:
    """Every channel group of ``model`` (traced into ``dg`` by :func:`build_graph`), in
    execution-graph order, prunable or not, with what keeps it valid: ``head`` (the group
    holds an attention module's q/k/v outputs: whole heads go) and ``parts`` (GroupNorm
    groups, grouped-conv groups and ``nn.MultiheadAttention`` heads must each keep the same
    number of channels).

    Not prunable, with the reason: a group whose channels reach the model output, holding an
    ignored layer, touching a zero-padding shortcut, a transformer's model width (a group with an
    embedding, a LayerNorm or an ``nn.MultiheadAttention``: every block reads it; its heads and
    MLP channels are pruned instead), or a bidirectional / projected LSTM.

    Two kinds of group prunewise cuts itself replace Torch-Pruning's (``group`` is None): the
    query heads of decoder attention (:func:`head_group`) and the two halves of a fused gate-and-
    up layer (:func:`_halves`), each checked against masking on the example input first."""
    names = {m: n for n, m in model.named_modules()}
    ignored = set(ignored_layers or [])
    outputs = _output_layers(dg)
    shared = tied_layers(model)
    heads = getattr(dg, "prunewise_heads", None) or layers.attention_heads(model)
    qkv = {q: info for info in heads.values() if not info["own"] for q in info["qkv"]}
    owned = {q: n for n, info in heads.items() if info["own"] for q in info["qkv"]}
    placed, result = set(), []
    # Torch-Pruning never starts a group inside an attention module prunewise cuts itself:
    # following queries and keys through rotary slices and concats is what made its analysis of
    # decoder language models run for minutes (Phi: past 60 s on two layers)
    skip = [model.get_submodule(q) for q in owned]
    for g in dg.get_all_groups(ignored_layers=skip, root_module_types=ROOTS):
        root = g[0].dep.target.module
        info = GroupInfo(name=names[root], size=len(g[0].idxs), prunable=True, group=g, root=root)
        parts = 1
        for item in g:
            m = item.dep.target.module
            is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
            if not isinstance(m, nn.Module) or m not in names:
                continue
            n = names[m]
            if isinstance(m, PadShortcut):
                info.prunable, info.reason = False, "zero-padding shortcut (option A) on this path"
            if is_out and m in ignored:
                info.prunable, info.reason = False, f"ignored layer '{n}'"
            if is_out and m in outputs:
                info.prunable, info.reason = False, f"model output ('{n}')"
            if n in shared and info.prunable:
                info.prunable, info.reason = False, (f"layer '{n}' shares its weights with "
                                                     f"'{shared[n]}' (tied): both keep them")
            if isinstance(m, _WIDTH) and info.prunable:
                info.prunable, info.reason = False, f"model width ({type(m).__name__} '{n}')"
            if layers.unsupported_lstm(m):
                info.prunable, info.reason = False, f"{layers.unsupported_lstm(m)} '{n}'"
            if isinstance(m, nn.GroupNorm):
                parts = math.lcm(parts, m.num_groups)
            if isinstance(m, _CONVS) and m.groups > 1 and not _depthwise(m):
                parts = math.lcm(parts, m.groups)
            if isinstance(m, nn.MultiheadAttention):
                parts = math.lcm(parts, m.num_heads)
            if is_out and n in qkv and len(item.idxs) == info.size:
                info.head = qkv[n]["head_dim"]
            if isinstance(m, _LAYERS + CHANNEL_NORMS + (nn.LSTM,)):
                info.dims.append((n, "out" if is_out else "in", len(item.idxs)))
            if is_out and isinstance(m, ROOTS) and len(item.idxs) == info.size:
                order = np.argsort(np.asarray(item.root_idxs))
                info.out_layers.append((n, [int(item.idxs[i]) for i in order]))
        info.parts = parts if info.head == 1 else 1
        split = [n for n, _, k in info.dims if k < info.size and info.size % k == 0
                 and isinstance(model.get_submodule(n), nn.Linear)]
        if split and info.prunable:   # one layer's outputs read in pieces (gate and up fused)
            info = _halves(model, info, getattr(dg, "prunewise_calls", dict))
        if info.prunable and info.size % info.unit:
            info.prunable, info.reason = False, (f"{info.size} channels do not split into "
                                                 f"{info.unit} equal parts")
        mine = sorted({owned[n] for n, kind, _ in info.dims if kind == "out" and n in owned})
        if not mine:   # an attention module prunewise cuts itself replaces Torch-Pruning's group
            result.append(info)
        for a in mine:
            if a not in placed:
                placed.add(a)
                result.append(head_group(model, a, heads[a], ignored))
    result += [head_group(model, a, heads[a], ignored) for a in sorted(set(owned.values()) - placed)]
    return result


def tied_layers(model: nn.Module) -> dict[str, str]:
    """Layer name -> the name of another layer holding the same parameter tensor (tied
    weights), for every layer that shares one."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        for p in m._parameters.values():  # noqa: SLF001 - named_parameters drops repeats
            if p is not None:
                owners.setdefault(id(p), [])
                if name not in owners[id(p)]:
                    owners[id(p)].append(name)
    out = {}
    for names in owners.values():
        for n in names if len(names) > 1 else ():
            out[n] = next(o for o in names if o != n)
    return out


def _halves(model: nn.Module, info: GroupInfo, seen) -> GroupInfo:
    """A group whose root layer's output is split in two halves that are multiplied back
    together (gate and up in one layer) becomes a group of the half width that prunewise cuts
    itself (:func:`prunewise.layers.cut_halves`): channel c goes with channel c + half, once
    checked (:func:`_halves_problem`); anything else stays whole."""
    outs = [(n, k) for n, kind, k in info.dims if kind == "out"]
    ins = [(n, k) for n, kind, k in info.dims if kind == "in"]
    reason = ""
    if len(outs) != 1 or outs[0][0] != info.name or len(ins) != 1 or 2 * ins[0][1] != info.size:
        reason = "not two halves of one layer read by one layer"
    else:
        reason = _halves_problem(model, info.name, ins[0][0],
                                 seen().get(info.name.rpartition(".")[0]))
    if reason:
        return replace(info, prunable=False, reason=f"'{info.name}' is read in pieces (a fused "
                                                    f"layer split in its forward): {reason}")
    F = info.size // 2
    return GroupInfo(name=info.name, size=F, prunable=True, root=info.root,
                     out_layers=[(info.name, list(range(F))), (info.name, list(range(F, 2 * F)))],
                     dims=[(info.name, "out", 2 * F), (ins[0][0], "in", F)], halves=ins[0][0])


def head_group(model: nn.Module, name: str, info: dict, ignored=()) -> GroupInfo:
    """The channel group of an attention module whose heads prunewise cuts itself
    (:func:`prunewise.layers.cut_heads`): its query channels, in whole heads; with grouped-query
    attention (``parts`` = key-value heads) every key-value group keeps the same number of
    query heads, else each query head takes its key and value head along."""
    d, H, KV = info["head_dim"], info["heads"], info["kv_heads"]
    size, every = H * d, torch.arange(H * d)
    q, k, v = info["qkv"]
    out_layers = [(n, layers.qkv_rows(info, p, every).tolist())
                  for p, n in zip("qkv", (q, k, v)) if p == "q" or KV == H]
    if q == k:   # fused: a query channel removes 1 (grouped-query) or 3 rows of one layer
        dims = [(q, "out", 3 * size if KV == H else size)]
    else:
        dims = [(n, "out", size) for n in ((q, k, v) if KV == H else (q,))]
    g = GroupInfo(name=name, size=size, prunable=True, out_layers=out_layers,
                  dims=dims + [(info["out"], "in", size)], root=model.get_submodule(name),
                  head=d, parts=KV if KV < H else 1)
    touched = {model.get_submodule(n) for n in (q, k, v, info["out"])}
    if touched & set(ignored):
        g.prunable, g.reason = False, f"ignored layer in attention '{name}'"
    elif H == 1:
        g.prunable, g.reason = False, f"attention '{name}' has a single head"
    elif info.get("problem"):
        g.prunable, g.reason = False, f"attention '{name}': {info['problem']}"
    return g


def calls(model: nn.Module, example_inputs) -> dict:
    """The positional and keyword arguments of the first call of every module with two or more
    linear children (attention modules, MLPs), on ``example_inputs``: what the checks of the
    cuts prunewise makes itself run those modules on."""
    watched = [n for n, m in model.named_modules()
               if sum(isinstance(c, nn.Linear) for c in m.children()) >= 2]
    got = {}

    def grab(name):
        return lambda mod, args, kwargs: got.setdefault(name, (args, kwargs)) and None

    hooks = [model.get_submodule(n).register_forward_pre_hook(grab(n), with_kwargs=True)
             for n in watched]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            utils.call(model, example_inputs)
    except Exception:  # noqa: BLE001 - the trace already ran this model: nothing to check
        got.clear()
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return got


def checked_heads(model: nn.Module, example_inputs, seen=None) -> dict:
    """:func:`prunewise.layers.attention_heads`, with every attention module prunewise cuts
    itself checked on ``example_inputs`` (``seen()``: the module calls there, from
    :func:`calls`, when the caller already records them): cutting its first query head (of every key-value group) must give what
    zeroing that head's columns of the output projection gives. A module whose layout the rule
    misread gets a ``problem`` and stays whole."""
    heads = layers.attention_heads(model)
    own = [n for n, info in heads.items() if info["own"]]
    if not own:
        return heads
    seen = calls(model, example_inputs) if seen is None else seen()
    for n in own:
        heads[n]["problem"] = _head_problem(model, n, heads[n], seen.get(n))
        if heads[n]["problem"] and "interleaved" in heads[n] and heads[n]["kv_heads"] == heads[n]["heads"]:
            other = {**heads[n], "interleaved": True}   # fused head by head (GPT-NeoX)?
            if not _head_problem(model, n, other, seen.get(n)):
                heads[n] = {**other, "problem": ""}
    return heads


def _halves_problem(model: nn.Module, root: str, consumer: str, call) -> str:
    """A layer whose output its module splits in two halves that meet again (gate and up in one
    layer, Phi-3): cutting channel 0 of both halves must give what zeroing column 0 of the
    consumer gives, on the module's own call."""
    owner = root.rpartition(".")[0]
    if call is None or consumer.rpartition(".")[0] != owner:
        return "not checked: its module was not called, or the halves meet in another module"
    rel = lambda n: "a." + n[len(owner) + 1:]  # noqa: E731
    F = model.get_submodule(consumer).in_features
    return _cut_matches_mask(
        model.get_submodule(owner), call, rel(consumer), [0],
        lambda holder: layers.cut_halves(holder, rel(root), rel(consumer), torch.arange(1, F)),
        "its halves")


def _head_problem(model: nn.Module, name: str, info: dict, call) -> str:
    if call is None:
        return "not called by the forward pass on the example input"
    d, H, KV = info["head_dim"], info["heads"], info["kv_heads"]
    if H == 1:
        return ""
    G = H // KV
    drop = [p * G * d + c for p in range(KV) for c in range(d)] if G > 1 else list(range(d))
    kept = torch.tensor(sorted(set(range(H * d)) - set(drop)))
    local = {**info, "qkv": ["a" + q[len(name):] for q in info["qkv"]],
             "out": "a" + info["out"][len(name):]}
    return _cut_matches_mask(model.get_submodule(name), call, local["out"], drop,
                             lambda holder: layers.cut_heads(holder, "a", local, kept), "a head")


def _cut_matches_mask(module: nn.Module, call, reader: str, columns: list, cut, what: str) -> str:
    """Run ``call`` through two copies of ``module``: one cut by ``cut(holder)`` (the copy is
    ``holder.a``), one with ``columns`` of the input weights of ``reader`` (its name under the
    holder, "a. ...") zeroed. "" when the outputs agree; else the problem."""
    holder = nn.Module()
    holder.add_module("a", copy.deepcopy(module))
    masked = copy.deepcopy(holder.a)
    with torch.no_grad():
        masked.get_submodule(reader[2:]).weight[:, columns] = 0
        cut(holder)
        try:
            want = _first(masked(*call[0], **call[1]))
            got = _first(holder.a(*call[0], **call[1]))
        except Exception as e:  # noqa: BLE001 - a cut that breaks the module is the finding
            return f"cutting {what} breaks it ({type(e).__name__})"
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4,
                                                     atol=1e-5 * float(want.abs().max()) + 1e-7):
        return f"cutting {what} does not match masking it (layout not understood)"
    return ""


def _first(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _depthwise(m: nn.Module) -> bool:
    return m.groups == m.in_channels == m.out_channels


def group_matrix(model: nn.Module, info: GroupInfo) -> torch.Tensor:
    """R (C x D): row c = the output-side weights of channel c in every conv/linear of the group,
    on the model's device (the spectra and GEM run there)."""
    mods = dict(model.named_modules())
    parts = [layers.lstm_rows(mods[n], idxs) if isinstance(mods[n], nn.LSTM) else
             mods[n].weight.detach()[idxs].reshape(len(idxs), -1).float()
             for n, idxs in info.out_layers]
    if not parts:
        return torch.zeros(info.size, 1, device=device.of(model))
    return torch.cat(parts, 1)


# --------------------------------------------------------------------------- cost model
class CostModel:
    """Exact MACs and params of the model with ``counts[g]`` channels kept in prunable group g.

    Linear in the removed channels per layer dimension: layer MACs = spatial * out * in/groups,
    read once from a forward hook; depthwise convs keep in/groups = 1. Agrees with
    :func:`prunewise.measure.macs` and :func:`prunewise.measure.params` on the pruned model.
    """

    def __init__(self, model: nn.Module, example_inputs, infos: list[GroupInfo]):
        self.infos = [g for g in infos if g.prunable]
        self.sizes = np.array([g.size for g in self.infos], dtype=np.float64)
        mods = dict(model.named_modules())
        table = {}
        for r in measure.layer_table(model, example_inputs):   # a layer called twice (ALBERT's
            if r["name"] in table:                             # shared block): both calls count
                r = {**r, "macs": r["macs"] + table[r["name"]]["macs"]}
            table[r["name"]] = r
        rows = [n for n, m in mods.items() if isinstance(m, _LAYERS + CHANNEL_NORMS)
                and getattr(m, "weight", None) is not None]
        # rows beyond conv / linear / norms: (name, out0, in0, MACs, params, which group dims
        # shrink their out and in side: (layer, "out"|"in", channels per group channel))
        extra = self._extra_rows(model, table)
        idx = {n: i for i, n in enumerate(rows)}
        self.timed = {n: i for n, i in idx.items() if isinstance(mods[n], _LAYERS)}
        L, G = len(rows) + len(extra), len(self.infos)
        self.out0 = np.zeros(L)
        self.in0 = np.zeros(L)
        self.spatial = np.zeros(L)   # MACs per (out * in_per_group)
        self.kernel = np.zeros(L)    # params per (out * in_per_group)
        self.bias = np.zeros(L)      # per-output params (a bias)
        self.depthwise = np.zeros(L, dtype=bool)
        self.norm = np.zeros(L, dtype=bool)
        self.groups_ = np.ones(L)
        for n, i in idx.items():
            m = mods[n]
            w = m.weight
            if isinstance(m, CHANNEL_NORMS):
                self.norm[i] = True
                self.out0[i] = self.in0[i] = w.shape[0]
                self.kernel[i] = sum(p.numel() for p in m.parameters(recurse=False)) / w.shape[0]
                continue
            out, inpg = w.shape[0], w.shape[1]
            grp = getattr(m, "groups", 1)
            self.out0[i], self.in0[i], self.groups_[i] = out, inpg * grp, grp
            self.depthwise[i] = grp > 1 and grp == out and inpg == 1
            self.kernel[i] = w[0, 0].numel() if w.dim() > 2 else 1
            self.bias[i] = 1 if getattr(m, "bias", None) is not None else 0
            if n in table:
                self.spatial[i] = table[n]["macs"] / (out * inpg)
        self.a_out = np.zeros((L, G))
        self.a_in = np.zeros((L, G))
        for j, g in enumerate(self.infos):
            for n, kind, k in g.dims:
                if n in idx:
                    (self.a_out if kind == "out" or self.norm[idx[n]] else self.a_in)[idx[n], j] = k / g.size
        dims = {(n, kind): (j, k / g.size) for j, g in enumerate(self.infos)
                for n, kind, k in g.dims}
        for i, (out0, in0, row_macs, row_params, bias, shrink) in enumerate(extra, len(rows)):
            self.out0[i], self.in0[i] = out0, in0
            self.spatial[i] = row_macs / (out0 * in0) if out0 * in0 else 0.0
            self.kernel[i] = row_params / (out0 * in0) if out0 * in0 else 0.0
            self.bias[i] = bias
            for side, (layer, kind, per) in shrink.items():
                if (layer, kind) in dims:
                    j, frac = dims[(layer, kind)]
                    (self.a_out if side == "out" else self.a_in)[i, j] = frac * per
        counted = {n for n in rows if n in table} | {n for n, r in table.items()
                                                     if n in self._extra_names}
        self.other_macs = sum(r["macs"] for n, r in table.items() if n not in counted)
        self.other_params = sum(p.numel() for p in model.parameters()) - self.params(self.sizes)
        self.full_macs = self.macs(self.sizes)
        self.full_params = self.params(self.sizes)

    def _extra_rows(self, model: nn.Module, table: dict) -> list[tuple]:
        """Cost rows for what shrinks with channels besides conv / linear layers: the query-key
        and attention-value products of an attention module built from linear layers (they
        scale with its q/k/v width: whole heads), and an LSTM's input and hidden matrices
        (four gates per hidden unit)."""
        out, self._extra_names = [], set()
        for name, info in layers.attention_heads(model).items():
            if name in table and table[name]["macs"]:
                width = info["heads"] * info["head_dim"]
                side = (info["out"], "in", 1) if info["own"] else (info["qkv"][0], "out", 1)
                out.append((width, 1, table[name]["macs"], 0, 0, {"out": side}))
                self._extra_names.add(name)
        for name, m in model.named_modules():
            if not isinstance(m, nn.LSTM) or layers.unsupported_lstm(m) or name not in table:
                continue
            H = m.hidden_size
            steps = table[name]["macs"] / max(layers.rnn_macs(m, 1), 1)
            for l in range(m.num_layers):
                inp = m.input_size if l == 0 else H
                has_b = 2 if getattr(m, f"bias_ih_l{l}", None) is not None else 0
                in_side = {"in": (name, "in", 1)} if l == 0 else {"in": (name, "out", 1)}
                out.append((4 * H, inp, steps * 4 * H * inp, 4 * H * inp, has_b,
                            {"out": (name, "out", 4), **in_side}))
                out.append((4 * H, H, steps * 4 * H * H, 4 * H * H, 0,
                            {"out": (name, "out", 4), "in": (name, "out", 1)}))
            self._extra_names.add(name)
        return out

    def _dims(self, counts):
        removed = self.sizes - np.asarray(counts, dtype=np.float64)
        out = self.out0 - self.a_out @ removed
        inn = self.in0 - self.a_in @ removed
        inpg = np.where(self.depthwise, 1.0, inn / self.groups_)
        return out, inpg

    def layer_widths(self, counts) -> dict[str, tuple[float, float]]:
        """Every conv / linear layer's (input channels, output channels) with ``counts`` kept
        (a depthwise conv's input is its output)."""
        out, inpg = self._dims(counts)
        return {n: (out[i] if self.depthwise[i] else inpg[i] * self.groups_[i], out[i])
                for n, i in self.timed.items()}

    def macs(self, counts) -> float:
        out, inpg = self._dims(counts)
        return float(np.sum(self.spatial * out * inpg)) + getattr(self, "other_macs", 0)

    def params(self, counts) -> float:
        out, inpg = self._dims(counts)
        conv = np.where(self.norm, self.kernel * out, self.kernel * out * inpg + self.bias * out)
        return float(np.sum(conv)) + getattr(self, "other_params", 0)


# --------------------------------------------------------------------------- the plan
def signature(model: nn.Module) -> str:
    """A short hash of the architecture (layer names and weight shapes) a plan was made for."""
    text = json.dumps(layers.layer_widths(model), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_plan(model: nn.Module, infos: list[GroupInfo], keep: dict[str, torch.Tensor],
              meta: dict | None = None) -> ChannelPlan:
    sizes = {g.name: g.size for g in infos if g.name in keep}
    clean = {k: torch.as_tensor(v, dtype=torch.long).sort().values for k, v in keep.items()}
    for k, v in clean.items():
        if v.numel() < 1 or v.unique().numel() != v.numel() or int(v.min()) < 0 \
                or int(v.max()) >= sizes[k]:
            raise PrunewiseError(f"bad kept channels for group '{k}' (size {sizes[k]})")
    return ChannelPlan(keep=clean, sizes=sizes, arch=signature(model), meta=meta or {})


def prune_in_place(model: nn.Module, dg, infos: list[GroupInfo], plan: ChannelPlan) -> nn.Module:
    """Remove every channel the plan does not keep, group by group, through Torch-Pruning."""
    by_name = {g.name: g for g in infos}
    heads = layers.attention_heads(model)
    tables = {n: layers.head_tables(model, n, heads) for n in heads}
    of_layer = {info["qkv"][0]: n for n, info in heads.items()}
    for name, kept in plan.keep.items():
        info = by_name.get(name)
        if info is None:
            raise PrunewiseError(f"plan names group '{name}', which this model does not have")
        if not info.prunable:
            raise PrunewiseError(f"plan prunes group '{name}', which cannot be pruned: {info.reason}")
        if info.size != plan.sizes[name]:
            raise PrunewiseError(f"plan group '{name}' has {plan.sizes[name]} channels, the model "
                                 f"has {info.size}")
        check_valid(info, kept)
        drop = sorted(set(range(info.size)) - set(kept.tolist()))
        if not drop:
            continue
        attention = name if info.group is None else next(
            (of_layer[n] for n, _ in info.out_layers if n in of_layer), None)
        if attention and info.head > 1 and tables[attention]:
            layers.cut_tables(model, tables[attention], torch.unique(kept // info.head))
        if info.halves:          # gate and up in one layer: both halves of each channel
            layers.cut_halves(model, name, info.halves, kept)
            continue
        if info.group is None:   # an attention module prunewise cuts itself
            layers.cut_heads(model, name, heads[name], kept)
            continue
        pruner = dg.get_pruner_of_module(info.root)
        dg.get_pruning_group(info.root, pruner.prune_out_channels, drop).prune(record_history=False)
    layers.update_heads(model, heads)
    return model


def check_valid(info: GroupInfo, kept: torch.Tensor) -> None:
    """Refuse kept channels that would break the group's structure: partial attention heads,
    or GroupNorm / grouped-conv / multi-head parts that keep different counts."""
    kept = torch.as_tensor(kept, dtype=torch.long)
    if info.head > 1:
        per = torch.bincount(kept // info.head, minlength=info.size // info.head)
        if bool(((per != 0) & (per != info.head)).any()):
            raise PrunewiseError(f"plan keeps part of an attention head in group '{info.name}': "
                                 f"heads of {info.head} channels are kept or removed whole")
    if info.parts > 1:
        per = torch.bincount(kept // (info.size // info.parts), minlength=info.parts)
        if bool((per != per[0]).any()):
            raise PrunewiseError(f"plan keeps unequal channel counts in the {info.parts} parts "
                                 f"of group '{info.name}' (GroupNorm groups, grouped-conv groups "
                                 f"or attention heads): got {per.tolist()}")


def output_shapes(model: nn.Module, example_inputs) -> list:
    """The shapes of ``model``'s logits on ``example_inputs`` (what surgery must not change)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = utils.logits(utils.call(model, device.to(example_inputs, device.of(model))))
    finally:
        model.train(was)
    return [tuple(out.shape)]


def check_runs(model: nn.Module, pruned: nn.Module, plan: ChannelPlan, example_inputs,
               expected: list | None = None) -> None:
    """Never hand back a model that does not run: run ``example_inputs`` through ``pruned``
    and compare its output shape with ``model``'s (``expected``, when already known). On a
    failure, find the first group of ``plan`` that alone breaks ``model`` and name it."""
    expected = expected or output_shapes(model, example_inputs)
    problem = _run_problem(pruned, example_inputs, expected)
    if problem is None:
        return
    for name in plan.keep:
        one = ChannelPlan(keep={name: plan.keep[name]}, sizes={name: plan.sizes[name]})
        trial = copy.deepcopy(model)
        dg = build_graph(trial, example_inputs)
        prune_in_place(trial, dg, groups(dg, trial), one)
        bad = _run_problem(trial, example_inputs, expected)
        if bad is not None:
            raise PrunewiseError(f"pruning channel group '{name}' gives a model that does not run "
                                 f"({bad}); leave that layer dense (ignored_layers, or --exclude "
                                 f"{name} on the command line)")
    raise PrunewiseError(f"the pruned model does not run ({problem}); leave the layers around "
                         f"the groups {', '.join(list(plan.keep)[:5])} dense (ignored_layers)")


def _run_problem(model: nn.Module, x, expected: list) -> str | None:
    try:
        got = output_shapes(model, x)
    except Exception as e:  # noqa: BLE001 - whatever breaks is the surgery's doing: report it
        return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    if got != expected:
        return f"output shape {got[0]} instead of {expected[0]}"
    return None


def apply(model: nn.Module, plan: ChannelPlan, example_inputs: torch.Tensor) -> nn.Module:
    """A NEW, physically smaller copy of ``model`` with only the plan's kept channels."""
    sig = signature(model)
    if plan.arch and plan.arch != sig:
        raise PrunewiseError(f"plan was made for a different architecture (signature {plan.arch}, "
                             f"this model {sig}): apply it to the model it was computed on")
    new = copy.deepcopy(model)
    with one_thread():
        dg = build_graph(new, example_inputs)
        prune_in_place(new, dg, groups(dg, new), plan)
        check_runs(model, new, plan, example_inputs)
    new.train(model.training)
    return record(model, new, plan, example_inputs)


def record(model: nn.Module, new: nn.Module, plan: ChannelPlan, example_inputs) -> nn.Module:
    """Note on ``new`` (cut from ``model`` by ``plan``) every plan that made it and the example
    input they were traced on, so a saved checkpoint rebuilds it by the same surgery."""
    new.prunewise_structure = [*getattr(model, "prunewise_structure", []), plan]
    try:
        new.prunewise_inputs = utils.input_spec(example_inputs)
    except PrunewiseError:   # a tuple of inputs: not recordable, so not saveable either
        new.prunewise_inputs = None
    return new


def describe(infos: list[GroupInfo]) -> dict:
    """What can be pruned: prunable group names and the skipped ones with the reason."""
    return {"prunable": [g.name for g in infos if g.prunable],
            "prunable_channels": int(sum(g.size for g in infos if g.prunable)),
            "skipped": {g.name: g.reason for g in infos if not g.prunable}}
