"""Measure a model: parameters, MACs (as the pruning literature counts them), sparsity, latency."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from . import device
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


def layer_table(model: nn.Module, example_inputs: torch.Tensor) -> list[dict]:
    """One row per conv/linear layer in execution order: name, type, shapes, params, MACs.

    MACs are the multiply-accumulates of conv and linear layers for ONE sample (the first of
    ``example_inputs``); norm layers, activations, pooling and biases are not counted, which is
    how the pruning literature reports MACs (ResNet-56 on 32x32: 125,485,696).
    """
    rows: list[dict] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, out):
        if not isinstance(out, torch.Tensor):
            return
        rows.append({
            "name": names.get(module, "?"),
            "type": type(module).__name__,
            "weight_shape": list(module.weight.shape),
            "output_shape": list(out.shape[1:]),
            "params": sum(p.numel() for p in module.parameters(recurse=False)),
            "macs": _layer_macs(module, out[:1]),
        })

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    example_inputs = device.to(example_inputs, device.of(model))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Conv + linear multiply-accumulates for one sample (see :func:`layer_table`)."""
    return int(sum(r["macs"] for r in layer_table(model, example_inputs)))


def sparsity(model: nn.Module, names: list[str] | None = None) -> dict:
    """Fraction of zero weights, globally and per tensor.

    ``names`` picks the tensors (default: the ``weight`` of every conv and linear layer).
    """
    params_by_name = dict(model.named_parameters())
    if names is None:
        names = [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
                 if isinstance(m, _COUNTED)]
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
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                device.synchronize(dev)
                t0 = time.perf_counter()
                model(example_inputs)
                device.synchronize(dev)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


def summary(model: nn.Module, example_inputs: torch.Tensor, *, latency: bool = True) -> dict:
    """Params, non-zero params, MACs and (optionally) batch-1 latency in one dict."""
    out = {"params": params(model), "nonzero_params": params(model, nonzero=True),
           "macs": macs(model, example_inputs)}
    if latency:
        out["latency_ms"] = latency_ms(model, example_inputs[:1])
    return out
