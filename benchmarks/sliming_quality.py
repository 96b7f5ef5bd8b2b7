"""SLIMING quality: accuracy at 50% and 25% MACs for SLIMING, SLIMING-config + L1, L1-uniform,
random and CHIP-style, pruned, after BatchNorm recalibration and after the same short fine-tune,
over seeds. Every cell is one :func:`prunewise.runs.run_structured` run (as `prunewise prune
sliming`).

    .venv/bin/python benchmarks/sliming_quality.py                      # full: 3 seeds, 30 epochs
    .venv/bin/python benchmarks/sliming_quality.py --seeds 0 --epochs 10 --finetune-epochs 3

Base checkpoints are trained once by ``prunewise train`` (common.base_checkpoint) and reused, or
taken from ``--base`` (a pattern with {model} and {seed}). Runs with one intra-op thread
(OMP_NUM_THREADS=1): on a shared 2-core machine that is many times faster than two contending
threads. Writes benchmarks/results/sliming_quality.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402

from common import base_checkpoint, write_result  # noqa: E402
from prunewise import data as D  # noqa: E402
from prunewise import checkpoints, methods, runs  # noqa: E402

STAGES = ("pruned", "recalibrated", "finetuned")


def summarize(cells: list[dict]) -> dict:
    out = {}
    for stage in STAGES:
        vals = [c["accuracy"][stage]["test"] for c in cells if c["accuracy"].get(stage)]
        if vals:
            out[stage] = {"mean": statistics.mean(vals),
                          "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    out["macs_ratio"] = statistics.mean(c["macs"]["ratio"] for c in cells)
    return out


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16_bn"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--methods", nargs="+", default=list(runs.STRUCTURED), choices=runs.STRUCTURED)
    ap.add_argument("--data", default="digits", help="data set (prunewise.data.DATASETS)")
    ap.add_argument("--base", default=None, help="checkpoint pattern with {model} and {seed}")
    ap.add_argument("--epochs", type=int, default=30, help="base training epochs")
    ap.add_argument("--base-lr", type=float, default=None,
                    help="base training learning rate (default: prunewise train's)")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    ap.add_argument("--recalibrate-samples", type=int, default=512)
    ap.add_argument("--no-recalibrate", action="store_true")
    ap.add_argument("--min-channels", type=int, default=1, help="floor per group (all methods)")
    ap.add_argument("--min-ratio", type=float, default=0.0,
                    help="floor per group as a fraction of its channels (SLIMING configuration)")
    ap.add_argument("--name", default="sliming_quality")
    ap.add_argument("--toy", action="store_true",
                    help="instead: the SVGG toy over --seeds, to benchmarks/results/sliming_svgg.json")
    return ap.parse_args(argv)


def toy(args) -> None:
    from prunewise import toy as svgg

    res = [svgg.run(seed) for seed in args.seeds]
    for r in res:
        print(f"SVGG seed {r['seed']}: gem {r['gem_total']:.3f} one-shot {r['one_shot_total']:.3f} "
              f"random {r['random_total']:.3f} config {r['config']}", file=sys.stderr)
    write_result("sliming_svgg", {"seeds": args.seeds, "runs": res,
                                  "gem_all_100": all(r["gem"] == [1.0] * 5 for r in res),
                                  "config_exact": all(r["config_error"] == [0] * 5 for r in res)})


def one_seed(args, model_name: str, seed: int) -> list[dict]:
    folder = (Path(args.base.format(model=model_name, seed=seed)) if args.base else
              base_checkpoint(model_name, seed=seed, epochs=args.epochs, data=args.data,
                              extra=["--lr", str(args.base_lr)] if args.base_lr else None))
    model = checkpoints.load_model(folder)
    bundle = D.load(args.data, seed=model.prunewise_meta.get("data", {}).get("seed", 0))
    measurement = runs.Measurement(repeats=10)
    dense = runs.measure_dense(model, bundle, measurement)
    print(f"{model_name} s{seed}: base {folder.name}, dense test top-1 "
          f"{runs.stage_scores(dense)['test']:.4f}", file=sys.stderr, flush=True)
    finetune = runs.FineTune(epochs=args.finetune_epochs, lr=args.lr)
    recal = runs.Recalibration(samples=args.recalibrate_samples, enabled=not args.no_recalibrate)
    out = []
    for budget in args.budgets:
        for method in args.methods:
            own = (methods.SlimingSettings(min_ratio=args.min_ratio)
                   if method in ("sliming", "sliming-l1") else None)
            settings = runs.Structured(macs=budget, min_channels=args.min_channels, options=own)
            _, _, rep = runs.run_structured(model, bundle, method, settings, finetune=finetune,
                                            recalibration=recal, measurement=measurement,
                                            seed=seed, dense=dense)
            out.append({"model": model_name, **runs.cell(rep)})
            acc = rep["accuracy"]
            print(f"{model_name} s{seed} {budget:.2f} {method:<10} macs {rep['macs']['ratio']:.3f} "
                  + " -> ".join(f"{s} {acc[s]['test']:.4f}" for s in STAGES if acc[s])
                  + f" (dense {acc['dense']['test']:.4f})", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.toy:
        return toy(args)
    start = time.perf_counter()
    cells: list[dict] = []
    for model_name in args.models:
        for seed in args.seeds:
            cells += one_seed(args, model_name, seed)
            table = {}
            for c in cells:
                table.setdefault(f"{c['model']}@{c['budget']['macs']}", {}).setdefault(
                    c["method"], []).append(c)
            summary = {k: {m: summarize(v) for m, v in d.items()} for k, d in table.items()}
            goal = {k: d["sliming"]["finetuned"]["mean"] >= d["l1"]["finetuned"]["mean"]
                    for k, d in summary.items()
                    if "finetuned" in d.get("sliming", {}) and "finetuned" in d.get("l1", {})}
            write_result(args.name, {
                "config": {**vars(args), "threads": torch.get_num_threads()},
                "summary": summary, "sliming_ge_l1_uniform_after_finetune": goal,
                "runs": cells, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
