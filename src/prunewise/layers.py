"""Layers beyond plain conv / linear that structured pruning must understand: attention modules
built from linear layers (and their head counts), recurrent layers, and the Torch-Pruning pruner
prunewise uses for LSTMs.

**Attention.** A module is an attention module when it has an integer head-count attribute
(:data:`HEAD_ATTRS`: ``num_heads``, ``num_attention_heads``, ...) and three linear children
that project queries, keys and values (:data:`QKV_NAMES`: ``q/k/v``, ``query/key/value``,
``q_proj/k_proj/v_proj``, ...), as in hand-written attention and in HuggingFace BERT- and
ViT-style models. Their output channels form one channel group; heads are contiguous blocks of
``head_dim`` channels, and structured pruning keeps or removes whole heads
(:func:`attention_heads`), then writes the new head count back into the module
(:func:`update_heads`), so the forward pass and a saved model use it. ``nn.MultiheadAttention``
is not such a module: its projections are tied to its embedding width, so Torch-Pruning can only
shrink every head equally (``head_dim``), never remove a head.

**Recurrent layers.** :func:`customized_pruners` gives Torch-Pruning a correct pruner for the
hidden units of an ``nn.LSTM`` (every layer and gate; Torch-Pruning's own one mis-slices the
input weights and biases). Bidirectional LSTMs and ``proj_size`` are not pruned structurally.
"""
from __future__ import annotations

import torch
from torch import nn

from .utils import LAYER_TYPES

#: Attributes that hold an attention module's head count.
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
#: Names of the query / key / value projections of an attention module.
QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"),
             ("to_q", "to_k", "to_v"), ("wq", "wk", "wv"))
#: Attributes derived from the head count that are rewritten with it (heads * head_dim).
WIDTH_ATTRS = ("all_head_size", "inner_dim")


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


def attention_heads(model: nn.Module) -> dict[str, dict]:
    """Every attention module built from linear layers: its name -> ``{"attr": head-count
    attribute, "heads": count, "head_dim": channels per head, "qkv": [q, k, v layer names]}``.
    Modules whose q/k/v widths are not a multiple of the head count are left out."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            continue
        attr = _heads_attr(m)
        if attr is None:
            continue
        for q, k, v in QKV_NAMES:
            layers = [getattr(m, n, None) for n in (q, k, v)]
            if not all(isinstance(x, nn.Linear) for x in layers):
                continue
            heads = getattr(m, attr)
            widths = {x.out_features for x in layers}
            if len(widths) != 1 or next(iter(widths)) % heads:
                break
            prefix = f"{name}." if name else ""
            out[name] = {"attr": attr, "heads": heads,
                         "head_dim": next(iter(widths)) // heads,
                         "qkv": [prefix + n for n in (q, k, v)]}
            break
    return out


def update_heads(model: nn.Module, heads: dict[str, dict]) -> None:
    """Write the head count implied by the pruned q/k/v widths into every attention module of
    ``heads`` (from :func:`attention_heads` before pruning), and the derived widths."""
    mods = dict(model.named_modules())
    for name, info in heads.items():
        m = mods[name]
        width = mods[info["qkv"][0]].out_features
        setattr(m, info["attr"], width // info["head_dim"])
        for a in WIDTH_ATTRS:
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, width)


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
