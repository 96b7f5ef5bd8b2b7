"""Latency budgets on this machine: for a Fashion-MNIST base model, each structured method at
``--latency F`` (batch size B) and, side by side, at the MACs budget a user would pick for the
same speed-up (F of the MACs); per cell the measured latency ratio (pruned / dense, timed in
one window), the predicted one, the MACs kept, the accuracy after repair, the search's prunes
and the table's cost (built, or reused: 0 s).

    .venv/bin/python benchmarks/latency_bench.py --model resnet56 [--methods l1,sliming]
        [--budgets 0.7,0.5] [--batches 64] [--threads 2]

Run it with the machine otherwise idle. Writes ``benchmarks/results/fashion[-MODEL]/latency-
budgets-tT.json`` after every cell; finished cells are not recomputed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from common import environment
from fashion_common import base_path, results_dir
from prunewise import checkpoints, files, measure, repair, runs, train, utils
from prunewise import data as D
from prunewise.errors import PrunewiseError


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="l1,sliming")
    ap.add_argument("--budgets", default="0.7,0.5")
    ap.add_argument("--batches", default="64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = checkpoints.load_model(base_path(args.model, args.seed)).eval()
    bundle = D.load("fashion-mnist")
    x = bundle.example()
    path = results_dir(args.model) / f"latency-budgets-t{args.threads}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"model": args.model,
                                                                "cells": {}}
    res["environment"] = environment()
    res["threads"] = args.threads
    cache = tempfile.mkdtemp(prefix="latency-tables-")
    fix = runs.Repair(enabled=True)

    def save(key, cell):
        res["cells"][key] = cell
        print(args.model, key, json.dumps(cell)[:300], flush=True)
        files.write_json(path, res)

    for batch in [int(b) for b in args.batches.split(",")]:
        xb = utils.repeat_batch(x, batch)
        for method in args.methods.split(","):
            for budget in [float(b) for b in args.budgets.split(",")]:
                for kind in ("latency", "macs"):
                    key = f"{method}|{kind}{budget:g}|b{batch}"
                    if key in res["cells"]:
                        continue
                    settings = runs.Structured(latency=budget, latency_batch=batch,
                                               latency_cache=cache) if kind == "latency" \
                        else runs.Structured(macs=budget)
                    t0 = time.perf_counter()
                    try:
                        small, plan = runs.channel_plan(
                            model, x, method, settings, seed=args.seed,
                            batches=D.batches(bundle.train, bundle, 64, shuffle=True, seed=0))
                    except PrunewiseError as e:   # a budget this machine cannot meet: recorded
                        save(key, {"error": str(e), "prune_seconds": time.perf_counter() - t0})
                        continue
                    seconds = time.perf_counter() - t0
                    got = measure.paired_latency(model, small, xb, warmup=3, repeats=30)
                    one = measure.paired_latency(model, small, utils.repeat_batch(x, 1),
                                                 warmup=3, repeats=30)
                    fixed = small
                    repair.reconstruct(model, fixed, runs.calibration_batches(bundle, fix, 0),
                                       plan=plan, samples=fix.samples, damp=fix.damp,
                                       progress=False)
                    top1 = train.evaluate_split(fixed, bundle, "test", batch_size=500)["top1"]
                    table = plan.meta.get("latency_table") or {}
                    save(key, {
                        "measured": got["ratio"], "spread": got["spread"],
                        "measured_batch1": one["ratio"], "spread_batch1": one["spread"],
                        "predicted": (plan.meta["predicted_latency_ms"] /
                                      plan.meta["original_latency_ms"])
                        if "predicted_latency_ms" in plan.meta else None,
                        "macs": plan.meta["predicted_macs"] / plan.meta["original_macs"],
                        "repaired_top1": top1, "prune_seconds": seconds,
                        "prunes": len(plan.meta.get("latency_search") or []) or 1,
                        "table_seconds": table.get("seconds"), "table_reused": table.get(
                            "reused"), "search": plan.meta.get("latency_search")})


if __name__ == "__main__":
    main()
