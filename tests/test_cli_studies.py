"""``servetune studies ls/show`` on real study folders (one tuned by ``servetune tune`` with a
trained model, one stopped half-way), and the aligned tables they print."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from _helpers_data import servetune_command
from _helpers_models import trained_synthetic_workspace
from _helpers_tuner import BowlEvaluator

from servetune.cli._table import format_table, short_header
from servetune.data import Workspace
from servetune.tuner import SearchSpace, Study

WORKLOAD = "poisson:rate=40,n=150,input=lognormal:600:0.8:3000,output=lognormal:80:0.6:400"


def _servetune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*servetune_command(), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """A trained workspace with a finished study ``done`` (servetune tune) and an unfinished
    one ``half`` (2 of 12 iterations)."""
    ws, _ = trained_synthetic_workspace(tmp_path_factory.mktemp("studies"), n_runs=8,
                                        steps_per_run=250, num_blocks=None, n_jobs=1,
                                        estimator_params={"n_estimators": 60})
    out = _servetune("--workspace", str(ws.root), "tune", "--workload", WORKLOAD, "--particles",
                     "5", "--iterations", "3", "--top-k", "3", "--study", "done", "--set",
                     "num_blocks=4096", "--no-mlflow")
    assert out.returncode == 0, out.stderr
    space = SearchSpace.builtin("transformers-cb")
    half = Study.create(ws.studies_dir() / "half", space=space, seed=3,
                        optimizer={"name": "pso", "particles": 8, "iterations": 12},
                        evaluator={"workload": "poisson:rate=2,n=10", "requests": 10})
    half.run(BowlEvaluator(space.to_dict()), max_iterations=2)
    return ws


def _age(folder, seconds: float) -> None:
    """Make the study's last checkpoint ``seconds`` old (as if its process died then)."""
    stamp = time.time() - seconds
    os.utime(folder / "checkpoint.json", (stamp, stamp))


def test_ls_json_status_counts_and_best(workspace):
    _age(workspace.studies_dir() / "half", 3600)
    out = _servetune("studies", "ls", "--json", "--workspace", str(workspace.root))
    assert out.returncode == 0, out.stderr
    rows = {s["name"]: s for s in json.loads(out.stdout)}
    assert set(rows) == {"done", "half"}
    done, half = rows["done"], rows["half"]
    assert done["status"] == "finished" and done["engine"] == "transformers-cb"
    assert done["evaluations"]["total"] == 15 and done["planned_evaluations"] == 15
    assert done["workload"] == WORKLOAD and done["objective"].startswith("goodput")
    candidates = json.loads((workspace.studies_dir() / "done" / "candidates.json").read_text())
    assert done["best_objective"] == candidates[0]["objective"]
    assert half["status"] == "interrupted"  # unfinished, its checkpoint an hour old
    assert half["evaluations"]["total"] == 16 and half["iterations"] == 2
    assert half["best_objective"] == pytest.approx(Study.load(
        workspace.studies_dir() / "half").best().score)


def test_ls_status_running_then_interrupted_by_the_tune_marker(workspace):
    folder = workspace.studies_dir() / "half"
    _age(folder, 5)  # checkpointed seconds ago: a process may still be at work
    out = _servetune("--workspace", str(workspace.root), "studies", "ls", "--json")
    assert {s["name"]: s["status"] for s in json.loads(out.stdout)}["half"] == "running"
    (folder / "interrupted.json").write_text("{}")  # what tune writes when interrupted
    try:
        out = _servetune("--workspace", str(workspace.root), "studies", "ls", "--json")
        assert {s["name"]: s["status"] for s in json.loads(out.stdout)}["half"] == \
            "interrupted"
    finally:
        (folder / "interrupted.json").unlink()


def test_ls_prints_one_aligned_row_per_study(workspace):
    _age(workspace.studies_dir() / "half", 3600)
    out = _servetune("--workspace", str(workspace.root), "studies", "ls")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "|" not in out.stdout
    assert lines[0].split() == ["name", "status", "engine/space", "workload", "objective",
                                "evaluations", "best", "created", "(UTC)"]
    assert set(lines[1]) == {"-", " "}
    assert [line.split()[:2] for line in lines[2:]] == [["done", "finished"],
                                                        ["half", "interrupted"]]
    assert "15/15" in lines[2] and "16/96" in lines[3]
    # aligned: the status and created columns start where their rule starts, on every row
    rule = lines[1]
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    for line, status in zip(lines[2:], ("finished", "interrupted")):
        assert line.index(status) == starts[1]
        assert line[starts[-1]:starts[-1] + 2] == "20" and line[starts[-1] - 1] == " "


def test_show_finished_study_table_and_launch(workspace):
    out = _servetune("--workspace", str(workspace.root), "studies", "show", "done")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "|" not in text and "---|" not in text
    candidates = json.loads((workspace.studies_dir() / "done" / "candidates.json").read_text())
    assert f"launch: {candidates[0]['launch']['command']}" in text
    assert "--resume" not in text
    table = [line for line in text.splitlines() if line.startswith(("#1", "baseline"))]
    assert len(table) == 2 and table[-1].startswith("baseline")
    assert "goodput" in text and "req/s" in text  # shortened metric headers
    shown = json.loads(_servetune("--workspace", str(workspace.root), "studies", "show", "done",
                                  "--json").stdout)
    assert shown["status"] == "finished" and shown["resume"] is None
    assert shown["candidates"] == candidates and shown["knobs"][0] == "max_batch_tokens"


def test_show_unfinished_study_gives_the_resume_command(workspace):
    _age(workspace.studies_dir() / "half", 3600)
    out = _servetune("--workspace", str(workspace.root), "studies", "show", "half")
    assert out.returncode == 0, out.stderr
    assert (f"interrupted; continue with: servetune tune --resume half --workspace "
            f"{workspace.root}") in out.stdout
    assert "launch:" not in out.stdout


def test_show_unknown_name_lists_the_known_ones(workspace):
    out = _servetune("--workspace", str(workspace.root), "studies", "show", "nope")
    assert out.returncode == 2
    assert "no study 'nope'" in out.stderr and "known studies: done, half" in out.stderr


def test_ls_on_an_empty_workspace(tmp_path):
    out = _servetune("studies", "ls", "--workspace", str(tmp_path))
    assert out.returncode == 0 and "no studies" in out.stdout
    assert json.loads(_servetune("studies", "ls", "--json", "--workspace",
                                 str(tmp_path)).stdout) == []


def test_table_aligns_numbers_right_and_wraps_long_knob_headers():
    text = format_table(["", short_header("goodput_rps"), "max_batch_tokens", "scheduler"],
                        [["#1", "1.5", "8192", "fifo"], ["baseline", "12.25", "512", "-"]])
    lines = text.splitlines()
    assert lines == [
        "                         max_batch_",
        "          goodput req/s      tokens  scheduler",
        "--------  -------------  ----------  ---------",
        "#1                  1.5        8192  fifo",
        "baseline          12.25         512  -",
    ]
    assert short_header("output_throughput_tok_s") == "output tok/s"
    assert short_header("queue_p90_ms") == "queue_p90 ms"
