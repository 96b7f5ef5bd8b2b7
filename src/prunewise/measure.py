"""Measure a model: parameters, MACs (as the pruning literature counts them), sparsity, latency."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from . import device, layers, utils
from .utils import LAYER_TYPES

_COUNTED = LAYER_TYPES


def params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters with ``nonzero=True``)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return out.numel() // out.shape[-1] * module.in_features * module.out_features
    w = module.weight
    per_output = w.shape[1] * w[0, 0].numel()  # (in / groups) * prod(kernel)
    return out.numel() * per_output


def _steps(module: nn.RNNBase, inputs: tuple) -> int:
    x = inputs[0] if inputs else None
    if not isinstance(x, torch.Tensor):  # a packed sequence: its total length per sample
        data = getattr(x, "data", None)
        return int(data.shape[0]) if isinstance(data, torch.Tensor) else 0
    if x.dim() == 2:  # unbatched (L, H)
        return int(x.shape[0])
    return int(x.shape[1] if module.batch_first else x.shape[0])


def layer_table(model: nn.Module, example_inputs) -> list[dict]:
    """One row per layer that multiplies, in execution order, for ONE sample (the first of
    ``example_inputs``): name, type, shapes, params, MACs, and ``weights`` (each weight
    matrix's share of the MACs, what a zero weight saves).

    Rows: every conv and linear layer (``macs`` = its multiply-accumulates); every recurrent
    layer (its input and hidden weight matrices once per time step); every module with matrix
    products of its own (``nn.MultiheadAttention``: projections and products, also on its fused
    fast path; attention built from linear layers: the query-key and attention-value products);
    and a last row ``"(other matmuls)"`` for products outside them, counted by
    ``torch.utils.flop_counter``. Norms, activations, pooling, element-wise ops and biases are
    not counted, which is how the pruning literature reports MACs (ResNet-56 on 32x32:
    125,485,696).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    heads = layers.attention_heads(model)
    rec = _Recorder(model, counter)
    watched = [m for n, m in model.named_modules()
               if isinstance(m, LAYER_TYPES + (nn.RNNBase, nn.MultiheadAttention)) or n in heads]
    handles = [h for m in watched for h in (m.register_forward_pre_hook(rec.enter),
                                            m.register_forward_hook(rec.leave))]
    handles += [m.register_forward_pre_hook(rec.mha, with_kwargs=True) for m in watched
                if isinstance(m, nn.MultiheadAttention)]
    example_inputs = device.to(example_inputs, device.of(model))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            utils.call(model, utils.take(example_inputs, slice(0, 1)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rec.finish(heads, counter.get_total_flops() // 2)


class _Recorder:
    """The forward hooks of :func:`layer_table`: a row per watched module as it finishes, with
    the MACs the flop counter saw inside it (``inside``)."""

    def __init__(self, model: nn.Module, counter):
        self.model, self.counter = model, counter
        self.names = {m: n for n, m in model.named_modules()}
        self.rows: list[dict] = []
        self.opened: dict[int, list] = {}   # module id -> stack of flops at entry
        self.mha_macs: dict[str, int] = {}  # an MHA's MACs from its inputs' shapes
        self.mha_weights: dict[str, dict] = {}

    def enter(self, module, inputs):
        self.opened.setdefault(id(module), []).append(self.counter.get_total_flops())

    def mha(self, module, args, kwargs):
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args):]])[:3]
        name = self.names[module]
        self.mha_macs[name], self.mha_weights[name] = _mha_macs(module, q, k, v)

    def leave(self, module, inputs, out):
        inside = (self.counter.get_total_flops() - self.opened[id(module)].pop()) // 2
        name = self.names.get(module, "?")
        row = {"name": name, "type": type(module).__name__, "inside": inside,
               "weight_shape": [], "output_shape": [], "params": 0, "macs": inside}
        if isinstance(module, LAYER_TYPES):
            if not isinstance(out, torch.Tensor):
                return
            row.update(weight_shape=list(module.weight.shape), output_shape=list(out.shape[1:]),
                       params=sum(p.numel() for p in module.parameters(recurse=False)),
                       macs=_layer_macs(module, out))   # the run holds one sample
            row["weights"] = {_join(name, "weight"): row["macs"]}
        elif isinstance(module, nn.RNNBase):
            steps = _steps(module, inputs)
            row.update(params=sum(p.numel() for p in module.parameters(recurse=False)),
                       macs=max(layers.rnn_macs(module, steps), inside))
            row["extra"] = row["macs"] - inside  # what the flop counter did not see
            row["weights"] = {_join(name, n): p.numel() * steps
                              for n, p in module.named_parameters(recurse=False)
                              if n.startswith(("weight_ih", "weight_hh", "weight_hr"))}
        self.rows.append(row)

    def finish(self, heads: dict, total: int) -> list[dict]:
        """Attention rows get their own products (what ran inside them minus their watched
        children, or the shape formula when larger); the rest of the counted total becomes the
        "(other matmuls)" row."""
        rows = self.rows
        kids = {r["name"]: 0 for r in rows}
        for r in rows:
            parent = _watched_parent(r["name"], kids)
            if parent is not None:
                kids[parent] += r["inside"]
        by_name = {r["name"]: r for r in rows}
        for r in rows:
            m = self.model.get_submodule(r["name"]) if r["name"] != "?" else None
            if isinstance(m, LAYER_TYPES + (nn.RNNBase,)):
                continue
            seen = max(0, r["inside"] - kids[r["name"]])
            formula = (self.mha_macs.get(r["name"], 0) if isinstance(m, nn.MultiheadAttention)
                       else _attention_macs(heads.get(r["name"]), by_name))
            r["macs"], r["extra"] = max(seen, formula), max(seen, formula) - seen
            r["weights"] = {_join(r["name"], k): v
                            for k, v in self.mha_weights.get(r["name"], {}).items()}
        other = total - sum(r["macs"] - r.get("extra", 0) for r in rows)
        if other > 0:
            rows.append({"name": "(other matmuls)", "type": "matmul", "weight_shape": [],
                         "output_shape": [], "params": 0, "macs": int(other)})
        for r in rows:
            r.pop("inside", None)
            r.pop("extra", None)
            r.setdefault("weights", {})
        return [r for r in rows if r["macs"] or r["type"] in _LAYER_NAMES]


