"""`prunewise demo --quick`: the whole pipeline's wiring (the real figures are in the README)."""
import json

import jsonschema
import torch

from helpers import invoke
from prunewise import checkpoints, measure, report
from prunewise.plan import MaskPlan


def test_quick_demo_writes_the_full_report(tmp_path):
    r = invoke("demo", "--quick", "--quiet", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(rep, json.loads(report.SCHEMA_PATH.read_text()))
    assert rep["kind"] == "demo" and rep["versions"]["torch"]
    assert set(rep["runs"]) == {"fvw", "magnitude", "sliming", "l1_uniform"}
    for name, run in rep["runs"].items():
        acc = run["accuracy"]
        assert acc["pruned"] and acc["recalibrated"] and acc["finetuned"], name
        assert acc["dense"] == rep["accuracy"]["dense"]
        assert f"{acc['finetuned']['test']:.4f} fine-tuned" in r.stdout
    assert abs(rep["runs"]["fvw"]["sparsity"] - 0.9) < 1e-4
    assert abs(rep["runs"]["sliming"]["macs"]["ratio"] - 0.5) < 0.01
    # every table cell is filled: latency of every model, params/MACs of masked ones too
    md = (tmp_path / "report.md").read_text().splitlines()
    head = next(line for line in md if line.startswith("| run |"))
    for name in rep["runs"]:
        row = next(line for line in md if line.startswith(f"| {name} |"))
        cells = dict(zip(head.split("|")[2:-1], row.split("|")[2:-1]))
        assert all(v.strip() for v in cells.values()), (name, cells)
    for png in ("fvw_history.png", "fvw_layers.png", "sliming_spectra.png", "sliming_layers.png"):
        assert png in rep["plots"] and (tmp_path / png).stat().st_size > 1000
    # the saved artefacts reload without the method
    assert abs(MaskPlan.load(tmp_path / "fvw").sparsity - 0.9) < 1e-4
    small = checkpoints.load_model(tmp_path / "sliming" / "model")
    assert measure.macs(small, torch.zeros(1, 1, 16, 16)) == rep["runs"]["sliming"]["macs"]["pruned"]


def test_quick_demo_with_repair_repairs_every_run(tmp_path):
    r = invoke("demo", "--quick", "--quiet", "--repair", "--repair-samples", "64", "--out",
               tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(rep, json.loads(report.SCHEMA_PATH.read_text()))
    for name, run in rep["runs"].items():  # masks and channels alike
        acc = run["accuracy"]
        assert acc["repaired"] and acc["recalibrated"] is None and acc["finetuned"], name
        assert run["stage_seconds"]["repair"] > 0
        assert f"{acc['repaired']['test']:.4f} repaired" in r.stdout
    assert rep["config"]["repair"]["enabled"] is True
