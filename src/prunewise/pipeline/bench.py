"""`prunewise bench`: a grid of methods x budgets x seeds on one model and data set.

One base model per seed: reused from ``--base`` (a folder of ``seed-S/`` checkpoints, or a
pattern with ``{seed}``), else trained once into ``OUT/base/seed-S``. Every cell (method, budget,
seed) is one :mod:`prunewise.runs` run (pruned, recalibrated and fine-tuned accuracies, size,
latency) written to ``OUT/cells/`` as soon as it is done, so a second invocation with the same
arguments recomputes nothing. The summary (mean and standard deviation over seeds) goes to
``OUT/grid.md``, ``OUT/grid.csv``, ``OUT/grid.json`` and the plot ``OUT/grid.png``.

Unstructured methods (the method table's, :mod:`prunewise.methods`) are budgeted by sparsity; one
iterative run
per method and seed goes to the highest sparsity and stops on every level of the grid on its
way. Its schedule depends on the full list of levels only, never on which cells already exist
(existing cells are skipped, not left out of the schedule), so an interrupted grid completes to
the same numbers (:func:`prunewise.runs.prune_levels` makes every level's complete report).
Structured methods are budgeted by the fraction of MACs kept.
"""
from __future__ import annotations

import csv
import io
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import data as D
from .. import checkpoints, checks, files, methods, models, schema, settings, tasks, train
from . import runs
from ..errors import PrunewiseError
from .report import BEFORE_TASKS, pyplot, save_figure

STAGES = runs.STAGES[1:]
FORMAT = 2
# settings that change what a cell holds: a grid folder only accepts runs that agree on them
FIXED = ("format", "model", "data", "root", "epochs", "base", "prune", "finetune",
         "recalibration")
MAX_SEED = 2 ** 32 - 1

_SPLITS = {"type": "object", "required": ["test"],
           "properties": {"val": {"type": ["number", "null"]}, "test": {"type": "number"}}}
_STAGES = {"type": "object", "required": ["dense", "pruned"],
           "properties": {s: {**_SPLITS, "type": ["object", "null"]}
                          for s in ("dense",) + STAGES}}
SETTINGS_SPEC = {"type": "object", "required": list(FIXED),
                 "properties": {"format": {"type": "integer"},
                                "prune": {"type": ["object", "null"]},
                                "finetune": {"type": "object"},
                                "recalibration": {"type": "object"}}}
"""OUT/settings.json: the grid configuration its cells were made with."""
CELL_SPEC = {"type": "object", "required": ["method", "seed", "params", "macs"],
             "properties": {
                 "method": {"type": "string", "maxLength": schema.MAX_NAME},
                 "seed": {"type": "integer"},
                 "scores": _STAGES, "accuracy": _STAGES,
                 "params": {"type": "object", "required": ["ratio"],
                            "properties": {"ratio": {"type": "number", "minimum": 0}}},
                 "macs": {"type": "object", "required": ["ratio"],
                          "properties": {"ratio": {"type": "number", "minimum": 0}}}}}
"""OUT/cells/*.json: one finished cell (what :func:`summarize` reads of it; ``scores``, or
``accuracy`` in a cell written before tasks)."""
DENSE_SPEC = {"type": "object", "required": ["params", "macs", "weights"],
              "properties": {"scores": _SPLITS, "accuracy": _SPLITS,
                             "params": {"type": "integer", "minimum": 1},
                             "macs": {"type": "integer", "minimum": 0},
                             "weights": {"type": "integer", "minimum": 1},
                             "latency_ms": {"type": ["object", "null"],
                                            "additionalProperties": {"type": "number",
                                                                     "minimum": 0}}}}
"""OUT/dense/seed-S.json: the base model's measures."""


@dataclass(frozen=True)
class Grid:
    """What the grid spans: methods x budgets x seeds of one model on one data set. ``base``:
    reuse checkpoints (a folder of ``seed-S/`` folders, or a pattern with ``{seed}``)."""
    methods: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    structured: bool = False
    model_name: str = "resnet20"
    data_name: str = "digits"
    root: str | None = None
    epochs: int = settings.BENCH_EPOCHS
    base: str | None = None
    latency_batch: int | None = None   # structured budgets are latency fractions at this batch