_LAYER_NAMES = {t.__name__ for t in LAYER_TYPES}


def _length(t, batch_first: bool) -> int:
    if not isinstance(t, torch.Tensor):
        return 0
    if t.dim() == 2:
        return int(t.shape[0])
    return int(t.shape[1] if batch_first else t.shape[0])


def _mha_macs(m: nn.MultiheadAttention, q, k, v) -> tuple[int, dict]:
    """One sample's MACs of ``nn.MultiheadAttention`` (the three input projections, the
    query-key and attention-value products, the output projection) and the share of each
    weight matrix in them."""
    k = q if k is None else k
    L, S = _length(q, m.batch_first), _length(k, m.batch_first)
    E = m.embed_dim
    proj = {"q_proj_weight": L * E * E, "k_proj_weight": S * E * m.kdim,
            "v_proj_weight": S * E * m.vdim}
    if m.in_proj_weight is not None:
        proj = {"in_proj_weight": sum(proj.values())}
    proj["out_proj.weight"] = L * E * E
    return int(sum(proj.values()) + 2 * L * S * E), proj


def _join(module: str, leaf: str) -> str:
    return f"{module}.{leaf}" if module else leaf


def _attention_macs(info: dict | None, rows: dict) -> int:
    """One sample's query-key and attention-value MACs of an attention module built from linear
    layers, from the output shapes of its q / k / v layers (sequence length x width)."""
    if info is None or not all(n in rows for n in info["qkv"]):
        return 0
    if info["own"]:   # self-attention; keys and values repeated to every query head
        L, _ = _flat(rows[info["qkv"][0]]["output_shape"])
        return int(2 * L * L * info["heads"] * info["head_dim"])
    (L, Eq), (S, _), (_, Ev) = (_flat(rows[n]["output_shape"]) for n in info["qkv"])
    return int(L * S * Eq + L * S * Ev)


