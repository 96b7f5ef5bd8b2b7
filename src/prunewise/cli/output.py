"""What the command line prints: chatter on stderr (rank 0 only), results on stdout."""
from __future__ import annotations


import click


def say(quiet: bool, msg: str) -> None:
    """A line of chatter on stderr, unless --quiet; under torchrun from rank 0 only."""
    from .. import dist

    if not quiet and dist.is_main():
        click.echo(msg, err=True)


def emit(obj: dict, as_json: bool) -> None:
    """A result: as JSON, or its scalar fields as aligned ``key: value`` lines."""
    from .. import files

    if as_json:
        click.echo(files.dumps(obj, indent=2))
        return
    for k, v in obj.items():
        if not isinstance(v, (list, dict)):
            click.echo(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


def accuracy_line(rep: dict) -> str:
    """'test top-1 0.1000 pruned -> 0.5000 recalibrated -> 0.9000 fine-tuned (dense 0.9500)',
    with the run's own metric ('test perplexity 14.2 pruned -> ...') for other tasks."""
    from ..pipeline.report import metric_of, scores_of
    from ..pipeline.runs import STAGE_TITLES, STAGES

    acc, title = scores_of(rep), metric_of(rep)["title"]
    steps = [f"{acc[s]['test']:.4f} {STAGE_TITLES[s]}" for s in STAGES[1:] if acc.get(s)]
    return f"test {title} {' -> '.join(steps)} (dense {acc['dense']['test']:.4f})"


def format_layers(rows: list[dict]) -> str:
    """The structured layer table: output and input widths before and after."""
    lines = [f"{'layer':<36} {'out before':>10} {'out after':>10} {'in before':>10} "
             f"{'in after':>10}"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"{r['layer']:<36} {b[0]:>10} {a[0]:>10} {b[1]:>10} {a[1]:>10}")
    return "\n".join(lines)


def method_table(rows: list[dict]) -> str:
    """``prunewise methods``: one block per method, its settings and defaults under it."""
    lines = []
    for r in rows:
        extra = [] if r["needs_data"] else ["data-free"]
        extra.append(r["docs"])
        if r["loop_recalibrate"]:
            extra.append("BatchNorm recalibrated in the loop by default")
        if r.get("allocation") not in (None, "global"):
            extra.append(f"--allocation {r['allocation']} by default")
        lines.append(f"{r['name']:<11} {r['kind']:<13} {r['summary']}"
                     + (f" [{'; '.join(extra)}]" if extra else ""))
        for name, s in r["settings"].items():
            lines.append(f"{'':<11} --{name.replace('_', '-'):<14} {s['help']} "
                         f"(default {s['default']})")
    return "\n".join(lines)