def parse_list(text: str, what: str, cast=float) -> list:
    """'0.8,0.9' -> [0.8, 0.9]; an empty or malformed list (an empty entry, a number not
    written with ASCII digits) is a PrunewiseError."""
    items = [t.strip() for t in (text or "").split(",")]
    if not any(items):
        raise PrunewiseError(f"empty {what} list: give at least one value")
    if not all(items):
        raise PrunewiseError(f"bad {what} list {text!r}: an entry between commas is empty")
    if cast is str:
        return items
    try:
        return [checks.parse(what, t, integer=cast is int) for t in items]
    except PrunewiseError:
        raise PrunewiseError(f"bad {what} list {text!r}: expected comma-separated "
                             f"{'integers' if cast is int else 'numbers'} (ASCII digits)") from None


def check_grid(grid: Grid) -> None:
    """Methods, budgets, seeds and the model name; raises PrunewiseError."""
    allowed = methods.names(methods.STRUCTURED if grid.structured else methods.UNSTRUCTURED)
    flag = "--latency" if grid.latency_batch else "--macs" if grid.structured else "--sparsity"
    kind = f"with {flag} ({'structured' if grid.structured else 'unstructured'})"
    if not grid.methods:
        raise PrunewiseError("empty method list: give at least one method")
    for m in grid.methods:
        if m not in allowed:
            raise PrunewiseError(f"unknown method '{m}' {kind}; choose from: {', '.join(allowed)}")
    if not grid.budgets:
        raise PrunewiseError("empty budget list: give at least one value")
    for b in grid.budgets:
        if isinstance(b, bool) or not 0 < b < 1:
            raise PrunewiseError(f"{flag} values must be "
                                 f"in (0, 1), got {b}")
    if not grid.seeds:
        raise PrunewiseError("empty seed list: give at least one seed")
    for s in grid.seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise PrunewiseError(f"--seeds values must be integers in 0..{MAX_SEED}, got {s}")
    for what, values in (("method", grid.methods), ("budget", grid.budgets),
                         ("seed", grid.seeds)):
        if len(set(values)) != len(values):
            raise PrunewiseError(f"the {what} list repeats a value: {list(values)}")
    named = [f"{b:g}" for b in grid.budgets]  # what a cell file is named by
    if len(set(named)) != len(named):
        raise PrunewiseError(f"budgets {list(grid.budgets)} name the same cell ({named}): give "
                             f"values that differ in their first six significant digits")
    if grid.base is not None and ("{" in grid.base.replace("{seed}", "")
                                  or "}" in grid.base.replace("{seed}", "")):
        raise PrunewiseError(f"--base {schema.short(grid.base, 80)}: the only placeholder a base "
                             f"path may hold is {{seed}} (no other braces)")
    if grid.base is None:
        if grid.model_name not in models.names():
            raise PrunewiseError(f"unknown model '{grid.model_name}'; choose one of: "
                                 f"{', '.join(models.names())}")
        if isinstance(grid.epochs, bool) or not isinstance(grid.epochs, int) or grid.epochs < 1:
            raise PrunewiseError(f"--epochs must be >= 1, got {grid.epochs}")


def base_folder(grid: Grid, out: Path, seed: int) -> Path:
    """Where the base checkpoint of ``seed`` is (or goes)."""
    if grid.base is None:
        return out / "base" / f"seed-{seed}"
    if "{seed}" in grid.base:
        return Path(grid.base.replace("{seed}", str(seed)))
    return Path(grid.base) / f"seed-{seed}"


