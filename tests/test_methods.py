"""The method table: one row per method, read by the pipeline, the bench grid, the command line
and the docs; a new row is a new method everywhere, with no other edit."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import invoke
from prunewise import checkpoints, methods, models, runs

ROOT = Path(__file__).resolve().parents[1]


def test_rows_are_unique_and_complete():
    for kind in methods.KINDS:
        names = methods.names(kind)
        assert len(set(names)) == len(names) and names
    for m in methods.TABLE:
        assert callable(m.builder()) and m.summary and m.kind in methods.KINDS
        m.options()  # the defaults are valid settings


def test_docs_anchors_and_readme_lists_follow_the_table():
    """Every row points at a section of docs/methods.md that exists, and the README's lists of
    methods name exactly the table's."""
    text = (ROOT / "docs" / "methods.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for m in methods.TABLE:
        path, _, anchor = m.docs.partition("#")
        assert path == "docs/methods.md" and anchor in anchors, m.docs
    readme = (ROOT / "README.md").read_text()
    for kind, first in ((methods.UNSTRUCTURED, "fvw"), (methods.STRUCTURED, "sliming")):
        others = "|".join(n for n in methods.names(kind) if n != first)
        assert f"(or --method {others})" in readme, (kind, others)


def test_methods_command_lists_every_row():
    r = invoke("methods", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(r["name"], r["kind"]) for r in rows] == [(m.name, m.kind) for m in methods.TABLE]
    fvw = next(r for r in rows if r["name"] == "fvw")
    assert fvw["settings"]["alpha"]["default"] == 1e-8 and fvw["loop_recalibrate"] is True
    text = invoke("methods").stdout
    assert all(m.name in text for m in methods.TABLE) and "--class-groups" in text


def test_help_answers_without_importing_torch():
    """Every command's --help, and `prunewise` alone (the normal multi-line help, exit 0)."""
    code = ("import sys; from prunewise import cli\n"
            "for args in ([], ['--help'], ['prune', 'fvw', '--help'], ['bench', '--help'],\n"
            "             ['methods', '--help'], ['demo', '--help']):\n"
            "    assert cli.main(args) == 0, args\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Usage: prunewise [OPTIONS] COMMAND") + \
        r.stdout.count("Usage: prunewise [OPTIONS] [COMMAND]") == 2
    assert "\n  prune " in r.stdout and "Error" not in r.stdout + r.stderr


def toy_scorer(settings, seed):
    """A new criterion for the test: |w| squared (ranks like magnitude)."""
    def score(work, masks, data, iteration):
        named = dict(work.named_parameters())
        return {n: named[n].detach().square() * masks[n] for n in masks}, {}
    return score


@pytest.fixture
def toy_method(monkeypatch):
    row = methods.Method("toy-square", methods.UNSTRUCTURED, "|w|^2 (a test row)",
                         "docs/methods.md#baselines", toy_scorer, needs_data=False)
    monkeypatch.setattr(methods, "TABLE", [*methods.TABLE, row])
    return row


def test_a_new_row_is_a_method_in_runs_bench_and_the_cli(toy_method, digits, digits_checkpoint,
                                                          tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    _, plan, rep = runs.run_unstructured(model, digits, "toy-square",
                                         runs.Unstructured(sparsity=0.5, keep=0.5, samples=64),
                                         measurement=runs.Measurement(latency=False))
    assert plan.method == rep["method"] == "toy-square" and abs(plan.sparsity - 0.5) < 1e-4
    quick = ["--latency-repeats", "0", "--quiet", "--recalibrate-samples", "64"]
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "toy-square", "--sparsity", "0.5",
               "--keep", "0.5", "--samples", "64", *quick, "--out", tmp_path / "cli")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["method"] == "toy-square"
    base = tmp_path / "base"
    checkpoints.save_model(model, base / "seed-0", meta={"data": {"name": "digits", "root": None,
                                                            "image_size": 16, "seed": 0}})
    r = invoke("bench", "--methods", "toy-square", "--sparsity", "0.5", "--seeds", "0",
               "--base", base, "--finetune-epochs", "0", *quick, "--out", tmp_path / "grid")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid" / "cells" / "toy-square-0.5-s0.json").is_file()
    assert "toy-square" in invoke("methods").stdout
    assert "toy-square" in invoke("prune", "fvw", "--help").stdout


def test_a_setting_of_another_method_is_refused(digits_checkpoint, tmp_path):
    r = invoke("prune", "fvw", digits_checkpoint, "--method", "magnitude", "--sparsity", "0.5",
               "--alpha", "1e-3", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--alpha applies to method fvw only, not 'magnitude'" in r.stderr
    assert not (tmp_path / "x").exists()
