"""Repair benchmark: every mask method with and without layer-wise repair at
80/90/95/98% sparsity, and every structured method with and without channel repair at 50% and
25% of the MACs, on a Fashion-MNIST base model; no fine-tuning. Every cell records the test
top-1 after BatchNorm recalibration (the no-repair figure) and after repair (not recalibrated),
and the repair seconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/repair_bench.py --seed 0 [--model resnet20]
        [--configs magnitude,magnitude@lamp,wanda,obs,taylor,fvw+loop,fvw+loop@lamp,channels]
        [--finetune CONFIG|LEVEL,...]

A config is ``method[+loop|+repairloop][@allocation]`` (the method's own allocation when none is
given: global for the seed methods and the baselines, row for wanda / obs; ``+loop`` recalibrates
BatchNorm inside the iterative loop, ``+repairloop`` repairs the working copy there) or ``channels`` (sliming, l1, chip, sliming-l1; ``--channel-methods`` may add
``@errors``: the channel counts from measured group errors). Mask
methods prune iteratively (keep 0.9 per iteration, 512 attribution samples: the settings of the
README's Fashion-MNIST benchmark) through the four levels in one run; wanda and obs in one shot
per level. Repair uses the pipeline's defaults (256 calibration images, damp 0.01).
``--finetune`` adds, for the named cells (``magnitude|0.9``, ``l1|macs0.5``), one epoch of
(masked) fine-tuning from the recalibrated and from the repaired model, and that epoch's seconds
(a masked model's epoch costs what the dense model's does: the cost yardstick).

``--repair-samples N --damp D`` (other than 256 / 0.01) write ``repair-sS-nN-dD.json``;
``--samples A`` (attribution / calibration samples of the mask methods, other than 512) adds
``-aA`` to the name.

Writes ``benchmarks/results/fashion[-MODEL]/repair-sS.json`` after every cell; finished cells
are not recomputed (the script resumes after a kill).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from common import environment
from fashion_common import BUDGETS, LEVELS, base_path, results_dir
from prunewise import checkpoints, files, methods, repair, runs, train
from prunewise import data as D

RECAL = runs.Recalibration()
FIX = runs.Repair(enabled=True)
CHANNEL_METHODS = ("sliming", "l1", "chip", "sliming-l1")
DEFAULT = "magnitude,magnitude@lamp,wanda,obs,channels,taylor,fvw+loop,fvw+loop@lamp"
FINETUNE = runs.FineTune(epochs=1, lr=0.02, batch_size=128)


def test_top1(model, bundle) -> float:
    return train.evaluate_split(model, bundle, "test", batch_size=500)["top1"]


def both(dense, model, bundle, seed: int, masks=None, plan=None) -> dict:
    """Recalibrated and repaired copies of ``model`` (pruned from ``dense``), their accuracy
    and the repair seconds."""
    recal = copy.deepcopy(model)
    train.recalibrate_bn(recal, runs.calibration_batches(bundle, RECAL, seed),
                         samples=RECAL.samples)
    fixed = copy.deepcopy(model)
    t0 = time.perf_counter()
    repair.reconstruct(dense, fixed, runs.calibration_batches(bundle, FIX, seed), masks=masks,
                       plan=plan, samples=FIX.samples, damp=FIX.damp, progress=False)
    seconds = time.perf_counter() - t0
    return {"recalibrated": test_top1(recal, bundle), "repaired": test_top1(fixed, bundle),
            "repair_seconds": seconds}, recal, fixed


def channel_spec(method: str, budget: float) -> tuple[str, runs.Structured]:
    """``method[@errors]`` at ``budget`` MACs: the method and its settings."""
    name, _, allocation = method.partition("@")
    return name, runs.Structured(macs=budget, allocation=allocation or None)


SAMPLES = 512   # attribution / calibration samples of the mask methods (--samples)


def parse(config: str, levels=LEVELS) -> tuple[str, runs.Unstructured]:
    spec, _, allocation = config.partition("@")
    name, *opts = spec.split("+")
    row = methods.get(name, methods.UNSTRUCTURED)
    one_shot = row.one_shot   # the post-training peers: one shot per level
    kw = {"sparsity": max(levels), "keep": 1 - max(levels) if one_shot else 0.9,
          "samples": SAMPLES, "track_accuracy": False, "allocation": allocation or None}
    if row.needs_data and not one_shot:
        kw["loop_recalibrate"] = "loop" in opts
    if "repairloop" in opts:   # the working copy repaired after every iteration
        kw["loop_repair"] = True
    return name, runs.Unstructured(**kw)


def main(argv=None) -> None:
    global FIX, SAMPLES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--configs", default=DEFAULT)
    ap.add_argument("--finetune", default="", help="cells CONFIG|LEVEL to fine-tune one epoch")
    ap.add_argument("--levels", default=",".join(f"{v:g}" for v in LEVELS))
    ap.add_argument("--budgets", default=",".join(f"{v:g}" for v in BUDGETS))
    ap.add_argument("--channel-methods", default=",".join(CHANNEL_METHODS))
    ap.add_argument("--repair-samples", type=int, default=256)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--samples", type=int, default=512)
    args = ap.parse_args(argv)
    SAMPLES = args.samples
    FIX = runs.Repair(enabled=True, samples=args.repair_samples, damp=args.damp)
    tag = "" if (FIX.samples, FIX.damp) == (256, 0.01) else f"-n{FIX.samples}-d{FIX.damp:g}"
    tag += "" if SAMPLES == 512 else f"-a{SAMPLES}"
    levels = tuple(float(v) for v in args.levels.split(","))
    budgets = tuple(float(v) for v in args.budgets.split(","))
    model = checkpoints.load_model(base_path(args.model, args.seed)).eval()
    bundle = D.load("fashion-mnist")
    path = results_dir(args.model) / f"repair-s{args.seed}{tag}.json"
    res = (json.loads(path.read_text()) if path.is_file() else
           {"model": args.model, "seed": args.seed, "repair": {"samples": FIX.samples,
                                                               "damp": FIX.damp},
            "recalibration_samples": RECAL.samples, "cells": {}})
    res["environment"] = environment()
    res.setdefault("dense", test_top1(model, bundle))
    want_ft = [c for c in args.finetune.split(",") if c]

    def save(key: str, cell: dict) -> None:
        res["cells"][key] = cell
        print(args.model, args.seed, key, json.dumps(cell), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():   # another run may have added cells meanwhile: keep them
            on_disk = json.loads(path.read_text())["cells"]
            res["cells"] = {**on_disk, **res["cells"]}
        files.write_json(path, res)

    for config in [c for c in args.configs.split(",") if c]:
        if config == "channels":
            for method in args.channel_methods.split(","):
                for budget in budgets:
                    key = f"{method}|macs{budget:g}"
                    if key in res["cells"]:
                        continue
                    t0 = time.perf_counter()
                    small, plan = runs.channel_plan(
                        model, bundle.example(), *channel_spec(method, budget),
                        batches=D.batches(bundle.train, bundle, 64, shuffle=True, seed=args.seed),
                        seed=args.seed)
                    prune_seconds = time.perf_counter() - t0
                    cell, _, _ = both(model, small, bundle, args.seed, plan=plan)
                    save(key, {**cell, "prune_seconds": prune_seconds})
            continue
        name, settings = parse(config, levels)
        keys = {lv: f"{config}|{lv:g}" for lv in levels}
        if all(k in res["cells"] for k in keys.values()):
            continue
        start = time.perf_counter()

        def on_level(level, plan, keys=keys, start=start):
            if keys[level] in res["cells"]:
                return
            t0 = time.perf_counter()
            cell, _, _ = both(model, plan.apply(model), bundle, args.seed, masks=plan.masks)
            save(keys[level], {**cell, "sparsity": plan.sparsity,
                               "prune_seconds": t0 - start})

        runs.prune_masks(model, bundle, name, settings, seed=args.seed, levels=levels,
                         on_level=on_level)
    for spec in want_ft:
        key = f"{spec}|ft1"
        if key in res["cells"]:
            continue
        config, _, level = spec.partition("|")
        if config.partition("@")[0] in CHANNEL_METHODS:  # "l1|macs0.5", "l1@errors|macs0.5"
            small, plan = runs.channel_plan(
                model, bundle.example(), *channel_spec(config, float(level.removeprefix("macs"))),
                batches=D.batches(bundle.train, bundle, 64, shuffle=True, seed=args.seed),
                seed=args.seed)
            cell, recal, fixed = both(model, small, bundle, args.seed, plan=plan)
            masks = None
        else:
            name, settings = parse(config)
            settings = runs.Unstructured(**{**settings.__dict__, "sparsity": float(level)})
            plan = runs.prune_masks(model, bundle, name, settings, seed=args.seed,
                                    levels=[lv for lv in LEVELS if lv < float(level)])
            masks = plan.masks
            cell, recal, fixed = both(model, plan.apply(model), bundle, args.seed, masks=masks)
        out = dict(cell)
        for tag, m in (("recalibrated", recal), ("repaired", fixed)):
            h = train.fit(m, bundle, epochs=1, lr=FINETUNE.lr, batch_size=FINETUNE.batch_size,
                          masks=masks, seed=args.seed, progress=False)
            out[f"{tag}_finetuned"] = test_top1(m, bundle)
            out[f"{tag}_epoch_seconds"] = h["seconds"]
        save(key, out)


if __name__ == "__main__":
    main()
