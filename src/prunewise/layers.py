"""Layers beyond plain conv / linear that structured pruning must understand: attention modules
built from linear layers (and their head counts), recurrent layers, and the Torch-Pruning pruner
prunewise uses for LSTMs.

**Attention.** Two kinds of attention module built from linear layers are understood
(:func:`attention_heads`). (1) A module with an integer head-count attribute
(:data:`HEAD_ATTRS`) and three linear children of one width that project queries, keys and
values (:data:`QKV_NAMES`), as in hand-written attention and in BERT- and ViT-style models:
Torch-Pruning cuts their output channels as one group, in whole heads of ``head_dim``
contiguous channels, and :func:`update_heads` writes the new head count back. (2) Decoder
attention whose output projection is its own child and that Torch-Pruning cannot cut by heads:
grouped-query attention, a fused q/k/v layer (:data:`FUSED_QKV`, queries-keys-values or head by
head), or a head count known only from ``head_dim``. prunewise cuts those itself
(:func:`cut_heads`): whole query heads, the same number in every key-value group (key-value
heads stay), key and value heads along with their query head when there is no grouping.
Per-head tables (relative-position biases) follow their heads (:func:`head_tables`).
``nn.MultiheadAttention`` is neither: its projections are tied to its embedding width, so
Torch-Pruning can only shrink every head equally (``head_dim``), never remove a head.

**Recurrent layers.** :func:`customized_pruners` gives Torch-Pruning a correct pruner for the
hidden units of an ``nn.LSTM`` (every layer and gate; Torch-Pruning's own one mis-slices the
input weights and biases). Bidirectional LSTMs and ``proj_size`` are not pruned structurally.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .utils import LAYER_TYPES

#: Attributes that hold an attention module's head count.
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
#: Names of the query / key / value projections of an attention module.
QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"),
             ("to_q", "to_k", "to_v"), ("wq", "wk", "wv"), ("q_lin", "k_lin", "v_lin"),
             ("query_proj", "key_proj", "value_proj"))
#: Attributes derived from the head count that are rewritten with it (heads * head_dim).
WIDTH_ATTRS = ("all_head_size", "inner_dim")
#: Fused query-key-value layers (queries, then keys, then values, head by head).
FUSED_QKV = ("c_attn", "qkv_proj", "qkv", "Wqkv", "query_key_value")
#: Attributes that hold the number of key-value heads.
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
#: Attributes that hold the channels per head.
HEAD_DIM_ATTRS = ("head_dim", "head_size", "attention_head_size", "d_head")


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every conv / linear / norm layer and the hidden weights of every LSTM:
    what a structurally pruned architecture changes (a checkpoint records it; a channel
    plan's architecture signature hashes it)."""
    kinds = LAYER_TYPES + (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    out = {n: list(m.weight.shape) for n, m in model.named_modules()
           if isinstance(m, kinds) and getattr(m, "weight", None) is not None}
    out.update({n: list(m.weight_hh_l0.shape) for n, m in model.named_modules()
                if isinstance(m, nn.LSTM)})
    return out


def read_directly(model: nn.Module) -> set[str]:
    """Names of the layers whose weights another module reads without calling them (the output
    projection of an ``nn.MultiheadAttention``): no forward hook ever sees their inputs."""
    return {f"{n}.{c}" if n else c for n, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_modules() if c}


def _heads_attr(module: nn.Module) -> str | None:
    for a in HEAD_ATTRS:
        v = getattr(module, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return a
    return None


def _int_attr(module: nn.Module, names) -> int:
    for a in names:
        v = getattr(module, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 0


def attention_heads(model: nn.Module) -> dict[str, dict]:
    """Every attention module built from linear layers: its name -> ``{"attr": head-count
    attribute or None, "heads": query heads, "kv_heads": key-value heads, "head_dim": channels
    per head, "qkv": [q, k, v layer names] (one name three times when fused), "out": its output
    projection or "", "own": True when prunewise cuts its heads itself}``.

    Two kinds (see the module doc): separate q / k / v of one width with a head-count attribute
    (Torch-Pruning cuts them, ``own`` False); and, cut by :func:`cut_heads`, attention whose
    output projection is its own child and that Torch-Pruning cannot cut by whole heads:
    grouped-query (fewer key-value heads than query heads), a fused q/k/v layer
    (:data:`FUSED_QKV`), or a head count known only from ``head_dim``. Anything whose widths
    do not divide into heads is left out."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            continue
        info = _separate(m) or _fused(m)
        if info is not None:
            prefix = f"{name}." if name else ""
            info["qkv"] = [prefix + n for n in info["qkv"]]
            info["out"] = prefix + info["out"] if info["out"] else ""
            out[name] = info
    return out


def _out_projection(m: nn.Module, width: int, skip: set) -> str:
    """The one linear child of ``m`` (not in ``skip``) that reads ``width`` channels, or ""."""
    found = [n for n, c in m.named_children()
             if isinstance(c, nn.Linear) and n not in skip and c.in_features == width]
    return found[0] if len(found) == 1 else ""


def _separate(m: nn.Module) -> dict | None:
    attr = _heads_attr(m)
    for names in QKV_NAMES:
        q, k, v = (getattr(m, n, None) for n in names)
        if not all(isinstance(x, nn.Linear) for x in (q, k, v)):
            continue
        if attr is not None and q.out_features == k.out_features == v.out_features \
                and q.out_features % getattr(m, attr) == 0:
            heads = getattr(m, attr)
            return {"attr": attr, "heads": heads, "kv_heads": heads, "own": False,
                    "head_dim": q.out_features // heads, "qkv": list(names), "out": ""}
        d = _int_attr(m, HEAD_DIM_ATTRS)
        o = _out_projection(m, q.out_features, set(names))
        if not d or not o or k.out_features != v.out_features or q.out_features % d \
                or k.out_features % d or (q.out_features // d) % (k.out_features // d):
            return None
        return {"attr": attr, "heads": q.out_features // d, "kv_heads": k.out_features // d,
                "head_dim": d, "qkv": list(names), "out": o, "own": True}
    return None


def _fused(m: nn.Module) -> dict | None:
    for n in FUSED_QKV:
        f = getattr(m, n, None)
        if not isinstance(f, nn.Linear):
            continue
        d, attr = _int_attr(m, HEAD_DIM_ATTRS), _heads_attr(m)
        if not d or f.out_features % d:
            return None
        units = f.out_features // d
        kv = _int_attr(m, KV_ATTRS)
        groups = _int_attr(m, ("num_key_value_groups",))
        heads = (getattr(m, attr) if attr else units - 2 * kv if kv
                 else units * groups // (groups + 2) if groups else units // 3)
        kv = kv or (heads // groups if groups else heads)
        if heads < 1 or heads + 2 * kv != units or heads % kv:
            return None
        o = _out_projection(m, heads * d, {n})
        if not o:
            return None
        return {"attr": attr, "heads": heads, "kv_heads": kv, "head_dim": d, "qkv": [n] * 3,
                "out": o, "own": True, "interleaved": False}
    return None


def update_heads(model: nn.Module, heads: dict[str, dict]) -> None:
    """Write the head count implied by the pruned q/k/v widths into every attention module of
    ``heads`` (from :func:`attention_heads` before pruning) that Torch-Pruning cut, and the
    derived widths."""
    mods = dict(model.named_modules())
    for name, info in heads.items():
        if info["own"]:
            continue
        m = mods[name]
        width = mods[info["qkv"][0]].out_features
        setattr(m, info["attr"], width // info["head_dim"])
        for a in WIDTH_ATTRS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width)


def qkv_rows(info: dict, part: str, channels: torch.Tensor) -> torch.Tensor:
    """The rows of the ``part`` ("q", "k" or "v") layer that hold ``channels`` (query channels
    for "q"; for "k"/"v" key-value channels) of an attention module of :func:`attention_heads`.
    A fused layer holds all queries, then keys, then values, unless ``interleaved`` (GPT-NeoX):
    then head h's query, key and value channels sit side by side."""
    d, H, KV = info["head_dim"], info["heads"], info["kv_heads"]
    channels = torch.as_tensor(channels, dtype=torch.long)
    if len(set(info["qkv"])) > 1:
        return channels
    at = "qkv".index(part)
    if info.get("interleaved"):
        return channels // d * 3 * d + at * d + channels % d
    return channels + (0, H * d, (H + KV) * d)[at]


def cut_heads(model: nn.Module, name: str, info: dict, kept: torch.Tensor) -> None:
    """Keep only the query channels ``kept`` (whole heads; with grouped-query attention the same
    number in every key-value group) of the ``own`` attention module ``name`` of ``model``
    (``info`` from :func:`attention_heads`). Key and value heads go with
    their query head when every query head has its own; with grouped-query attention they all
    stay. The head-count attributes are rewritten so the forward pass uses the new count."""
    d, H, KV = info["head_dim"], info["heads"], info["kv_heads"]
    kept = torch.as_tensor(kept, dtype=torch.long).sort().values
    h_new = kept.numel() // d
    rows = {"q": kept, "k": kept if KV == H else torch.arange(KV * d),
            "v": kept if KV == H else torch.arange(KV * d)}
    module, get = model.get_submodule(name), model.get_submodule
    names = dict(zip("qkv", info["qkv"]))
    if len(set(info["qkv"])) == 1:
        fused = torch.cat([qkv_rows(info, p, rows[p]) for p in "qkv"])
        _slice_rows(get(names["q"]), fused.sort().values)
    else:
        for p in "qkv":
            _slice_rows(get(names[p]), rows[p])
    _slice_cols(get(info["out"]), kept)
    if info["attr"]:
        setattr(module, info["attr"], h_new)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        module.num_key_value_groups = h_new // KV
    for a in WIDTH_ATTRS + ("split_size",):
        if getattr(module, a, None) == H * d:
            setattr(module, a, h_new * d)
    config = getattr(module, "config", None)   # shared by every layer: this one gets its own
    if getattr(config, "num_attention_heads", None) == H:
        module.config = copy.copy(config)
        module.config.num_attention_heads = h_new


def head_tables(model: nn.Module, name: str, heads: dict) -> list[str]:
    """The per-head parameters of attention module ``name`` (``heads``: every attention of
    :func:`attention_heads`): relative-position bias tables and the like, parameters of two or
    more dimensions whose last one is the head count, held by no conv / linear / norm layer,
    inside the largest module around ``name`` that holds no other attention module (BEiT keeps
    its table beside the attention, Swin inside it)."""
    H, owner = heads[name]["heads"], name
    while owner:
        parent = owner.rpartition(".")[0]
        if not parent or any(n != name and n.startswith(parent + ".") for n in heads):
            break
        owner = parent
    out = []
    for mn, m in model.get_submodule(owner).named_modules():
        if isinstance(m, LAYER_TYPES + (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            continue
        for pn, p in m.named_parameters(recurse=False):
            if p.dim() >= 2 and p.shape[-1] == H:
                out.append(".".join(x for x in (owner, mn, pn) if x))
    return out


def cut_tables(model: nn.Module, tables: list[str], kept_heads: torch.Tensor) -> None:
    """Keep only ``kept_heads`` along the last dimension of every parameter in ``tables``."""
    for full in tables:
        owner, _, leaf = full.rpartition(".")
        m = model.get_submodule(owner) if owner else model
        p = getattr(m, leaf)
        setattr(m, leaf, nn.Parameter(p.detach()[..., kept_heads].clone(), p.requires_grad))


def cut_halves(model: nn.Module, root: str, consumer: str, kept: torch.Tensor) -> None:
    """Keep channels ``kept`` of a layer whose output is split in two halves (gate and up in
    one layer): rows ``kept`` and ``half + kept`` of ``root``, columns ``kept`` of
    ``consumer``."""
    lin, out = model.get_submodule(root), model.get_submodule(consumer)
    kept = torch.as_tensor(kept, dtype=torch.long).sort().values
    _slice_rows(lin, torch.cat([kept, kept + lin.out_features // 2]))
    _slice_cols(out, kept)


def _slice_cols(lin: nn.Linear, cols: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[:, cols].clone(), lin.weight.requires_grad)
    lin.in_features = cols.numel()


def _slice_rows(lin: nn.Linear, rows: torch.Tensor) -> None:
    lin.weight = nn.Parameter(lin.weight.detach()[rows].clone(), lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[rows].clone(), lin.bias.requires_grad)
    lin.out_features = rows.numel()


def lstm_rows(lstm: nn.LSTM, idxs) -> torch.Tensor:
    """The output-side weights of hidden units ``idxs`` of an LSTM: per unit, its rows of every
    gate in every layer's input and hidden weights (what SLIMING and L1 rank)."""
    H = lstm.hidden_size
    idxs = torch.as_tensor(idxs, dtype=torch.long)
    parts = []
    for l in range(lstm.num_layers):
        for w in (getattr(lstm, f"weight_ih_l{l}"), getattr(lstm, f"weight_hh_l{l}")):
            parts.append(w.detach().reshape(4, H, -1)[:, idxs].permute(1, 0, 2).reshape(len(idxs), -1))
    return torch.cat(parts, 1).float()


def rnn_macs(module: nn.Module, steps: int) -> int:
    """Multiply-accumulates of a recurrent layer over ``steps`` time steps for one sample:
    every input and hidden weight matrix of every layer and direction, once per step."""
    total = 0
    for name, p in module.named_parameters(recurse=False):
        if name.startswith(("weight_ih", "weight_hh", "weight_hr")):
            total += p.numel()
    return int(total * steps)


def customized_pruners() -> dict:
    """``{nn.LSTM: pruner}`` for Torch-Pruning: hidden units of every layer (unidirectional,
    no ``proj_size``) and the first layer's inputs."""
    import torch_pruning as tp

    def sliced(p: nn.Parameter, keep: torch.Tensor, dim: int) -> nn.Parameter:
        return nn.Parameter(p.data.index_select(dim, keep.to(p.device)), p.requires_grad)

    class LSTMPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = (nn.LSTM,)

        def prune_out_channels(self, layer: nn.LSTM, idxs):
            H = layer.hidden_size
            keep = torch.tensor(sorted(set(range(H)) - {int(i) for i in idxs}), dtype=torch.long)
            gates = torch.cat([keep + g * H for g in range(4)])
            for l in range(layer.num_layers):
                for kind in ("ih", "hh"):
                    w = f"weight_{kind}_l{l}"
                    p = sliced(getattr(layer, w), gates, 0)
                    if kind == "hh" or l > 0:
                        p = sliced(p, keep, 1)
                    setattr(layer, w, p)
                    b = f"bias_{kind}_l{l}"
                    if getattr(layer, b, None) is not None:
                        setattr(layer, b, sliced(getattr(layer, b), gates, 0))
            layer.hidden_size = len(keep)
            layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
            return layer

        def prune_in_channels(self, layer: nn.LSTM, idxs):
            keep = torch.tensor(sorted(set(range(layer.input_size)) - {int(i) for i in idxs}),
                                dtype=torch.long)
            layer.weight_ih_l0 = sliced(layer.weight_ih_l0, keep, 1)
            if layer.bidirectional:
                layer.weight_ih_l0_reverse = sliced(layer.weight_ih_l0_reverse, keep, 1)
            layer.input_size = len(keep)
            layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size

        def get_in_channels(self, layer):
            return layer.input_size

    return {nn.LSTM: LSTMPruner()}


def unsupported_lstm(m: nn.Module) -> str:
    """Why an LSTM's hidden units cannot be pruned structurally ('' when they can)."""
    if isinstance(m, nn.LSTM) and (m.bidirectional or m.proj_size):
        return "bidirectional or projected LSTM"
    return ""
