"""FVW quality: test accuracy at several global sparsities next to magnitude, Taylor and random,
pruned and after BatchNorm recalibration (no fine-tuning); plus FVW with a short fine-tune at 90%.

Every measurement is a :mod:`prunewise.runs` step, the same code as ``prunewise prune fvw``.
Base models are trained by our own CLI (``common.base_checkpoint``) or taken from ``--base``
(a pattern with {model} and {seed}, e.g. benchmarks/checkpoints/{model}-fashion-mnist-s{seed}).
One pruning run per (model, seed, method) goes to the highest level and stops exactly on every
lower level on the way, where the masked model is measured.

    .venv/bin/python benchmarks/fvw_quality.py                       # full: 2 models x 3 seeds
    .venv/bin/python benchmarks/fvw_quality.py --quick               # 1 seed, resnet20, fewer levels
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common  # noqa: E402
from prunewise import checkpoints, data as D, runs  # noqa: E402
from prunewise import methods as table  # noqa: E402  (the name "methods" is a list here)

STAGES = ("pruned", "recalibrated", "finetuned")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg16_bn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--levels", default="0.8,0.9,0.95,0.98")
    ap.add_argument("--methods", default="fvw,magnitude,taylor,random")
    ap.add_argument("--data", default="digits", help="data set (prunewise.data.DATASETS)")
    ap.add_argument("--base", default=None, help="checkpoint pattern with {model} and {seed}")
    ap.add_argument("--keep", type=float, default=0.98)
    ap.add_argument("--samples", type=int, default=2048, help="attribution samples (train split)")
    ap.add_argument("--alpha", type=float, default=1e-8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="base model training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="FVW at 90%%: 0 = skip")
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--recalibrate-samples", type=int, default=512)
    ap.add_argument("--no-recalibrate", action="store_true")
    ap.add_argument("--loop-recalibrate", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help="resnet20, seed 0, levels 0.9/0.98, keep 0.9, 512 samples")
    ap.add_argument("--name", default="fvw_quality")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.levels = "resnet20", "0", "0.9,0.98"
        args.keep, args.samples = 0.9, 512
    return args


def one_seed(args, arch: str, seed: int, levels: list[float], methods: list[str]) -> dict:
    """Every method at every level for one base model; returns the row of results."""
    ckpt = (Path(args.base.format(model=arch, seed=seed)) if args.base else
            common.base_checkpoint(arch, seed=seed, epochs=args.epochs, data=args.data))
    model = checkpoints.load_model(ckpt)
    bundle = D.load(args.data, seed=model.prunewise_meta.get("data", {}).get("seed", 0))
    measurement = runs.Measurement(latency=False)
    dense = runs.measure_dense(model, bundle, measurement)
    recal = runs.Recalibration(samples=args.recalibrate_samples, enabled=not args.no_recalibrate)
    row = {"model": arch, "seed": seed, "checkpoint": str(ckpt), "dense": dense["accuracy"],
           "cells": {}, "seconds": {}}
    for method in methods:
        cells = row["cells"].setdefault(method, {})
        takes = table.get(method, table.UNSTRUCTURED).settings is table.FVWSettings
        options = table.FVWSettings(alpha=args.alpha, steps=args.steps) if takes else None
        settings = runs.Unstructured(sparsity=max(levels), keep=args.keep, samples=args.samples,
                                     track_accuracy=False, options=options,
                                     loop_recalibrate=args.loop_recalibrate)

        def on_level(level, plan, cells=cells, method=method):
            ft = args.finetune_epochs if method == "fvw" and abs(level - 0.9) < 1e-12 else 0
            _, rep = runs.finish_masks(model, bundle, plan, dense=dense, steps=runs.Steps(
                recalibration=recal, finetune=runs.FineTune(epochs=ft, lr=args.finetune_lr),
                measurement=measurement, seed=seed))
            cells[str(level)] = runs.cell(rep)

        start = time.perf_counter()
        runs.prune_masks(model, bundle, method, settings, seed=seed, levels=levels,
                         on_level=on_level)
        row["seconds"][method] = time.perf_counter() - start
        print(f"{arch} s{seed} {method:>9}: dense {dense['accuracy']['test']:.4f} " + " ".join(
            f"{k}:{c['accuracy']['pruned']['test']:.4f}"
            + (f"/{c['accuracy']['recalibrated']['test']:.4f}" if c["accuracy"]["recalibrated"]
               else "") for k, c in cells.items())
            + f" ({row['seconds'][method]:.0f}s)", file=sys.stderr, flush=True)
    return row


def summarize(runs_: list[dict], models: list[str], methods: list[str], levels) -> dict:
    summary = {}
    for arch in models:
        rows = [r for r in runs_ if r["model"] == arch]
        s = {"dense": statistics.mean(r["dense"]["test"] for r in rows)}
        for method in methods:
            s[method] = {}
            for lv in levels:
                accs = [r["cells"][method][str(lv)]["accuracy"] for r in rows]
                s[method][str(lv)] = {st: statistics.mean(a[st]["test"] for a in accs)
                                      for st in STAGES if all(a.get(st) for a in accs)}
        if "fvw" in methods and "magnitude" in methods:
            s["fvw_minus_magnitude"] = {str(lv): s["fvw"][str(lv)]["pruned"]
                                        - s["magnitude"][str(lv)]["pruned"] for lv in levels}
        summary[arch] = s
    return summary


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = sorted(float(v) for v in args.levels.split(","))
    methods = args.methods.split(",")
    models = args.models.split(",")
    rows = [one_seed(args, arch, int(seed), levels, methods)
            for arch in models for seed in args.seeds.split(",")]
    common.write_result(args.name, {
        "settings": dict(vars(args)), "levels": levels,
        "note": "test top-1 (fraction) of the masked model per stage (pruned, recalibrated; "
                "FVW at 90% also fine-tuned); mean over seeds",
        "summary": summarize(rows, models, methods, levels), "runs": rows})


if __name__ == "__main__":
    main()
