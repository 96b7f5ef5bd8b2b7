"""`prunewise bench`: the grid, its files, resuming, --base checkpoints, bad input."""
import json
from pathlib import Path

import pytest
import torch

from helpers import assert_bad_input, invoke
from prunewise import data as D
from prunewise import checkpoints, models, runs

QUICK = ("--latency-repeats", "0", "--repair-samples", "32", "--quiet")


def save_base(folder: Path, seed: int, data: str = "digits", size: int = 16, arch="resnet20"):
    torch.manual_seed(seed)
    checkpoints.save_model(models.create(arch, num_classes=10, in_channels=1), folder,
                     meta={"data": {"name": data, "root": None, "image_size": size, "seed": 0}})


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Untrained digits checkpoints in BASES/seed-0 and BASES/seed-1 (the grid only needs
    checkpoints, not good ones)."""
    root = tmp_path_factory.mktemp("bases")
    for seed in (0, 1):
        save_base(root / f"seed-{seed}", seed)
    return root


def test_grid_runs_then_reuses_every_cell(tmp_path, bases):
    out = tmp_path / "grid"
    args = ["bench", "--methods", "magnitude,random", "--sparsity", "0.5,0.8", "--seeds", "0,1",
            "--base", bases, "--finetune-epochs", "0", "--recalibrate-samples", "64", *QUICK,
            "--out", out]
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "grid.json").read_text())
    assert [(row["method"], row["budget"], row["n"]) for row in summary["rows"]] == [
        ("magnitude", 0.5, 2), ("magnitude", 0.8, 2), ("random", 0.5, 2), ("random", 0.8, 2)]
    assert not (out / "base").exists()  # the --base checkpoints were used
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 8
    one = json.loads((out / "cells" / "random-0.8-s1.json").read_text())
    # no fine-tuning: repaired by default, not recalibrated; the folder records the choice
    assert one["accuracy"]["repaired"] is not None and one["accuracy"]["finetuned"] is None
    assert one["accuracy"]["recalibrated"] is None
    assert json.loads((out / "settings.json").read_text())["prune"]["repair"]["enabled"]
    assert one["budget"] == {"sparsity": 0.8} and abs(one["sparsity"] - 0.8) < 1e-4
    assert one["config"]["prune"]["sparsity"] == 0.8
    mean = sum(json.loads((out / "cells" / f"random-0.8-s{s}.json").read_text())
               ["accuracy"]["repaired"]["test"] for s in (0, 1)) / 2
    row = summary["rows"][3]
    assert row["repaired"] == pytest.approx(mean) and "finetuned" not in row
    assert "| magnitude | 0.5 |" in (out / "grid.md").read_text()
    assert (out / "grid.csv").read_text().splitlines()[0].startswith("method,budget,n,pruned,")
    assert (out / "grid.png").stat().st_size > 1000
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    r2 = invoke(*args)
    assert r2.returncode == 0, r2.stderr
    assert {c: c.stat().st_mtime_ns for c in cells} == stamps  # nothing recomputed
    assert json.loads((out / "grid.json").read_text())["rows"] == summary["rows"]


def test_a_folder_made_without_repair_goes_on_without_it(tmp_path, bases):
    """Grids made before repair became the default (no fine-tuning, no repair) still resume:
    without --repair / --no-repair a folder keeps the choice it was made with."""
    out = tmp_path / "grid"
    args = ["bench", "--methods", "magnitude", "--sparsity", "0.5", "--seeds", "0", "--base",
            bases, "--finetune-epochs", "0", "--recalibrate-samples", "64", *QUICK, "--out", out]
    r = invoke(*args, "--no-repair")
    assert r.returncode == 0, r.stderr
    cell = out / "cells" / "magnitude-0.5-s0.json"
    stamp = cell.stat().st_mtime_ns
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert cell.stat().st_mtime_ns == stamp
    assert json.loads(cell.read_text())["accuracy"]["repaired"] is None
    assert_bad_input(invoke(*args, "--repair"), "repair")


def test_levels_do_not_depend_on_the_cells_already_done(tmp_path, bases, monkeypatch):
    """A grid interrupted between two levels completes on the schedule of the full level list,
    so the missing cell gets the numbers an uninterrupted run gives."""
    levels = []
    real = runs.mask_stops

    def spy(*a, **kw):
        levels.append(list(kw["levels"]))
        return real(*a, **kw)

    monkeypatch.setattr(runs, "mask_stops", spy)
    out = tmp_path / "grid"
    args = ["bench", "--methods", "random", "--sparsity", "0.5,0.8", "--seeds", "0",
            "--base", f"{bases}/seed-{{seed}}", "--finetune-epochs", "0", *QUICK, "--out", out]
    assert invoke(*args).returncode == 0
    low, high = out / "cells" / "random-0.5-s0.json", out / "cells" / "random-0.8-s0.json"
    kept, first = low.stat().st_mtime_ns, json.loads(high.read_text())
    high.unlink()
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert levels == [[0.5, 0.8], [0.5, 0.8]]
    assert low.stat().st_mtime_ns == kept  # the existing cell was not rewritten
    again = json.loads(high.read_text())
    assert again["accuracy"] == first["accuracy"] and again["sparsity"] == first["sparsity"]


def test_structured_grid_with_finetuning(tmp_path, bases):
    out = tmp_path / "grid"
    r = invoke("bench", "--macs", "0.5", "--methods", "l1", "--seeds", "0", "--base", bases,
               "--finetune-epochs", "1", "--latency-repeats", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "cell l1 0.5 seed 0: test top-1 pruned" in r.stderr  # one log line per cell
    cell = json.loads((out / "cells" / "l1-0.5-s0.json").read_text())
    assert all(cell["accuracy"][s] is not None for s in runs.STAGES if s != "repaired")
    assert cell["accuracy"]["repaired"] is None  # repair is off by default
    assert cell["latency_ms"]["64"]["speedup"] > 0 and cell["macs"]["ratio"] <= 0.5
    assert "layers" not in cell and "spectra" not in cell
    row = json.loads((out / "grid.json").read_text())["rows"][0]
    assert row["finetuned"] == cell["accuracy"]["finetuned"]["test"]
    assert "| l1 | 0.5 |" in r.stdout


def test_structured_grid_with_measured_channel_counts(tmp_path, bases):
    out = tmp_path / "grid"
    r = invoke("bench", "--macs", "0.5", "--methods", "l1", "--seeds", "0", "--base", bases,
               "--allocation", "errors", "--finetune-epochs", "0", "--no-repair",
               "--latency-repeats", "0", "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "settings.json").read_text())["prune"] == {"allocation": "errors"}
    cell = json.loads((out / "cells" / "l1-0.5-s0.json").read_text())
    assert cell["macs"]["ratio"] <= 0.5


def test_trains_missing_base_models_once(tmp_path):
    out = tmp_path / "grid"
    args = ["bench", "--methods", "magnitude", "--sparsity", "0.5", "--seeds", "3", "--epochs",
            "1", "--finetune-epochs", "0", "--no-recalibrate", *QUICK, "--out", out]
    assert invoke(*args).returncode == 0
    base = out / "base" / "seed-3"
    model = checkpoints.load_model(base)
    assert model.prunewise_meta["data"]["name"] == "digits" and model.prunewise_meta["seed"] == 3
    stamp = (base / checkpoints.WEIGHTS).stat().st_mtime_ns
    assert invoke(*args).returncode == 0
    assert (base / checkpoints.WEIGHTS).stat().st_mtime_ns == stamp


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Fashion-MNIST files are not installed")
def test_fashion_mnist_with_base_checkpoints(tmp_path, monkeypatch):
    real_load = D.load

    def small(name, root=None, **kw):  # the real files, cut down to a few hundred images
        b = real_load(name, root, **kw, limit=256)
        b.val, b.test = b.val.subset(range(128)), b.test.subset(range(256))
        return b

    monkeypatch.setattr(D, "load", small)
    save_base(tmp_path / "ck-s0", 0, data="fashion-mnist", size=32)
    out = tmp_path / "grid"
    r = invoke("bench", "--data", "fashion-mnist", "--methods", "magnitude", "--sparsity", "0.5",
               "--seeds", "0", "--base", f"{tmp_path}/ck-s{{seed}}", "--finetune-epochs", "0",
               *QUICK, "--out", out)
    assert r.returncode == 0, r.stderr
    cell = json.loads((out / "cells" / "magnitude-0.5-s0.json").read_text())
    assert cell["data"] == "fashion-mnist" and cell["accuracy"]["repaired"] is not None


@pytest.mark.parametrize("args, words", [
    (["--methods", "fvw,lottery"], ["lottery", "fvw"]),
    (["--sparsity", ","], ["empty"]),
    (["--methods", ""], ["empty"]),
    (["--sparsity", "0.5,1.2"], ["(0, 1)"]),
    (["--sparsity", "0.5,0.5"], ["repeats"]),
    (["--seeds", "0,0"], ["repeats"]),
    (["--model", "resnet21"], ["resnet21", "resnet20"]),
    (["--keep", "1.5"], ["keep"]),
    (["--samples", "-1"], ["--samples"]),
    (["--recalibrate-samples", "0"], ["--recalibrate-samples"]),
    (["--finetune-epochs", "-1"], ["epochs"]),
    (["--macs", "0.5", "--methods", "fvw"], ["fvw", "structured"]),
    (["--macs", "0.5", "--sparsity", "0.5"], ["not both"]),
    (["--macs", "0.5", "--allocation", "lamp"], ["--allocation lamp", "--allocation errors"]),
    (["--data", "nope"], ["nope"]),
    (["--base", "{tmp}/missing"], ["missing"]),
    (["--base", "{bases}", "--model", "resnet32"], ["resnet32"]),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, bases, args, words):
    out = tmp_path / "grid"
    args = [a.format(tmp=tmp_path, bases=bases) for a in args]
    assert_bad_input(invoke("bench", *args, "--out", out), *words)
    assert not out.exists()
