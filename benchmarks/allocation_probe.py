"""Which half of a mask method matters: how much each layer keeps, or which weights it keeps?

For a saved unstructured plan (``fashion_quality.py unstructured`` writes them under
``plans-sS/`` of the model's results folder), build a one-shot mask from the dense model that
keeps the plan's count in every tensor, filled with that tensor's largest ``|w|``: the plan's
layer allocation with magnitude's choice within each layer. Each mask is recalibrated (512
training images) and measured on the test split, as the benchmark does; results go to
``allocation-sS.json`` there.

    .venv/bin/python benchmarks/allocation_probe.py --seed 1 --plans fvw+loop,magnitude
    .venv/bin/python benchmarks/allocation_probe.py --model resnet56 --seed 0
"""
from __future__ import annotations

import argparse
import json

import torch

from common import environment
from fashion_common import LEVELS as SPARSITIES
from fashion_common import base_path, results_dir
from prunewise import data as D
from prunewise import checkpoints, files, runs
from prunewise.plan import MaskPlan

LEVELS = tuple(str(lv) for lv in SPARSITIES)  # as fashion_quality names its plan folders


def refill_by_magnitude(model, plan: MaskPlan) -> MaskPlan:
    """The plan's per-tensor kept counts, each filled with the tensor's largest |w|."""
    named = dict(model.named_parameters())
    masks = {}
    for name, m in plan.masks.items():
        w = named[name].detach().abs().flatten()
        keep = torch.zeros_like(w, dtype=torch.bool)
        k = int(m.sum())
        if k:
            keep[torch.topk(w, k).indices] = True
        masks[name] = keep.view_as(m)
    return MaskPlan(masks, method=f"{plan.method}-allocation+magnitude")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plans", default="fvw+loop")
    ap.add_argument("--model", default="resnet20")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = checkpoints.load_model(base_path(args.model, args.seed)).eval()
    out = results_dir(args.model)
    bundle = D.load("fashion-mnist")
    quick = runs.Measurement(latency=False)
    dense = runs.measure_dense(model, bundle, quick)
    path = out / f"allocation-s{args.seed}.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    for spec in args.plans.split(","):
        key = f"{spec}-allocation+magnitude"
        for level in LEVELS:
            folder = out / f"plans-s{args.seed}" / f"{spec}-{level}"
            if level in res.get(key, {}) or not folder.is_dir():
                continue
            plan = refill_by_magnitude(model, MaskPlan.load(folder))
            _, rep = runs.finish_masks(model, bundle, plan, dense=dense,
                                       steps=runs.Steps(measurement=quick, seed=args.seed))
            res.setdefault(key, {})[level] = rep["accuracy"]["recalibrated"]["test"]
            print(f"seed {args.seed} {key} {level}: {res[key][level]:.4f}", flush=True)
            res["environment"] = environment()
            files.write_json(path, res)


if __name__ == "__main__":
    main()
