"""Regenerate the tables of docs/results.md from the benchmarks' JSON (no hand-copied numbers).

Every generated block in docs/results.md sits between two markers,

    <!-- table: NAME -->
    ...
    <!-- end table -->

and NAME is a row of :data:`BLOCKS`: the summary script that prints it and its arguments. The
script reads only ``benchmarks/results/`` (seconds, no training).

    .venv/bin/python benchmarks/results_doc.py           # rewrite docs/results.md
    .venv/bin/python benchmarks/results_doc.py --check   # exit 1 if a block is stale
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "results.md"
BLOCKS = {  # NAME -> (module, argv of its main)
    "repair-resnet20": ("repair_summary", ["--model", "resnet20"]),
    "repair-resnet56": ("repair_summary", ["--model", "resnet56"]),
    "repair-resnet20_ln": ("repair_summary", ["--model", "resnet20_ln"]),
    "repair-vit_tiny": ("repair_summary", ["--model", "vit_tiny"]),
    "latency-budgets": ("latency_summary", []),
    "vit": ("vit_summary", []),
    "tasks": ("tasks_summary", []),
    "lm": ("lm_summary", []),
}
MARK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def render(name: str) -> str:
    """What block ``name``'s summary script prints."""
    module, argv = BLOCKS[name]
    sys.path.insert(0, str(HERE))
    try:
        mod = __import__(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            mod.main(argv) if argv else mod.main()
    finally:
        sys.path.remove(str(HERE))
    return out.getvalue().rstrip("\n") + "\n"


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every marked block regenerated, and the names of the blocks that changed."""
    changed = []

    def one(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"docs/results.md: unknown table block '{name}'")
        body = render(name)
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return MARK.sub(one, text), changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say whether a block is stale")
    args = ap.parse_args(argv)
    text = DOC.read_text()
    new, changed = regenerate(text)
    if args.check:
        print("stale: " + ", ".join(changed) if changed else "docs/results.md is current")
        return 1 if changed else 0
    DOC.write_text(new)
    print(f"regenerated {len(MARK.findall(text))} tables ({', '.join(changed) or 'none changed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
