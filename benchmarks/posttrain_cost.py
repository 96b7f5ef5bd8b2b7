"""Cost of the post-training methods next to one training epoch, measured in the same run on
the same threads: resnet20 Fashion-MNIST base (seed 0), one epoch of (masked) fine-tuning at
the repair benchmark's settings, then each method at 90% sparsity with the repair benchmark's
calibration (512 samples) and the pipeline's repair. Run it alone on the machine.

    .venv/bin/python benchmarks/posttrain_cost.py [--threads 2] [--methods exactobs@errors,...]

Writes ``benchmarks/results/fashion/cost-tT.json``: per method the pruning seconds, the repair
seconds, their sum over the epoch's seconds, and the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import torch

from common import environment
from fashion_common import base_path, results_dir
from prunewise import checkpoints, files, repair, runs, train
from prunewise import data as D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--methods", default="magnitude@global,magnitude@errors,exactobs@uniform,"
                                         "exactobs@errors,sparsegpt@errors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = checkpoints.load_model(base_path("resnet20", 0)).eval()
    bundle = D.load("fashion-mnist")
    out = {"threads": args.threads, "sparsity": args.sparsity, "environment": environment()}
    t0 = time.perf_counter()
    train.fit(copy.deepcopy(model), bundle, epochs=1, lr=0.02, batch_size=128, seed=0,
              progress=False)
    out["epoch_seconds"] = time.perf_counter() - t0
    print("epoch", out["epoch_seconds"], flush=True)
    fix = runs.Repair(enabled=True)
    out["methods"] = {}
    for spec in args.methods.split(","):
        name, _, allocation = spec.partition("@")
        settings = runs.Unstructured(sparsity=args.sparsity, samples=512, track_accuracy=False,
                                     allocation=allocation)
        t0 = time.perf_counter()
        plan = runs.prune_masks(model, bundle, name, settings, seed=0)
        prune = time.perf_counter() - t0
        fixed = plan.apply(model)
        t0 = time.perf_counter()
        repair.reconstruct(model, fixed, runs.calibration_batches(bundle, fix, 0),
                           masks=plan.masks, samples=fix.samples, damp=fix.damp, progress=False)
        fix_s = time.perf_counter() - t0
        row = {"prune_seconds": prune, "repair_seconds": fix_s,
               "of_epoch": (prune + fix_s) / out["epoch_seconds"],
               "test_top1": train.evaluate_split(fixed, bundle, "test", batch_size=500)["top1"],
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        out["methods"][spec] = row
        print(spec, row, flush=True)
        path = results_dir("resnet20") / f"cost-t{args.threads}.json"
        files.write_json(path, out)


if __name__ == "__main__":
    main()
