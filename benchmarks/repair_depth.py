"""Repair time and memory against depth: resnet20 / resnet56 / resnet110 on Fashion-MNIST
inputs, global magnitude masks at 90%, the pipeline's repair (256 calibration images, damp
0.01). Each model is repaired in a fresh single-thread process, so its peak resident memory
is its own. Untrained weights: the time and memory of a repair do not depend on them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/repair_depth.py [--models resnet20,resnet56,resnet110]

Writes ``benchmarks/results/repair_depth.json``: per model, the layers repaired, the repair
seconds, the peak resident memory, and the time ratio to the first model next to its depth
ratio (the issue's bound: time ratio <= 1.3 x depth ratio).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import environment

OUT = Path(__file__).parent / "results" / "repair_depth.json"


def one(name: str) -> dict:
    import torch

    from prunewise import data as D
    from prunewise import models, repair, runs

    torch.manual_seed(0)
    bundle = D.load("fashion-mnist")
    model = models.create(name, num_classes=10, in_channels=1).eval()
    plan = runs.prune_masks(model, bundle, "magnitude",
                            runs.Unstructured(sparsity=0.9, track_accuracy=False))
    fixed = plan.apply(model)
    fix = runs.Repair(enabled=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    repair.reconstruct(model, fixed, runs.calibration_batches(bundle, fix, 0), masks=plan.masks,
                       samples=fix.samples, damp=fix.damp, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": name, "layers": len(plan.masks), "repair_seconds": seconds,
            "peak_rss_mb": peak / 1024, "rss_before_repair_mb": before / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56,resnet110")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for name in args.models.split(","):
        got = subprocess.run([sys.executable, __file__, "--one", name], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(got.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    first = rows[0]
    for r in rows:
        r["depth_ratio"] = r["layers"] / first["layers"]
        r["time_ratio"] = r["repair_seconds"] / first["repair_seconds"]
        r["time_over_depth"] = r["time_ratio"] / r["depth_ratio"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows, "environment": environment()}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
