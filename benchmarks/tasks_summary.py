"""The table of the non-classification tasks benchmark (``tasks_bench.py``): the task's primary
metric on the test split, mean ± std over the seeds found, per run and stage.

    .venv/bin/python benchmarks/tasks_summary.py
"""
from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results" / "tasks"
STAGES = ("pruned", "repaired", "recalibrated", "finetuned")


def cell(pair) -> str:
    return "" if pair is None else f"{pair[0]:.4g} ± {pair[1]:.2g}"


def main() -> None:
    lines = []
    for path in sorted(FOLDER.glob("*.json")):
        res = json.loads(path.read_text())
        metric, summary = res["metric"], res["summary"]
        better = "higher" if metric["higher_is_better"] else "lower"
        dense = next(iter(summary.values()))["dense"]
        lines += [f"{path.stem}: test {metric['title']} ({better} is better), dense "
                  f"{cell(dense)}; seeds {', '.join(res['seeds'])}", "",
                  "| run | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
        for run, stages in summary.items():
            lines.append(f"| {run} | " + " | ".join(cell(stages.get(s)) for s in STAGES) + " |")
        lines.append("")
    print("\n".join(lines).rstrip("\n"))


if __name__ == "__main__":
    main()