def check_bases(grid: Grid, bundle: D.DataBundle) -> None:
    """Every ``--base`` checkpoint exists, is the grid's model and fits the data."""
    if grid.base is None:
        return
    for seed in grid.seeds:
        folder = base_folder(grid, Path("."), seed)
        cfg = checkpoints.read_config(folder)
        if cfg["arch"] != grid.model_name:
            raise PrunewiseError(f"base checkpoint {folder} is a {cfg['arch']}, not "
                                 f"--model {grid.model_name}")
        used = cfg.get("meta", {}).get("data", {}).get("name")
        if used is not None and used != bundle.name:
            raise PrunewiseError(f"base checkpoint {folder} was trained on {used}, not "
                                 f"--data {bundle.name}")
        size = cfg.get("meta", {}).get("data", {}).get("image_size")
        if size is not None and size != bundle.image_size:
            raise PrunewiseError(f"base checkpoint {folder} was trained on {size}x{size} images, "
                                 f"the data set loads {bundle.image_size}x{bundle.image_size}")
        if (cfg["num_classes"], cfg["in_channels"]) != (bundle.num_classes, bundle.in_channels):
            raise PrunewiseError(f"base checkpoint {folder} has {cfg['num_classes']} classes and "
                                 f"{cfg['in_channels']} channels; {bundle.name} has "
                                 f"{bundle.num_classes} and {bundle.in_channels}")


def settings_of(grid: Grid, prune: runs.Unstructured, finetune: runs.FineTune,
                recalibration: runs.Recalibration, task: tasks.Task | None = None) -> dict:
    # bench prunes every layer of the default scope: an empty ``exclude`` is left out, so grid
    # folders written before that setting existed still match
    prune_dict = {k: v for k, v in asdict(prune).items()
                  if k != "sparsity" and not (k in ("exclude", "allocation") and not v)}
    # a structured grid records only its repair, and only when on (older folders still match)
    channels = {"repair": prune_dict["repair"]} if prune.repair.enabled else None
    if prune.allocation:   # measured channel counts (recorded only when asked for)
        channels = {**(channels or {}), "allocation": prune.allocation}
    return {"format": FORMAT, "model": grid.model_name, "data": grid.data_name,
            "root": str(grid.root) if grid.root else None, "methods": list(grid.methods),
            "budgets": list(grid.budgets), "structured": grid.structured,
            "seeds": list(grid.seeds), "epochs": None if grid.base else grid.epochs,
            "base": grid.base, "prune": channels if grid.structured else prune_dict,
            # a latency grid says so (grids in MACs stay as they were)
            **({"latency_batch": grid.latency_batch} if grid.latency_batch else {}),
            "finetune": asdict(finetune), "recalibration": asdict(recalibration),
            # only another task is recorded, so that classification folders stay as they were
            **({"task": task.name} if task is not None and task.name != "classification"
               else {})}


def recorded_repair(out: Path, grid: Grid, repair: runs.Repair, finetune: runs.FineTune
                    ) -> runs.Repair:
    """The grid's repair with the choice made: as given, else the one an existing folder was
    made with (grids from before repair became the default when nothing is fine-tuned go on
    as they began), else on exactly when the grid does not fine-tune."""
    path = out / "settings.json"
    if repair.enabled is not None or not path.is_file():
        return repair.for_run(finetune)
    prev = files.read_json(path, "bench settings", SETTINGS_SPEC).get("prune")
    was = prev.get("repair") if isinstance(prev, dict) else None
    return replace(repair, enabled=isinstance(was, dict) and was.get("enabled") is True)


def check_settings(out: Path, settings: dict) -> None:
    """A grid folder holds cells of one configuration: refuse to mix."""
    path = out / "settings.json"
    if not path.is_file():
        return
    prev = files.read_json(path, "bench settings", SETTINGS_SPEC)
    for key in FIXED + ("task", "latency_batch"):
        if prev.get(key) != settings.get(key):
            raise PrunewiseError(f"{out} holds a grid made with {key}={prev.get(key)!r}, not "
                                 f"{settings.get(key)!r}; use another --out folder")


def cell_path(out: Path, method: str, budget: float, seed: int) -> Path:
    return out / "cells" / f"{method}-{budget:g}-s{seed}.json"


