"""report.json / report.md / plots, the JSON schema, and `prunewise report`."""
import json

import jsonschema
import pytest
from PIL import Image

from prunewise import PrunewiseError, report
from helpers import assert_bad_input, run


def sample(**extra):
    return {"method": "fvw", "seed": 0, "seconds": 1.5, "test_accuracy": 0.5, "sparsity": 0.9,
            "layers": [{"layer": "a.weight", "sparsity": 0.8}, {"layer": "b.weight", "sparsity": 0.95}],
            "history": [{"iteration": i, "sparsity": 0.1 * i, "accuracy": 1 - 0.05 * i}
                        for i in range(1, 6)], **extra}


def test_write_validates_against_the_schema_and_draws(tmp_path):
    rep = report.write(tmp_path, sample(), kind="prune-unstructured", config={"keep": 0.98})
    on_disk = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(on_disk, json.loads(report.SCHEMA_PATH.read_text()))
    assert on_disk["versions"]["torch"] and on_disk["config"] == {"keep": 0.98}
    assert sorted(rep["plots"]) == ["history.png", "layers.png"]
    for p in rep["plots"]:
        with Image.open(tmp_path / p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    md = (tmp_path / "report.md").read_text()
    assert "| this run |" in md and "0.9000" in md and "![history.png](history.png)" in md


def test_structured_report_draws_widths_and_spectra(tmp_path):
    rep = report.write(tmp_path, {"method": "sliming", "seed": 1, "seconds": 2.0,
                                  "test_accuracy": 0.7, "macs_ratio": 0.5,
                                  "layers": [{"layer": "c1", "before": [16, 3, 3, 3], "after": [8, 3, 3, 3]}],
                                  "spectra": {"g0": [3.0, 2.0, 0.5], "g1": [1.0, 0.1]}},
                       kind="prune-structured", config={"normalize": "sum"})
    assert sorted(rep["plots"]) == ["layers.png", "spectra.png"]


def test_invalid_reports_are_refused(tmp_path):
    with pytest.raises(PrunewiseError, match="test_accuracy"):
        report.write(tmp_path, {"seed": 0, "seconds": 1.0}, kind="prune-structured")
    with pytest.raises(PrunewiseError, match="sparsity"):
        report.write(tmp_path, sample(sparsity=1.5), kind="prune-unstructured")
    assert not (tmp_path / "report.json").exists()
    # the schema file itself agrees with our validator on a bad report
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "nope"}, json.loads(report.SCHEMA_PATH.read_text()))


def test_render_redraws_from_report_json(tmp_path):
    report.write(tmp_path, sample(), kind="prune-unstructured")
    (tmp_path / "report.md").unlink()
    (tmp_path / "layers.png").unlink()
    r = run("report", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.md").is_file() and (tmp_path / "layers.png").is_file()


def test_report_folder_without_report_json_is_exit_2(tmp_path):
    assert_bad_input(run("report", str(tmp_path)), "report", "not found")
