"""Tables from benchmarks/results/lm/ (written by lm_bench.py): test perplexity per method and
budget (mean ± std over the seeds there are), seconds and peak memory; and SparseGPT's time
and memory against depth.

    .venv/bin/python benchmarks/lm_summary.py
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lm"
ORDER = ("magnitude", "wanda", "obs+repair", "sparsegpt", "sparsegpt+repair", "fvw+repair",
         "llmc-wanda", "llmc-sparsegpt")
BUDGETS = ("0.5", "2:4", "0.7")
TEST_SEQS = 1000


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def family_table(family: str) -> list[str]:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{family}-s*.json"))]
    runs = [r for r in runs   # the seeds with mask cells (a structured-only seed has none)
            if any(c["budget"] in BUDGETS and c["method"] != "dense" for c in r["cells"])]
    if not runs:
        return []
    dense = [c["perplexity"] for r in runs for c in r["cells"] if c["method"] == "dense"]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        for c in r["cells"]:
            cells.setdefault((c["method"], c["budget"]), []).append(c)
    budget = {"0.5": "50%", "2:4": "2:4", "0.7": "70%"}
    head = " | ".join(f"{budget[b]} ppl | s | peak MB" for b in BUDGETS)
    lines = [f"**{family}** ({runs[0]['dense']['params']:,} parameters; dense test perplexity "
             f"{fmt(dense)} on the first {TEST_SEQS} test sequences; {len(runs)} "
             f"seed{'s' if len(runs) > 1 else ''})", "",
             f"| method | {head} |", "|---" * (1 + 3 * len(BUDGETS)) + "|"]
    for m in ORDER:
        row = []
        for b in BUDGETS:
            got = cells.get((m, b), [])
            row += [fmt([c["perplexity"] for c in got]),
                    fmt([c["seconds"] for c in got], 1),
                    fmt([c["peak_rss_mb"] for c in got], 0)]
        if any(row):
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines + [""]


STRUCTURED = ("l1", "l1+repair", "sliming", "sliming+repair")


def structured_table(family: str) -> list[str]:
    """Heads and MLP channels removed: 20% and 50% of the decoder blocks' parameters."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{family}-s*.json"))]
    cells: dict[tuple[str, str], list[dict]] = {}
    dense: dict[int, float] = {}
    for r in runs:
        for c in r["cells"]:
            cells.setdefault((c["method"], c["budget"]), []).append(c)
            if c["method"] == "dense":
                dense[c["seed"]] = c["perplexity"]
    if not any(b.startswith("s") for _, b in cells):
        return []
    lines = [f"**{family}, structured** (whole heads and MLP channels; the embeddings and the "
             f"output head whole; x dense = perplexity / the same seed's dense perplexity)", "",
             "| method | 20% removed: ppl | x dense | s | peak MB | 50% removed: ppl | x dense "
             "| s | peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for m in STRUCTURED:
        row = []
        for b in ("s0.2", "s0.5"):
            got = cells.get((m, b), [])
            row += [fmt([c["perplexity"] for c in got]),
                    fmt([c["perplexity"] / dense[c["seed"]] for c in got if c["seed"] in dense]),
                    fmt([c["seconds"] for c in got], 1), fmt([c["peak_rss_mb"] for c in got], 0)]
        if any(row):
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines + [""]


def breadth_table() -> list[str]:
    path = RESULTS.parent / "hf_breadth.json"
    if not path.is_file():
        return []
    got = json.loads(path.read_text())
    lines = [f"Structured breadth (`benchmarks/hf_breadth.py`): SLIMING at 50% of the MACs on "
             f"{got['families']} HuggingFace architectures built from tiny configs; "
             f"{got['structured_ok']} pruned, ran and reloaded bit-identically, "
             f"{got['budget_met']} within 1% of the budget:", "",
             "| family | MACs kept | seconds | reload identical |", "|---|---|---|---|"]
    for r in got["rows"]:
        if r.get("structured") == "ok":
            lines.append(f"| {r['family']} | {r['macs_ratio']:.4f} | "
                         f"{r['structured_seconds']:.2f} | {r['structured_reload_identical']} |")
        else:
            lines.append(f"| {r['family']} | failed: {r['structured'][:80]} | | |")
    return lines + [""]


def depth_table() -> list[str]:
    path = RESULTS / "depth.json"
    if not path.is_file():
        return []
    got = json.loads(path.read_text())
    lines = ["SparseGPT at 50%, 128 calibration sequences of 128 tokens, Llama-style layers of "
             "width 256, one fresh process per depth (model and text loaded first):", "",
             "| layers | seconds | weights MB | resident before MB | peak MB | added by pruning "
             "MB | added - 2 x weights MB |", "|---|---|---|---|---|---|---|"]
    for k in sorted(got, key=int):
        c = got[k]
        lines.append(f"| {k} | {c['seconds']:.1f} | {c['weights_mb']:.1f} | "
                     f"{c['rss_before_mb']:.0f} | {c['peak_rss_mb']:.0f} | {c['added_mb']:.0f} | "
                     f"{c['added_mb'] - 2 * c['weights_mb']:.0f} |")
    return lines + [""]


def main() -> None:
    lines = (family_table("llama") + family_table("gpt2") + structured_table("llama")
             + structured_table("gpt2") + depth_table() + breadth_table())
    print("\n".join(lines).rstrip("\n"))


if __name__ == "__main__":
    main()
