"""Digests of what pruning produces for fixed inputs: masks of every mask method (FVW in three
modes), SLIMING's kept channels and forward pass, and the whole pipeline (runs.run_unstructured /
run_structured) for every method: masks or channel counts, forward pass, accuracies. Run it on
two versions and compare the JSON files: a refactor must leave every entry the same.

    .venv/bin/python benchmarks/golden_outputs.py OUT.json
    PYTHONPATH=/other/checkout/src .venv/bin/python benchmarks/golden_outputs.py OTHER.json
"""
import hashlib
import json
import sys

import torch

from prunewise import baselines, fvw, models, runs, sliming, train
from prunewise import data as D

torch.set_num_threads(1)


def h(t):
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def hm(masks):
    return h(torch.cat([masks[k].flatten().to(torch.uint8) for k in sorted(masks)]))


out = {}
b = D.load("digits", seed=0)
torch.manual_seed(0)
m = models.create("resnet20", num_classes=10, in_channels=1)
train.fit(m, b, epochs=1, seed=0, progress=False)
x = torch.linspace(-1, 1, 4 * 256).reshape(4, 1, 16, 16)
batches = lambda: D.batches(b.train, b, 64, shuffle=True, seed=0, limit=128)
kw = dict(sparsity=0.6, keep=0.7, samples=128)
out["fvw"] = hm(fvw.prune(m, batches, **kw).masks)
out["fvw_cg"] = hm(fvw.prune(m, batches, class_groups=2, descent=True, **kw).masks)
out["fvw_recal"] = hm(fvw.prune(m, batches, recalibrate=True, **kw).masks)
for name in ("magnitude", "taylor", "random", "obd"):
    out[name] = hm(getattr(baselines, name)(m, batches, seed=1, **kw).masks)
sm, sp = sliming.prune(m, x[:1], macs=0.5)
out["sliming"] = {k: v.tolist() for k, v in sp.keep.items()}
out["sliming_fwd"] = h(sm.eval()(x))
ru = runs.Unstructured(sparsity=0.6, keep=0.7, samples=128)
fin = runs.FineTune(epochs=1, lr=0.01)
for meth in ("fvw", "magnitude", "taylor", "obd"):
    pruned, plan, rep = runs.run_unstructured(m, b, meth, ru, finetune=fin, measurement=runs.Measurement(latency=False), seed=0)
    out["run_" + meth] = [hm(plan.masks), h(pruned.eval()(x)), rep["accuracy"]["pruned"], rep["accuracy"]["recalibrated"], rep["accuracy"]["finetuned"]]
for meth in ("sliming", "l1", "random", "chip", "sliming-l1"):
    pruned, plan, rep = runs.run_structured(m, b, meth, runs.Structured(macs=0.5), finetune=fin, measurement=runs.Measurement(latency=False), seed=0)
    out["run_" + meth] = [rep["counts"], h(pruned.eval()(x)), rep["accuracy"]["recalibrated"], rep["accuracy"]["finetuned"]]
json.dump(out, open(sys.argv[1], "w"), indent=1, sort_keys=True)
print("wrote", sys.argv[1])
