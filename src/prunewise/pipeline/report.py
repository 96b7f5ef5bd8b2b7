"""Run reports: ``report.json`` (everything measured), ``report.md`` and PNG plots.

Every ``prunewise prune ...`` and ``prunewise demo`` run calls :func:`write`; ``prunewise report
DIR`` calls :func:`render` to redraw the Markdown and plots from ``report.json`` alone.
The JSON is checked against ``report_schema.json`` (kept beside this module) before it is written.

Plot data a report may carry (each optional):
- ``layers``: per-layer rows, ``{"layer", "sparsity"}`` (unstructured) or
  ``{"layer", "before", "after"}`` weight shapes (structured);
- ``history``: pruning iterations, ``{"iteration", "sparsity", "score"?}`` (the task's primary
  metric on the validation split; older reports: ``accuracy``);
- ``spectra``: group name -> singular values (SLIMING).
A demo report nests whole pruning reports under ``runs``. The keys of a pruning report are
described in :mod:`prunewise.runs`; ``report_schema.json`` enforces them.
"""
from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

from .. import files, schema, tasks
from ..errors import PrunewiseError
from .stages import STAGE_TITLES, STAGES

SCHEMA_PATH = schema.REPORT_SCHEMA_PATH
REPORT = "report.json"


def versions() -> dict:
    """Versions of everything that shapes the numbers."""
    import numpy
    import torch

    out = {"prunewise": _version(), "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform()}
    try:
        import torch_pruning
        out["torch_pruning"] = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prunewise")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def validate(report: dict) -> None:
    """Check ``report`` against ``report_schema.json`` (through :func:`prunewise.schema.check`,
    the checker every JSON file prunewise reads goes through). Raises PrunewiseError."""
    schema.check_report(report, "report")


def write(out: str | Path, report: dict, *, kind: str, config: dict | None = None) -> dict:
    """Complete ``report`` (kind, config, versions), validate it, write report.json, report.md
    and the plots into ``out``; returns the completed report."""
    out = Path(out)
    report = {"kind": kind, **report}
    report.setdefault("config", config or {})
    report.setdefault("versions", versions())
    if "command" not in report and Path(sys.argv[0]).name in ("prunewise", "__main__.py"):
        report["command"] = " ".join(["prunewise", *sys.argv[1:]])  # run from the command line
    report = json.loads(files.dumps(report))  # plain JSON types only, NaN as null
    return _emit(out, upgrade(report))


def render(out: str | Path) -> dict:
    """Redraw ``report.md`` and the plots of a run folder from its ``report.json``."""
    out = Path(out)
    if not out.is_dir():
        raise PrunewiseError(f"report folder not found: {out}")
    if not (out / REPORT).exists() and (out.parent / REPORT).is_file():
        raise PrunewiseError(f"{out} holds no {REPORT}; the run's report is in its folder: pass "
                             f"{out.parent}")
    got = upgrade(files.read_json(out / REPORT, "report"))
    schema.check(got, schema.report_spec(), str(out / REPORT))
    return _emit(out, got)


#: What a report written before tasks existed scored: a classifier's top-1.
BEFORE_TASKS = tasks.classification().describe()


def upgrade(report: dict) -> dict:
    """A report written before tasks existed, in today's form: its ``accuracy`` becomes
    ``scores`` too and its ``metric`` is top-1 (its nested runs the same)."""
    if not isinstance(report, dict):
        return report
    if "scores" not in report and isinstance(report.get("accuracy"), dict):
        report = {**report, "scores": report["accuracy"], "metric": BEFORE_TASKS}
    if isinstance(report.get("runs"), dict):
        report["runs"] = {k: upgrade(v) if isinstance(v, dict) else v
                          for k, v in report["runs"].items()}
    return report


def scores_of(r: dict) -> dict:
    """A report's per-stage scores of its primary metric."""
    got = r.get("scores")
    return got if isinstance(got, dict) else (r.get("accuracy") or {})


def metric_of(r: dict) -> dict:
    """A report's metric: ``{"task", "name", "title", "higher_is_better"}``."""
    got = r.get("metric")
    return got if isinstance(got, dict) else BEFORE_TASKS


def _emit(out: Path, report: dict) -> dict:
    """Validate, draw the plots, write report.json and report.md; returns the report."""
    validate(report)
    report["plots"] = plot(out, report)
    files.write_json(out / REPORT, report)
    files.atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown(report)))
    return report


# ---- Markdown -------------------------------------------------------------------------------

