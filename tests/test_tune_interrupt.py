"""``servetune tune`` interrupted by a real signal in a real subprocess: the resume hint, the exit
code, a loadable checkpoint, and ``--resume`` continuing from it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _helpers_data import servetune_command
from _helpers_models import trained_synthetic_workspace

from servetune.tuner import Study

# 30 x 200 = 6,000 simulations of the default 2,000-request workload: minutes, never done
# before the signal; num_blocks because the synthetic training runs record no GPU memory
LONG = ("--particles", "30", "--iterations", "200", "--set", "num_blocks=4096", "--no-mlflow")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace with a champion step-time model (trained once for the module)."""
    ws, _ = trained_synthetic_workspace(tmp_path_factory.mktemp("interrupt"), n_runs=8,
                                        steps_per_run=250, num_blocks=None, n_jobs=1,
                                        estimator_params={"n_estimators": 60})
    return ws.root


@pytest.fixture
def workspace(trained, tmp_path) -> Path:
    """A private copy of the trained workspace (each test writes its own studies)."""
    return Path(shutil.copytree(trained, tmp_path / "ws"))


def _checkpoint(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet (replaced atomically)
        return None


def _run_until(args: list[str], log: Path, ready, timeout_s: float = 300.0):
    """Start ``servetune ARGS`` (stderr to ``log``), wait until ``ready()`` is true."""
    handle = open(log, "w")
    proc = subprocess.Popen([*servetune_command(), *args], stdout=subprocess.DEVNULL,
                            stderr=handle, text=True)
    handle.close()
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"servetune exited ({proc.returncode}) before it was ready: "
                        f"{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"not ready after {timeout_s} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def _stop(proc, sig) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"servetune did not stop within 120 s of {sig.name}")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_prints_the_resume_hint_and_resume_continues(workspace, tmp_path, sig):
    name = f"long-{sig.name.lower()}"
    folder = workspace / "studies" / name
    proc = _run_until(["--workspace", str(workspace), "tune", *LONG, "--study", name],
                      tmp_path / "first.log",
                      lambda: (_checkpoint(folder) or {}).get("iteration", 0) >= 1)
    code = _stop(proc, sig)
    err = (tmp_path / "first.log").read_text()
    assert code == EXIT[sig], err[-2000:]

    state = _checkpoint(folder)
    assert state["status"] == "running" and state["iteration"] >= 1
    evaluations = state["records"]
    assert evaluations == 30 * state["iteration"]
    assert (f"study {name} interrupted after {evaluations} evaluations; continue with: "
            f"servetune tune --resume {name} --workspace {workspace}") in err
    study = Study.load(folder)  # the checkpoint on disk is loadable
    assert len(study.records) == evaluations and not study.optimizer.done
    log_before = (folder / "evaluations.jsonl").read_bytes()

    listed = subprocess.run([*servetune_command(), "studies", "ls", "--json", "--workspace",
                             str(workspace)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    row = next(s for s in json.loads(listed.stdout) if s["name"] == name)
    assert row["status"] == "interrupted" and row["evaluations"]["total"] == evaluations

    # the hint's command, as printed: continues from the checkpoint (interrupted again once it
    # has gone past it; finishing would take minutes)
    before = state["iteration"]
    proc = _run_until(["tune", "--resume", name, "--workspace", str(workspace), "--no-mlflow"],
                      tmp_path / "resume.log",
                      lambda: (_checkpoint(folder) or {}).get("iteration", 0) > before)
    code = _stop(proc, signal.SIGINT)
    err = (tmp_path / "resume.log").read_text()
    assert code == 130, err[-2000:]
    resumed = Study.load(folder)
    assert resumed.iteration > before
    assert len(resumed.records) == 30 * resumed.iteration
    assert (folder / "evaluations.jsonl").read_bytes().startswith(log_before)  # appended to
    assert [r.index for r in resumed.records] == list(range(len(resumed.records)))
    assert f"study {name} interrupted after {len(resumed.records)} evaluations" in err
