"""The stages that follow pruning, declared once in :data:`TABLE`.

A pruned model is finished stage by stage, in the table's order: repair (a layer-wise refit to
the dense model), BatchNorm recalibration, fine-tuning; after each stage that runs the model is
measured with the task's primary metric. A row (:class:`Stage`) names the stage's report key,
its title in tables, its ``stage_seconds`` key, the function that runs it and, where the
stage records more than a score, the report key of that record. Reports, report.md, the report
schema, bench tables and the command line's score line all follow the table
(docs/architecture.md, "How to add a stage").

The settings of the stages are declared once in :mod:`prunewise.settings` (:class:`Repair`,
:class:`Recalibration`, :class:`FineTune`, :class:`Measurement`, :class:`Compute`);
:class:`Steps` carries them through a run, with the seed, progress bars and the task
(:mod:`prunewise.tasks`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .. import repair, tasks, train
from .. import data as D
from ..errors import PrunewiseError
from ..plan import ChannelPlan
from ..settings import Compute, FineTune, Measurement, Recalibration, Repair


# ---- measuring ------------------------------------------------------------------------------

def scores(model: nn.Module, bundle: D.DataBundle, task: tasks.Task | None = None) -> dict:
    """The task's primary metric (default: top-1) on the validation split (None when it is
    empty) and on the test split."""
    task = tasks.of(task)

    def one(split):
        return train.evaluate_split(model, bundle, split, task=task)[task.primary]
    return {"val": one("val") if len(bundle.val) else None, "test": one("test")}


def accuracy(model: nn.Module, bundle: D.DataBundle) -> dict:
    """Top-1 on the validation and test splits (:func:`scores` of the classification task)."""
    return scores(model, bundle)


def stage_scores(report: dict) -> dict:
    """A report's (or dense measure's) scores per stage: ``scores``, or ``accuracy`` in one
    written before tasks."""
    got = report.get("scores")
    return got if got is not None else report["accuracy"]


@dataclass(frozen=True)
class Steps:
    """What follows pruning and where it runs: recalibration, fine-tuning, measurement, the
    device (:class:`Compute`), the seed of every shuffled order, and progress bars."""
    finetune: FineTune = FineTune()
    recalibration: Recalibration = Recalibration()
    measurement: Measurement = Measurement()
    compute: Compute = Compute()
    seed: int = 0
    progress: bool = False
    task: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", tasks.of(self.task))


def steps_of(steps: Steps | None, given: dict) -> Steps:
    """``steps``, or a :class:`Steps` built from its fields given as keywords (``finetune=``,
    ``seed=``, ``task=`` ...): the keyword form of the run functions."""
    if steps is None:
        try:
            return Steps(**given)
        except TypeError as e:
            raise PrunewiseError(f"bad run keyword: {e}") from None
    if given:
        raise PrunewiseError(f"give either steps or its fields ({', '.join(sorted(given))}), "
                             f"not both")
    return steps


def calibration_batches(bundle: D.DataBundle, settings: Recalibration | Repair, seed: int):
    """What recalibration and repair run on: training images (no augmentation), shuffled by
    ``seed``, capped at ``settings.samples``, in batches of ``settings.batch_size`` (the same
    on every rank under torchrun)."""
    return D.batches(bundle.train, bundle, settings.batch_size, shuffle=True, seed=seed,
                     limit=min(settings.samples, len(bundle.train)))


# ---- the table ------------------------------------------------------------------------------

@dataclass
class Work:
    """What a stage works on: the ``pruned`` model (finished in place), the ``dense`` model it
    was cut from, the data, its ``masks`` (a masked model) or channel ``plan`` (a smaller one),
    the run's repair settings and :class:`Steps`, and the stages that already ran."""
    pruned: nn.Module
    dense: nn.Module | None
    bundle: D.DataBundle
    masks: dict | None
    plan: ChannelPlan | None
    repair: Repair
    steps: Steps
    desc: str = "fine-tune"
    done: list = field(default_factory=list)


