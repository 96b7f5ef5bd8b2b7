"""`prunewise bench`: a grid of methods x budgets x seeds on one model and data set.

One base model is trained per seed (or reused from ``OUT/base/seed-S``); each cell (method,
budget, seed) is written to ``OUT/cells/`` as soon as it is done, so a second invocation with the
same arguments recomputes nothing. The summary (mean and standard deviation over seeds) goes to
``OUT/grid.md``, ``OUT/grid.csv``, ``OUT/grid.json`` and the plot ``OUT/grid.png``.

Unstructured methods (fvw, magnitude, taylor, random) are budgeted by sparsity; one iterative run
per method and seed produces every sparsity level on its way to the highest one. Structured
methods (sliming, l1, random, chip, sliming-l1) are budgeted by the fraction of MACs kept.
"""
from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path

import torch

from . import data as D
from . import files, models, train
from .errors import PrunewiseError

UNSTRUCTURED = ("fvw", "magnitude", "taylor", "random")
STRUCTURED = ("sliming", "l1", "random", "chip", "sliming-l1")


def parse_list(text: str, what: str, cast=float) -> list:
    """'0.8,0.9' -> [0.8, 0.9]; an empty or malformed list is a PrunewiseError."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise PrunewiseError(f"empty {what} list: give at least one value")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise PrunewiseError(f"bad {what} list {text!r}: expected comma-separated numbers") from None


def check_grid(methods: list[str], budgets: list[float], structured: bool) -> None:
    allowed = STRUCTURED if structured else UNSTRUCTURED
    for m in methods:
        if m not in allowed:
            kind = "with --macs (structured)" if structured else "with --sparsity (unstructured)"
            raise PrunewiseError(f"unknown method '{m}' {kind}; choose from: {', '.join(allowed)}")
    lo, hi = (0.0, 1.0)
    for b in budgets:
        if structured and not lo < b < hi:
            raise PrunewiseError(f"--macs values must be in (0, 1), got {b}")
        if not structured and not lo <= b < hi:
            raise PrunewiseError(f"--sparsity values must be in [0, 1), got {b}")


def _cell_path(out: Path, method: str, budget: float, seed: int) -> Path:
    return out / "cells" / f"{method}-{budget:g}-s{seed}.json"


def base_model(out: Path, model_name: str, bundle: D.DataBundle, seed: int, epochs: int,
               quiet: bool) -> tuple[torch.nn.Module, float]:
    """The dense model for one seed: trained once, then reused from ``OUT/base/seed-S``."""
    folder = out / "base" / f"seed-{seed}"
    if (folder / files.WEIGHTS).is_file():
        model = files.load_model(folder)
        return model, model.prunewise_meta["test_accuracy"]
    torch.manual_seed(seed)
    model = models.create(model_name, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    train.fit(model, bundle, epochs=epochs, seed=seed, progress=not quiet,
              desc=f"train {model_name} seed {seed}")
    acc = train.evaluate_split(model, bundle, "test")["top1"]
    files.save_model(model, folder, meta={"data": {"name": bundle.name, "image_size": bundle.image_size,
                                                   "seed": seed}, "seed": seed, "test_accuracy": acc})
    return model, acc


def _unstructured_cells(out, model, bundle, method, levels, seed, opts, quiet) -> None:
    from . import baselines

    todo = [lv for lv in levels if not _cell_path(out, method, lv, seed).is_file()]
    if not todo:
        return
    start = time.perf_counter()

    def attribution():
        return D.batches(bundle.train, bundle, 128, shuffle=True, seed=seed, limit=opts["samples"])

    def done(level, plan):
        if level not in todo:
            return
        pruned = plan.apply(model)
        cell = {"method": method, "budget": level, "seed": seed, "sparsity": plan.sparsity,
                "test_accuracy": train.evaluate_split(pruned, bundle, "test")["top1"]}
        if opts["finetune_epochs"]:
            train.fit(pruned, bundle, epochs=opts["finetune_epochs"], lr=opts["lr"],
                      masks=plan.masks, seed=seed, progress=False)
            cell["finetuned_accuracy"] = train.evaluate_split(pruned, bundle, "test")["top1"]
        cell["seconds"] = time.perf_counter() - start
        files.write_json(_cell_path(out, method, level, seed), cell)

    baselines.get(method)(model, attribution, sparsity=max(todo), levels=todo, on_level=done,
                          keep=opts["keep"], samples=opts["samples"], seed=seed,
                          progress=not quiet)


def _structured_cell(out, model, bundle, method, level, seed, opts, dense_acc) -> None:
    from .sliming import pipeline

    path = _cell_path(out, method, level, seed)
    if path.is_file():
        return
    _, _, rep = pipeline.run(model, bundle, method,
                             macs=level, finetune_epochs=opts["finetune_epochs"], lr=opts["lr"],
                             seed=seed, dense_accuracy=dense_acc)
    cell = {"method": method, "budget": level, "seed": seed, "macs_ratio": rep["macs_ratio"],
            "test_accuracy": rep["test_accuracy"], "seconds": rep["seconds"]}
    if "finetuned_accuracy" in rep:
        cell["finetuned_accuracy"] = rep["finetuned_accuracy"]
    files.write_json(path, cell)


def run(out: str | Path, *, model_name: str, data_name: str = "digits", root=None,
        methods: list[str], budgets: list[float], structured: bool, seeds: list[int],
        epochs: int = 20, finetune_epochs: int = 5, lr: float = 0.05, keep: float = 0.9,
        samples: int | None = 512, quiet: bool = False) -> dict:
    """Run (or complete) the grid in ``out``; returns the summary written to ``grid.json``."""
    check_grid(methods, budgets, structured)
    if not seeds:
        raise PrunewiseError("empty seed list: give at least one seed")
    if finetune_epochs < 0:
        raise PrunewiseError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    out = Path(out)
    settings = {"model": model_name, "data": data_name, "root": str(root) if root else None,
                "methods": methods, "budgets": budgets, "structured": structured, "seeds": seeds,
                "epochs": epochs, "finetune_epochs": finetune_epochs, "lr": lr, "keep": keep,
                "samples": samples}
    old = out / "settings.json"
    if old.is_file():
        prev = files.read_json(old, "bench settings")
        for key in ("model", "data", "root", "epochs", "finetune_epochs", "lr", "keep", "samples"):
            if prev.get(key) != settings[key]:
                raise PrunewiseError(f"{out} holds a grid made with {key}={prev.get(key)!r}, not "
                                     f"{settings[key]!r}; use another --out folder")
    files.write_json(old, settings)
    bundle = D.load(data_name, root)
    opts = {"keep": keep, "samples": samples, "finetune_epochs": finetune_epochs, "lr": lr}
    start = time.perf_counter()
    dense = {}
    for seed in seeds:
        model, dense[seed] = base_model(out, model_name, bundle, seed, epochs, quiet)
        for method in methods:
            if structured:
                for level in budgets:
                    _structured_cell(out, model, bundle, method, level, seed, opts, dense[seed])
            else:
                _unstructured_cells(out, model, bundle, method, budgets, seed, opts, quiet)
    summary = summarize(out, methods, budgets, seeds, structured, dense)
    summary["settings"] = settings
    summary["seconds_this_run"] = time.perf_counter() - start
    files.write_json(out / "grid.json", summary)
    return summary


def summarize(out: Path, methods, budgets, seeds, structured: bool, dense: dict) -> dict:
    """Mean and standard deviation over seeds per (method, budget); writes md, csv and png."""
    rows = []
    for method in methods:
        for b in budgets:
            cells = [files.read_json(_cell_path(out, method, b, s), "grid cell") for s in seeds]
            row = {"method": method, "budget": b, "n": len(cells)}
            for key in ("test_accuracy", "finetuned_accuracy"):
                vals = [c[key] for c in cells if key in c]
                if vals:
                    row[key] = statistics.fmean(vals)
                    row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            rows.append(row)
    budget_name = "MACs kept" if structured else "sparsity"
    dense_mean = statistics.fmean(dense.values())
    summary = {"budget": budget_name, "dense_test_accuracy": dense_mean,
               "dense_by_seed": {str(k): v for k, v in dense.items()}, "rows": rows}
    files._atomic(out / "grid.md", lambda t: Path(t).write_text(grid_markdown(summary)))
    files._atomic(out / "grid.csv", lambda t: Path(t).write_text(grid_csv(rows)))
    plot_grid(out / "grid.png", summary)
    return summary


def grid_markdown(summary: dict) -> str:
    ft = any("finetuned_accuracy" in r for r in summary["rows"])
    head = f"| method | {summary['budget']} | test top-1 (mean ± std) |" + \
        (" fine-tuned top-1 |" if ft else "")
    lines = [f"Dense test top-1: {summary['dense_test_accuracy']:.4f} "
             f"(mean over {len(summary['dense_by_seed'])} seeds)", "", head,
             "|---|---|---|" + ("---|" if ft else "")]
    for r in summary["rows"]:
        line = (f"| {r['method']} | {r['budget']:g} | {r['test_accuracy']:.4f} ± "
                f"{r['test_accuracy_std']:.4f} |")
        if ft:
            line += (f" {r['finetuned_accuracy']:.4f} ± {r['finetuned_accuracy_std']:.4f} |"
                     if "finetuned_accuracy" in r else " |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def grid_csv(rows: list[dict]) -> str:
    keys = ["method", "budget", "n", "test_accuracy", "test_accuracy_std", "finetuned_accuracy",
            "finetuned_accuracy_std"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot_grid(path: Path, summary: dict) -> Path:
    """Accuracy vs. budget, one line per method, error bars = std over seeds."""
    from .report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = "finetuned_accuracy" if all("finetuned_accuracy" in r for r in summary["rows"]) \
        else "test_accuracy"
    for method in dict.fromkeys(r["method"] for r in summary["rows"]):
        rs = [r for r in summary["rows"] if r["method"] == method]
        ax.errorbar([r["budget"] for r in rs], [r[key] for r in rs],
                    yerr=[r[key + "_std"] for r in rs], marker="o", capsize=3, label=method)
    ax.axhline(summary["dense_test_accuracy"], color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel(summary["budget"])
    ax.set_ylabel("test top-1" + (" (fine-tuned)" if key == "finetuned_accuracy" else ""))
    ax.set_title(f"accuracy vs. {summary['budget']} (mean ± std over seeds)")
    ax.legend()
    return _save(fig, path)
