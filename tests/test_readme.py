"""The README's Python example runs as printed (shortened: 1 epoch, 30% sparsity)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


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
