"""One pruning run, written once and shared by the CLI, the demo, the bench grid and the
benchmark scripts:

    prune -> measure "pruned" -> repair (optional) -> measure "repaired"
          -> or recalibrate BatchNorm -> measure "recalibrated"
          -> fine-tune (masked for masks) -> measure "finetuned" -> report dict

>>> pruned, plan, rep = runs.run_unstructured(model, bundle, "fvw", runs.Unstructured(sparsity=0.9),
...                                           finetune=runs.FineTune(epochs=5))
>>> pruned, plan, rep = runs.run_structured(model, bundle, "sliming", runs.Structured(macs=0.5))

Methods are found in the method table (:mod:`prunewise.methods`) and run on the shared
engines (:func:`prunewise.masking.run`, :func:`prunewise.structured.prune`). The settings are
small frozen dataclasses, checked once when they are built (:class:`Unstructured`,
:class:`Structured`, :class:`FineTune`, :class:`Recalibration`, :class:`Measurement`,
:class:`Compute`; a method's own settings, e.g. :class:`prunewise.methods.FVWSettings`, ride in
``Unstructured(options=...)``) and land in the report's ``config`` as they are. One function
builds each kind of report: :func:`finish_masks` and :func:`finish_channels`.

Report keys (the same in every report, bench cell and demo run):

``kind``            "prune-unstructured" or "prune-structured"
``method``, ``data``, ``seed``
``budget``          the target: ``{"sparsity"}`` (masks) or ``{"macs", "params"}`` (channels)
``metric``          the task's primary metric: ``{"task", "name", "title", "higher_is_better"}``
``scores``          that metric per stage (:data:`STAGES`: ``dense``, ``pruned``, then the stage
                    table's, :mod:`prunewise.pipeline.stages`), each ``{"val", "test"}``
                    (``val`` null without a validation split; a stage that did not run is
                    null); a classification report carries the same under ``accuracy``
``sparsity``        masks: fraction of the prunable weights set to zero; channels: fraction of
                    the conv/linear weights removed
``params``, ``macs`` ``{"dense", "pruned", "ratio", "counted"}``; a masked model counts only its
                    non-zero parameters and the MACs of its non-zero weights
                    (``counted`` says which)
``latency_ms``      forward time on the run's device per batch size, ``{"1": {"dense",
                    "pruned", "speedup"}, "64": {...}}`` (null when not measured); masked
                    models keep the dense time and get no speed-up (null); a smaller model is
                    timed alternating with the dense one in one window and adds ``ratio``
                    (pruned / dense, median of the pairs) and ``spread`` (its quartiles)
``finetune``        null, or ``{"epochs_run", "best_epoch", "best_val", "seconds"}``
``seconds``         the time that made this model: pruning, repair, recalibration, fine-tuning and
                    measuring it (measuring the dense model is not counted); ``stage_seconds``:
                    ``{"prune", "repair", "recalibrate", "finetune"}`` (a bench level's
                    ``prune`` is the time its pruning run took to reach that level)
``layers``          per-layer sparsity (masks) or weight shapes before/after (channels)
``history``, ``iterations`` (masks); ``counts``, ``spectra`` (channels)
``config``          the settings dataclasses, as dicts
``compute``         where it ran: ``{"device", "amp", "world"}`` (:class:`Compute`; world =
                    processes under torchrun)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .. import checkpoints, device, measure, methods, tasks, train, utils
from ..unstructured import engine as masking, layer_errors
from ..structured import engine as structured, group_errors, surgery
from .. import data as D
from ..errors import BelowFloor, PrunewiseError
from ..plan import ChannelPlan, MaskPlan
from ..structured.sliming.spectrum import singular_values
from ..settings import (Compute, FineTune, Measurement, Recalibration, Repair, Structured,
                        Unstructured)
from .stages import (STAGE_TITLES, STAGES, Steps, Work, accuracy, calibration_batches, finish,
                     scores, stage_scores, steps_of)

__all__ = ["STAGES", "STAGE_TITLES", "Compute", "FineTune", "Measurement", "Recalibration",
           "Repair", "Steps", "Unstructured", "Structured", "accuracy", "scores",
           "stage_scores", "calibration_batches", "run_unstructured", "run_structured",
           "prune_levels", "prune_masks", "prune_channels", "channel_plan", "finish_masks",
           "finish_channels", "measure_dense", "save", "cell", "check_task"]
HEAVY_KEYS = ("history", "layers", "spectra", "counts", "groups")  # dropped from bench cells
#: Validation samples the per-iteration metric (``track_accuracy``) is measured on.
TRACK_SAMPLES = 1024


# ---- settings -------------------------------------------------------------------------------

def check_unstructured(method: str, settings: Unstructured) -> methods.Method:
    """The table row of mask method ``method``, after checking that ``settings.options`` are
    its settings (PrunewiseError otherwise): the check that needs both, before any work."""
    row = methods.get(method, methods.UNSTRUCTURED)
    row.options(settings.options)
    return row


def check_structured(method: str, settings: Structured) -> methods.Method:
    """The table row of channel method ``method``, after checking that ``settings.options``
    are its settings (PrunewiseError otherwise)."""
    row = methods.get(method, methods.STRUCTURED)
    row.options(settings.options)
    return row


# ---- measuring ------------------------------------------------------------------------------

def check_task(model: nn.Module, bundle: D.DataBundle, task: tasks.Task) -> None:
    """Refuse, before any pruning, a task that does not fit ``model`` and ``bundle``: its loss
    on a first training batch must be a finite scalar, every split's targets in range, and a
    custom task's metrics numbers (PrunewiseError naming the task)."""
    batch = next(iter(D.batches(bundle.train, bundle, 8)), None)
    if batch is None:
        raise PrunewiseError(f"data set '{bundle.name}' has no training samples")
    width = task.check(model, batch)
    for split in (bundle.train, bundle.val, bundle.test):
        if len(split):
            task.check_targets(split.y, width)


