"""Shared by the benchmark scripts: base checkpoints trained by our own CLI, JSON results.

Run the scripts from the repository root with the project's virtualenv, e.g.
``.venv/bin/python benchmarks/fvw_quality.py``. Results go to ``benchmarks/results/*.json``.
"""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHECKPOINTS = RESULTS / "checkpoints"


def base_checkpoint(model: str, *, seed: int = 0, epochs: int = 30, data: str = "digits",
                    extra: list[str] | None = None) -> Path:
    """Train ``model`` with ``prunewise train`` (once; reused afterwards) and return its folder."""
    out = CHECKPOINTS / f"{model}-{data}-s{seed}-e{epochs}"
    if not (out / "model.safetensors").is_file():
        cmd = [sys.executable, "-m", "prunewise", "train", model, "--data", data,
               "--epochs", str(epochs), "--seed", str(seed), "--quiet", "--out", str(out),
               *(extra or [])]
        print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return out


def environment() -> dict:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(name: str, result: dict) -> Path:
    """Write ``benchmarks/results/NAME.json`` atomically, with the command and environment."""
    from prunewise.files import write_json

    path = RESULTS / f"{name}.json"
    write_json(path, {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                      "environment": environment(), **result})
    print(f"wrote {path}", file=sys.stderr)
    return path
