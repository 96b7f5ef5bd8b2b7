"""Fit, evaluate and fine-tune any classifier; mask-aware so pruned weights stay exactly zero.

Shared by every method: a pruning method never trains. ``fit`` picks the epoch with the best
validation accuracy (never the test set) and can stop early on it.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from .errors import PrunewiseError

OPTIMIZERS = ("sgd", "adam")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable) -> dict:
    """Top-1 / top-5 accuracy (fractions) and mean cross-entropy over ``(x, y)`` batches."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss = 0.0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise PrunewiseError("evaluation set is empty")
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n, "n": n}


def evaluate_split(model: nn.Module, bundle: "D.DataBundle", split: str = "test",
                   batch_size: int = 256) -> dict:
    """:func:`evaluate` on one split ('train', 'val' or 'test') of a data bundle."""
    return evaluate(model, D.batches(getattr(bundle, split), bundle, batch_size))


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, *, samples: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/variance on ``batches``; return ``model``.

    After pruning, the running statistics still describe the dense network, so a pruned model
    measured with them is judged on statistics drift rather than on what was removed. This
    resets the statistics and averages them cumulatively (``momentum=None``) over forward
    passes without gradients, on at most ``samples`` images (all of ``batches`` when None).
    Only the labels-free inputs are used. The model's train/eval mode and each layer's
    momentum are restored. A model without BatchNorm is returned untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not norms:
        return model
    if samples is not None and (isinstance(samples, bool) or int(samples) != samples or samples < 1):
        raise PrunewiseError(f"recalibration samples must be an integer >= 1, got {samples!r}")
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if samples is not None and seen + len(x) > samples:
                x = x[: samples - seen]
            if len(x) == 0:
                break
            model(x)
            seen += len(x)
            if samples is not None and seen >= samples:
                break
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise PrunewiseError("BatchNorm recalibration got no samples")
    return model


class MaskKeeper:
    """Keeps masked weights at exactly zero: masks gradients and re-applies masks after a step.

    ``masks`` maps parameter names (as in ``model.named_parameters()``) to 0/1 tensors.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None):
        params = dict(model.named_parameters())
        self.pairs = []
        for name, m in (masks or {}).items():
            if name not in params:
                raise PrunewiseError(f"mask names unknown parameter '{name}'")
            p = params[name]
            if m.shape != p.shape:
                raise PrunewiseError(f"mask for '{name}' has shape {tuple(m.shape)}, "
                                     f"parameter has {tuple(p.shape)}")
            self.pairs.append((p, m.to(device=p.device, dtype=p.dtype)))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for p, m in self.pairs:
            p.mul_(m)
            if p.grad is not None:
                p.grad.mul_(m)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise PrunewiseError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")


def fit(model: nn.Module, bundle: "D.DataBundle", *, epochs: int, lr: float = 0.05,
        optimizer: str = "sgd", weight_decay: float = 5e-4, batch_size: int = 64,
        masks: dict[str, torch.Tensor] | None = None, patience: int | None = None,
        seed: int = 0, augment: bool = True, progress: bool = True,
        on_epoch: Callable[[dict], None] | None = None, desc: str = "train") -> dict:
    """Train ``model`` in place with a cosine schedule; restore the best-on-validation weights.

    ``masks`` keeps pruned weights exactly zero after every optimizer step (fine-tuning).
    ``patience`` stops after that many epochs without a better validation accuracy.
    Returns the history: per-epoch train loss and validation accuracy, best epoch, seconds.
    """
    if epochs < 0:
        raise PrunewiseError(f"epochs must be >= 0, got {epochs}")
    if lr <= 0:
        raise PrunewiseError(f"learning rate must be > 0, got {lr}")
    torch.manual_seed(seed)
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    steps_per_epoch = D.num_batches(bundle.train, batch_size, drop_last=True)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    keeper = MaskKeeper(model, masks)
    aug = bundle.augment if augment else None
    start = time.perf_counter()
    best = {"val_top1": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    if epochs == 0 or len(bundle.val) == 0:
        best["val_top1"] = evaluate_split(model, bundle, "val")["top1"] if len(bundle.val) else -1.0
    history = []
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = seen = 0.0
        for x, y in D.batches(bundle.train, bundle, batch_size, shuffle=True, augment=aug,
                              seed=seed * 100_003 + epoch, drop_last=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            keeper.apply()
            opt.step()
            keeper.apply()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            bar.update(1)
        val = evaluate_split(model, bundle, "val") if len(bundle.val) else {"top1": float("nan")}
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_top1": val["top1"],
               "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val['top1']:.3f}")
        if on_epoch:
            on_epoch(row)
        if val["top1"] > best["val_top1"]:
            best = {"val_top1": val["top1"], "epoch": epoch,
                    "state": copy.deepcopy(model.state_dict())}
        elif patience is not None and epoch - best["epoch"] >= patience:
            break
    bar.close()
    model.load_state_dict(best["state"])
    keeper.apply()
    model.eval()
    return {"history": history, "best_epoch": best["epoch"], "best_val_top1": best["val_top1"],
            "seconds": time.perf_counter() - start}
