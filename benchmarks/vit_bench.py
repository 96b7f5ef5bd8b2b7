"""ViT benchmark: the zoo's ``vit_tiny`` trained on Fashion-MNIST, then pruned by FVW and global
magnitude to 90% sparsity and by SLIMING and L1-uniform to 50% of the MACs (whole attention
heads and MLP channels), each measured right after pruning, after repair, and after one epoch
of fine-tuning from the repaired model; the structured models' CPU latency at batch 1 and 64.
A ViT has no BatchNorm, so "recalibrated" equals "pruned" and is not a separate stage here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vit_bench.py --seed 0 [--epochs 6]

A missing base checkpoint (``benchmarks/checkpoints/vit_tiny-fashion-mnist-sS``) is trained
first: Adam, lr 1e-3, cosine, batch 128, random crop + flip, ``--epochs`` epochs, the best
epoch on the validation split kept. Mask methods prune iteratively (keep 0.9 per iteration, 512
attribution samples: the README's Fashion-MNIST settings); repair uses the pipeline's defaults
(256 calibration images, damp 0.01); fine-tuning: Adam, lr 2e-4, one epoch (masked for masks).
Writes ``benchmarks/results/fashion-vit_tiny/vit-sS.json`` after every cell; finished cells are
not recomputed.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from common import environment
from fashion_common import base_path, results_dir
from prunewise import checkpoints, files, measure, models, repair, runs, train
from prunewise import data as D

MODEL = "vit_tiny"
FIX = runs.Repair(enabled=True)
CELLS = ("magnitude|0.9", "fvw|0.9", "sliming|macs0.5", "l1|macs0.5")


def top1(model, bundle) -> float:
    return train.evaluate_split(model, bundle, "test", batch_size=500)["top1"]


def base(seed: int, epochs: int, bundle) -> torch.nn.Module:
    path = base_path(MODEL, seed)
    if (path / checkpoints.CONFIG).is_file():
        return checkpoints.load_model(path).eval()
    torch.manual_seed(seed)
    model = models.create(MODEL, num_classes=10, in_channels=1)
    h = train.fit(model, bundle, epochs=epochs, lr=1e-3, optimizer="adam", weight_decay=0.0,
                  batch_size=128, seed=seed, progress=False)
    meta = {"data": {"name": "fashion-mnist", "root": None, "image_size": bundle.image_size,
                     "seed": 0},
            "train": {"epochs": epochs, "lr": 1e-3, "optimizer": "adam", "batch_size": 128,
                      "seconds": h["seconds"], "best_epoch": h["best_epoch"]},
            "test_accuracy": top1(model, bundle)}
    checkpoints.save_model(model, path, meta=meta)
    return model.eval()


def latency(model, bundle) -> dict:
    return {str(b): measure.latency_ms(model, bundle.example(b), repeats=20, threads=1)
            for b in (1, 64)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cells", default=",".join(CELLS))
    args = ap.parse_args(argv)
    bundle = D.load("fashion-mnist")
    model = base(args.seed, args.epochs, bundle)
    path = results_dir(MODEL) / f"vit-s{args.seed}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"model": MODEL, "seed": args.seed,
                                                               "cells": {}}
    res["environment"] = environment()
    res.setdefault("dense", top1(model, bundle))
    res.setdefault("dense_latency_ms", latency(model, bundle))
    res.setdefault("dense_macs", measure.macs(model, bundle.example()))

    def save(key: str, cell: dict) -> None:
        res["cells"][key] = cell
        print(MODEL, args.seed, key, json.dumps(cell), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, res)

    for key in [c for c in args.cells.split(",") if c]:
        if key in res["cells"]:
            continue
        method, _, level = key.partition("|")
        t0 = time.perf_counter()
        cell: dict = {}
        if level.startswith("macs"):
            pruned, plan = runs.channel_plan(model, bundle.example(), method,
                                             runs.Structured(macs=float(level[4:])), seed=args.seed)
            masks = None
            cell["macs_ratio"] = measure.macs(pruned, bundle.example()) / res["dense_macs"]
            cell["params_ratio"] = measure.params(pruned) / measure.params(model)
            cell["latency_ms"] = latency(pruned, bundle)
            cell["counts"] = plan.counts
            cell["heads"] = [b.attn.num_heads for b in pruned.blocks]
        else:
            plan = runs.prune_masks(model, bundle, method, runs.Unstructured(
                sparsity=float(level), keep=0.9, samples=512, track_accuracy=False),
                seed=args.seed)
            masks, pruned = plan.masks, plan.apply(model)
            cell["sparsity"] = plan.sparsity
        cell["prune_seconds"] = time.perf_counter() - t0
        cell["pruned"] = top1(pruned, bundle)
        fixed = copy.deepcopy(pruned)
        t0 = time.perf_counter()
        repair.reconstruct(model, fixed, runs.calibration_batches(bundle, FIX, args.seed),
                           masks=masks, plan=None if masks is not None else plan,
                           samples=FIX.samples, damp=FIX.damp, progress=False)
        cell["repair_seconds"] = time.perf_counter() - t0
        cell["repaired"] = top1(fixed, bundle)
        h = train.fit(fixed, bundle, epochs=1, lr=2e-4, optimizer="adam", weight_decay=0.0,
                      batch_size=128, masks=masks, seed=args.seed, progress=False)
        cell["repaired_finetuned"] = top1(fixed, bundle)
        cell["epoch_seconds"] = h["seconds"]
        save(key, cell)


if __name__ == "__main__":
    main()
