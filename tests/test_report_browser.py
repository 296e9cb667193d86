"""The study report in a real headless Chromium at a laptop's 1,280 px: a real study (synthetic
traces, a trained model in a real MLflow store, the real simulator) verified through the real
dispatcher against the hardware tests' scripted server, so ``measurements.json`` exists."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers_hardware import free_port
from _helpers_models import synthetic_traces

from servetune.cli._main import main
from servetune.data import TraceStore, Workspace
from servetune.models import TrainConfig, train_step_time_model
from servetune.tuner._report import render_report

WIDTH = 1280
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
            "google-chrome-stable")
WORKLOAD = "poisson:rate=40,n=30,input=const:64,output=const:8"
# the synthetic traces' model records no engine constants, so the KV cache is sized from these
MEMORY = ["--set", "gpu_memory_gib=80", "--set", "model_weights_gib=2.3", "--set",
          "kv_bytes_per_token=32768"]
# appended to a copy of the report: what the page measures after layout, as a body attribute
PROBE = """<script>(function () {
  var d = document.documentElement, out = {scrollWidth: d.scrollWidth,
    innerWidth: window.innerWidth, overflowing: []};
  document.querySelectorAll(".scroll").forEach(function (s) {
    var t = s.querySelector("[id]") || s.firstElementChild;
    if (s.scrollWidth > s.clientWidth) out.overflowing.push(t ? (t.id || t.tagName) : "?");
  });
  document.body.setAttribute("data-probe", JSON.stringify(out));
})();</script>"""


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if found is None:
        pytest.skip("no headless Chromium on PATH (apt-get install chromium-headless-shell, "
                    "as .ci/run does)")
    return found


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A tuned and verified study folder in a workspace with its MLflow store."""
    tmp = tmp_path_factory.mktemp("report")
    ws = Workspace.resolve(tmp / "ws")
    steps, runs = synthetic_traces(n_runs=8, steps_per_run=250, seed=0)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256="generated-0", format="test")
    train_step_time_model(ws, config=TrainConfig(n_trials=1, n_jobs=1,
                                                 estimator_params={"n_estimators": 60}),
                          progress=False)
    code = main(["--workspace", str(ws.root), "tune", "--workload", WORKLOAD, "--particles",
                 "4", "--iterations", "2", "--top-k", "2", "--study", "shown", "--no-mlflow",
                 *MEMORY, "--verify", "--cluster", str(_script_cluster(tmp)), "--json"])
    assert code in (0, 3)  # measured (drift against a synthetic model is no failure)
    folder = ws.studies_dir() / "shown"
    assert (folder / "measurements.json").exists()
    code = main(["--workspace", str(ws.root), "report", "shown", "--json"])
    assert code == 0
    return folder


def _script_cluster(tmp: Path) -> Path:
    """The hardware tests' scripted OpenAI-compatible server, started on this machine by the
    real dispatcher through the ``script`` launcher (no GPU engine runs here)."""
    helper = Path(__file__).parent / "_helpers_hardware.py"
    command = json.dumps([sys.executable, str(helper), "--token-ms", "1"])
    cluster = tmp / "cluster.toml"
    cluster.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 10\n'
                       f'candidate_timeout_s = 60\nstop_grace_s = 3\n[[service_groups]]\n'
                       f'service_port = {free_port()}\nstart_command = {command}\n'
                       f'nodes = [{{ host = "local", work_dir = "{tmp / "w"}" }}]\n')
    return cluster


def _chromium(browser: str, *args: str) -> str:
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", f"--window-size={WIDTH},900", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _text(dom: str, element_id: str) -> str:
    """The text of the element with ``element_id`` in the dumped DOM (tags dropped)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert match, f"no #{element_id} in the report"
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(2)))


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_report_fits_1280px_and_shows_diff_interval_launch_and_measurements(study, browser,
                                                                             tmp_path):
    report = (study / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", report)  # self-contained
    assert "<link" not in report
    assert report.count("<svg") >= 2 and "<img" not in report  # inline SVG plots
    page = tmp_path / "probe.html"
    page.write_text(report.replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    probe = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    assert probe["innerWidth"] == WIDTH
    assert probe["scrollWidth"] <= WIDTH, probe  # no horizontal scrolling of the page
    assert "diff" not in probe["overflowing"] and "interval" not in probe["overflowing"]

    shot = tmp_path / "report.png"
    _chromium(browser, f"--screenshot={shot}", (study / "report.html").as_uri())
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])
    assert (width, height) == (WIDTH, 900)

    candidates = json.loads((study / "candidates.json").read_text())
    measurements = json.loads((study / "measurements.json").read_text())
    chosen = next(c for c in candidates if c["name"] == measurements["measured_best"])
    base = next(c for c in candidates if c["baseline"])
    # the diff: exactly the knobs where the recommendation differs from the engine default
    diff = _squash(_text(dom, "diff"))
    changed = [k for k, v in chosen["config"].items() if base["config"][k] != v]
    if changed:
        rows = re.findall(r"<tr>\s*<td[^>]*>\s*<code>([^<]+)</code>", dom.split('id="diff"')[1]
                          .split("</table>")[0])
        assert rows == changed
    else:
        assert "No change" in diff
    # the interval of the objective and of the metrics
    lo, _, hi = chosen["interval"]["objective"]
    assert f"{lo:.4g}–{hi:.4g}" in _text(dom, "objective-interval")
    goodput = chosen["interval"]["metrics"]["goodput_rps"]
    assert f"{goodput[0]:.4g}–{goodput[2]:.4g}" in _text(dom, "interval")
    # the exact launch command and the validate command to copy
    assert _text(dom, "launch").strip() == chosen["launch"]["command"]
    assert f"--candidates {study.resolve()}" in _text(dom, "validate")
    # measured: chosen on measurements, the measured best marked in the measured table
    assert "chosen on measurements" in _text(dom, "recommendation")
    marked = re.findall(r'<tr class="best"><td class="l">([^<]+) ★ recommended', dom)
    assert marked == [chosen["label"]]


def test_report_shows_the_model_accuracy_and_escapes_every_value(study, tmp_path):
    copy = tmp_path / "ws" / "studies" / "copy"
    shutil.copytree(study, copy)
    shutil.copytree(study.parent.parent / "mlruns", tmp_path / "ws" / "mlruns")
    candidates = json.loads((copy / "candidates.json").read_text())
    hostile = "<script>alert(1)</script>"
    for c in candidates:
        c["launch"]["command"] = hostile
        c["domain"]["reasons"] = [hostile]
    (copy / "candidates.json").write_text(json.dumps(candidates))
    text = render_report(copy)
    assert hostile not in text and html.escape(hostile) in text
    # accuracy and lineage from the registry (found next to the study folder)
    assert "MAPE <b>" in text and "training run <code>" in text
    assert "cannot read it" not in text