#: A score column per stage after pruning, titled as the stage table says.
SCORED = tuple(STAGE_TITLES[s] for s in STAGES[1:])
COLUMNS = ("budget", "sparsity", "params", "MACs", *SCORED, "latency b1 (ms)",
           "latency b64 (ms)", "speed-up b64", "seconds")
NOTE = ("{title} ({direction} is better) on the test split; the validation figures are in "
        "report.json. Masked models: params are the non-zero parameters and MACs those of the "
        "non-zero weights; a dense CPU kernel does not skip zeros, so their latency stays the "
        "dense one and no speed-up is shown.")


def _score(v) -> str:
    return _fmt(v, "{:.4f}" if v is None or abs(v) < 1000 else "{:.4g}")


def _fmt(v, fmt: str) -> str:
    return "" if v is None else fmt.format(v)


def _budget(r: dict) -> str:
    b = r.get("budget") or {}
    return ", ".join(f"{k} {v:g}" for k, v in b.items() if v is not None)


def _latency(r: dict, batch: str, stage: str) -> str:
    row = (r.get("latency_ms") or {}).get(batch) or {}
    return _fmt(row.get(stage), "{:.3f}")


def dense_row(r: dict) -> dict:
    """The dense model's cells of the results table."""
    acc = scores_of(r).get("dense") or {}
    return {"params": _fmt((r.get("params") or {}).get("dense"), "{:,}"),
            "MACs": _fmt((r.get("macs") or {}).get("dense"), "{:,}"),
            "pruned": _score(acc.get("test")) + " (dense)",
            "latency b1 (ms)": _latency(r, "1", "dense"),
            "latency b64 (ms)": _latency(r, "64", "dense")}


def run_row(r: dict) -> dict:
    """One pruning run's cells of the results table."""
    acc = scores_of(r)

    def score(stage):
        return _score((acc.get(stage) or {}).get("test"))

    speed = _fmt(((r.get("latency_ms") or {}).get("64") or {}).get("speedup"), "x{:.2f}")
    if r.get("kind") == "prune-unstructured":
        speed = "n/a (masks)"  # the dense kernels: a masked model's "speed-up" is timing noise
    return {"budget": _budget(r), "sparsity": _fmt(r.get("sparsity"), "{:.4f}"),
            "params": _fmt(r["params"].get("pruned"), "{:,}"),
            "MACs": _fmt(r["macs"].get("pruned"), "{:,}"),
            **{STAGE_TITLES[s]: score(s) for s in STAGES[1:]},
            "latency b1 (ms)": _latency(r, "1", "pruned"),
            "latency b64 (ms)": _latency(r, "64", "pruned"),
            "speed-up b64": speed, "seconds": _fmt(r.get("seconds"), "{:.1f}")}


