"""`prunewise demo --quick`: the whole pipeline's wiring (the real figures are in the README)."""
import json

from helpers import run


def test_quick_demo_writes_the_full_report(tmp_path):
    r = run("demo", "--quick", "--quiet", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    for key in ("test_accuracy", "params", "macs", "latency_ms", "seconds"):
        assert key in rep, key
    assert rep["kind"] == "demo" and rep["versions"]["torch"]
    assert set(rep["runs"]) == {"fvw", "magnitude", "sliming", "l1_uniform"}
    assert abs(rep["runs"]["fvw"]["sparsity"] - 0.9) < 1e-4
    assert abs(rep["runs"]["sliming"]["macs_ratio"] - 0.5) < 0.01
    assert (tmp_path / "report.md").read_text().count("| fvw |") == 1
    for png in ("fvw_history.png", "fvw_layers.png", "sliming_spectra.png", "sliming_layers.png"):
        assert png in rep["plots"] and (tmp_path / png).stat().st_size > 1000
    # the saved artefacts reload without the method
    from prunewise import files
    from prunewise.plan import MaskPlan

    assert abs(MaskPlan.load(tmp_path / "fvw").sparsity - 0.9) < 1e-4
    assert files.load_model(tmp_path / "sliming") is not None
