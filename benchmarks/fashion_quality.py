"""Quality of every pruning method on Fashion-MNIST, through the same pipeline as the CLI.

One JSON file per (part, seed) under ``benchmarks/results/fashion/`` (resnet20) or
``benchmarks/results/fashion-MODEL/`` (``--model MODEL``); a finished cell is never recomputed, so
the script resumes after a kill. Base models, kept in the repository as
``benchmarks/checkpoints/MODEL-fashion-mnist-sS``: ``prunewise train resnet20 --data fashion-mnist
--epochs 10 --lr 0.1 --batch-size 128 --seed S``; resnet56 the same with ``--epochs 4`` (an epoch
of it costs 3.4 of resnet20's on our two cores).

    .venv/bin/python benchmarks/fashion_quality.py unstructured --seed 0
    .venv/bin/python benchmarks/fashion_quality.py structured --seed 0
    .venv/bin/python benchmarks/fashion_quality.py finetune --seed 0
    .venv/bin/python benchmarks/fashion_quality.py summary

``unstructured``: each method prunes iteratively (keep 0.9 per iteration, 512 attribution
samples) through 80/90/95/98% sparsity in one run; every level is measured pruned and after
BatchNorm recalibration (512 training images), no fine-tuning. A method spec is
``name[+loop][+cgG][+sum][+desc][+aALPHA][+sN][+kKEEP][+xLAYER]``: ``+loop`` recalibrates the
working copy inside the loop, ``+xLAYER`` leaves the layers matching LAYER dense, ``+sN`` uses N
attribution samples, ``+kKEEP`` keeps KEEP per iteration.
``--levels`` stops earlier (a probe of one setting at 80/90%, say). ``structured``: each method
at 50% and 25% MACs, recalibrated, with CPU latency at batch 1 and 64. ``finetune``: one epoch
of (masked) fine-tuning from the recalibrated model for the cells named by ``--cells``.
``latency``: CPU latency of the dense and the saved structured models, on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import environment
from fashion_common import BUDGETS, LEVELS, base_path, results_dir
from prunewise import data as D
from prunewise import checkpoints, files, methods, runs, stages


MASK_METHODS = ("fvw", "fvw+loop", "taylor+loop", "magnitude", "random", "obd+loop")
CHANNEL_METHODS = ("sliming", "sliming-l1", "l1", "chip", "random")
FINETUNE = runs.FineTune(epochs=1, lr=0.02, batch_size=128)
QUICK = runs.Measurement(latency=False)


def parse_spec(spec: str, levels=LEVELS) -> tuple[str, runs.Unstructured]:
    """``fvw+loop+cg5`` -> ("fvw", settings)."""
    name, *opts = spec.split("+")
    kw: dict = {"sparsity": max(levels), "keep": 0.9, "samples": 512, "track_accuracy": False}
    fvw: dict = {}
    if methods.get(name, methods.UNSTRUCTURED).needs_data:
        kw["loop_recalibrate"] = "loop" in opts
    for o in opts:
        if o.startswith("cg"):
            fvw["class_groups"] = int(o[2:])
        elif o == "sum":
            fvw["aggregate"] = "sum"
        elif o == "desc":
            fvw["descent"] = True
        elif o.startswith("a"):
            fvw["alpha"] = float(o[1:])
        elif o.startswith("s"):
            kw["samples"] = int(o[1:])
        elif o.startswith("k"):
            kw["keep"] = float(o[1:])
        elif o.startswith("x"):
            kw["exclude"] = kw.get("exclude", ()) + (o[1:],)
    if fvw:
        kw["options"] = methods.FVWSettings(**fvw)
    return name, runs.Unstructured(**kw)


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, obj: dict) -> None:
    files.write_json(path, obj)


def brief(rep: dict) -> dict:
    """The figures a table needs from a run report."""
    acc = rep["accuracy"]
    pick = lambda k: None if acc.get(k) is None else acc[k]["test"]  # noqa: E731
    out = {"pruned": pick("pruned"), "recalibrated": pick("recalibrated"),
           "finetuned": pick("finetuned"), "dense": acc["dense"]["test"],
           "sparsity": rep["sparsity"], "params_ratio": rep["params"]["ratio"],
           "macs_ratio": rep["macs"]["ratio"], "seconds": rep.get("stage_seconds")}
    if rep.get("latency_ms"):
        out["latency_ms"] = rep["latency_ms"]
    if rep.get("counts"):
        out["counts"] = rep["counts"]
    return out


def unstructured(model, bundle, seed: int, methods, path: Path, levels=LEVELS) -> None:
    res = load(path)
    dense = runs.measure_dense(model, bundle, QUICK)
    res["dense"] = dense["accuracy"]["test"]
    for spec in methods:
        if spec in res and all(str(lv) in res[spec] for lv in levels):
            continue
        name, settings = parse_spec(spec, levels)
        cells: dict = {}
        start = time.perf_counter()

        def on_level(level, plan):
            _, rep = runs.finish_masks(model, bundle, plan, dense=dense,
                                       steps=runs.Steps(measurement=QUICK, seed=seed))
            cells[str(level)] = {**brief(rep), "prune_seconds": time.perf_counter() - start}
            print(f"seed {seed} {spec} {level}: pruned {cells[str(level)]['pruned']:.4f} "
                  f"recalibrated {cells[str(level)]['recalibrated']:.4f}", flush=True)
            plan.save(path.parent / f"plans-s{seed}" / f"{spec}-{level}")

        runs.prune_masks(model, bundle, name, settings, seed=seed, levels=levels, on_level=on_level)
        res[spec] = cells
        res["environment"] = environment()
        save(path, res)


def structured(model, bundle, seed: int, methods, path: Path) -> None:
    res = load(path)
    measurement = runs.Measurement(batch_sizes=(1, 64), repeats=10)
    dense = runs.measure_dense(model, bundle, measurement)
    res["dense"] = {"test": runs.stage_scores(dense)["test"], "latency_ms": dense["latency_ms"]}
    for spec in methods:
        name, _, opt = spec.partition("@")
        for budget in BUDGETS:
            key = f"{spec}|{budget}"
            if key in res:
                continue
            own = methods.SlimingSettings(min_ratio=float(opt[1:])) if opt else None
            settings = runs.Structured(macs=budget, options=own)
            small, plan, rep = runs.run_structured(model, bundle, name, settings,
                                                   measurement=measurement, seed=seed, dense=dense)
            res[key] = brief(rep)
            print(f"seed {seed} {key}: pruned {res[key]['pruned']:.4f} "
                  f"recalibrated {res[key]['recalibrated']:.4f}", flush=True)
            checkpoints.save_model(small, path.parent / f"plans-s{seed}" / f"{spec}-{budget}")
            res["environment"] = environment()
            save(path, res)


def finetune(model, bundle, seed: int, cells, path: Path) -> None:
    """One epoch of fine-tuning for saved unstructured plans (``fvw+loop|0.9``) and saved
    structured models (``sliming|0.5``). A structured model was saved after recalibration, so
    its ``pruned`` figure here equals ``recalibrated``; the one before recalibration is in the
    ``structured`` part's JSON."""
    from prunewise.plan import MaskPlan

    res = load(path)
    plans = path.parent / f"plans-s{seed}"
    for cell in cells:
        if cell in res:
            continue
        spec, level = cell.split("|")
        folder = plans / f"{spec}-{level}"
        if (folder / "model.safetensors").is_file():  # a structured model
            small = checkpoints.load_model(folder)
            steps = stages.finish(stages.Work(small, None, bundle, None, None, runs.Repair(),
                                              runs.Steps(finetune=FINETUNE, seed=seed)))
        else:
            plan = MaskPlan.load(folder)
            masked = plan.apply(model)
            steps = stages.finish(stages.Work(masked, None, bundle, plan.masks, None, runs.Repair(),
                                              runs.Steps(finetune=FINETUNE, seed=seed)))
        acc = steps["scores"]
        res[cell] = {k: (None if acc[k] is None else acc[k]["test"]) for k in acc}
        res[cell]["seconds"] = steps["stage_seconds"]
        print(f"seed {seed} {cell}: {res[cell]}", flush=True)
        res["finetune"] = {"epochs": FINETUNE.epochs, "lr": FINETUNE.lr,
                           "batch_size": FINETUNE.batch_size}
        save(path, res)