def table(rows: dict[str, dict], title: str = "top-1") -> list[str]:
    """Markdown table lines: one row per entry of ``rows`` (name -> column -> text); the
    score columns are headed by the metric's ``title``."""
    cols = [c for c in COLUMNS if any(cells.get(c) for cells in rows.values())]
    head = [f"{title} {c}" if c in SCORED else c for c in cols]
    lines = ["| run | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells.get(c, "") for c in cols) + " |")
    return lines


def markdown(report: dict) -> str:
    """A short human summary of a run: results table, plots, settings, versions."""
    title = {"demo": "prunewise demo"}.get(report["kind"], f"prunewise {report['kind']}")
    lines = [f"# {title}: {report.get('method') or report.get('model', '')}", ""]
    rows = {"dense": dense_row(report)}
    if report["kind"] != "demo":
        rows[report.get("method", "pruned")] = run_row(report)
    for name, step in (report.get("runs") or {}).items():
        rows[name] = run_row(step)
    metric = metric_of(report)
    note = NOTE.format(title=metric["title"],
                       direction="higher" if metric["higher_is_better"] else "lower")
    lines += ["## Results", "", *table(rows, metric["title"]), "", note, ""]
    shown = report.get("sample")
    if isinstance(shown, dict):
        lines += ["## Sample", "", "Greedy continuation of a fixed prompt (the start of the first "
                  "test sequence):", ""]
        for key in ("prompt", "dense", "pruned"):
            lines += [f"**{key}**", "", "```text", str(shown.get(key, "")), "```", ""]
    left = [r for r in report.get("left_out") or [] if isinstance(r, dict)]
    if left:
        lines += ["## Left dense", "", "These kept all their channels:" if report.get("kind")
                  == "prune-structured" else "The sparsity is that of the pruned weights; these "
                  "weight matrices were not pruned:", "", "| layer | why |", "|---|---|"]
        lines += [f"| {r.get('layer')} | {r.get('reason')} |" for r in left[:200]]
        lines += [""]
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    if report.get("config"):
        lines += ["## Settings", "", "```json", json.dumps(report["config"], indent=2), "```", ""]
    if report.get("command"):
        lines += ["Command: `" + report["command"] + "`", ""]
    v = report.get("versions", {})
    lines += ["Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_FILE_NAME = 100


def safe_name(name) -> str:
    """A file name made of ``name``: letters, digits, '-', '_' and '.' only (anything else
    becomes '_'), no leading dot, at most :data:`MAX_FILE_NAME` characters, never empty. Names
    from a report (run names) go through it, so no file lands outside the report's folder."""
    text = UNSAFE.sub("_", str(name)).lstrip(".")[:MAX_FILE_NAME]
    return text or "run"


def plot_path(out: Path, prefix: str, stem: str) -> Path:
    """``out/<prefix><stem>.png``, always directly inside ``out`` (the prefix made safe and cut
    so that the whole name stays within :data:`MAX_FILE_NAME`)."""
    head = UNSAFE.sub("_", prefix).lstrip(".")[: MAX_FILE_NAME - len(stem)]
    return out / f"{head}{stem}.png"


def plot(out: Path, report: dict, prefix: str = "") -> list[str]:
    """Draw every plot the report has data for into ``out``; returns the file names."""
    made = []
    label = report.get("method") or report.get("model") or "run"
    if report.get("layers"):
        made.append(plot_layers(plot_path(out, prefix, "layers"), report["layers"], label))
    if report.get("history"):
        made.append(plot_history(plot_path(out, prefix, "history"), report["history"], label,
                                 metric_of(report)))
    if report.get("spectra"):
        made.append(plot_spectra(plot_path(out, prefix, "spectra"), report["spectra"],
                                 report.get("config", {}).get("normalize", "max")))
    for name, step in (report.get("runs") or {}).items():
        made += plot(out, step, prefix=f"{prefix}{safe_name(name)}_")
    return [p.name if isinstance(p, Path) else p for p in made]


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically, close it; returns ``path``."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_layers(path: Path, rows: list[dict], label: str) -> Path:
    """Per-layer sparsity (unstructured) or output width before/after (structured)."""
    plt = pyplot()
    names = [r.get("layer", r.get("name", "?")) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    if "sparsity" in rows[0]:
        ax.bar(xs, [r["sparsity"] for r in rows], color="tab:red")
        ax.set_ylabel("sparsity (fraction of weights pruned)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: per-layer sparsity")
    else:
        ax.bar(xs, [r["before"][0] for r in rows], color="lightgray", label="before")
        ax.bar(xs, [r["after"][0] for r in rows], color="tab:blue", label="after")
        ax.set_ylabel("output channels")
        ax.set_title(f"{label}: kept width per layer (before / after)")
        ax.legend()
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    return save_figure(fig, path)


def plot_history(path: Path, history: list[dict], label: str,
                 metric: dict = BEFORE_TASKS) -> Path:
    """The validation score (pruned, not fine-tuned) and sparsity against the iteration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    it = [h["iteration"] for h in history]
    ax.plot(it, [h["sparsity"] for h in history], color="tab:gray", label="sparsity")
    ax.set_xlabel("iteration")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    lines = list(ax.get_lines())
    scored = [(h["iteration"], h.get("score", h.get("accuracy"))) for h in history]
    scored = [(i, v) for i, v in scored if v is not None]
    if scored:
        ax2 = ax.twinx()
        lines += ax2.plot([i for i, _ in scored], [v for _, v in scored], color="tab:red",
                          marker=".", label=f"validation {metric['title']}")
        ax2.set_ylabel(f"validation {metric['title']}", color="tab:red")
        if metric["task"] == "classification":
            ax2.set_ylim(0, 1)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left")
    what = f"validation {metric['title']} and " if scored else ""
    ax.set_title(f"{label}: {what}sparsity vs. iteration")
    return save_figure(fig, path)


def plot_spectra(path: Path, spectra: dict, normalize: str = "max") -> Path:
    """Normalized singular values of every prunable group (one line each)."""
    import torch

    from ..structured.sliming.spectrum import normalized

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in spectra.items():
        ax.plot(normalized(torch.as_tensor(s, dtype=torch.float64), normalize).numpy(), lw=0.8,
                label=name if len(spectra) <= 12 else None)
    ax.set_xlabel("singular value index")
    ax.set_ylabel(f"normalized singular value ({normalize})")
    ax.set_title(f"SLIMING: singular-value spectra of {len(spectra)} groups")
    if len(spectra) <= 12:
        ax.legend(fontsize=6)
    return save_figure(fig, path)
