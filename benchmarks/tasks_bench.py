"""Two tasks that are not classification, through the whole pipeline: a regression (scikit-learn's
bundled diabetes data, an MLP, mean squared error) and a tiny causal language model (bytes of the
Python standard library's sources, perplexity). For each, three seeds of: magnitude + repair,
FVW, Taylor (masks, 50% sparsity, no fine-tuning) and SLIMING at 50% MACs with fine-tuning; then
one `bench.run` grid per task (magnitude, Taylor at 50 / 70% sparsity, one epoch of fine-tuning)
to show the tables take the task's metric.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tasks_bench.py [--out benchmarks/results/tasks]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunewise import bench, runs, tasks, train
from prunewise import data as D


class TinyLM(nn.Module):
    """Byte embeddings, each position mixed with the three before it, a residual MLP, logits."""

    def __init__(self, vocab: int = 256, dim: int = 64, window: int = 4):
        super().__init__()
        self.window = window
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(window * dim, dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        past = [torch.cat([torch.zeros_like(h[:, :k]), h[:, :h.shape[1] - k]], 1)
                for k in range(self.window)]
        h = torch.tanh(self.mix(torch.cat(past, -1)))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


def text_bundle(length: int = 64, files: int = 40) -> D.DataBundle:
    """Byte sequences from the standard library's sources, split by file (train / test)."""
    root = Path(os.__file__).parent
    paths = sorted(p for p in root.glob("*.py"))[:files]
    def chunks(ps):
        out = []
        for p in ps:
            b = np.frombuffer(p.read_bytes(), dtype=np.uint8)
            for i in range(0, len(b) - length, length):
                out.append(torch.from_numpy(b[i:i + length].astype(np.int64)))
        return torch.stack(out)
    train_ids, test_ids = chunks(paths[:-6]), chunks(paths[-6:])
    g = torch.Generator().manual_seed(0)
    train_ids = train_ids[torch.randperm(len(train_ids), generator=g)[:3000]]
    test_ids = test_ids[:400]
    return D.from_tensors((train_ids, train_ids), (test_ids, test_ids), name="stdlib-bytes")


def regression_bundle() -> D.DataBundle:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    g = np.random.RandomState(0).permutation(len(y))
    x, y = torch.tensor(x[g], dtype=torch.float32), torch.tensor(y[g], dtype=torch.float32)
    return D.from_tensors((x[:350], y[:350]), (x[350:], y[350:]), name="diabetes")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 1))


TASKS = {
    "regression": dict(bundle=regression_bundle, model=mlp, task=tasks.regression,
                       fit=dict(epochs=60, lr=0.01, batch_size=32),
                       finetune=runs.FineTune(epochs=5, lr=0.005, batch_size=32)),
    "causal_lm": dict(bundle=text_bundle, model=TinyLM, task=tasks.causal_lm,
                      fit=dict(epochs=6, lr=0.05, batch_size=32),
                      finetune=runs.FineTune(epochs=1, lr=0.01, batch_size=32)),
}
RUNS = [("magnitude+repair", "magnitude", True), ("fvw", "fvw", False),
        ("taylor", "taylor", False)]
QUIET = runs.Measurement(latency=False)


def one_task(name: str, spec: dict, seeds, out: Path) -> dict:
    bundle, task = spec["bundle"](), spec["task"]()
    res = {"metric": task.describe(), "seeds": {}}
    for seed in seeds:
        torch.manual_seed(seed)
        model = spec["model"]()
        t0 = time.perf_counter()
        train.fit(model, bundle, seed=seed, progress=False, task=task, **spec["fit"])
        row = {"train_seconds": time.perf_counter() - t0}
        for label, method, repair in RUNS:
            settings = runs.Unstructured(sparsity=0.5, samples=256, keep=0.8,
                                         repair=runs.Repair(enabled=repair))
            _, _, rep = runs.run_unstructured(model, bundle, method, settings, task=task,
                                              seed=seed, measurement=QUIET)
            row[label] = {s: v and v["test"] for s, v in rep["scores"].items()}
        _, _, rep = runs.run_structured(model, bundle, "sliming", runs.Structured(macs=0.5),
                                        finetune=spec["finetune"], task=task, seed=seed,
                                        measurement=QUIET)
        row["sliming+finetune"] = {s: v and v["test"] for s, v in rep["scores"].items()}
        row["sliming+finetune"]["macs_ratio"] = rep["macs"]["ratio"]
        res["seeds"][str(seed)] = row
        print(name, seed, json.dumps(row), flush=True)
        if seed == seeds[0]:
            summary = bench.run(out / f"grid-{name}", bench.Grid(("magnitude", "taylor"),
                                                                 (0.5, 0.7), (seed,)),
                                finetune=spec["finetune"], measurement=QUIET, task=task,
                                data=bundle, model=model)
            res["grid_md"] = (out / f"grid-{name}" / "grid.md").read_text()
            res["grid_rows"] = summary["rows"]
    res["summary"] = summarize(res["seeds"])
    return res


def summarize(by_seed: dict) -> dict:
    out = {}
    first = next(iter(by_seed.values()))
    for label, stages in first.items():
        if not isinstance(stages, dict):
            continue
        out[label] = {}
        for stage in stages:
            vals = [r[label][stage] for r in by_seed.values() if r[label][stage] is not None]
            if vals:
                out[label][stage] = (statistics.fmean(vals),
                                     statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/tasks")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default=None, choices=list(TASKS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, spec in TASKS.items():
        if args.only and name != args.only:
            continue
        res = one_task(name, spec, seeds, out)
        res["command"] = " ".join(sys.argv)
        (out / f"{name}.json").write_text(json.dumps(res, indent=1))
        print(res["grid_md"])


if __name__ == "__main__":
    main()