def base_model(grid: Grid, out: Path, bundle: D.DataBundle, seed: int,
               progress: bool, compute: runs.Compute = runs.Compute(),
               given: Callable | nn.Module | None = None,
               task: tasks.Task | None = None) -> nn.Module:
    """The dense model for one seed (on the compute device): ``given`` (a trained model, or a
    function of the seed that returns one), from ``--base``, else trained once into
    OUT/base/seed-S (its config.json, written last, marks it complete: a save killed before it
    is trained again)."""
    if given is not None:
        model = given if isinstance(given, nn.Module) else given(seed)
        if not isinstance(model, nn.Module):
            raise PrunewiseError(f"bench model for seed {seed}: the function returned "
                                 f"{type(model).__name__}, not an nn.Module")
        return compute.place(model)
    folder = base_folder(grid, out, seed)
    if (folder / checkpoints.CONFIG).is_file() or grid.base is not None:
        return compute.place(checkpoints.load_model(folder))
    torch.manual_seed(seed)
    model = compute.place(models.create(grid.model_name, num_classes=bundle.num_classes,
                                        in_channels=bundle.in_channels))
    train.fit(model, bundle, train.Training(epochs=grid.epochs), seed=seed, progress=progress,
              desc=f"train {grid.model_name} seed {seed}", amp=compute.amp, task=task)
    task = tasks.of(task)
    score = train.evaluate_split(model, bundle, "test", task=task)[task.primary]
    quality = tasks.checkpoint_quality(task.describe(), score)
    checkpoints.save_model(model, folder, meta={"data": {"name": bundle.name, "root": grid.root,
                                                   "image_size": bundle.image_size, "seed": 0},
                                          "seed": seed, **quality})
    return model


def dense_measures(out: Path, model: nn.Module, bundle: D.DataBundle, seed: int,
                   steps: runs.Steps) -> dict:
    """The base model's scores, size and latency, measured once per seed (OUT/dense/)."""
    path = out / "dense" / f"seed-{seed}.json"
    if path.is_file():
        return files.read_json(path, "dense measures", DENSE_SPEC)
    dense = runs.measure_dense(model, bundle, steps.measurement, steps.task)
    files.write_json(path, dense)
    return dense


def cell_line(rep: dict, level: float, seconds: float) -> str:
    """One log line per finished cell: method, budget, seed and the score of every stage."""
    acc = runs.stage_scores(rep)
    stages = " -> ".join(f"{s} {acc[s]['test']:.4f}" for s in STAGES if acc.get(s))
    return (f"cell {rep['method']} {level:g} seed {rep['seed']}: test {rep['metric']['title']} "
            f"{stages} "
            f"(dense {acc['dense']['test']:.4f}; {seconds:.0f}s)")


def unstructured_cells(out: Path, model, bundle, method: str, seed: int, ctx: dict) -> None:
    """All sparsity levels of one (method, seed): one pruning run over the FULL level list,
    finishing (recalibrate, fine-tune, measure) and writing only the cells that are missing."""
    levels = sorted(ctx["grid"].budgets)
    paths = {lv: cell_path(out, method, lv, seed) for lv in levels}
    if all(p.is_file() for p in paths.values()):
        return
    start = time.perf_counter()

    def on_report(level, pruned, plan, rep):
        files.write_json(paths[level], runs.cell(rep))
        ctx["log"](cell_line(rep, level, time.perf_counter() - start))

    prune = replace(ctx["prune"], sparsity=max(levels))
    if methods.get(method, methods.UNSTRUCTURED).one_shot:  # one shot to each level
        prune = replace(prune, keep=None)
    runs.prune_levels(model, bundle, method, prune, on_report, levels=levels,
                      steps=replace(ctx["steps"], seed=seed), dense=ctx["dense"], want=lambda level: not paths[level].is_file())
    missing = [lv for lv, p in paths.items() if not p.is_file()]
    if missing:
        raise PrunewiseError(f"{method} seed {seed}: the schedule did not stop on sparsity "
                             f"{', '.join(f'{m:g}' for m in missing)} (levels too close together "
                             f"for this model?)")