def nonzero_macs(model: nn.Module, x) -> int:
    """MACs for one sample with every zero weight's multiply-accumulates saved: each weight
    matrix's share of a layer's MACs scales with its non-zero fraction; attention's products
    stay (equals :func:`prunewise.measure.macs` when dense)."""
    named = dict(model.named_parameters(remove_duplicate=False))   # tied weights by each name
    total = 0
    for row in measure.layer_table(model, x):
        saved = 0
        for name, share in row["weights"].items():
            w = named[name]
            saved += share - share // w.numel() * int(torch.count_nonzero(w))
        total += row["macs"] - saved
    return int(total)


def latency(model: nn.Module, bundle: D.DataBundle, measurement: Measurement) -> dict | None:
    """Median milliseconds per forward pass on the model's device, keyed by batch size."""
    if not measurement.latency:
        return None
    return {str(b): measure.latency_ms(model, bundle.example(b), warmup=measurement.warmup,
                                       repeats=measurement.repeats)
            for b in measurement.batch_sizes}


def measure_dense(model: nn.Module, bundle: D.DataBundle,
                  measurement: Measurement = Measurement(), task: tasks.Task | None = None
                  ) -> dict:
    """What every run compares against: the task's scores, params, MACs and latency of the
    dense model. Compute it once and pass it as ``dense=`` to several runs on the same model."""
    x = bundle.example()
    task = tasks.of(task)
    check_finite_output(model, bundle)
    got = scores(model, bundle, task)
    bad = [k for k, v in got.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise PrunewiseError(f"the dense model's {task.primary} on the {bundle.name} {bad[0]} "
                             f"data is {got[bad[0]]}: its output is not finite there (NaN or "
                             f"infinite); nothing to compare a pruned model with")
    return {**task.keyed(got), "params": measure.params(model),
            "macs": measure.macs(model, x), "latency_ms": latency(model, bundle, measurement),
            "weights": measure.sparsity(model)["total"], "sample": task.show(model, bundle)}


def check_finite_output(model: nn.Module, bundle: D.DataBundle, samples: int = 16) -> None:
    """Refuse a model whose output on the first test samples is not finite (NaN or infinite):
    every score, attribution and repair of it would be meaningless."""
    x, _ = next(iter(D.batches(bundle.test, bundle, samples)), (None, None))
    if x is None:
        return
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = utils.forward(model, device.to(x, device.of(model)))
    finally:
        model.train(was)
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise PrunewiseError(f"the model's output on the first {bundle.name} test samples is not "
                             f"finite (NaN or infinite): fix the model or its weights before "
                             f"pruning")


def sample(dense: dict, pruned: nn.Module, bundle: D.DataBundle, task: tasks.Task) -> dict:
    """``{"sample": {"prompt", "dense", "pruned"}}`` when the task shows one (a language
    model's greedy continuation), else nothing."""
    before, after = dense.get("sample"), task.show(pruned, bundle)
    if not before or not after:
        return {}
    return {"sample": {"prompt": before["prompt"], "dense": before["continuation"],
                       "pruned": after["continuation"]}}


def _size(dense: dict, pruned: nn.Module, bundle: D.DataBundle, masked: bool) -> dict:
    x = bundle.example()
    p = measure.params(pruned, nonzero=masked)
    m = nonzero_macs(pruned, x) if masked else measure.macs(pruned, x)
    return {"params": {"dense": dense["params"], "pruned": p, "ratio": p / dense["params"],
                       "counted": "nonzero" if masked else "all"},
            "macs": {"dense": dense["macs"], "pruned": m, "ratio": m / max(dense["macs"], 1),
                     "counted": "nonzero weights" if masked else "all"}}


def _latency(dense: dict, pruned: nn.Module, bundle, measurement: Measurement,
             masked: bool, model: nn.Module | None = None) -> dict | None:
    """Dense and pruned milliseconds per batch size, and the speed-up of a smaller model. A
    masked model runs the dense kernels: its time differs from the dense one by noise only, so
    it gets no speed-up (None), never a figure a reader could take for one. A smaller model is
    timed with the dense ``model`` in one window, their passes alternating
    (:func:`prunewise.measure.paired_latency`): the ratio then holds when the machine's load
    changes; ``ratio`` is pruned / dense (median of the pairs), ``spread`` its quartiles."""
    if not measurement.latency or dense.get("latency_ms") is None:
        return None
    if masked or model is None:
        after = latency(pruned, bundle, measurement)
        return {b: {"dense": dense["latency_ms"][b], "pruned": ms, "speedup": None}
                for b, ms in after.items() if b in dense["latency_ms"]}
    out = {}
    for b in measurement.batch_sizes:
        got = measure.paired_latency(model, pruned, bundle.example(b),
                                     warmup=measurement.warmup, repeats=measurement.repeats)
        ratio = got["ratio"]
        out[str(b)] = {"dense": got["first"], "pruned": got["second"], "ratio": ratio,
                       "spread": got["spread"],
                       "speedup": 1.0 / ratio if ratio else None}
    return out


# ---- the steps after pruning (shared) -------------------------------------------------------

def decided(settings, steps: Steps):
    """``settings`` (:class:`Unstructured` / :class:`Structured`, or None) with the repair
    choice made for a run with ``steps``' fine-tuning (:meth:`Repair.for_run`): what the run
    does and what its report records."""
    if settings is None:
        return None
    return replace(settings, repair=settings.repair.for_run(steps.finetune))


# ---- unstructured ---------------------------------------------------------------------------

def prune_masks(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured, *,
                seed: int = 0, progress: bool = False, resume_dir: str | Path | None = None,
                levels: Sequence[float] = (), on_level: Callable | None = None,
                task: tasks.Task | None = None) -> MaskPlan:
    """Step 1 for masks: the method's iterative pruning to ``settings.sparsity`` (stopping on
    every one of ``levels`` on the way, reported to ``on_level(level, plan)``)."""
    plan = None
    for level, plan in mask_stops(model, bundle, method, settings, seed=seed,
                                  progress=progress, resume_dir=resume_dir, levels=levels,
                                  task=task):
        if level is not None and on_level is not None:
            on_level(level, plan)
    return plan


def mask_stops(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured, *,
               seed: int = 0, progress: bool = False, resume_dir: str | Path | None = None,
               levels: Sequence[float] = (), task: tasks.Task | None = None):
    """:func:`prune_masks` as a generator (:func:`prunewise.masking.stops`): ``(level, plan)``
    at every level and the target, then ``(None, final plan)``."""
    row = check_unstructured(method, settings)
    options = row.options(settings.options)
    scope = check_exclude(model, settings.exclude, settings.embeddings)

    def attribution():
        return D.batches(bundle.train, bundle, settings.batch_size, shuffle=True, seed=seed,
                         limit=settings.samples)

    def validation():   # a bounded subset: it is measured after every iteration
        return D.batches(bundle.val, bundle, train.eval_batch_size(bundle, bundle.val),
                         limit=min(TRACK_SAMPLES, len(bundle.val)))

    recalibrate = settings.loop_recalibrate
    allocation = row.allocation if settings.allocation is None else settings.allocation
    loop = masking.LoopSettings(
        sparsity=settings.sparsity, keep=keep_of(row, settings), samples=settings.samples,
        params=scope, levels=tuple(levels), checkpoint_dir=resume_dir, seed=seed,
        eval_batches=validation if settings.track_accuracy and len(bundle.val) else None,
        progress=progress, recalibrate=row.loop_recalibrate if recalibrate is None else recalibrate,
        recalibrate_samples=settings.recalibrate_samples,
        allocation=allocation,
        task=task, nm=settings.nm, repair=settings.loop_repair,
        errors=layer_errors.measure if allocation == "errors" else None)
    return masking.stops(model, attribution, row.builder()(options, seed), loop, method=method,
                         settings=asdict(options), needs_data=row.needs_data)


def keep_of(row: methods.Method, settings: Unstructured) -> float:
    """The per-iteration keep a run uses: the one asked for, or the method's default (one
    iteration to the target for a one-shot method, 0.98 otherwise)."""
    if settings.nm is not None:   # N:M masks: one shot
        return 1.0 - settings.sparsity
    if settings.keep is not None:
        return settings.keep
    return 1.0 - settings.sparsity if row.one_shot and settings.sparsity > 0 else 0.98


def check_exclude(model: nn.Module, patterns: Sequence[str], embeddings: bool = False
                  ) -> masking.Scope | None:
    """The pruning scope that leaves the layers matching ``patterns`` dense and prunes
    embeddings when ``embeddings`` (None: the default scope). A pattern that matches no
    prunable layer is an error (a typo would otherwise prune the layer it meant to keep), and
    so is one that leaves nothing to prune."""
    if not patterns and not embeddings:
        return None
    every = masking.Scope(embeddings=embeddings).names(model)
    for p in patterns:
        if masking.Scope(exclude=[p], embeddings=embeddings).names(model) == every:
            layers = ", ".join(sorted({n.rpartition(".")[0] or n for n in every}))
            raise PrunewiseError(f"exclude pattern '{p}' matches no prunable layer; the prunable "
                                 f"layers are: {layers}")
    scope = masking.Scope(exclude=list(patterns), embeddings=embeddings)
    if not scope.names(model):
        raise PrunewiseError(f"exclude patterns {', '.join(patterns)} leave no layer to prune")
    return scope


def finish_masks(model: nn.Module, bundle: D.DataBundle, plan: MaskPlan, *,
                 steps: Steps = Steps(), dense: dict | None = None, target: float | None = None,
                 prune_seconds: float = 0.0, settings: Unstructured | None = None
                 ) -> tuple[nn.Module, dict]:
    """Steps 2-6 for a mask plan of ``model``: the masked copy and its complete report (the one
    function that builds a mask report). ``target``: the sparsity asked for (default: the
    plan's); ``prune_seconds``: what making the plan took; ``settings``: recorded in
    ``config``."""
    model = steps.compute.place(model)
    dense = dense or measure_dense(model, bundle, steps.measurement, steps.task)
    start = time.perf_counter()
    pruned = plan.apply(model)
    settings = decided(settings, steps)
    after = finish(Work(pruned, model, bundle, plan.masks, None,
                        settings.repair if settings is not None else Repair(), steps,
                        desc=f"fine-tune {plan.method}"))
    rep = {"kind": "prune-unstructured", "method": plan.method, "data": bundle.name,
           "seed": steps.seed, "budget": {"sparsity": plan.sparsity if target is None else target},
           "metric": steps.task.describe(),
           **steps.task.keyed({"dense": stage_scores(dense), **after["scores"]}),
           "sparsity": plan.sparsity, **_size(dense, pruned, bundle, masked=True),
           "latency_ms": _latency(dense, pruned, bundle, steps.measurement, masked=True),
           **{k: v for k, v in after.items() if k not in ("scores", "stage_seconds")},
           "stage_seconds": {"prune": prune_seconds, **after["stage_seconds"]},
           "iterations": plan.meta.get("iterations"), "history": plan.meta.get("history", []),
           "layers": [{"layer": k, "sparsity": v} for k, v in plan.per_layer().items()],
           "left_out": masking.left_out(model, plan.masks, check_exclude(
               model, settings.exclude, settings.embeddings) if settings is not None else None),
           "config": config(plan.method, settings, steps) if settings is not None else None,
           "compute": steps.compute.record(pruned),
           **sample(dense, pruned, bundle, steps.task)}
    rep["seconds"] = prune_seconds + time.perf_counter() - start
    return pruned, rep


def prune_levels(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured,
                 on_report: Callable, *, levels: Sequence[float] = (), steps: Steps = Steps(),
                 dense: dict | None = None, want: Callable[[float], bool] | None = None,
                 resume_dir: str | Path | None = None) -> MaskPlan:
    """One pruning run to ``settings.sparsity`` that stops on every one of ``levels``, finishes
    the masked model there (the stages of :data:`prunewise.stages.TABLE`, measured) and hands
    its complete report to ``on_report(level, pruned, plan, report)``; the target itself is
    always reported. ``want`` skips a level (a bench cell already on disk). Every level's
    ``prune`` seconds are the time the run took to reach it (finishing earlier levels not
    counted). Returns the final plan."""
    check_unstructured(method, settings)
    settings, steps = within_data(settings, steps, bundle)
    model = steps.compute.place(model)
    check_task(model, bundle, steps.task)
    start, other, done = time.perf_counter(), 0.0, set()
    final = None
    for level, plan in mask_stops(model, bundle, method, settings, seed=steps.seed,
                                  progress=steps.progress, resume_dir=resume_dir, levels=levels,
                                  task=steps.task):
        if level is None:   # the loop is over; a run resumed after its last iteration
            final, level = plan, settings.sparsity   # reports its target here
        if level in done or (want is not None and not want(level)):
            continue
        t0 = time.perf_counter()
        dense = dense or measure_dense(model, bundle, steps.measurement, steps.task)
        pruned, rep = finish_masks(model, bundle, plan, steps=steps, dense=dense, target=level,
                                   prune_seconds=t0 - start - other,
                                   settings=replace(settings, sparsity=level))
        done.add(level)
        other += time.perf_counter() - t0
        on_report(level, pruned, plan, rep)
    return final


def run_unstructured(model: nn.Module, bundle: D.DataBundle, method: str, settings: Unstructured,
                     *, dense: dict | None = None, resume_dir: str | Path | None = None,
                     steps: Steps | None = None, **given) -> tuple[nn.Module, MaskPlan, dict]:
    """Mask pruning of ``model`` (untouched) with ``method`` (a name from
    ``prunewise.methods.names("unstructured")``): prune, measure, recalibrate, measure, masked
    fine-tune, measure. Returns (masked copy, plan, report). What follows pruning is ``steps``
    (:class:`Steps`), or its fields as keywords: ``finetune``, ``recalibration``,
    ``measurement``, ``compute`` (where, and with which fine-tuning precision, it runs),
    ``seed``, ``progress`` and ``task`` (what the model is for, :mod:`prunewise.tasks`;
    default classification). ``resume_dir`` makes the pruning loop resumable; ``dense`` is a
    :func:`measure_dense` result to reuse."""
    got: dict = {}
    prune_levels(model, bundle, method, settings,
                 lambda level, pruned, plan, rep: got.update(out=(pruned, plan, rep)),
                 steps=steps_of(steps, given), dense=dense, resume_dir=resume_dir)
    return got["out"]


# ---- structured -----------------------------------------------------------------------------

def prune_channels(model: nn.Module, bundle: D.DataBundle, method: str, settings: Structured, *,
                   seed: int = 0) -> tuple[nn.Module, ChannelPlan]:
    """Step 1 for channels: a NEW smaller model and its plan (``model`` is untouched)."""
    row = check_structured(method, settings)
    batches = (D.batches(bundle.train, bundle, 64, shuffle=True, seed=seed)
               if row.needs_data or settings.allocation == "errors" else None)
    return channel_plan(model, bundle.example(), method, settings, batches=batches, seed=seed)


def channel_plan(model: nn.Module, x: torch.Tensor, method: str, settings: Structured, *,
                 batches=None, seed: int = 0, latency_table=None) -> tuple[nn.Module, ChannelPlan]:
    """Any structured method of the table on any model: a NEW smaller model and its plan for
    the example input ``x`` (``batches``, ``(x, y)`` pairs, for methods that need data; a
    saved ``settings.plan`` is applied instead)."""
    row = check_structured(method, settings)
    torch.manual_seed(seed)
    if settings.plan is not None:
        plan = ChannelPlan.load(settings.plan)
        return surgery.apply(model, plan, x), plan
    if settings.latency is not None and latency_table is None:
        return latency_plan(model, x, method, settings, batches=batches, seed=seed)
    options = row.options(settings.options)
    configure, select = row.builder()(options, settings, batches, seed)
    meta = {"method": method, "budget": {"macs": settings.macs, "params": settings.params},
            "min_channels": settings.min_channels, **asdict(options)}
    if settings.allocation == "errors":   # the method's selection, measured counts
        configure = group_errors.configure(settings, select, batches, singular_values)
        meta["allocation"] = "errors"
    if settings.round_to:
        meta["round_to"] = settings.round_to
    return structured.prune(model, x, configure, select, spectrum=singular_values, meta=meta,
                            ignored_layers=excluded_layers(model, settings.exclude),
                            latency_table=latency_table)


#: Timed pairs of passes per candidate of a latency search (after two untimed ones).
LATENCY_REPEATS = 9
#: Prunes a latency search may make.
LATENCY_STEPS = 6
#: A candidate this close under the requested latency ratio ends the search.
LATENCY_TOLERANCE = 0.03


def latency_plan(model: nn.Module, x, method: str, settings: Structured, *, batches=None,
                 seed: int = 0) -> tuple[nn.Module, ChannelPlan]:
    """``method`` under a budget of latency on this machine (docs/methods.md, "Latency
    budgets"): the device's latency table (:mod:`prunewise.structured.latency`, measured once
    and cached) prices every configuration, so the method's own configuration step (the
    uniform ratio, SLIMING's threshold, measured group errors) searches under predicted
    latency as it does under MACs; the pruned model is then timed against ``model`` in one
    window (:func:`prunewise.measure.paired_latency`) at batch size
    ``settings.latency_batch``, and the predicted budget corrected by what was measured until
    the measured ratio is within :data:`LATENCY_TOLERANCE` under ``settings.latency`` (at most
    :data:`LATENCY_STEPS` prunes). The plan records the table and every candidate."""
    from ..structured import latency

    target, batch = settings.latency, settings.latency_batch
    folder = Path(settings.latency_cache) if settings.latency_cache else latency.default_folder()
    table, reused = latency.cached(model, x, batch, folder)
    latency.check_table(table)
    xb = utils.repeat_batch(x, batch)
    tried: list[dict] = []
    best, low, high = None, 0.0, 1.0   # asked budgets known to fit / not to fit
    asked, floor = target, None
    for _ in range(LATENCY_STEPS):
        try:
            small, plan = channel_plan(model, x, method, replace(settings, latency=asked),
                                       batches=batches, seed=seed, latency_table=table)
        except BelowFloor as e:
            floor = e.floor
            break   # even the floors are predicted slower than asked: nothing smaller exists
        got = measure.paired_latency(model, small, xb, warmup=2, repeats=LATENCY_REPEATS)
        ratio = got["ratio"]
        predicted = plan.meta["predicted_latency_ms"] / plan.meta["original_latency_ms"]
        tried.append({"asked": asked, "predicted": predicted, "ratio": ratio,
                      "spread": got["spread"], "macs": plan.meta["predicted_macs"] /
                      plan.meta["original_macs"]})
        if ratio <= target and (best is None or ratio > best[0]):
            best = (ratio, small, plan)
        if target - LATENCY_TOLERANCE <= ratio <= target:
            break
        if ratio <= target:
            low = max(low, asked)
        else:
            high = min(high, asked)
        nxt = min(0.999, asked * target / ratio)   # the prediction's error, corrected
        if not low < nxt < high:   # widths come in steps: bisect what is left between them
            nxt = 0.5 * (low + high)
        if high - low < 0.005:
            break
        asked = nxt
    if best is None:
        floors = "" if floor is None else \
            f"; the smallest widths allowed are predicted at {floor:.4f} of dense"
        raise PrunewiseError(f"latency budget {target:g} at batch {batch} cannot be reached on "
                             f"this machine: {_tried(tried) or 'nothing was measured'}{floors}")
    _, small, plan = best
    plan.meta["budget"] = {"latency": target, "latency_batch": batch}
    plan.meta["latency_search"] = tried
    plan.meta["latency_table"] = {"key": table.key, "seconds": table.seconds, "reused": reused,
                                  "layers": len(table.layers), "dense_ms": table.dense_ms}
    return small, plan


def _tried(tried: list[dict]) -> str:
    return ", ".join(f"predicted {t['predicted']:.2f} ran {t['ratio']:.2f} of dense"
                     for t in tried)


def kept_whole(plan: ChannelPlan) -> list[dict]:
    """The groups a channel plan left whole, with the reason (a plan read from a file may
    say anything there: only names and reasons that are text are shown)."""
    groups = plan.meta.get("groups")
    skipped = groups.get("skipped") if isinstance(groups, dict) else None
    if not isinstance(skipped, dict):
        return []
    return [{"layer": k, "reason": v} for k, v in skipped.items() if isinstance(v, str)]


def _latency_budget(plan: ChannelPlan, settings: Structured, timed: dict | None,
                    pruned: nn.Module, bundle: D.DataBundle, model: nn.Module) -> dict:
    """A latency-budgeted run's ``latency_budget``: what was asked, at which batch size, and
    the pruned / dense ratio measured now (the two timed in one window, with its quartiles:
    the report's ``latency_ms`` at that batch size when it has it, ``timed``, else
    :data:`LATENCY_REPEATS` x 3 pairs); nothing for other budgets."""
    if settings.latency is None:
        return {}
    batch = settings.latency_batch
    got = (timed or {}).get(str(batch)) or {}
    if got.get("ratio") is not None:
        got = {"ratio": got["ratio"], "spread": got["spread"]}
    else:
        got = measure.paired_latency(model, pruned, utils.repeat_batch(bundle.example(), batch),
                                     warmup=2, repeats=3 * LATENCY_REPEATS)
    return {"latency_budget": {"requested": settings.latency, "batch": batch,
                               "measured": got["ratio"], "spread": got["spread"],
                               "predicted": plan.meta.get("predicted_latency_ms", 0) /
                               max(plan.meta.get("original_latency_ms", 0), 1e-12),
                               "table": plan.meta.get("latency_table"),
                               "search": plan.meta.get("latency_search")}}


def excluded_layers(model: nn.Module, patterns: Sequence[str]) -> list[nn.Module]:
    """The layers (conv, linear, LSTM) whose names match one of ``patterns``; a pattern that
    matches none is an error naming the layers there are."""
    import fnmatch

    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, surgery.ROOTS)]
    out = []
    for p in patterns:
        hit = [m for n, m in candidates if fnmatch.fnmatchcase(n, p)]
        if not hit:
            raise PrunewiseError(f"exclude pattern '{p}' matches no layer; the layers are: "
                                 f"{', '.join(n for n, _ in candidates[:40])}")
        out += [m for m in hit if m not in out]
    return out


