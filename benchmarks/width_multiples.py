"""Do widths that are multiples of 8 or 16 run faster on this machine? A 3x3 conv (and a
linear layer) timed at every width from 40 to 72 channels in and out, batch 64, on 16x16 maps
(the linear layer on 64 x 197 tokens): milliseconds per width, and each width's time next to the
next multiple of 8 and 16 above it (what ``--round-to`` would pay).

    .venv/bin/python benchmarks/width_multiples.py [--threads 2]

Run with the machine otherwise idle. Writes ``benchmarks/results/width-multiples-tT.json``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from common import environment
from prunewise import files


def timed(layer, x, repeats: int = 30) -> float:
    with torch.inference_mode():
        for _ in range(5):
            layer(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            layer(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    widths = list(range(40, 73))
    out = {"environment": environment(), "threads": args.threads, "widths": widths}
    for kind in ("conv3x3", "linear"):
        ms = []
        for w in widths:
            if kind == "conv3x3":
                layer, x = nn.Conv2d(w, w, 3, padding=1).eval(), torch.randn(64, w, 16, 16)
            else:
                layer, x = nn.Linear(w, w).eval(), torch.randn(64, 197, w)
            ms.append(timed(layer, x))
        per = {w: m for w, m in zip(widths, ms)}
        out[kind] = {"ms": ms, "ms_per_mac": [m / (w * w) for w, m in zip(widths, ms)]}
        for step in (8, 16):
            # a width rounded up to the step: how its time compares with the width itself
            ratios = [per[-(-w // step) * step] / per[w] for w in widths
                      if -(-w // step) * step in per and w % step]
            out[kind][f"rounded_up_to_{step}"] = {"median_time_ratio": statistics.median(ratios),
                                                  "faster_count": sum(r < 1 for r in ratios),
                                                  "of": len(ratios)}
        print(kind, {k: v for k, v in out[kind].items() if k.startswith("rounded")})
    path = Path(__file__).parent / "results" / f"width-multiples-t{args.threads}.json"
    files.write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