def latency(model, bundle, seed: int, methods, path: Path) -> None:
    """CPU latency (1 thread, median of 30 passes) at batch 1 and 64 of the dense model and of
    every structured model saved by ``structured``; run it on an otherwise idle machine (the
    figures taken during ``structured`` share the cores with whatever else runs)."""
    from prunewise import measure

    x = next(iter(D.batches(bundle.test, bundle, 64)))[0]
    res: dict = {"threads": 1, "repeats": 30}

    def timed(m):
        return {str(b): measure.latency_ms(m, x[:b], repeats=30, threads=1) for b in (1, 64)}

    res["dense"] = timed(model)
    for spec in methods:
        for budget in BUDGETS:
            folder = path.parent / f"plans-s{seed}" / f"{spec}-{budget}"
            if (folder / "model.safetensors").is_file():
                res[f"{spec}|{budget}"] = timed(checkpoints.load_model(folder).eval())
                print(f"seed {seed} {spec}|{budget}: {res[f'{spec}|{budget}']}", flush=True)
    res["environment"] = environment()
    save(path, res)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("unstructured", "structured", "finetune", "latency",
                                     "summary"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="resnet20", help="base model family (checkpoints "
                    "benchmarks/checkpoints/MODEL-fashion-mnist-sS)")
    ap.add_argument("--methods", default=None, help="comma-separated method specs")
    ap.add_argument("--cells", default="fvw+loop|0.9,magnitude|0.9,obd+loop|0.9,"
                                       "sliming|0.5,l1|0.5")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)),
                    help="unstructured sparsities, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part-name", default="", help="suffix of the JSON file, so several "
                    "processes can share one seed (the summary merges them)")
    args = ap.parse_args(argv)
    if args.part == "summary":
        from fashion_summary import main as summary
        return summary(args.model)
    torch.set_num_threads(args.threads)
    model = checkpoints.load_model(base_path(args.model, args.seed)).eval()
    bundle = D.load("fashion-mnist")
    suffix = f"-{args.part_name}" if args.part_name else ""
    path = results_dir(args.model) / f"{args.part}-s{args.seed}{suffix}.json"
    if args.part == "unstructured":
        levels = tuple(float(v) for v in args.levels.split(","))
        unstructured(model, bundle, args.seed, (args.methods or ",".join(MASK_METHODS)).split(","),
                     path, levels)
    elif args.part == "structured":
        structured(model, bundle, args.seed, (args.methods or ",".join(CHANNEL_METHODS)).split(","), path)
    elif args.part == "latency":
        latency(model, bundle, args.seed, (args.methods or ",".join(CHANNEL_METHODS)).split(","), path)
    else:
        finetune(model, bundle, args.seed, args.cells.split(","), path)


if __name__ == "__main__":
    sys.exit(main())
