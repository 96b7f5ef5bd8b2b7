"""FVW quality on digits: test accuracy at several global sparsities, no fine-tuning, next to
magnitude, Taylor and random; plus FVW with a short fine-tune at 90% vs the dense model.

Base models are trained by our own CLI (``common.base_checkpoint``). One pruning run per
(model, seed, method) goes to the highest level; the schedule stops exactly on every lower level
on the way (``levels=``), where the masked model is evaluated.

    .venv/bin/python benchmarks/fvw_quality.py                       # full: 2 models x 3 seeds
    .venv/bin/python benchmarks/fvw_quality.py --quick               # 1 seed, resnet20, fewer levels
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common  # noqa: E402
from prunewise import baselines, data as D, files, train  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg16_bn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--levels", default="0.8,0.9,0.95,0.98")
    ap.add_argument("--methods", default="fvw,magnitude,taylor,random")
    ap.add_argument("--keep", type=float, default=0.98)
    ap.add_argument("--samples", type=int, default=2048, help="attribution samples (train split)")
    ap.add_argument("--alpha", type=float, default=1e-8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="base model training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="FVW at 90%%: 0 = skip")
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help="resnet20, seed 0, levels 0.9/0.98, keep 0.9, 512 samples")
    ap.add_argument("--name", default="fvw_quality")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.levels = "resnet20", "0", "0.9,0.98"
        args.keep, args.samples = 0.9, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = sorted(float(v) for v in args.levels.split(","))
    methods = args.methods.split(",")
    bundle = D.load("digits", seed=0)
    runs = []
    for arch in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            ckpt = common.base_checkpoint(arch, seed=seed, epochs=args.epochs)
            model = files.load_model(ckpt)
            dense = train.evaluate_split(model, bundle, "test")["top1"]
            row = {"model": arch, "seed": seed, "checkpoint": str(ckpt), "dense": dense,
                   "accuracy": {}, "seconds": {}}

            def attribution(seed=seed):
                return D.batches(bundle.train, bundle, 128, shuffle=True, seed=seed,
                                 limit=args.samples)

            for method in methods:
                acc = row["accuracy"].setdefault(method, {})
                snap = {}

                def on_level(level, plan, acc=acc, snap=snap):
                    acc[str(level)] = train.evaluate_split(plan.apply(model), bundle, "test")["top1"]
                    if abs(level - 0.9) < 1e-12:
                        snap["plan"] = plan

                kw = dict(sparsity=max(levels), keep=args.keep, seed=seed, levels=levels,
                          on_level=on_level, samples=args.samples)
                if method == "fvw":
                    kw.update(alpha=args.alpha, steps=args.steps)
                start = time.perf_counter()
                baselines.get(method)(model, attribution, **kw)
                row["seconds"][method] = time.perf_counter() - start
                print(f"{arch} s{seed} {method:>9}: dense {dense:.4f} "
                      + " ".join(f"{k}:{v:.4f}" for k, v in acc.items())
                      + f" ({row['seconds'][method]:.0f}s)", file=sys.stderr, flush=True)
                if method == "fvw" and args.finetune_epochs and "plan" in snap:
                    plan = snap["plan"]
                    pruned = plan.apply(model)
                    train.fit(pruned, bundle, epochs=args.finetune_epochs, lr=args.finetune_lr,
                              masks=plan.masks, seed=seed, progress=False)
                    row["fvw_finetuned_90"] = train.evaluate_split(pruned, bundle, "test")["top1"]
                    row["fvw_finetuned_90_gap"] = dense - row["fvw_finetuned_90"]
                    print(f"{arch} s{seed} fvw 90% fine-tuned {args.finetune_epochs} epochs: "
                          f"{row['fvw_finetuned_90']:.4f} (dense {dense:.4f})", file=sys.stderr,
                          flush=True)
            runs.append(row)
    summary = {}
    for arch in args.models.split(","):
        rows = [r for r in runs if r["model"] == arch]
        s = {"dense": statistics.mean(r["dense"] for r in rows)}
        for method in methods:
            s[method] = {str(lv): statistics.mean(r["accuracy"][method][str(lv)] for r in rows)
                         for lv in levels}
        if all("fvw_finetuned_90" in r for r in rows):
            s["fvw_finetuned_90"] = statistics.mean(r["fvw_finetuned_90"] for r in rows)
        if "fvw" in methods and "magnitude" in methods:
            s["fvw_minus_magnitude"] = {str(lv): s["fvw"][str(lv)] - s["magnitude"][str(lv)]
                                        for lv in levels}
        summary[arch] = s
    common.write_result(args.name, {
        "settings": {k: v for k, v in vars(args).items()}, "levels": levels,
        "note": "test accuracy (fraction) of the masked model, no fine-tuning; mean over seeds",
        "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