def _flat(shape: list) -> tuple[int, int]:
    """(tokens, width) of a linear layer's per-sample output shape."""
    tokens = 1
    for d in shape[:-1]:
        tokens *= d
    return tokens, shape[-1]


def _watched_parent(name: str, watched: dict) -> str | None:
    """The nearest enclosing watched module of ``name`` (by dotted name)."""
    while "." in name:
        name = name.rpartition(".")[0]
        if name in watched:
            return name
    return "" if "" in watched and name != "" else None


def macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates for one sample: conv, linear, recurrent layers and every matrix
    product of attention (see :func:`layer_table`)."""
    return int(sum(r["macs"] for r in layer_table(model, example_inputs)))


def sparsity(model: nn.Module, names: list[str] | None = None) -> dict:
    """Fraction of zero weights, globally and per tensor.

    ``names`` picks the tensors (default: the ``weight`` of every conv and linear layer).
    """
    params_by_name = dict(model.named_parameters())
    if names is None:
        names = [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
                 if isinstance(m, _COUNTED)]
        names = [n for n in names if n in params_by_name]   # a tied weight counts once
    per_layer = {}
    zeros = total = 0
    for n in names:
        p = params_by_name[n]
        z = int(p.numel() - torch.count_nonzero(p))
        per_layer[n] = z / p.numel()
        zeros += z
        total += p.numel()
    return {"global": zeros / total if total else 0.0, "per_layer": per_layer,
            "zeros": zeros, "total": total}


def pass_ms(call, dev: torch.device) -> float:
    """Wall time of ``call()`` in milliseconds, the device's queue synchronized before and after
    (the one timer every latency measure uses)."""
    device.synchronize(dev)
    t0 = time.perf_counter()
    call()
    device.synchronize(dev)
    return (time.perf_counter() - t0) * 1e3


def latency_ms(model: nn.Module, example_inputs: torch.Tensor, *, warmup: int = 5,
               repeats: int = 30, threads: int | None = None) -> float:
    """Median wall time of one forward pass on the model's device, in milliseconds, after
    ``warmup`` passes (on CUDA the queue is synchronized before and after every timed pass)."""
    dev = device.of(model)
    example_inputs = device.to(example_inputs, dev)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            times = [pass_ms(lambda: utils.call(model, example_inputs), dev)
                     for _ in range(warmup + repeats)]
        return statistics.median(times[warmup:])
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


def paired_latency(first: nn.Module, second: nn.Module, example_inputs, *, warmup: int = 5,
                   repeats: int = 30) -> dict:
    """Two models timed in the same window: their passes alternate (``first``, ``second``,
    ``first``, ...), so that a change in the machine's load reaches both alike. Returns the
    median milliseconds of each, and the ratio ``second / first`` as the median of the per-pair
    ratios with its 25th and 75th percentiles (``spread``)."""
    dev = device.of(first)
    example_inputs = device.to(example_inputs, dev)
    was = first.training, second.training
    first.eval()
    second.eval()
    a, b = [], []
    try:
        with torch.inference_mode():
            for _ in range(warmup + repeats):
                for model, times in ((first, a), (second, b)):
                    times.append(pass_ms(lambda: utils.call(model, example_inputs), dev))
        a, b = a[warmup:], b[warmup:]
    finally:
        first.train(was[0])
        second.train(was[1])
    ratios = sorted(y / x for x, y in zip(a, b) if x > 0)
    if not ratios:
        return {"first": statistics.median(a), "second": statistics.median(b), "ratio": None,
                "spread": None}

    def q(f):
        return ratios[min(len(ratios) - 1, int(f * (len(ratios) - 1) + 0.5))]
    return {"first": statistics.median(a), "second": statistics.median(b),
            "ratio": statistics.median(ratios), "spread": [q(0.25), q(0.75)]}


def summary(model: nn.Module, example_inputs: torch.Tensor, *, latency: bool = True) -> dict:
    """Params, non-zero params, MACs and (optionally) batch-1 latency in one dict."""
    out = {"params": params(model), "nonzero_params": params(model, nonzero=True),
           "macs": macs(model, example_inputs)}
    if latency:
        out["latency_ms"] = latency_ms(model, example_inputs[:1])
    return out
