"""The README's Python example runs as printed (shortened: 1 epoch, 30% sparsity)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example(which: int = 0) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3, "the README has three Python examples: the API, your own model, your own task"
    return blocks[which]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = python_example()
    short = re.sub(r"epochs=\d+", "epochs=1", code)
    short = short.replace("sparsity=0.9", "sparsity=0.3")
    assert short.count("epochs=1") == 3 and short.count("sparsity=0.3") == 3  # still the same example
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(short, str(README), "exec"), scope)  # noqa: S102 -- our own README
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and int(printed[0]) > 0 and int(printed[1]) > 0
    assert (tmp_path / "runs" / "fvw90").is_dir() and (tmp_path / "runs" / "slim50").is_dir()
    report = scope["report"]
    assert report["accuracy"]["finetuned"] is not None
    assert report["sparsity"] == pytest.approx(0.3, abs=1e-3)


def test_readme_own_model_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    code = python_example(1)
    short = re.sub(r"epochs=\d+", "epochs=1", code)
    assert short.count("epochs=1") == 3
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(short, str(README), "exec"), scope)  # noqa: S102 -- our own README
    lines = capsys.readouterr().out.strip().splitlines()
    heads = eval(lines[0])  # noqa: S307 -- our own printed list
    assert len(heads) == 4 and min(heads) < 4 and all(h >= 1 for h in heads)
    assert "embeddings" in lines[1]
    assert (tmp_path / "runs" / "mycnn-s50" / "structure" / "0").is_dir()
    import torch
    x = scope["bundle"].example(2)
    torch.testing.assert_close(scope["same"](x), scope["small"].eval()(x))
    assert scope["report"]["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_readme_own_task_example_runs(capsys):
    code = python_example(2)
    short = re.sub(r"epochs=\d+", "epochs=2", code)
    assert short.count("epochs=2") == 2
    scope: dict = {}
    exec(compile(short, str(README), "exec"), scope)  # noqa: S102 -- our own README
    name, dense, finetuned = capsys.readouterr().out.split()
    assert name == "mae" and float(dense) > 0 and float(finetuned) > 0
    report = scope["report"]
    assert report["metric"]["higher_is_better"] is False and "accuracy" not in report
    assert report["scores"]["repaired"] is not None and report["sparsity"] == pytest.approx(0.5, abs=1e-3)
