"""The fuzz harness (tests/fuzz.py) in CI: a bounded number of new examples, the saved corpus of
every failure found so far, and the guard that keeps every numeric option on the strict
parsers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
#: New examples per CI run (about 40 s on two cores); a longer campaign is
#: ``python tests/fuzz.py --seed S --examples 2000``.
EXAMPLES = 120


def walk(command, words=()):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, words + (name,))
    else:
        yield words, command


def test_every_numeric_option_takes_only_ascii_numbers():
    from prunewise.cli import cli
    from prunewise.cli.options import FiniteFloat, Integer

    numeric = 0
    for words, command in walk(cli):
        for p in command.params:
            if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
                assert isinstance(p.type, Integer), (words, p.name)   # not click's own parser
            if isinstance(p.type, (Integer, FiniteFloat)):
                numeric += 1
    assert numeric > 60


def test_fuzzed_command_lines_and_files_keep_the_invariant(tmp_path):
    """Exit 0, or exit 2 with one line; inputs unchanged; nothing written elsewhere; memory
    bounded. The corpus (every failure found so far) runs first, then new seeded examples."""
    seed = int(os.environ.get("PRUNEWISE_FUZZ_SEED", "0"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    done = subprocess.run([sys.executable, str(HERE / "fuzz.py"), "--seed", str(seed),
                           "--examples", str(EXAMPLES), "--replay", "--json",
                           str(tmp_path / "failures.json")],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert (tmp_path / "failures.json").exists(), done.stderr[-3000:]
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert failures == [], json.dumps(failures, indent=1)[:4000]
    assert done.returncode == 0, done.stderr[-3000:]
