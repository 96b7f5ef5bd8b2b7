"""Tables (mean ± std over seeds) and a plot from one base model's Fashion-MNIST results.

    .venv/bin/python benchmarks/fashion_quality.py summary [--model resnet56]

Writes ``summary.md`` in the model's results folder and ``docs/fashion-unstructured.png``
(resnet20) or ``docs/fashion-unstructured-MODEL.png``.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from fashion_common import BUDGETS, plot_path, results_dir


def seeds_of(results: Path, part: str, probes: bool = False) -> dict[int, dict]:
    """Results of one part by seed (several files of a seed merged); ``probes`` picks the
    exploratory runs (``--part-name probe-...``) instead of the benchmark's own."""
    out: dict[int, dict] = {}
    for path in sorted(results.glob(f"{part}-s*.json")):
        if ("-probe" in path.stem) != probes:
            continue
        seed = int(path.stem[len(part) + 2:].split("-")[0])
        out.setdefault(seed, {}).update(json.loads(path.read_text()))
    return out


def stat(values: list, seeds: int = 0) -> str:
    """Mean ± std in percent; a cell resting on fewer than ``seeds`` seeds says how many."""
    vals = [100.0 * v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.1f} (1 seed)"
    short = f" ({len(vals)} of {seeds} seeds)" if len(vals) < seeds else ""
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}{short}"


def methods_in(runs: dict[int, dict], skip=("dense", "environment")) -> list[str]:
    seen: list[str] = []
    for res in runs.values():
        seen += [k for k in res if k not in skip and k not in seen]
    return seen


def unstructured_table(runs: dict[int, dict], levels=("0.8", "0.9", "0.95", "0.98")
                       ) -> tuple[str, dict]:
    lines = ["| method | " + " | ".join(f"{float(lv):.0%}" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    curves = {}
    for m in methods_in(runs):
        cells = []
        for lv in levels:
            vals = [res[m][lv]["recalibrated"] for res in runs.values() if lv in res.get(m, {})]
            cells.append(stat(vals, len(runs)))
            curves.setdefault(m, []).append(statistics.mean(vals) if vals else None)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
        seeds = sum(1 for res in runs.values() if m in res)
        if seeds < len(runs):  # the plot says when a curve rests on fewer seeds
            curves[f"{m} ({seeds} seed{'s' if seeds > 1 else ''})"] = curves.pop(m)
    dense = [res["dense"] for res in runs.values() if "dense" in res]
    return f"Dense: {stat(dense)} (seeds: {sorted(runs)})\n\n" + "\n".join(lines), curves


def structured_table(runs: dict[int, dict], idle: dict[int, dict]) -> str:
    """Accuracy by method and budget; latency from ``idle`` (the ``latency`` part, measured on
    an otherwise idle machine) where present, else from the structured run itself."""
    keys = methods_in(runs)
    lines = ["| method | MACs | params kept | pruned | recalibrated | latency b1 ms (speed-up) | "
             "latency b64 ms (speed-up) |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        m, budget = key.split("|")
        rows = [res[key] for res in runs.values() if key in res]
        lat = {}
        for b in ("1", "64"):
            if idle:
                ms = [res[key][b] for res in idle.values() if key in res]
                sp = [res["dense"][b] / res[key][b] for res in idle.values() if key in res]
            else:
                ms = [r["latency_ms"][b]["pruned"] for r in rows if r.get("latency_ms")]
                sp = [r["latency_ms"][b]["speedup"] for r in rows if r.get("latency_ms")]
            lat[b] = f"{statistics.median(ms):.2f} ({statistics.median(sp):.2f}x)" if ms else "-"
        params = statistics.mean(r["params_ratio"] for r in rows)
        lines.append(f"| {m} | {float(budget):.0%} | {params:.2f} | "
                     f"{stat([r['pruned'] for r in rows], len(runs))} | "
                     f"{stat([r['recalibrated'] for r in rows], len(runs))} | "
                     f"{lat['1']} | {lat['64']} |")
    dense = [res["dense"]["test"] for res in runs.values() if "dense" in res]
    dl = ([res["dense"] for res in idle.values()] if idle else
          [res["dense"]["latency_ms"] for res in runs.values() if "dense" in res])
    lat = ", ".join(f"batch {b}: {statistics.median(d[b] for d in dl):.2f} ms" for b in ("1", "64")) \
        if dl else ""
    where = ("1 thread, idle machine" if idle else
             "taken during the runs, other jobs sharing the cores: not trustworthy")
    return f"Dense: {stat(dense)}; {lat} ({where})\n\n" + "\n".join(lines)


def finetune_table(runs: dict[int, dict], dense: list) -> str:
    """Test top-1 after one epoch of fine-tuning: a method-by-level grid for the unstructured
    cells (masks kept), one by MACs budget for the structured ones (``sliming|0.5``)."""
    keys = methods_in(runs, skip=("finetune", "environment"))
    out = [f"Dense: {stat(dense)}"] if dense else []
    for kind, budgets in (("unstructured, sparsity", False), ("structured, MACs kept", True)):
        cells = [k for k in keys if (float(k.split("|")[1]) in BUDGETS) == budgets]
        if not cells:
            continue
        levels = sorted({k.split("|")[1] for k in cells}, key=float, reverse=budgets)
        lines = [f"| {kind} | " + " | ".join(f"{float(lv):.0%}" for lv in levels) + " |",
                 "|---|" + "---|" * len(levels)]
        for m in dict.fromkeys(k.split("|")[0] for k in cells):
            row = [stat([res[f"{m}|{lv}"]["finetuned"] for res in runs.values()
                         if f"{m}|{lv}" in res], len(runs)) for lv in levels]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot(curves: dict, seeds: int, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [80, 90, 95, 98]
    for m, ys in curves.items():
        pts = [(x, 100 * y) for x, y in zip(xs, ys) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test top-1 (%), recalibrated, no fine-tuning")
    ax.set_title(f"{model} on Fashion-MNIST (mean over {seeds} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(model: str = "resnet20") -> None:
    results = results_dir(model)
    parts = []
    un = seeds_of(results, "unstructured")
    if un:
        table, curves = unstructured_table(un)
        parts.append("### Unstructured, recalibrated, no fine-tuning (test top-1 %)\n\n" + table)
        plot(curves, len(un), model, plot_path(model))
    probes = seeds_of(results, "unstructured", probes=True)
    if probes:
        table, _ = unstructured_table(probes)
        parts.append("### Probes: FVW settings, recalibrated, no fine-tuning (test top-1 %)\n\n"
                     + table)
    st = seeds_of(results, "structured")
    if st:
        parts.append("### Structured (test top-1 %; CPU latency)\n\n"
                     + structured_table(st, seeds_of(results, "latency")))
    sp = seeds_of(results, "structured", probes=True)
    if sp:
        parts.append("### Probes: SLIMING with a per-group floor (min_ratio), recalibrated "
                     "(test top-1 %)\n\n" + structured_table(sp, {}))
    dense = [res["dense"] for res in un.values() if "dense" in res]
    ft = seeds_of(results, "finetune")
    if ft:
        parts.append("### One epoch of fine-tuning from the recalibrated model (test top-1 %)"
                     "\n\n" + finetune_table(ft, dense))
    fp = seeds_of(results, "finetune", probes=True)
    if fp:
        parts.append("### Probes: one epoch of fine-tuning (test top-1 %)\n\n"
                     + finetune_table(fp, []))
    text = "\n\n".join(parts) + "\n"
    (results / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
