"""One structured pruning run, shared by the CLI, the demo and the benchmarks:
prune (SLIMING or a baseline) -> measure -> optional fine-tune -> report dict.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .. import data as D
from .. import files, filter_baselines, measure, train


def layer_rows(before: nn.Module, after: nn.Module) -> list[dict]:
    """Per conv/linear layer: weight shape before and after pruning."""
    wb, wa = files.layer_widths(before), files.layer_widths(after)
    mods = dict(before.named_modules())
    return [{"layer": n, "before": wb[n], "after": wa.get(n, wb[n])} for n in wb
            if isinstance(mods[n], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'layer':<36} {'out before':>10} {'out after':>10} {'in before':>10} {'in after':>10}"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"{r['layer']:<36} {b[0]:>10} {a[0]:>10} {b[1]:>10} {a[1]:>10}")
    return "\n".join(lines)


def run(model: nn.Module, bundle: "D.DataBundle", method: str = "sliming", *, macs=None,
        params=None, normalize: str = "max", min_channels: int = 1, min_ratio: float = 0.0,
        finetune_epochs: int = 0,
        lr: float = 0.01, seed: int = 0, quiet: bool = True, dense_accuracy: float | None = None,
        plan=None) -> tuple[nn.Module, "filter_baselines.surgery.ChannelPlan", dict]:
    """Prune ``model`` (untouched) with ``method`` (or apply a saved ``plan``: a
    :class:`~prunewise.surgery.ChannelPlan`); measure; fine-tune ``finetune_epochs``."""
    t0 = time.perf_counter()
    x = torch.zeros(1, bundle.in_channels, bundle.image_size, bundle.image_size)
    torch.manual_seed(seed)
    if plan is not None:
        pruned = filter_baselines.surgery.apply(model, plan, x)
        method = plan.meta.get("method", "plan")
    else:
        batches = (D.batches(bundle.train, bundle, 64, shuffle=True, seed=seed)
                   if method == "chip" else None)
        pruned, plan = filter_baselines.prune(model, x, method, macs=macs, params=params,
                                              normalize=normalize, min_channels=min_channels,
                                              min_ratio=min_ratio,
                                              batches=batches, seed=seed)
    t_prune = time.perf_counter() - t0
    dense_macs, dense_params = measure.macs(model, x), measure.params(model)
    rep = {"method": method, "budget": {"macs": macs, "params": params},
           "normalize": normalize, "min_channels": min_channels, "min_ratio": min_ratio,
           "seed": seed,
           "macs": measure.macs(pruned, x), "params": measure.params(pruned),
           "dense_macs": dense_macs, "dense_params": dense_params}
    rep["macs_ratio"] = rep["macs"] / dense_macs
    rep["params_ratio"] = rep["params"] / dense_params
    if dense_accuracy is None:
        dense_accuracy = train.evaluate_split(model, bundle, "test")["top1"]
    rep["dense_test_accuracy"] = dense_accuracy
    rep["test_accuracy"] = train.evaluate_split(pruned, bundle, "test")["top1"]
    rep["counts"] = plan.counts
    rep["groups"] = plan.meta.get("groups", {})
    rep["layers"] = layer_rows(model, pruned)
    rep["prune_seconds"] = t_prune
    if finetune_epochs:
        hist = train.fit(pruned, bundle, epochs=finetune_epochs, lr=lr, seed=seed,
                         progress=not quiet, desc=f"fine-tune {method}")
        rep["finetuned_accuracy"] = train.evaluate_split(pruned, bundle, "test")["top1"]
        rep["finetune"] = {"epochs": finetune_epochs, "lr": lr, "best_epoch": hist["best_epoch"],
                           "best_val_top1": hist["best_val_top1"], "seconds": hist["seconds"]}
    rep["seconds"] = time.perf_counter() - t0
    return pruned, plan, rep
