"""Repair probe: test top-1 right after pruning, after BatchNorm recalibration, after layer-wise
repair (prunewise.repair) and after repair then recalibration, for mask methods on a
Fashion-MNIST base model; and the seconds repair takes next to one training epoch.

    .venv/bin/python benchmarks/repair_probe.py --seed 0 [--model resnet20] [--methods ...]

Writes ``benchmarks/results/fashion/repair-probe-sS.json``. One seed is a probe, not a result:
the benchmark with three seeds is the next step.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from common import environment
from fashion_common import base_path, results_dir
from prunewise import checkpoints, repair, runs, train
from prunewise import data as D

RECAL = runs.Recalibration()


def stages(model, bundle, plan, seed: int, samples: int) -> dict:
    """The four accuracies of one plan and the repair seconds."""
    def acc(m):
        return train.evaluate_split(m, bundle, "test")["top1"]

    def recalibrated(m):
        m = copy.deepcopy(m)
        train.recalibrate_bn(m, runs.calibration_batches(bundle, RECAL, seed),
                             samples=RECAL.samples)
        return m

    masked = plan.apply(model)
    calib = lambda: D.batches(bundle.train, bundle, 128, shuffle=True, seed=seed,  # noqa: E731
                              limit=samples)
    t0 = time.perf_counter()
    fixed = repair.reconstruct(model, copy.deepcopy(masked), calib, masks=plan.masks,
                               samples=samples, progress=False)
    seconds = time.perf_counter() - t0
    return {"pruned": acc(masked), "recalibrated": acc(recalibrated(masked)),
            "repaired": acc(fixed), "repaired_recalibrated": acc(recalibrated(fixed)),
            "repair_seconds": seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--methods", default="magnitude,fvw")
    ap.add_argument("--levels", default="0.9,0.95")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = checkpoints.load_model(base_path(args.model, args.seed)).eval()
    bundle = D.load("fashion-mnist")
    levels = [float(v) for v in args.levels.split(",")]
    path = results_dir(args.model) / f"repair-probe-s{args.seed}.json"
    res = {"model": args.model, "seed": args.seed, "samples": args.samples,
           "dense": train.evaluate_split(model, bundle, "test")["top1"], "cells": {},
           "environment": environment()}
    t0 = time.perf_counter()  # one training epoch of the same model, as the cost yardstick
    train.fit(copy.deepcopy(model), bundle, epochs=1, lr=0.01, batch_size=128, progress=False)
    res["epoch_seconds"] = time.perf_counter() - t0
    for method in args.methods.split(","):
        def on_level(level, plan, method=method):
            cell = stages(model, bundle, plan, args.seed, args.samples)
            res["cells"][f"{method}|{level:g}"] = cell
            print(method, level, json.dumps(cell), flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=1))
        settings = runs.Unstructured(sparsity=max(levels), keep=0.9, samples=512,
                                     track_accuracy=False)
        runs.prune_masks(model, bundle, method, settings, seed=args.seed, levels=levels,
                         on_level=on_level)


if __name__ == "__main__":
    main()
