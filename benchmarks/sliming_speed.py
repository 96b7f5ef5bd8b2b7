"""SLIMING speed: spectra + configuration + selection time (targets: vgg16_bn at CIFAR shapes
<= 10 s, resnet50 at ImageNet shapes <= 60 s), and the real CPU speed-up of the pruned model:
latency of pruned vs dense vgg16_bn and resnet56 at 50% MACs, batch 1 and 64.

    .venv/bin/python benchmarks/sliming_speed.py [--repeats 10] [--threads N] [--skip-latency]

Writes benchmarks/results/sliming_speed.json. "analysis" = tracing the dependency graph,
building every group's R and its singular values, and the cost model; "configuration" = step
(i); "selection" = GEM; "surgery" (reported, not part of the target) = Torch-Pruning's pruning.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402

from common import write_result  # noqa: E402
from prunewise import measure, models, sliming  # noqa: E402

TARGETS = {"vgg16_bn": (32, 10.0, 10), "resnet50": (224, 60.0, 1000)}


def timing(name: str, size: int, classes: int, macs: float = 0.5) -> dict:
    torch.manual_seed(0)
    model = models.create(name, num_classes=classes, in_channels=3).eval()
    x = torch.randn(1, 3, size, size)
    t0 = time.perf_counter()
    pruned, plan = sliming.prune(model, x, macs=macs)
    total = time.perf_counter() - t0
    s = plan.meta["seconds"]
    core = s["spectra"] + s["configuration"] + s["selection"]
    return {"model": name, "input": [1, 3, size, size], "macs_budget": macs,
            "macs_ratio": measure.macs(pruned, x) / measure.macs(model, x),
            "seconds": {**s, "spectra_config_selection": core, "total_with_surgery": total}}


def latency(name: str, batch_sizes, repeats: int, threads: int | None) -> dict:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3).eval()
    x1 = torch.randn(1, 3, 32, 32)
    pruned, _ = sliming.prune(model, x1, macs=0.5)
    pruned.eval()
    out = {"model": name, "macs_ratio": measure.macs(pruned, x1) / measure.macs(model, x1),
           "params_ratio": measure.params(pruned) / measure.params(model), "batches": {}}
    for b in batch_sizes:
        x = torch.randn(b, 3, 32, 32)
        reps = repeats if b == 1 else max(3, repeats // 4)
        dense = measure.latency_ms(model, x, warmup=2, repeats=reps, threads=threads)
        small = measure.latency_ms(pruned, x, warmup=2, repeats=reps, threads=threads)
        out["batches"][str(b)] = {"dense_ms": dense, "pruned_ms": small, "speedup": dense / small}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for latency")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--name", default="sliming_speed")
    args = ap.parse_args(argv)
    res = {"config": vars(args), "timing": [], "latency": []}
    for name, (size, target, classes) in TARGETS.items():
        r = timing(name, size, classes)
        r["target_seconds"] = target
        r["meets_target"] = r["seconds"]["spectra_config_selection"] <= target
        res["timing"].append(r)
        print(f"{name} {size}x{size}: spectra+config+selection "
              f"{r['seconds']['spectra_config_selection']:.2f} s (target {target} s), "
              f"macs ratio {r['macs_ratio']:.4f}", file=sys.stderr, flush=True)
    if not args.skip_latency:
        for name in ("vgg16_bn", "resnet56"):
            r = latency(name, (1, 64), args.repeats, args.threads)
            res["latency"].append(r)
            for b, v in r["batches"].items():
                print(f"{name} batch {b}: dense {v['dense_ms']:.1f} ms, pruned {v['pruned_ms']:.1f} "
                      f"ms, speed-up {v['speedup']:.2f}x at MACs ratio {r['macs_ratio']:.3f}",
                      file=sys.stderr, flush=True)
    res["load_average"] = os.getloadavg()
    write_result(args.name, res)


if __name__ == "__main__":
    main()
