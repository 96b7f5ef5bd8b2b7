"""Fit, evaluate and fine-tune any classifier; mask-aware so pruned weights stay exactly zero.

Shared by every method: a pruning method never trains. ``fit`` picks the epoch with the best
validation accuracy (never the test set) and can stop early on it.

Everything computes on the model's own device (move the model with ``model.to(device)``, or
pass ``--device`` on the command line); batches follow it (:func:`prunewise.device.to`). Under
``torchrun`` (:mod:`prunewise.dist`) ``fit`` trains with DistributedDataParallel, each rank on
its share of every batch, and :func:`evaluate_split` / :func:`recalibrate_bn` combine the ranks'
shares, so every rank ends with the same weights, statistics and numbers.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import data as D
from . import checks, device, dist, names, tasks, utils
from .errors import PrunewiseError, out_of_memory
from .plan import check_shapes
from .settings import Training
from .utils import progress_bar

OPTIMIZERS = names.OPTIMIZERS


def evaluate(model: nn.Module, batches: Iterable, task: tasks.Task | None = None) -> dict:
    """The task's named metrics (:meth:`prunewise.tasks.Task.evaluate`; default
    classification) over ``(x, y)`` batches, moved to the model's device. In this
    process only: :func:`evaluate_split` combines the ranks' shares under torchrun."""
    return tasks.of(task).evaluate(model, batches)


def _totals(model: nn.Module, batch, task: tasks.Task) -> list[float]:
    was_training = model.training
    model.eval()
    try:
        return task.batch_totals(model, batch)
    finally:
        model.train(was_training)