def run_repair(work: Work) -> dict | None:
    """Refit the pruned layers to the dense model's outputs (when repair is on; by default
    when the run does not fine-tune)."""
    how = work.repair.for_run(work.steps.finetune)
    if not how.enabled or work.dense is None:
        return None
    repair.reconstruct(work.dense, work.pruned,
                       calibration_batches(work.bundle, how, work.steps.seed),
                       masks=None if work.plan is not None else work.masks, plan=work.plan,
                       samples=how.samples, damp=how.damp, progress=work.steps.progress)
    return {}


def run_recalibration(work: Work) -> dict | None:
    """Re-estimate BatchNorm statistics (when on, and not after a repair: a repaired model's
    layers were fitted to the statistics they run with)."""
    how = work.steps.recalibration
    if not how.enabled or "repaired" in work.done or not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in work.pruned.modules()):
        return None   # nothing to re-estimate without BatchNorm
    train.recalibrate_bn(work.pruned, calibration_batches(work.bundle, how, work.steps.seed),
                         samples=how.samples)
    return {}


def run_finetune(work: Work) -> dict | None:
    """Fine-tune (masks kept at zero), best epoch by the task's primary metric."""
    how, steps = work.steps.finetune, work.steps
    if not how.epochs:
        return None
    h = train.fit(work.pruned, work.bundle, how, masks=work.masks, seed=steps.seed,
                  progress=steps.progress, desc=work.desc, amp=steps.compute.amp,
                  task=steps.task)
    return {"epochs_run": len(h["history"]), "best_epoch": h["best_epoch"],
            **{k: v for k, v in h.items() if k.startswith("best_val")}, "seconds": h["seconds"]}


@dataclass(frozen=True)
class Stage:
    """One stage after pruning: ``name`` (its key in a report's ``scores``), ``title`` (in
    tables), ``seconds`` (its ``stage_seconds`` key), ``run(work) -> dict | None`` (None: it
    did not run; a dict: what it records) and ``record`` (the report key of that dict, or None
    when it records nothing but its score)."""
    name: str
    title: str
    seconds: str
    run: Callable[[Work], dict | None]
    record: str | None = None


TABLE = (
    Stage("repaired", "repaired", "repair", run_repair),
    Stage("recalibrated", "recalibrated", "recalibrate", run_recalibration),
    Stage("finetuned", "fine-tuned", "finetune", run_finetune, record="finetune"),
)


def names(table: tuple[Stage, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Every scored stage of a report in order (the dense model, the pruned one, then the
    table's) and the title of each."""
    return (("dense", "pruned") + tuple(s.name for s in table),
            {"dense": "dense", "pruned": "pruned", **{s.name: s.title for s in table}})


STAGES, STAGE_TITLES = names(TABLE)


def finish(work: Work) -> dict:
    """Measure the pruned model, then run every stage of :data:`TABLE` in order and measure
    after each that ran; in place on ``work.pruned``. Returns ``{"scores": {stage: {val,
    test} or None}, "stage_seconds": {...}, record: ...}`` (the task's primary metric; a stage
    that did not run is None)."""
    task = work.steps.task
    out: dict = {"scores": {s: None for s in STAGES[1:]},
                 "stage_seconds": {s.seconds: 0.0 for s in TABLE},
                 **{s.record: None for s in TABLE if s.record}}
    out["scores"]["pruned"] = scores(work.pruned, work.bundle, task)
    for stage in TABLE:
        t0 = time.perf_counter()
        got = stage.run(work)
        if got is None:
            continue
        out["stage_seconds"][stage.seconds] = got.get("seconds", time.perf_counter() - t0)
        if stage.record:
            out[stage.record] = got
        out["scores"][stage.name] = scores(work.pruned, work.bundle, task)
        work.done.append(stage.name)
    work.pruned.eval()
    return out
