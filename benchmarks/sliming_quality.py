"""SLIMING quality on digits: accuracy at 50% and 25% MACs for SLIMING, SLIMING-config + L1,
L1-uniform, random and CHIP-style, before and after the same short fine-tune, over seeds.

    .venv/bin/python benchmarks/sliming_quality.py                      # full: 3 seeds, 30 epochs
    .venv/bin/python benchmarks/sliming_quality.py --seeds 0 --epochs 10 --finetune-epochs 3

Base checkpoints are trained once by ``prunewise train`` (common.base_checkpoint) and reused.
Runs with one intra-op thread (OMP_NUM_THREADS=1): on a shared 2-core machine that is many
times faster than two contending threads. Writes benchmarks/results/sliming_quality.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402

from common import base_checkpoint, write_result  # noqa: E402
from prunewise import data as D  # noqa: E402
from prunewise import files, train  # noqa: E402
from prunewise.filter_baselines import METHODS  # noqa: E402
from prunewise.sliming import pipeline  # noqa: E402


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("test_accuracy", "finetuned_accuracy", "macs_ratio"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            out[key] = {"mean": statistics.mean(vals),
                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16_bn"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--epochs", type=int, default=30, help="base training epochs")
    ap.add_argument("--base-lr", type=float, default=None,
                    help="base training learning rate (default: prunewise train's)")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    ap.add_argument("--min-channels", type=int, default=1, help="floor per group (all methods)")
    ap.add_argument("--min-ratio", type=float, default=0.0,
                    help="floor per group as a fraction of its channels (SLIMING configuration)")
    ap.add_argument("--name", default="sliming_quality")
    ap.add_argument("--toy", action="store_true",
                    help="instead: the SVGG toy over --seeds, to benchmarks/results/sliming_svgg.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.toy:
        from prunewise.sliming import toy
        res = [toy.run(seed) for seed in args.seeds]
        for r in res:
            print(f"SVGG seed {r['seed']}: gem {r['gem_total']:.3f} one-shot {r['one_shot_total']:.3f} "
                  f"random {r['random_total']:.3f} config {r['config']}", file=sys.stderr)
        write_result("sliming_svgg", {"seeds": args.seeds, "runs": res,
                                      "gem_all_100": all(r["gem"] == [1.0] * 5 for r in res),
                                      "config_exact": all(r["config_error"] == [0] * 5 for r in res)})
        return
    start = time.perf_counter()
    runs: list[dict] = []
    for model_name in args.models:
        for seed in args.seeds:
            folder = base_checkpoint(model_name, seed=seed, epochs=args.epochs, extra=(
                ["--lr", str(args.base_lr)] if args.base_lr else None))
            model = files.load_model(folder)
            bundle = D.load("digits", seed=model.prunewise_meta.get("data", {}).get("seed", 0))
            dense = train.evaluate_split(model, bundle, "test")["top1"]
            print(f"{model_name} s{seed}: base {folder.name}, dense test top-1 {dense:.4f}",
                  file=sys.stderr, flush=True)
            for budget in args.budgets:
                for method in args.methods:
                    _, _, rep = pipeline.run(model, bundle, method, macs=budget,
                                             min_channels=args.min_channels,
                                             min_ratio=args.min_ratio,
                                             finetune_epochs=args.finetune_epochs, lr=args.lr,
                                             seed=seed, quiet=True, dense_accuracy=dense)
                    row = {"model": model_name, "seed": seed, "budget": budget, "method": method,
                           "dense_test_accuracy": dense, "test_accuracy": rep["test_accuracy"],
                           "finetuned_accuracy": rep.get("finetuned_accuracy"),
                           "macs_ratio": rep["macs_ratio"], "params_ratio": rep["params_ratio"],
                           "prune_seconds": rep["prune_seconds"], "seconds": rep["seconds"]}
                    runs.append(row)
                    print(f"{model_name} s{seed} {budget:.2f} {method:<10} macs {row['macs_ratio']:.3f} "
                          f"acc {row['test_accuracy']:.4f} -> ft {row['finetuned_accuracy']:.4f} "
                          f"(dense {dense:.4f})", file=sys.stderr, flush=True)
            table = {}
            for r in runs:
                key = f"{r['model']}@{r['budget']}"
                table.setdefault(key, {}).setdefault(r["method"], []).append(r)
            summary = {k: {m: summarize(v) for m, v in d.items()} for k, d in table.items()}
            goal = {}
            for k, d in summary.items():
                if "sliming" in d and "l1" in d and "finetuned_accuracy" in d["sliming"]:
                    goal[k] = (d["sliming"]["finetuned_accuracy"]["mean"]
                               >= d["l1"]["finetuned_accuracy"]["mean"])
            write_result(args.name, {
                "config": {**vars(args), "data": "digits", "threads": torch.get_num_threads()},
                "summary": summary, "sliming_ge_l1_uniform_after_finetune": goal,
                "runs": runs, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
