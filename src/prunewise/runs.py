"""One pruning run, written once and shared by the CLI, the demo, the bench grid and the
benchmark scripts:

    prune -> measure "pruned" -> recalibrate BatchNorm -> measure "recalibrated"
          -> fine-tune (masked for masks) -> measure "finetuned" -> report dict

>>> pruned, plan, rep = runs.run_unstructured(model, bundle, "fvw", runs.Unstructured(sparsity=0.9),
...                                           finetune=runs.FineTune(epochs=5))
>>> pruned, plan, rep = runs.run_structured(model, bundle, "sliming", runs.Structured(macs=0.5))

Pruning goes through the public method APIs only (:func:`prunewise.fvw.prune`,
:func:`prunewise.baselines.get`, :func:`prunewise.filter_baselines.prune`). The settings are small
dataclasses (:class:`Unstructured`, :class:`Structured`, :class:`FineTune`,
:class:`Recalibration`, :class:`Measurement`) and land in the report's ``config`` as they are.

Report keys (the same in every report, bench cell and demo run):

``kind``            "prune-unstructured" or "prune-structured"
``method``, ``data``, ``seed``
``budget``          the target: ``{"sparsity"}`` (masks) or ``{"macs", "params"}`` (channels)
``accuracy``        top-1 per stage: ``{"dense", "pruned", "recalibrated", "finetuned"}``, each
                    ``{"val", "test"}`` (``val`` null without a validation split);
                    ``recalibrated`` is null when recalibration is off, ``finetuned`` with 0 epochs
``sparsity``        masks: fraction of the prunable weights set to zero; channels: fraction of
                    the conv/linear weights removed
``params``, ``macs`` ``{"dense", "pruned", "ratio", "counted"}``; a masked model counts only its
                    non-zero parameters and the MACs of its non-zero weights
                    (``counted`` says which)
``latency_ms``      forward time on the run's device per batch size, ``{"1": {"dense",
                    "pruned", "speedup"}, "64": {...}}`` (null when not measured); masked
                    models keep the dense time
``finetune``        null, or ``{"epochs_run", "best_epoch", "best_val_top1", "seconds"}``
``seconds``         the whole run; ``stage_seconds``: ``{"prune", "recalibrate", "finetune"}``
``layers``          per-layer sparsity (masks) or weight shapes before/after (channels)
``history``, ``iterations`` (masks); ``counts``, ``spectra`` (channels)
``config``          the settings dataclasses, as dicts
``compute``         where it ran: ``{"device", "amp", "world"}`` (:class:`Compute`; world =
                    processes under torchrun)
"""
from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import baselines, device, dist, files, filter_baselines, fvw, masking, measure, surgery
from . import train
from . import data as D
from .errors import PrunewiseError
from .plan import MaskPlan

UNSTRUCTURED = ("fvw",) + tuple(baselines.METHODS)
STRUCTURED = tuple(filter_baselines.METHODS)
STAGES = ("dense", "pruned", "recalibrated", "finetuned")
HEAVY_KEYS = ("history", "layers", "spectra", "counts", "groups")  # dropped from bench cells


