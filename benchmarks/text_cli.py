"""A text model of the user's own, pruned through the command line with ``--model``.

The task is generated (no download): sequences of 32 token ids from a vocabulary of 100; the
class (one of 4) is the keyword group whose tokens occur most often, among noise tokens. The
script writes the data set as ``--data tensors`` expects, then runs, as a user would::

    prunewise train --model benchmarks/text_models.py:MODEL --data tensors --root DATA ...
    prunewise prune fvw BASE --model ... --method magnitude --sparsity 0.9 --repair ...
    prunewise prune fvw BASE --model ... --method fvw --sparsity 0.9 --repair ...
    prunewise prune sliming BASE --model ... --macs 0.5 --repair ...

each pruned model measured without and with one epoch of fine-tuning, and collects the
reports into ``benchmarks/results/text/text-MODEL-sS.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_cli.py --model lstm --seed 0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import HERE, environment
from prunewise import files

VOCAB, CLASSES, LENGTH = 100, 4, 32


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences and labels: tokens 0..19 are keywords, five per class; the rest noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randint(20, VOCAB, (n, LENGTH), generator=g)
    for i in range(n):
        counts = torch.randint(0, 3, (CLASSES,), generator=g)
        counts[y[i]] = int(counts.max()) + 1 + int(torch.randint(0, 2, (1,), generator=g))
        pos = torch.randperm(LENGTH, generator=g)[: int(counts.sum())]
        words = torch.cat([c * 5 + torch.randint(0, 5, (int(k),), generator=g)
                           for c, k in enumerate(counts)])
        x[i, pos] = words
    return x, y


def prunewise(*args: str) -> None:
    cmd = [sys.executable, "-m", "prunewise", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lstm", choices=("lstm", "transformer"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    out = HERE / "results" / "text"
    path = out / f"text-{args.model}-s{args.seed}.json"
    factory = f"{HERE / 'text_models.py'}:{args.model}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        xtr, ytr = generate(20_000, 1000 + args.seed)
        xte, yte = generate(4_000, 7)
        save_file({"train.x": xtr, "train.y": ytr, "test.x": xte, "test.y": yte},
                  str(tmp / "text.safetensors"))
        data = ["--model", factory, "--data", "tensors", "--root", tmp / "text.safetensors",
                "--data-seed", "0"]
        prunewise("train", *data, "--epochs", args.epochs, "--optimizer", "adam", "--lr", "0.002",
                  "--weight-decay", "0", "--batch-size", "128", "--seed", args.seed, "--out",
                  tmp / "base", "--quiet")
        runs = {"magnitude": ["prune", "fvw", tmp / "base", *data, "--method", "magnitude",
                              "--sparsity", "0.9", "--keep", "0.9", "--samples", "512"],
                "fvw": ["prune", "fvw", tmp / "base", *data, "--method", "fvw",
                        "--sparsity", "0.9", "--keep", "0.9", "--samples", "512"],
                "sliming": ["prune", "sliming", tmp / "base", *data, "--macs", "0.5"],
                "l1": ["prune", "sliming", tmp / "base", *data, "--macs", "0.5",
                       "--method", "l1"]}
        res = {"model": args.model, "seed": args.seed, "environment": environment(),
               "base": json.loads((tmp / "base" / "config.json").read_text())["meta"],
               "runs": {}}
        common = ["--repair", "--finetune-epochs", "1", "--optimizer", "adam", "--lr", "0.0005",
                  "--weight-decay", "0", "--finetune-batch-size", "128", "--seed", args.seed,
                  "--quiet"]
        for name, cmd in runs.items():
            prunewise(*cmd, *common, "--out", tmp / name)
            rep = json.loads((tmp / name / "report.json").read_text())
            res["runs"][name] = {k: rep.get(k) for k in ("accuracy", "sparsity", "macs", "params",
                                                          "left_out", "latency_ms",
                                                          "stage_seconds")}
            res["runs"][name]["command"] = "prunewise " + " ".join(
                str(c).replace(str(tmp), "TMP") for c in [*cmd, *common])
            out.mkdir(parents=True, exist_ok=True)
            files.write_json(path, res)
    print(json.dumps({k: v["accuracy"] for k, v in res["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