def structured_cells(out: Path, model, bundle, method: str, seed: int, ctx: dict) -> None:
    for level in ctx["grid"].budgets:
        path = cell_path(out, method, level, seed)
        if path.is_file():
            continue
        grid = ctx["grid"]
        budget = {"latency": level, "latency_batch": grid.latency_batch,
                  "latency_cache": str(out / "latency-tables")} if grid.latency_batch \
            else {"macs": level}
        _, _, rep = runs.run_structured(model, bundle, method,
                                        runs.Structured(**budget, repair=ctx["prune"].repair,
                                                        allocation=ctx["prune"].allocation),
                                        dense=ctx["dense"], steps=replace(ctx["steps"], seed=seed))
        files.write_json(path, runs.cell(rep))
        ctx["log"](cell_line(rep, level, rep["seconds"]))


def run(out: str | Path, grid: Grid, *, prune: runs.Unstructured = settings.BENCH_PRUNE,
        finetune: runs.FineTune = settings.BENCH_FINETUNE,
        recalibration: runs.Recalibration = runs.Recalibration(),
        measurement: runs.Measurement = settings.BENCH_MEASUREMENT,
        progress: bool = False, log: Callable[[str], None] | None = None,
        compute: runs.Compute = runs.Compute(), task: tasks.Task | None = None,
        data: D.DataBundle | None = None, model: Callable | nn.Module | None = None) -> dict:
    """Run (or complete) the grid in ``out``; returns the summary written to ``grid.json``.

    ``prune`` holds the unstructured settings (its ``sparsity`` is replaced by each level).
    Every option is checked, and the data and ``--base`` checkpoints are read, before anything
    is written or trained. ``log`` receives one line per finished cell. ``compute``: the device
    (and fine-tuning precision) of every model; it does not change which cells a folder holds.
    From Python, any model and task: ``data`` (a bundle) replaces ``grid.data_name``, ``model``
    (a trained model, or a function of the seed returning one) replaces the zoo model and its
    training, and ``task`` (:mod:`prunewise.tasks`, default classification) scores every cell.
    """
    check_grid(grid)
    compute.place(torch.nn.Linear(1, 1))  # check the device and amp before any work
    task = tasks.of(task)
    prune = replace(prune, track_accuracy=False,  # cells keep no per-iteration history
                    repair=recorded_repair(Path(out), grid, prune.repair, finetune))
    if not grid.structured:
        for method in grid.methods:
            runs.check_unstructured(method, replace(prune, sparsity=max(grid.budgets)))
    bundle = D.load(grid.data_name, grid.root) if data is None else data
    if finetune.epochs and finetune.batch_size > len(bundle.train):
        raise PrunewiseError(f"--finetune-batch-size {finetune.batch_size} is larger than the "
                             f"{len(bundle.train)} training images: no step would be taken")
    if model is None:
        check_bases(grid, bundle)
    else:
        grid = replace(grid, data_name=bundle.name, base="(given)", model_name="(given)")
    out = Path(out)
    settings = settings_of(grid, prune, finetune, recalibration, task)
    check_settings(out, settings)
    ctx = {"grid": grid, "prune": prune, "log": log or (lambda line: None),
           "steps": runs.Steps(finetune=finetune, recalibration=recalibration,
                               measurement=measurement, compute=compute, progress=progress,
                               task=task)}
    start = time.perf_counter()
    # the task is checked once, before anything is written: on the first seed's given or saved
    # base, else on an untrained zoo model (its shapes are the trained one's)
    first = (base_model(grid, out, bundle, grid.seeds[0], progress, compute, model, task)
             if model is not None or grid.base is not None else None)
    runs.check_task(first or models.create(grid.model_name, num_classes=bundle.num_classes,
                                           in_channels=bundle.in_channels), bundle, task)
    files.write_json(out / "settings.json", settings)
    dense = {}
    for seed in grid.seeds:
        base = (first if first is not None and seed == grid.seeds[0] else
                base_model(grid, out, bundle, seed, progress, compute, model, task))
        ctx["dense"] = dense[seed] = dense_measures(out, base, bundle, seed, ctx["steps"])
        for method in grid.methods:
            cells = structured_cells if grid.structured else unstructured_cells
            cells(out, base, bundle, method, seed, ctx)
    summary = summarize(out, grid, dense, task.describe())
    summary["settings"] = settings
    summary["seconds_this_run"] = time.perf_counter() - start
    files.write_json(out / "grid.json", summary)
    return summary


