"""The ViT benchmark's table (``vit_bench.py``): test top-1 % mean ± std over the seeds found,
right after pruning, repaired, and repaired + one epoch of fine-tuning; the structured models'
MACs, params, heads kept and CPU latency (one thread) next to the dense model's.

    .venv/bin/python benchmarks/vit_summary.py

Prints markdown (the table of docs/results.md) and writes it to ``vit-summary.md`` next to the JSON.
"""
from __future__ import annotations

import json
import statistics

from fashion_common import results_dir
from repair_summary import stat


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def main() -> None:
    folder = results_dir("vit_tiny")
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("vit-s[0-9].json"))]
    if not runs:
        raise SystemExit(f"no vit-sS.json in {folder}")
    cells: dict[str, list[dict]] = {}
    for r in runs:
        for k, v in r["cells"].items():
            cells.setdefault(k, []).append(v)
    lat = {b: mean([r["dense_latency_ms"][b] for r in runs]) for b in ("1", "64")}
    lines = [f"vit_tiny on Fashion-MNIST, dense {stat([r['dense'] for r in runs])}, "
             f"{runs[0]['dense_macs'] / 1e6:.2f} M MACs, latency {lat['1']:.2f} ms (batch 1) / "
             f"{lat['64']:.1f} ms (batch 64); seeds {', '.join(str(r['seed']) for r in runs)}", "",
             "| method | budget | pruned | repaired | repaired + 1 epoch | MACs | params | "
             "heads kept (of 16) | latency b1 / b64 (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for key, got in cells.items():
        method, _, level = key.partition("|")
        budget = f"{float(level[4:]):.0%} MACs" if level.startswith("macs") else \
            f"{float(level):.0%} sparsity"
        row = [method, budget, stat([g["pruned"] for g in got]),
               stat([g["repaired"] for g in got]), stat([g["repaired_finetuned"] for g in got])]
        if "macs_ratio" in got[0]:
            row += [f"{mean([g['macs_ratio'] for g in got]):.3f}",
                    f"{mean([g['params_ratio'] for g in got]):.3f}",
                    f"{mean([sum(g['heads']) for g in got]):.1f}",
                    f"{mean([g['latency_ms']['1'] for g in got]):.2f} / "
                    f"{mean([g['latency_ms']['64'] for g in got]):.1f}"]
        else:
            row += ["(masks: dense kernels)", f"{1 - mean([g['sparsity'] for g in got]):.3f} "
                    "of the prunable weights kept", "16", "dense"]
        lines.append("| " + " | ".join(row) + " |")
    secs = [g["repair_seconds"] for got in cells.values() for g in got]
    ep = [g["epoch_seconds"] for got in cells.values() for g in got]
    lines += ["", f"repair {min(secs):.1f}-{max(secs):.1f} s; one fine-tuning epoch "
              f"{min(ep):.0f}-{max(ep):.0f} s"]
    text = "\n".join(lines)
    print(text)
    (folder / "vit-summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
