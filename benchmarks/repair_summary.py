"""Tables of the repair benchmark (``repair_bench.py``): test top-1 % mean ± std over the seeds
found, recalibrated (no repair) and repaired, per method and level; the repair cost.

    .venv/bin/python benchmarks/repair_summary.py [--model resnet20]

Prints markdown (the tables of docs/results.md) and writes it to ``repair-summary.md`` next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics

from fashion_common import BUDGETS, LEVELS, results_dir


def stat(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.mean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}" + ("" if len(values) == 3 else f" ({len(values)} seeds)")


def table(kind: str, configs: list[str], columns: list[tuple[str, str]],
          cells: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: one per config, ``recalibrated / **repaired**`` per (title, key) column
    (columns without any cell are left out)."""
    columns = [(t, k) for t, k in columns if any(f"{c}|{k}" in cells for c in configs)]
    lines = [f"| {kind} | " + " | ".join(f"{t}: recal. / **repaired**" for t, _ in columns)
             + " |", "|---|" + "---|" * len(columns)]
    for c in configs:
        row = []
        for _, key in columns:
            got = cells.get(f"{c}|{key}", [])
            row.append(f"{stat([g['recalibrated'] for g in got])} / "
                       f"**{stat([g['repaired'] for g in got])}**")
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--tag", default="", help="e.g. -n1024-d0.001 (repair_bench's file tag)")
    args = ap.parse_args(argv)
    folder = results_dir(args.model)
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob(f"repair-s[0-9]{args.tag}.json"))]
    if not runs:
        raise SystemExit(f"no repair-sS.json in {folder}")
    cells: dict[str, list[dict]] = {}
    for r in runs:
        for k, v in r["cells"].items():
            cells.setdefault(k, []).append(v)
    configs = list(dict.fromkeys(k.split("|")[0] for k in cells if not k.endswith("|ft1")))
    channel = ("sliming", "l1", "chip", "sliming-l1")   # also as NAME@errors
    masks = [c for c in configs if c.partition("@")[0] not in channel]
    chans = [c for c in configs if c.partition("@")[0] in channel]
    dense = stat([r["dense"] for r in runs])
    lines = [f"{args.model}, dense {dense}; seeds {', '.join(str(r['seed']) for r in runs)}", ""]
    lines += table("masks", masks, [(f"{lv:g}", f"{lv:g}") for lv in LEVELS], cells)
    if chans:
        lines += [""] + table("channels", chans, [(f"{b:g} MACs", f"macs{b:g}") for b in BUDGETS],
                              cells)
    secs = [v["repair_seconds"] for vs in cells.values() for v in vs if "repair_seconds" in v]
    lines += ["", f"repair seconds: {min(secs):.1f}-{max(secs):.1f} (median "
                  f"{statistics.median(secs):.1f}) over {len(secs)} cells"]
    ft = {k: v for k, v in cells.items() if k.endswith("|ft1")}
    for k, vs in ft.items():
        lines.append(f"one epoch of fine-tuning, {k[:-4]}: from recalibrated "
                     f"{stat([v['recalibrated_finetuned'] for v in vs])}, from repaired "
                     f"{stat([v['repaired_finetuned'] for v in vs])}; epoch "
                     f"{statistics.mean(v['repaired_epoch_seconds'] for v in vs):.0f} s, repair / "
                     f"epoch {statistics.mean(v['repair_seconds'] / v['repaired_epoch_seconds'] for v in vs):.3f}")
    text = "\n".join(lines) + "\n"
    (folder / f"repair-summary{args.tag}.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