def _mean_std(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(out: Path, grid: Grid, dense: dict, metric: dict | None = None) -> dict:
    """Mean and standard deviation over seeds per (method, budget) of the primary metric
    (``metric``: the task's description, default top-1); writes md, csv and png."""
    metric = metric or BEFORE_TASKS
    rows = []
    for method in grid.methods:
        for b in grid.budgets:
            cells = [files.read_json(cell_path(out, method, b, s), "grid cell", CELL_SPEC)
                     for s in grid.seeds]
            row = {"method": method, "budget": b, "n": len(cells)}
            for stage in STAGES:
                vals = [runs.stage_scores(c)[stage]["test"] for c in cells
                        if runs.stage_scores(c).get(stage)]
                if vals:
                    row[stage], row[stage + "_std"] = _mean_std(vals)
            for key in ("params", "macs"):
                row[key + "_ratio"] = statistics.fmean(c[key]["ratio"] for c in cells)
            rows.append(row)
    budget_name = (f"latency kept (batch {grid.latency_batch})" if grid.latency_batch
                   else "MACs kept" if grid.structured else "sparsity")
    dense_test = statistics.fmean(runs.stage_scores(d)["test"] for d in dense.values())
    summary = {"budget": budget_name, "metric": metric, "dense_test": dense_test,
               "dense_by_seed": {str(k): runs.stage_scores(d) for k, d in dense.items()},
               "rows": rows}
    if metric["task"] == "classification":  # the name grids had before tasks
        summary["dense_test_accuracy"] = dense_test
    files.atomic_write(out / "grid.md", lambda t: Path(t).write_text(grid_markdown(summary)))
    files.atomic_write(out / "grid.csv", lambda t: Path(t).write_text(grid_csv(rows)))
    plot_grid(out / "grid.png", summary)
    return summary


def grid_markdown(summary: dict) -> str:
    stages = [s for s in STAGES if any(s in r for r in summary["rows"])]
    titles = runs.STAGE_TITLES
    metric = summary["metric"]
    head = (f"| method | {summary['budget']} | "
            + " | ".join(f"test {metric['title']} {titles[s]} (mean ± std)" for s in stages)
            + " | params ratio | MACs ratio |")
    better = "higher" if metric["higher_is_better"] else "lower"
    lines = [f"Dense test {metric['title']}: {summary['dense_test']:.4f} "
             f"(mean over {len(summary['dense_by_seed'])} seeds; {better} is better)", "", head,
             "|---|---|" + "---|" * (len(stages) + 2)]
    for r in summary["rows"]:
        accs = " | ".join(f"{r[s]:.4f} ± {r[s + '_std']:.4f}" if s in r else "" for s in stages)
        lines.append(f"| {r['method']} | {r['budget']:g} | {accs} | {r['params_ratio']:.4f} | "
                     f"{r['macs_ratio']:.4f} |")
    return "\n".join(lines) + "\n"


def grid_csv(rows: list[dict]) -> str:
    keys = ["method", "budget", "n"] + [k for s in STAGES for k in (s, s + "_std")] \
        + ["params_ratio", "macs_ratio"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot_grid(path: Path, summary: dict) -> Path:
    """The primary metric after the last stage every cell ran vs. budget, one line per method, error
    bars = std over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stage = next(s for s in reversed(STAGES) if all(s in r for r in summary["rows"]))
    for method in dict.fromkeys(r["method"] for r in summary["rows"]):
        rs = [r for r in summary["rows"] if r["method"] == method]
        ax.errorbar([r["budget"] for r in rs], [r[stage] for r in rs],
                    yerr=[r[stage + "_std"] for r in rs], marker="o", capsize=3, label=method)
    title = summary["metric"]["title"]
    ax.axhline(summary["dense_test"], color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel(summary["budget"])
    ax.set_ylabel(f"test {title} ({stage})")
    ax.set_title(f"{title} vs. {summary['budget']} (mean ± std over seeds)")
    ax.legend()
    return save_figure(fig, path)
