"""How long structured planning takes, and where the time goes: SLIMING's analysis (tracing,
groups, R and spectra, cost model), configuration, selection and surgery, on vgg16_bn (32x32)
and resnet50 (224x224), next to Torch-Pruning's own L1 pruning of the same model at the same
channel fraction, in the same run; and the functions that take the most time (cProfile).

    .venv/bin/python benchmarks/planning_speed.py [--threads 2]

Run it with the machine otherwise idle. Writes ``benchmarks/results/planning-speed-tT.json``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch

from common import environment
from prunewise import files, models, sliming


def torch_pruning_l1(model, x, ratio: float) -> float:
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"environment": environment(), "threads": args.threads, "models": {}}
    for name, size, classes in (("vgg16_bn", 32, 10), ("resnet50", 224, 1000)):
        torch.manual_seed(0)
        model = models.create(name, num_classes=classes, in_channels=3).eval()
        x = torch.randn(1, 3, size, size)
        sliming.prune(model, x, macs=0.5)   # warm-up: imports, first traces
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        _, plan = sliming.prune(model, x, macs=0.5)
        profile.disable()
        total = time.perf_counter() - t0
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
        tp_seconds = torch_pruning_l1(models.create(name, num_classes=classes,
                                                    in_channels=3).eval(), x, 0.3)
        out["models"][name] = {"input": [1, 3, size, size], "sliming_total": total,
                               "sliming_parts": plan.meta["seconds"],
                               "torch_pruning_l1": tp_seconds,
                               "profile_top": text.getvalue().splitlines()[:60]}
        print(name, f"SLIMING {total:.2f} s ({ {k: round(v, 2) for k, v in plan.meta['seconds'].items()} }), "
                    f"Torch-Pruning L1 {tp_seconds:.2f} s", flush=True)
    path = Path(__file__).parent / "results" / f"planning-speed-t{args.threads}.json"
    files.write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