def layer_rows(before: nn.Module, after: nn.Module) -> list[dict]:
    """Per conv/linear layer: weight shape before and after pruning."""
    wb, wa = checkpoints.layer_widths(before), checkpoints.layer_widths(after)
    mods = dict(before.named_modules())
    return [{"layer": n, "before": wb[n], "after": wa.get(n, wb[n])} for n in wb
            if isinstance(mods[n], masking.PRUNABLE_TYPES)]


def finish_channels(model: nn.Module, bundle: D.DataBundle, pruned: nn.Module,
                    plan: ChannelPlan, settings: Structured, *, steps: Steps = Steps(),
                    dense: dict | None = None, prune_seconds: float = 0.0
                    ) -> tuple[nn.Module, dict]:
    """Steps 2-6 for the smaller model ``pruned`` cut from ``model`` by ``plan``: its complete
    report (the one function that builds a channel report); ``pruned`` is finished in place."""
    dense = dense or measure_dense(model, bundle, steps.measurement, steps.task)
    start = time.perf_counter()
    method = plan.meta.get("method", "plan")
    settings = decided(settings, steps)
    after = finish(Work(pruned, model, bundle, None, plan, settings.repair, steps,
                        desc=f"fine-tune {method}"))
    timed = _latency(dense, pruned, bundle, steps.measurement, masked=False, model=model)
    rep = {"kind": "prune-structured", "method": method, "data": bundle.name, "seed": steps.seed,
           "budget": {"macs": settings.macs, "params": settings.params,
                      **({"latency": settings.latency} if settings.latency else {})},
           "metric": steps.task.describe(),
           **steps.task.keyed({"dense": stage_scores(dense), **after["scores"]}),
           "sparsity": 1.0 - measure.sparsity(pruned)["total"] / dense["weights"],
           **_size(dense, pruned, bundle, masked=False),
           "latency_ms": timed,
           **{k: v for k, v in after.items() if k not in ("scores", "stage_seconds")},
           "stage_seconds": {"prune": prune_seconds, **after["stage_seconds"]},
           "counts": plan.counts, "layers": layer_rows(model, pruned),
           "spectra": {k: v.tolist() for k, v in (getattr(plan, "spectra", None) or {}).items()},
           "config": config(method, settings, steps), "compute": steps.compute.record(pruned),
           **_latency_budget(plan, settings, timed, pruned, bundle, model),
           "left_out": kept_whole(plan),
           **sample(dense, pruned, bundle, steps.task)}
    rep["seconds"] = prune_seconds + time.perf_counter() - start
    return pruned, rep


