"""Table of the latency-budget benchmark (``latency_bench.py``): per network, method and
budget, the latency ratio asked and measured (batch of the budget, and batch 1), the MACs kept,
the accuracy after repair and the search's cost, next to the same method at that fraction of
the MACs.

    .venv/bin/python benchmarks/latency_summary.py
"""
from __future__ import annotations

import json

from fashion_common import results_dir


def main(argv=None) -> None:
    lines = ["| network | threads | method | budget | batch | measured (quartiles) | at batch 1 "
             "| MACs kept | top-1 repaired | prunes | s | same method at that MACs fraction: "
             "measured, top-1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, threads in [(m, t) for t in (2, 1) for m in ("resnet20", "resnet56", "mobilenetv2", "vit_tiny")]:
        path = results_dir(model) / f"latency-budgets-t{threads}.json"
        if not path.is_file():
            continue
        name = f"{model} | {threads}"
        cells = json.loads(path.read_text())["cells"]
        for key, c in cells.items():
            method, kind, batch = key.split("|")
            if not kind.startswith("latency"):
                continue
            budget = kind.removeprefix("latency")
            ref = cells.get(f"{method}|macs{budget}|{batch}", {})
            side = (f"{ref['measured']:.2f}, {100 * ref['repaired_top1']:.1f}"
                    if "measured" in ref else "-")
            if "error" in c:
                lines.append(f"| {name} | {method} | {budget} | {batch[1:]} | not reachable: "
                             f"{c['error'].split(': ', 1)[1][:90]} | | | | | | {side} |")
                continue
            lines.append(
                f"| {name} | {method} | {budget} | {batch[1:]} | {c['measured']:.3f} "
                f"({c['spread'][0]:.2f}-{c['spread'][1]:.2f}) | {c['measured_batch1']:.3f} | "
                f"{c['macs']:.3f} | {100 * c['repaired_top1']:.1f} | {c['prunes']} | "
                f"{c['prune_seconds']:.0f} | {side} |")
        tables = {k: v for k, v in cells.items() if v.get("table_seconds") is not None}
        built = [v["table_seconds"] for v in tables.values() if not v.get("table_reused")]
        if built:
            lines.append(f"| {name} | table | | | built in {min(built):.1f}-{max(built):.1f} s "
                         f"(batch sizes: {len(built)}); reused by the other "
                         f"{len(tables) - len(built)} cells (0 s) | | | | | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