# ---- settings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FineTune:
    """Fine-tuning after pruning (masked for masks); ``epochs=0`` skips it."""
    epochs: int = 0
    lr: float = 0.01
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    batch_size: int = 64
    patience: int | None = None

    def check(self) -> None:
        _check_int("fine-tune epochs", self.epochs, 0)
        _check_int("fine-tune batch size", self.batch_size, 1)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise PrunewiseError(f"fine-tune learning rate must be > 0, got {self.lr!r}")
        if self.optimizer not in train.OPTIMIZERS:
            raise PrunewiseError(f"unknown optimizer '{self.optimizer}'; choose one of: "
                                 f"{', '.join(train.OPTIMIZERS)}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd <= 1:
            raise PrunewiseError(f"weight decay must be a number in [0, 1], got {wd!r}")


@dataclass(frozen=True)
class Compute:
    """Where a run computes. ``device``: auto, cpu, cuda, cuda:N or mps (None = wherever the
    model already is; otherwise a copy moves there, the caller's model stays put). ``amp``:
    'bf16' or 'fp16' mixed precision for training and fine-tuning, CUDA only; pruning criteria
    (FVW's attack, Taylor, CHIP, SLIMING) always compute in float32 or float64."""
    device: str | None = None
    amp: str | None = None

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on this device (itself when it is there already, else a moved copy);
        raises PrunewiseError for an unavailable device or ``amp`` off CUDA."""
        dev = device.of(model) if self.device is None else device.resolve(self.device)
        device.check_amp(self.amp, dev)
        if device.of(model) == dev:
            return model
        return copy.deepcopy(model).to(dev)

    def record(self, model: nn.Module) -> dict:
        """What the report's ``compute`` says about a run on ``model``."""
        return {"device": str(device.of(model)), "amp": self.amp, "world": dist.world()}


@dataclass(frozen=True)
class Recalibration:
    """BatchNorm recalibration on ``samples`` training images after pruning."""
    samples: int = 512
    enabled: bool = True
    batch_size: int = 128

    def check(self) -> None:
        _check_int("recalibration samples", self.samples, 1)
        _check_int("recalibration batch size", self.batch_size, 1)


@dataclass(frozen=True)
class Measurement:
    """Latency on the run's device: median of ``repeats`` forward passes per batch size
    (``latency=False``: none)."""
    latency: bool = True
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 20
    warmup: int = 3


@dataclass(frozen=True)
class Unstructured:
    """Mask pruning settings. ``samples``: attribution samples (None = all); ``alpha``,
    ``steps``, ``class_groups``, ``aggregate``, ``descent``: FVW only; ``loop_recalibrate``:
    recalibrate BatchNorm inside the iterative loop (passed on when the method supports it;
    None = the pipeline's default, :data:`LOOP_RECALIBRATE`); ``track_accuracy``: validation
    accuracy per iteration; ``exclude``: module-name patterns (``"fc"``, ``"layer3.*"``) whose
    weights stay dense (the sparsity is then that of the remaining prunable weights)."""
    sparsity: float
    keep: float = 0.98
    samples: int | None = 2048
    batch_size: int = 128
    alpha: float = 1e-8
    steps: int = 2
    class_groups: int | None = None
    aggregate: str = "union"
    descent: bool = False
    loop_recalibrate: bool | None = None
    track_accuracy: bool = True
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Structured:
    """Channel pruning settings: exactly one of ``macs`` / ``params`` (fractions kept), or
    ``plan``, the folder of a saved channel plan to apply instead of a budget."""
    macs: float | None = None
    params: float | None = None
    normalize: str = "max"
    min_channels: int = 1
    min_ratio: float = 0.0
    plan: str | None = None


def _check_int(what: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PrunewiseError(f"{what} must be an integer >= {low}, got {value!r}")


def check_unstructured(method: str, settings: Unstructured) -> None:
    """Raise PrunewiseError for an unknown method or bad settings, before any work is done."""
    if method not in UNSTRUCTURED:
        raise PrunewiseError(f"unknown method '{method}'; choose one of: {', '.join(UNSTRUCTURED)}")
    fvw.check_targets(settings.sparsity, settings.keep)
    if settings.samples is not None:
        _check_int("attribution samples", settings.samples, 1)
    _check_int("attribution batch size", settings.batch_size, 1)
    if method != "fvw":
        if settings.class_groups is not None or settings.descent:
            raise PrunewiseError(f"class groups and descent apply to method fvw only, "
                                 f"not '{method}'")
        return
    a = settings.alpha
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
        raise PrunewiseError(f"alpha must be a finite number > 0, got {a!r}")
    _check_int("attack steps", settings.steps, 1)
    if settings.class_groups is not None:
        _check_int("class groups", settings.class_groups, 1)


def check_structured(method: str, settings: Structured) -> None:
    """Raise PrunewiseError for an unknown method or a missing/double budget."""
    if method not in STRUCTURED:
        raise PrunewiseError(f"unknown method '{method}'; choose one of: {', '.join(STRUCTURED)}")
    budgets = [b for b in (settings.macs, settings.params) if b is not None]
    if settings.plan is not None:
        if budgets:
            raise PrunewiseError("a saved plan replaces the budget: drop macs / params")
        return
    if len(budgets) != 1:
        raise PrunewiseError("give exactly one budget: macs FRACTION or params FRACTION")
    if isinstance(budgets[0], bool) or not 0 < budgets[0] < 1:
        raise PrunewiseError(f"the budget must be a fraction in (0, 1), got {budgets[0]!r}")


# ---- measuring ------------------------------------------------------------------------------

def example(bundle: D.DataBundle, batch: int = 1) -> torch.Tensor:
    """A zero input batch shaped like the bundle's images."""
    return torch.zeros(batch, bundle.in_channels, bundle.image_size, bundle.image_size)


def accuracy(model: nn.Module, bundle: D.DataBundle) -> dict:
    """Top-1 on the validation split (None when it is empty) and on the test split."""
    val = train.evaluate_split(model, bundle, "val")["top1"] if len(bundle.val) else None
    return {"val": val, "test": train.evaluate_split(model, bundle, "test")["top1"]}


def nonzero_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of the non-zero conv/linear weights for one sample: every zero weight saves the
    multiply-accumulates it takes part in (equals :func:`prunewise.measure.macs` when dense)."""
    total = 0
    for row in measure.layer_table(model, x):
        w = model.get_submodule(row["name"]).weight
        total += row["macs"] // w.numel() * int(torch.count_nonzero(w))
    return int(total)


def latency(model: nn.Module, bundle: D.DataBundle, measurement: Measurement) -> dict | None:
    """Median milliseconds per forward pass on the model's device, keyed by batch size."""
    if not measurement.latency:
        return None
    return {str(b): measure.latency_ms(model, example(bundle, b), warmup=measurement.warmup,
                                       repeats=measurement.repeats)
            for b in measurement.batch_sizes}


def measure_dense(model: nn.Module, bundle: D.DataBundle,
                  measurement: Measurement = Measurement()) -> dict:
    """What every run compares against: accuracy, params, MACs and latency of the dense model.
    Compute it once and pass it as ``dense=`` to several runs on the same model."""
    x = example(bundle)
    return {"accuracy": accuracy(model, bundle), "params": measure.params(model),
            "macs": measure.macs(model, x), "latency_ms": latency(model, bundle, measurement),
            "weights": measure.sparsity(model)["total"]}


def _size(dense: dict, pruned: nn.Module, bundle: D.DataBundle, masked: bool) -> dict:
    x = example(bundle)
    p = measure.params(pruned, nonzero=masked)
    m = nonzero_macs(pruned, x) if masked else measure.macs(pruned, x)
    return {"params": {"dense": dense["params"], "pruned": p, "ratio": p / dense["params"],
                       "counted": "nonzero" if masked else "all"},
            "macs": {"dense": dense["macs"], "pruned": m, "ratio": m / max(dense["macs"], 1),
                     "counted": "nonzero weights" if masked else "all"}}


def _latency(dense: dict, pruned: nn.Module, bundle, measurement: Measurement) -> dict | None:
    after = latency(pruned, bundle, measurement)
    if after is None or dense.get("latency_ms") is None:
        return None
    return {b: {"dense": dense["latency_ms"][b], "pruned": ms,
                "speedup": dense["latency_ms"][b] / ms if ms > 0 else None}
            for b, ms in after.items() if b in dense["latency_ms"]}


# ---- the steps after pruning (shared) -------------------------------------------------------

def recalibration_batches(bundle: D.DataBundle, recalibration: Recalibration, seed: int):
    """Training images (no augmentation), shuffled by ``seed``, capped at the sample count
    (the same on every rank under torchrun)."""
    return D.batches(bundle.train, bundle, recalibration.batch_size, shuffle=True, seed=seed,
                     limit=min(recalibration.samples, len(bundle.train)))


def finish(pruned: nn.Module, bundle: D.DataBundle, *, masks: dict | None, finetune: FineTune,
           recalibration: Recalibration, seed: int = 0, progress: bool = False,
           desc: str = "fine-tune", amp: str | None = None) -> dict:
    """Measure, recalibrate BatchNorm, measure, fine-tune (masked), measure; in place on
    ``pruned``. Returns ``{"accuracy": {pruned, recalibrated, finetuned}, "finetune",
    "stage_seconds"}`` (a stage that did not run is None)."""
    acc = {"pruned": accuracy(pruned, bundle), "recalibrated": None, "finetuned": None}
    secs = {"recalibrate": 0.0, "finetune": 0.0}
    if recalibration.enabled:
        t0 = time.perf_counter()
        train.recalibrate_bn(pruned, recalibration_batches(bundle, recalibration, seed),
                             samples=recalibration.samples)
        secs["recalibrate"] = time.perf_counter() - t0
        acc["recalibrated"] = accuracy(pruned, bundle)
    hist = None
    if finetune.epochs:
        h = train.fit(pruned, bundle, epochs=finetune.epochs, lr=finetune.lr,
                      optimizer=finetune.optimizer, weight_decay=finetune.weight_decay,
                      batch_size=finetune.batch_size, masks=masks, patience=finetune.patience,
                      seed=seed, progress=progress, desc=desc, amp=amp)
        secs["finetune"] = h["seconds"]
        hist = {"epochs_run": len(h["history"]), "best_epoch": h["best_epoch"],
                "best_val_top1": h["best_val_top1"], "seconds": h["seconds"]}
        acc["finetuned"] = accuracy(pruned, bundle)
    pruned.eval()
    return {"accuracy": acc, "finetune": hist, "stage_seconds": secs}


# ---- unstructured ---------------------------------------------------------------------------

def prune_masks(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured, *,
                seed: int = 0, progress: bool = False, resume_dir: str | Path | None = None,
                levels: Sequence[float] = (), on_level: Callable | None = None) -> MaskPlan:
    """Step 1 for masks: the method's iterative pruning to ``settings.sparsity`` (stopping on
    every one of ``levels`` on the way, reported to ``on_level(level, plan)``)."""
    check_unstructured(method, settings)
    scope = check_exclude(model, settings.exclude)
    samples = settings.samples

    def attribution():
        return D.batches(bundle.train, bundle, settings.batch_size, shuffle=True, seed=seed,
                         limit=samples)

    def validation():
        return D.batches(bundle.val, bundle, 256)

    kwargs = dict(sparsity=settings.sparsity, keep=settings.keep, samples=samples, seed=seed,
                  eval_batches=validation if settings.track_accuracy and len(bundle.val) else None,
                  checkpoint_dir=resume_dir, progress=progress, levels=tuple(levels),
                  on_level=on_level, params=scope)
    if method == "fvw":
        kwargs.update(alpha=settings.alpha, steps=settings.steps,
                      class_groups=settings.class_groups, aggregate=settings.aggregate,
                      descent=settings.descent)
    fn = baselines.get(method)
    if settings.loop_recalibrate is None:
        if method in LOOP_RECALIBRATE:
            kwargs["recalibrate"] = True
    else:
        if not supports_loop_recalibration(method):
            raise PrunewiseError(f"method '{method}' cannot recalibrate BatchNorm inside its "
                                 f"loop in this version")
        kwargs["recalibrate"] = settings.loop_recalibrate
    return fn(model, attribution, **kwargs)


def check_exclude(model: nn.Module, patterns: Sequence[str]) -> masking.Scope | None:
    """The pruning scope that leaves the layers matching ``patterns`` dense (None: the default
    scope). A pattern that matches no prunable layer is an error (a typo would otherwise prune
    the layer it meant to keep), and so is one that leaves nothing to prune."""
    if not patterns:
        return None
    every = masking.Scope().names(model)
    for p in patterns:
        if not isinstance(p, str) or not p.strip():
            raise PrunewiseError(f"exclude patterns must be non-empty layer names, got {p!r}")
        if masking.Scope(exclude=[p]).names(model) == every:  # Scope's own name matching
            layers = ", ".join(n.removesuffix(".weight") for n in every)
            raise PrunewiseError(f"exclude pattern '{p}' matches no prunable layer; the prunable "
                                 f"layers are: {layers}")
    scope = masking.Scope(exclude=list(patterns))
    if not scope.names(model):
        raise PrunewiseError(f"exclude patterns {', '.join(patterns)} leave no layer to prune")
    return scope


#: Methods whose working copy the pipeline recalibrates inside the loop unless told otherwise.
#: Measured on Fashion-MNIST over three seeds (docs/methods.md, "BatchNorm recalibration"): FVW
#: gains at every sparsity, Taylor does not (its mean is higher without), OBD was measured with
#: it only. The library functions (``fvw.prune`` ...) keep ``recalibrate=False``.
LOOP_RECALIBRATE = ("fvw", "obd")


def supports_loop_recalibration(method: str) -> bool:
    """Whether the method's pruning function takes ``recalibrate=`` (BatchNorm in the loop)."""
    return "recalibrate" in inspect.signature(baselines.get(method)).parameters


def finish_masks(model: nn.Module, bundle: D.DataBundle, plan: MaskPlan, *,
                 finetune: FineTune = FineTune(), recalibration: Recalibration = Recalibration(),
                 measurement: Measurement = Measurement(), seed: int = 0,
                 progress: bool = False, dense: dict | None = None,
                 compute: Compute = Compute()) -> tuple[nn.Module, dict]:
    """Steps 2-6 for a mask plan of ``model``: the masked copy and its report (no config)."""
    start = time.perf_counter()
    model = compute.place(model)
    dense = dense or measure_dense(model, bundle, measurement)
    pruned = plan.apply(model)
    steps = finish(pruned, bundle, masks=plan.masks, finetune=finetune,
                   recalibration=recalibration, seed=seed, progress=progress,
                   desc=f"fine-tune {plan.method}", amp=compute.amp)
    settings = plan.meta.get("settings", {})
    rep = {"kind": "prune-unstructured", "method": plan.method, "data": bundle.name, "seed": seed,
           "budget": {"sparsity": settings.get("sparsity", plan.sparsity)},
           "accuracy": {"dense": dense["accuracy"], **steps["accuracy"]},
           "sparsity": plan.sparsity, **_size(dense, pruned, bundle, masked=True),
           "latency_ms": _latency(dense, pruned, bundle, measurement),
           "finetune": steps["finetune"], "stage_seconds": steps["stage_seconds"],
           "iterations": plan.meta.get("iterations"), "history": plan.meta.get("history", []),
           "layers": [{"layer": k, "sparsity": v} for k, v in plan.per_layer().items()]}
    rep["seconds"] = time.perf_counter() - start
    return pruned, rep


def _opening(model, bundle, finetune: FineTune, recalibration: Recalibration,
             measurement: Measurement, compute: Compute, dense: dict | None):
    """How both runners start, once the method's settings are checked: check the later steps'
    settings, place the model, measure the dense model (unless ``dense`` is given)."""
    finetune.check()
    recalibration.check()
    model = compute.place(model)
    return model, dense or measure_dense(model, bundle, measurement)


def run_unstructured(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured,
                     *, finetune: FineTune = FineTune(),
                     recalibration: Recalibration = Recalibration(),
                     measurement: Measurement = Measurement(), seed: int = 0,
                     progress: bool = False, dense: dict | None = None,
                     resume_dir: str | Path | None = None,
                     compute: Compute = Compute()) -> tuple[nn.Module, MaskPlan, dict]:
    """Mask pruning of ``model`` (untouched) with ``method`` (fvw, magnitude, taylor, random):
    prune, measure, recalibrate, measure, masked fine-tune, measure. Returns (masked copy, plan,
    report). ``resume_dir`` makes the pruning loop resumable; ``dense`` is a
    :func:`measure_dense` result to reuse; ``compute`` says where (and with which fine-tuning
    precision) it runs."""
    check_unstructured(method, settings)
    model, dense = _opening(model, bundle, finetune, recalibration, measurement, compute, dense)
    t0 = time.perf_counter()
    plan = prune_masks(model, bundle, method, settings, seed=seed, progress=progress,
                       resume_dir=resume_dir)
    prune_s = time.perf_counter() - t0
    pruned, rep = finish_masks(model, bundle, plan, finetune=finetune, recalibration=recalibration,
                               measurement=measurement, seed=seed, progress=progress, dense=dense,
                               compute=compute)
    rep["stage_seconds"]["prune"] = prune_s
    rep["seconds"] += prune_s
    rep["config"] = config(method, settings, finetune, recalibration, seed)
    rep["compute"] = compute.record(pruned)
    return pruned, plan, rep


# ---- structured -----------------------------------------------------------------------------

def prune_channels(model: nn.Module, bundle: D.DataBundle, method: str, settings: Structured, *,
                   seed: int = 0) -> tuple[nn.Module, surgery.ChannelPlan]:
    """Step 1 for channels: a NEW smaller model and its plan (``model`` is untouched)."""
    check_structured(method, settings)
    x = example(bundle)
    torch.manual_seed(seed)
    if settings.plan is not None:
        plan = surgery.ChannelPlan.load(settings.plan)
        return surgery.apply(model, plan, x), plan
    batches = (D.batches(bundle.train, bundle, 64, shuffle=True, seed=seed)
               if method == "chip" else None)
    return filter_baselines.prune(model, x, method, macs=settings.macs, params=settings.params,
                                  normalize=settings.normalize,
                                  min_channels=settings.min_channels,
                                  min_ratio=settings.min_ratio, batches=batches, seed=seed)


def layer_rows(before: nn.Module, after: nn.Module) -> list[dict]:
    """Per conv/linear layer: weight shape before and after pruning."""
    wb, wa = files.layer_widths(before), files.layer_widths(after)
    mods = dict(before.named_modules())
    return [{"layer": n, "before": wb[n], "after": wa.get(n, wb[n])} for n in wb
            if isinstance(mods[n], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def run_structured(model: nn.Module, bundle: D.DataBundle, method: str, settings: Structured, *,
                   finetune: FineTune = FineTune(),
                   recalibration: Recalibration = Recalibration(),
                   measurement: Measurement = Measurement(), seed: int = 0,
                   progress: bool = False, dense: dict | None = None,
                   compute: Compute = Compute()
                   ) -> tuple[nn.Module, surgery.ChannelPlan, dict]:
    """Channel pruning of ``model`` (untouched) with ``method`` (sliming, l1, random, chip,
    sliming-l1) or a saved plan: prune, measure, recalibrate, measure, fine-tune, measure.
    Returns (smaller model, channel plan, report); ``compute`` as for
    :func:`run_unstructured`."""
    check_structured(method, settings)
    model, dense = _opening(model, bundle, finetune, recalibration, measurement, compute, dense)
    start = time.perf_counter()
    pruned, plan = prune_channels(model, bundle, method, settings, seed=seed)
    prune_s = time.perf_counter() - start
    method = plan.meta.get("method", method) if settings.plan else method
    steps = finish(pruned, bundle, masks=None, finetune=finetune, recalibration=recalibration,
                   seed=seed, progress=progress, desc=f"fine-tune {method}", amp=compute.amp)
    size = _size(dense, pruned, bundle, masked=False)
    rep = {"kind": "prune-structured", "method": method, "data": bundle.name, "seed": seed,
           "budget": {"macs": settings.macs, "params": settings.params},
           "accuracy": {"dense": dense["accuracy"], **steps["accuracy"]},
           "sparsity": 1.0 - measure.sparsity(pruned)["total"] / dense["weights"], **size,
           "latency_ms": _latency(dense, pruned, bundle, measurement),
           "finetune": steps["finetune"],
           "stage_seconds": {"prune": prune_s, **steps["stage_seconds"]},
           "counts": plan.counts, "layers": layer_rows(model, pruned),
           "spectra": {k: v.tolist() for k, v in (getattr(plan, "spectra", None) or {}).items()},
           "config": config(method, settings, finetune, recalibration, seed),
           "compute": compute.record(pruned)}
    rep["seconds"] = time.perf_counter() - start
    return pruned, plan, rep


# ---- saving ---------------------------------------------------------------------------------

def config(method: str, settings, finetune: FineTune, recalibration: Recalibration,
           seed: int) -> dict:
    """The settings of a run as plain JSON (the report's ``config``)."""
    return {"method": method, "seed": seed, "prune": asdict(settings),
            "finetune": asdict(finetune), "recalibration": asdict(recalibration)}


def final_accuracy(report: dict) -> dict:
    """The accuracy of the model a run hands back: after the last stage that ran."""
    acc = report["accuracy"]
    return next(acc[s] for s in ("finetuned", "recalibrated", "pruned") if acc.get(s))


def save(out: str | Path, pruned: nn.Module, plan, report: dict, *,
         meta: dict | None = None) -> dict:
    """Write a run's plan and model into ``out``: masks as ``out/masks.safetensors`` +
    ``out/plan.json``, a channel plan in ``out/plan/``; the model in ``out/model/`` (its meta
    extends ``meta``, e.g. the dense checkpoint's, so the data set stays known). Records the
    paths in ``report`` and returns it."""
    out = Path(out)
    if isinstance(plan, MaskPlan):
        report["plan"] = str(plan.save(out))
    else:
        report["plan"] = str(plan.save(out / "plan"))
    model_meta = {**(meta or {}), "pruned": {"method": report["method"],
                                            "budget": report.get("budget"),
                                            "sparsity": report.get("sparsity")},
                  "test_accuracy": final_accuracy(report)["test"]}
    report["model"] = str(files.save_model(pruned, out / "model", meta=model_meta))
    return report


def cell(report: dict) -> dict:
    """A report without its bulky per-layer data (a bench grid cell)."""
    return {k: v for k, v in report.items() if k not in HEAVY_KEYS}