def run_structured(model: nn.Module, bundle: D.DataBundle, method: str, settings: Structured, *,
                   dense: dict | None = None, steps: Steps | None = None, **given
                   ) -> tuple[nn.Module, ChannelPlan, dict]:
    """Channel pruning of ``model`` (untouched) with ``method`` (a name from
    ``prunewise.methods.names("structured")``) or a saved plan: prune, measure, recalibrate,
    measure, fine-tune, measure. Returns (smaller model, channel plan, report); ``steps`` or
    its fields as keywords (``task=`` among them) as for :func:`run_unstructured`."""
    check_structured(method, settings)
    settings, steps = within_data(settings, steps_of(steps, given), bundle)
    model = steps.compute.place(model)
    check_task(model, bundle, steps.task)
    start = time.perf_counter()
    pruned, plan = prune_channels(model, bundle, method, settings, seed=steps.seed)
    plan.meta.setdefault("method", method)
    prune_seconds = time.perf_counter() - start  # before measuring: a bad budget fails first
    dense = dense or measure_dense(model, bundle, steps.measurement, steps.task)
    pruned, rep = finish_channels(model, bundle, pruned, plan, settings, steps=steps,
                                  dense=dense, prune_seconds=prune_seconds)
    return pruned, plan, rep


def within_data(settings: Unstructured | Structured, steps: Steps, bundle: D.DataBundle
                ) -> tuple[Unstructured | Structured, Steps]:
    """``settings`` and ``steps`` with every count of training samples (attribution, in-loop
    recalibration, repair, recalibration) capped at the training split's size: what a run
    uses, so that its report records that and not a larger number asked for."""
    n = len(bundle.train)
    if n < 1:
        return settings, steps

    def cap(v):
        return v if v is None or v <= n else n
    kw = {"repair": replace(settings.repair, samples=cap(settings.repair.samples))}
    if isinstance(settings, Unstructured):
        kw.update(samples=cap(settings.samples),
                  recalibrate_samples=cap(settings.recalibrate_samples))
    recal = replace(steps.recalibration, samples=cap(steps.recalibration.samples))
    return replace(settings, **kw), replace(steps, recalibration=recal)


