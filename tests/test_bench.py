"""`prunewise bench`: the grid, its files, resuming, bad input."""
import json

from helpers import assert_bad_input, run


def test_grid_runs_then_reuses_every_cell(tmp_path):
    out = tmp_path / "grid"
    args = ["bench", "--model", "resnet20", "--methods", "magnitude,random", "--sparsity", "0.5,0.8",
            "--seeds", "0,1", "--epochs", "1", "--finetune-epochs", "1", "--quiet", "--out", str(out)]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "grid.json").read_text())
    assert len(summary["rows"]) == 4 and all(row["n"] == 2 for row in summary["rows"])
    assert all(0 <= row["finetuned_accuracy"] <= 1 for row in summary["rows"])
    for f in ("grid.md", "grid.csv", "grid.png"):
        assert (out / f).stat().st_size > 0
    assert "| magnitude | 0.5 |" in (out / "grid.md").read_text()
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 8
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    r2 = run(*args)
    assert r2.returncode == 0, r2.stderr
    assert {c: c.stat().st_mtime_ns for c in cells} == stamps  # nothing recomputed
    assert json.loads((out / "grid.json").read_text())["rows"] == summary["rows"]


def test_bench_bad_input(tmp_path):
    assert_bad_input(run("bench", "--methods", "fvw,lottery", "--out", str(tmp_path)), "lottery", "fvw")
    assert_bad_input(run("bench", "--sparsity", ",", "--out", str(tmp_path)), "empty")
    assert_bad_input(run("bench", "--methods", "", "--out", str(tmp_path)), "empty")
