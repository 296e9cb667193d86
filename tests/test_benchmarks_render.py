"""BENCHMARKS.md's generated tables agree with benchmarks/results/; a changed record is caught."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "render_tables.py"


def _render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_repository_tables_match_their_records():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert text.count("<!-- table:") >= 5  # markers exist, so the check checks something
    done = _render("--check")
    assert done.returncode == 0, done.stderr


def test_a_changed_record_makes_check_fail_and_render_fixes_it(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# t\n\nprose\n\n<!-- table:host_calibration -->\nstale\n"
                        "<!-- /table:host_calibration -->\n\nmore prose\n", encoding="utf-8")
    where = ["--markdown", str(markdown), "--results", str(results)]
    assert _render("--check", *where).returncode == 1
    assert _render(*where).returncode == 0
    assert _render("--check", *where).returncode == 0
    text = markdown.read_text(encoding="utf-8")
    assert text.startswith("# t\n\nprose\n\n<!-- table:host_calibration -->\n| model |")
    assert text.endswith("<!-- /table:host_calibration -->\n\nmore prose\n")
    assert "| champion | the H200 sample (88 runs) | 14.4 % |" in text

    record = json.loads((results / "host_calibration.json").read_text())
    record["figures"]["models"]["champion (H200 sample)"]["step_mape_pct"] = 20.04
    (results / "host_calibration.json").write_text(json.dumps(record))
    failed = _render("--check", *where)
    assert failed.returncode == 1 and "host_calibration" in failed.stderr
    assert markdown.read_text(encoding="utf-8") == text  # --check writes nothing
    assert _render(*where).returncode == 0
    assert "| champion | the H200 sample (88 runs) | 20.0 % |" in markdown.read_text()


def test_an_unknown_table_name_is_refused(tmp_path):
    markdown = tmp_path / "B.md"
    markdown.write_text("<!-- table:nope -->\n<!-- /table:nope -->\n")
    done = _render("--check", "--markdown", str(markdown))
    assert done.returncode != 0 and "nope" in done.stderr