# ---- saving ---------------------------------------------------------------------------------

def config(method: str, settings, steps: Steps) -> dict:
    """The settings of a run as plain JSON (the report's ``config``)."""
    return {"method": method, "seed": steps.seed, "prune": asdict(settings),
            "finetune": asdict(steps.finetune), "recalibration": asdict(steps.recalibration),
            "task": steps.task.name}


def final_scores(report: dict) -> dict:
    """The scores of the model a run hands back: after the last stage that ran."""
    acc = stage_scores(report)
    return next(acc[s] for s in reversed(STAGES[1:]) if acc.get(s))


def final_accuracy(report: dict) -> dict:
    """:func:`final_scores` (the name from before tasks, for classification reports)."""
    return final_scores(report)


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
                  **final_meta(report)}
    report["model"] = str(checkpoints.save_model(pruned, out / "model", meta=model_meta))
    return report


def final_meta(report: dict) -> dict:
    """What a pruned checkpoint's meta says of its quality: ``test_accuracy`` for a
    classifier, else ``test_score`` and the metric it is."""
    return tasks.checkpoint_quality(report.get("metric"), final_scores(report)["test"])


def cell(report: dict) -> dict:
    """A report without its bulky per-layer data (a bench grid cell)."""
    return {k: v for k, v in report.items() if k not in HEAVY_KEYS}