def eval_batch_size(bundle: "D.DataBundle", part: "D.Split", batch_size: int = 256) -> int:
    """``batch_size``, smaller for large inputs or a language model's logits: at most
    :data:`EVAL_VALUES` input values (or logits) per evaluation batch."""
    if len(part) and not isinstance(part.x, dict):
        per = max(1, part.x[0].numel() * max(1, bundle.vocab))
        batch_size = max(1, min(batch_size, EVAL_VALUES // per))
    return batch_size


def evaluate_split(model: nn.Module, bundle: "D.DataBundle", split: str = "test",
                   batch_size: int = 256, task: tasks.Task | None = None) -> dict:
    """:func:`evaluate` on one split ('train', 'val' or 'test') of a data bundle; under torchrun
    the ranks share out whole batches and add the task's totals in batch order, so every
    rank gets exactly the single-process figures (a custom task evaluates every batch on every
    rank). Large inputs get smaller batches (at most :data:`EVAL_VALUES` input values per
    batch), so memory follows the input size."""
    task = tasks.of(task)
    part = getattr(bundle, split)
    batches = D.batches(part, bundle, eval_batch_size(bundle, part, batch_size))
    if not dist.active() or not task.width:
        return task.evaluate(model, batches)
    sums = None
    for v in dist.in_order(batches, lambda b: torch.tensor(_totals(model, b, task),
                                                            dtype=torch.float64), task.width):
        sums = v.tolist() if sums is None else [a + b for a, b in zip(sums, v.tolist())]
    if sums is None:
        raise PrunewiseError("evaluation set is empty")
    return task.from_totals(sums)


#: The most input values one evaluation batch holds (256 images of 3 x 64 x 64).
EVAL_VALUES = 256 * 3 * 64 * 64


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, *, samples: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/variance on ``batches``; return ``model``.

    After pruning, the running statistics still describe the dense network, so a pruned model
    measured with them is judged on statistics drift rather than on what was removed. This
    resets the statistics and averages them cumulatively (``momentum=None``) over forward
    passes without gradients, on at most ``samples`` images (all of ``batches`` when None).
    Only the labels-free inputs are used. The model's train/eval mode and each layer's
    momentum are restored. A model without BatchNorm is returned untouched. Under torchrun every
    rank passes all the batches and computes the same statistics as one process (a share of each
    batch would normalise with other batch statistics and end with other running ones).
    """
    norms = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not norms:
        return model
    checks.integer("recalibration samples", samples, 1, none=True)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    seen = 0
    dev = device.of(model)
    try:
        for batch in batches:
            x = device.to(batch[0] if isinstance(batch, (tuple, list)) else batch, dev)
            n = utils.batch_size(x)
            if samples is not None and seen + n > samples:
                x, n = utils.take(x, slice(0, samples - seen)), samples - seen
            if n == 0:
                break
            utils.call(model, x)
            seen += n
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
        check_shapes(masks or {}, params, "fine-tuning masks")
        self.pairs = []
        for name, m in (masks or {}).items():
            p = params[name]
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


def fit(model: nn.Module, bundle: "D.DataBundle", settings: Training | None = None, *,
        masks: dict[str, torch.Tensor] | None = None, seed: int = 0, augment: bool = True,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
        desc: str = "train", amp: str | None = None, task: tasks.Task | None = None,
        **given) -> dict:
    """Train ``model`` in place as ``settings`` (a :class:`Training`; or its fields as keywords,
    ``fit(model, bundle, epochs=20)``) say; restore the best-on-validation weights, best by the
    task's primary metric (default: classification's).

    ``masks`` keeps pruned weights exactly zero after every optimizer step (fine-tuning).
    Trains on the model's device; ``amp`` ('bf16' or 'fp16', CUDA only) runs the forward pass
    in mixed precision (fp16 with a gradient scaler). Under torchrun every rank trains the same
    DistributedDataParallel model on its share of each batch (``batch_size`` is the global
    batch) and ends with the same weights.
    Returns the history: per-epoch train loss and validation score (``val``), the best epoch
    and its score (``best_val``; with the task's older names too, :meth:`Task.named`),
    seconds.
    """
    if settings is None:
        settings = Training(**given)
    elif given:
        raise PrunewiseError(f"give fit either settings or keywords, not both "
                             f"({', '.join(sorted(given))})")
    task = tasks.of(task)
    epochs, batch_size = settings.epochs, settings.batch_size
    if batch_size < dist.world():
        raise PrunewiseError(f"batch size {batch_size} is smaller than the {dist.world()} "
                             f"processes it is split over")
    dev = device.of(model)
    device.check_amp(amp, dev)
    torch.manual_seed(seed)
    opt = make_optimizer(model, settings.optimizer, settings.lr, settings.weight_decay)
    steps_per_epoch = D.num_batches(bundle.train, batch_size, drop_last=True)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    keeper = MaskKeeper(model, masks)
    aug = bundle.augment if augment else None
    start = time.perf_counter()

    def score() -> float:
        if not len(bundle.val):
            return float("nan")
        return evaluate_split(model, bundle, "val", task=task)[task.primary]

    best = {"val": task.worst(), "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    if epochs == 0 or len(bundle.val) == 0:
        best["val"] = score()
    history = []
    bar = progress_bar(total, desc, progress)
    step = _Stepper(model, opt, sched, keeper, dev, amp, batch_size, bar, task)
    for epoch in range(1, epochs + 1):
        model.train()
        train_loss = step.epoch(D.batches(bundle.train, bundle, batch_size, shuffle=True,
                                          augment=aug, seed=seed * 100_003 + epoch,
                                          drop_last=True, shard=dist.part()))
        val = score()
        row = {"epoch": epoch, "train_loss": train_loss, **task.named("val", val),
               "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val:.3f}", refresh=False)
        if on_epoch:
            on_epoch(row)
        if task.better(val, best["val"]):
            best = {"val": val, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif settings.patience is not None and epoch - best["epoch"] >= settings.patience:
            break
    bar.close()
    model.load_state_dict(best["state"])
    keeper.apply()
    model.eval()
    return {"history": history, "best_epoch": best["epoch"],
            **task.named("best_val", best["val"]), "seconds": time.perf_counter() - start}


class _Stepper:
    """The optimizer steps of :func:`fit`: device, mixed precision, DDP and masks in one place.

    In a single process a step is exactly ``loss.backward(); keep masks; opt.step(); keep
    masks``. Under torchrun the model is wrapped in DistributedDataParallel (which averages the
    gradients over the ranks); each rank's loss is its share's summed task loss scaled by
    ``world / batch_size``, so the average is the global batch's mean loss even when the shares
    differ by one sample. BatchNorm buffers are copied from rank 0 after every epoch.
    """

    def __init__(self, model, opt, sched, keeper, dev, amp, batch_size, bar, task):
        self.model, self.opt, self.sched, self.keeper = model, opt, sched, keeper
        self.task = task
        self.dev, self.amp, self.batch_size, self.bar = dev, amp, batch_size, bar
        self.scaler = device.grad_scaler(dev, amp)
        self.net = model
        if dist.active():
            ids = [dev.index] if dev.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)

    def loss(self, x, y):
        with device.autocast(self.dev, self.amp):
            out = utils.forward(self.net, x)
        if self.amp:
            out = out.float()
        if not dist.active():
            return self.task.loss(out, (x, y))
        scale = dist.world() / self.batch_size
        return self.task.loss_sum(out, (x, y))[0] * scale

    def epoch(self, batches) -> float:
        """One pass over ``batches``; the mean training loss over every rank's samples."""
        loss_sum = seen = 0.0
        for step, (x, y) in enumerate(batches, 1):
            x, y = device.pair(x, y, self.dev)
            try:
                loss = self.loss(x, y)
            except Exception as e:  # noqa: BLE001 - the model or the data, not a bug of ours
                if out_of_memory(e):
                    raise
                raise PrunewiseError(f"the model failed on training batch {step} "
                                     f"({utils.batch_size(x)} samples): {type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:200]}") from None
            value = float(loss.detach())
            if not math.isfinite(value):
                raise PrunewiseError(f"the training loss is {value} at step {step} of an epoch "
                                     f"(after {self.bar.n} steps in all): the model's output "
                                     f"is not finite on this batch (NaN or infinite weights, "
                                     f"inputs or a learning rate too high); nothing was saved")
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.keeper.apply()
                self.opt.step()
            else:  # fp16: scaled gradients; a step with inf/NaN gradients is skipped
                self.scaler.scale(loss).backward()
                self.keeper.apply()
                self.scaler.step(self.opt)
                self.scaler.update()
            self.keeper.apply()
            self.sched.step()
            # this rank's summed loss (its loss is that sum times world / batch_size)
            loss_sum += value * (self.batch_size / dist.world() if dist.active()
                                                else len(y))
            seen += len(y)
            self.bar.update(1)
        if dist.active():
            loss_sum, seen = dist.all_reduce_sum(torch.tensor([loss_sum, seen])).tolist()
            dist.broadcast_buffers(self.model)
        return loss_sum / max(seen, 1)
