"""Helpers shared by the CLI tests: run `prunewise` in a subprocess, check bad-input errors."""
import os
import subprocess
import sys


def run(*args, cwd=None):
    """`python -m prunewise ARGS` with one torch thread (tiny models); returns CompletedProcess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prunewise", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def assert_bad_input(r, *words):
    """Exit code 2, exactly one line on stderr, no traceback, and every word in that line."""
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
