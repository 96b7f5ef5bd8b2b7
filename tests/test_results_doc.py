"""docs/results.md: every generated table is what the summary scripts print from the committed
JSON (a number changed by hand, or JSON changed without regenerating, fails here)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_tables_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_doc.py"), "--check"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "current" in r.stdout
    text = (ROOT / "docs" / "results.md").read_text()
    assert text.count("\n<!-- table: ") == text.count("\n<!-- end table -->") >= 5
