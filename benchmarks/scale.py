"""Scaling: one training epoch and one FVW attack pass with 1 and 2 processes on CPU (Gloo, one
intra-op thread per process), and, when CUDA is present, training throughput fp32 vs bf16.

    .venv/bin/python benchmarks/scale.py                 # defaults: resnet20 on digits
    .venv/bin/python benchmarks/scale.py --samples 256 --cuda-epochs 2

What is timed (wall clock, rank 0, between barriers so the slowest rank counts):

* ``train_epoch_s``: ``train.fit(..., epochs=1)`` on the digits training split (global batch
  ``--batch-size``, split over the processes; includes the validation pass of the epoch);
* ``attack_s``: one ``fvw.attribute`` pass (``steps=2``: three forward/backward sweeps) over
  ``--samples`` attribution samples, each process taking its share, gradients all-reduced.

``speedup`` is the 1-process time over the 2-process time. Two processes on a 2-core machine
gain little: both processes share the cores and the all-reduce adds latency. On CUDA: device
name, batch size, images/s of one training epoch in fp32 and with ``--amp bf16``, and the ratio.
Writes ``benchmarks/results/scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment  # noqa: E402

from prunewise import data as D  # noqa: E402
from prunewise import dist, fvw, models, train  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          RANK=str(rank), LOCAL_RANK=str(rank))
        dist.init(torch.device("cpu"))
    torch.set_num_threads(1)
    bundle = D.load("digits", seed=0)
    torch.manual_seed(0)
    model = models.create(args["model"], num_classes=10, in_channels=1)
    attribution = lambda: D.batches(bundle.train, bundle, 64, shuffle=True,  # noqa: E731
                                    seed=0, limit=args["samples"])  # the ranks share batches
    fvw.attribute(model, attribution, steps=1)  # warm-up (allocator, first-call overheads)
    res = {"train_epoch_s": timed(lambda: train.fit(model, bundle, epochs=1, progress=False,
                                                    batch_size=args["batch_size"])),
           "attack_s": timed(lambda: fvw.attribute(model, attribution, steps=2))}
    if dist.is_main():
        Path(out).write_text(json.dumps(res))
    dist.finish()


def cpu_part(args: dict) -> dict:
    rows = {}
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "r.json")
            if world == 1:
                worker(0, 1, 0, args, out)
            else:
                mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
            rows[str(world)] = json.loads(Path(out).read_text())
        print(f"cpu x{world}: {rows[str(world)]}", file=sys.stderr, flush=True)
    one, two = rows["1"], rows["2"]
    return {"processes": rows, "threads_per_process": 1, "cores": os.cpu_count(),
            "speedup": {k: one[k] / two[k] for k in one}}


def cuda_part(args: dict) -> dict | None:
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    bundle = D.load("digits", seed=0, image_size=32)
    out = {"device": torch.cuda.get_device_name(dev), "batch_size": args["cuda_batch_size"],
           "model": args["cuda_model"], "images": len(bundle.train)}
    for amp in (None, "bf16"):
        torch.manual_seed(0)
        model = models.create(args["cuda_model"], num_classes=10, in_channels=1).to(dev)
        train.fit(model, bundle, epochs=1, batch_size=args["cuda_batch_size"], progress=False,
                  amp=amp)  # warm-up: cuDNN autotuning, allocator
        h = train.fit(model, bundle, epochs=args["cuda_epochs"], progress=False,
                      batch_size=args["cuda_batch_size"], amp=amp)
        out[amp or "fp32"] = {"seconds": h["seconds"],
                              "images_per_s": args["cuda_epochs"] * len(bundle.train) / h["seconds"]}
    out["bf16_speedup"] = out["bf16"]["images_per_s"] / out["fp32"]["images_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cuda-model", default="resnet56")
    p.add_argument("--cuda-batch-size", type=int, default=256)
    p.add_argument("--cuda-epochs", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = vars(p.parse_args())
    result = {"settings": args, "environment": environment(), "cpu": cpu_part(args),
              "cuda": cuda_part(args)}
    Path(args["out"]).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cpu"]["speedup"]), file=sys.stderr)


if __name__ == "__main__":
    main()
