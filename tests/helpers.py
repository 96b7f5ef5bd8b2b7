"""Helpers shared by the CLI tests: run `prunewise` in-process (fast) or in a subprocess (exit
codes of the real process, the console script), and check bad-input errors."""
import contextlib
import io
import os
import resource
import subprocess
import sys
from types import SimpleNamespace


def limit_address_space(extra: int = 1 << 30) -> None:
    """Let this process's address space grow by ``extra`` bytes at most from here on (memory
    tests: an allocation past it fails at once instead of swapping the machine)."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


def run(*args, cwd=None):
    """`python -m prunewise ARGS` with one torch thread (tiny models); returns CompletedProcess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prunewise", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def invoke(*args):
    """`prunewise ARGS` in this process, through the same entry point as the console script
    (``cli.main``: errors mapped to exit codes); returns returncode, stdout, stderr."""
    from prunewise import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_bad_input(r, *words):
    """Exit code 2, exactly one line on stderr, no traceback, and every word in that line."""
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


class Killed(Exception):
    """Raised from a pruning loop's callback to stand for a kill after some iteration."""


def killed_then_resumed(prune, folder, at: int):
    """Run ``prune(checkpoint_dir=folder, callback=...)`` killed after iteration ``at``, then
    again in the same folder; returns (the resumed plan, the iterations the resumed run did).
    The kill/resume harness every resumable method's test shares."""
    import pytest

    def kill(row):
        if row["iteration"] == at:
            raise Killed

    with pytest.raises(Killed):
        prune(checkpoint_dir=folder, callback=kill)
    rows = []
    resumed = prune(checkpoint_dir=folder, callback=rows.append)
    return resumed, [r["iteration"] for r in rows]
