"""report.json / report.md / plots, the JSON schema, and `prunewise report`."""
import copy
import json

import jsonschema
import pytest
from PIL import Image

from prunewise import PrunewiseError, report
from helpers import assert_bad_input, invoke

SCHEMA = json.loads(report.SCHEMA_PATH.read_text())


def stage(test, val=None):
    return {"val": val, "test": test}


def sample(**extra):
    """A masked run's report, shaped as prunewise.runs writes it."""
    return {"method": "fvw", "seed": 0, "seconds": 1.5, "sparsity": 0.9,
            "budget": {"sparsity": 0.9},
            "accuracy": {"dense": stage(0.9, 0.91), "pruned": stage(0.5, 0.52),
                         "recalibrated": stage(0.7, 0.71), "finetuned": stage(0.85, 0.86)},
            "params": {"dense": 1000, "pruned": 120, "ratio": 0.12, "counted": "nonzero"},
            "macs": {"dense": 5000, "pruned": 700, "ratio": 0.14, "counted": "nonzero weights"},
            "latency_ms": {"1": {"dense": 1.0, "pruned": 1.1, "speedup": 0.91},
                           "64": {"dense": 20.0, "pruned": 19.0, "speedup": 1.05}},
            "layers": [{"layer": "a.weight", "sparsity": 0.8}, {"layer": "b.weight", "sparsity": 0.95}],
            "history": [{"iteration": i, "sparsity": 0.1 * i, "accuracy": 1 - 0.05 * i}
                        for i in range(1, 6)], **extra}


def test_write_validates_against_the_schema_and_draws(tmp_path):
    rep = report.write(tmp_path, sample(), kind="prune-unstructured", config={"keep": 0.98})
    on_disk = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(on_disk, SCHEMA)
    assert on_disk["config"] == {"keep": 0.98} and on_disk["accuracy"] == sample()["accuracy"]
    assert sorted(rep["plots"]) == ["history.png", "layers.png"]
    for p in rep["plots"]:
        with Image.open(tmp_path / p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    md = (tmp_path / "report.md").read_text()
    assert "![history.png](history.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| fvw |"))
    for cell in ("sparsity 0.9", "0.9000", "120", "700", "0.5000", "0.7000", "0.8500", "1.100",
                 "19.000", "n/a (masks)"):
        assert cell in row, cell
    assert "x1.05" not in row  # a masked model runs the dense kernels: no speed-up is shown
    dense = next(line for line in md.splitlines() if line.startswith("| dense |"))
    assert "1,000" in dense and "5,000" in dense and "20.000" in dense


def test_a_report_written_from_a_script_has_no_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["my_experiment.py", "--lr", "0.1"])
    rep = report.write(tmp_path, sample(), kind="prune-unstructured")
    assert "command" not in rep and "Command:" not in (tmp_path / "report.md").read_text()
    monkeypatch.setattr("sys.argv", ["/usr/bin/prunewise", "report", "x"])
    assert report.write(tmp_path, sample(), kind="prune-unstructured")["command"] == \
        "prunewise report x"


def test_history_legend_names_both_lines(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figs.append(fig) or path)
    report.plot_history(tmp_path / "h.png", sample()["history"], "fvw")
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert labels == ["sparsity", "validation top-1"]


def test_structured_report_draws_widths_and_spectra(tmp_path):
    rep = sample(method="sliming", layers=[{"layer": "c1", "before": [16, 3, 3, 3],
                                            "after": [8, 3, 3, 3]}],
                 spectra={"g0": [3.0, 2.0, 0.5], "g1": [1.0, 0.1]}, history=[])
    out = report.write(tmp_path, rep, kind="prune-structured", config={"normalize": "sum"})
    assert sorted(out["plots"]) == ["layers.png", "spectra.png"]


def bad_reports():
    missing_stage = sample()
    del missing_stage["accuracy"]["recalibrated"]
    wrong_acc = sample()
    wrong_acc["accuracy"]["pruned"]["test"] = 1.5
    demo = {"seed": 0, "seconds": 1.0, "accuracy": {"dense": stage(0.9)},
            "runs": {"fvw": missing_stage}}
    return [("prune-unstructured", sample(sparsity=1.5), "sparsity"),
            ("prune-unstructured", missing_stage, "recalibrated"),
            ("prune-structured", wrong_acc, "pruned"),
            ("prune-structured", {"seed": 0, "seconds": 1.0}, "missing"),
            ("demo", demo, "recalibrated")]


@pytest.mark.parametrize("kind, rep, word", bad_reports())
def test_invalid_reports_are_refused_by_us_and_by_jsonschema(tmp_path, kind, rep, word):
    with pytest.raises(PrunewiseError, match=word):
        report.write(tmp_path, copy.deepcopy(rep), kind=kind)
    assert not (tmp_path / "report.json").exists()
    full = {"kind": kind, "config": {}, "versions": report.versions(), **rep}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(full, SCHEMA)


def test_render_redraws_from_report_json(tmp_path):
    report.write(tmp_path, sample(), kind="prune-unstructured")
    (tmp_path / "report.md").unlink()
    (tmp_path / "layers.png").unlink()
    r = invoke("report", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.md").is_file() and (tmp_path / "layers.png").is_file()


def test_report_folder_without_report_json_is_exit_2(tmp_path):
    assert_bad_input(invoke("report", tmp_path), "report", "not found")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    r = invoke("demo", "--quick", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("path, value", [
    (("runs", "fvw", "layers"), [{"layer": 1}]), (("runs", "fvw", "layers"), [{}]),
    (("runs", "fvw", "history"), [{"iteration": "x", "sparsity": 0.5}]),
    (("runs", "sliming", "spectra"), {"a": ["x"]}), (("runs", "fvw", "budget"), "x"),
    (("command",), 5), (("command",), "\ud800")])
def test_a_report_whose_fields_lie_is_one_line(tmp_path, demo_report, path, value):
    import copy

    rep = copy.deepcopy(demo_report)
    obj = rep
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    (tmp_path / "report.json").write_text(json.dumps(rep))
    before = (tmp_path / "report.json").read_bytes()
    r = invoke("report", tmp_path)
    assert_bad_input(r, "report")
    assert (tmp_path / "report.json").read_bytes() == before
