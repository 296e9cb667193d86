"""``servetune tune`` and ``servetune report`` end to end: a real Parquet store, a real MLflow
SQLite store with a trained champion, the real simulator, process pools."""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from _helpers_models import synthetic_traces

from servetune.cli._main import main
from servetune.data import TraceStore, Workspace
from servetune.models import TrainConfig, train_step_time_model
from servetune.tuner import Study

WORKLOAD = "poisson:rate=40,n=150,input=lognormal:600:0.8:3000,output=lognormal:80:0.6:400"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws = Workspace.resolve(tmp_path_factory.mktemp("tune") / "ws")
    steps, runs = synthetic_traces(n_runs=8, steps_per_run=250, seed=0)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256="generated-0", format="test")
    # no hyperparameter search: the champion only has to exist (its accuracy is not tested here)
    train_step_time_model(ws, config=TrainConfig(n_trials=1, n_jobs=1,
                                                 estimator_params={"n_estimators": 60}),
                          progress=False)
    return ws


def _tune(ws: Workspace, capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["--workspace", str(ws.root), "tune", "--workload", WORKLOAD, *MEMORY, *args,
                 "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def test_tune_json_contract_files_and_mlflow_run(workspace, capsys):
    code, result, err = _tune(workspace, capsys, "--particles", "5", "--iterations", "3",
                              "--top-k", "3", "--study", "contract")
    assert code == 0, err
    assert {"study", "best", "baseline", "candidates", "evaluations"} <= set(result)
    assert {"config", "objective", "metrics", "domain"} <= set(result["best"])
    assert result["best"]["objective"] == result["best"]["metrics"]["goodput_rps"]
    assert result["evaluations"]["total"] == 15
    labels = [c["label"] for c in result["candidates"]]
    assert labels[-1] == "baseline" and len(labels) <= 4
    assert result["baseline"]["config"]["max_batch_tokens"] == 8192  # the engine default
    assert "tune contract" in err  # progress bar on stderr
    folder = Path(result["study"]["path"])
    for name in ("study.json", "checkpoint.json", "evaluations.jsonl", "candidates.json",
                 "candidates.md",
                 "plots/convergence.png", "plots/pareto.png"):
        assert (folder / name).exists(), name

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=workspace.tracking_uri)
    run = client.get_run(result["study"]["mlflow_run_id"])
    history = client.get_metric_history(run.info.run_id, "best_objective")
    assert [m.step for m in history] == [0, 1, 2]
    assert history[-1].value == pytest.approx(result["best"]["objective"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best_config.json", "plots", "study"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/convergence.png", "plots/pareto.png"}
    assert run.data.params["objective"].startswith("goodput")


def test_candidates_file_is_what_the_hardware_dispatcher_reads(workspace, capsys):
    code, result, err = _tune(workspace, capsys, "--particles", "4", "--iterations", "2",
                              "--study", "handoff")
    assert code == 0, err
    from servetune.tuner.hardware._candidates import load_study_candidates

    loaded = load_study_candidates(result["study"]["path"])
    assert [c.baseline for c in loaded].count(True) == 1
    tuned = [c for c in loaded if not c.baseline]
    assert tuned[0].config == result["best"]["config"]
    assert tuned[0].predicted["goodput_rps"] == pytest.approx(result["best"]["objective"])


def test_process_pool_and_resume_of_a_finished_study_agree(workspace, capsys):
    code, inline, err = _tune(workspace, capsys, "--particles", "6", "--iterations", "2",
                              "--study", "inline", "--no-mlflow")
    assert code == 0, err
    code, pooled, err = _tune(workspace, capsys, "--particles", "6", "--iterations", "2",
                              "--study", "pooled", "--jobs", "2", "--no-mlflow")
    assert code == 0, err
    assert pooled["best"] == inline["best"]
    assert [c["config"] for c in pooled["candidates"]] == [
        c["config"] for c in inline["candidates"]]
    code = main(["--workspace", str(workspace.root), "tune", "--resume", "pooled", "--json",
                 "--no-mlflow"])
    resumed = json.loads(capsys.readouterr().out)
    assert code == 0 and resumed["best"] == pooled["best"]
    assert resumed["evaluations"] == pooled["evaluations"]


def test_report_is_self_contained_html(workspace, capsys):
    code, result, err = _tune(workspace, capsys, "--particles", "4", "--iterations", "2",
                              "--study", "reported", "--no-mlflow")
    assert code == 0, err
    code = main(["--workspace", str(workspace.root), "report", "reported", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    text = Path(payload["report"]).read_text()
    assert text.count("<svg") == 2 and "<img" not in text  # plots inline, as SVG
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # nothing fetched
    assert html.escape(result["candidates"][0]["launch"]["command"]) in text
    assert 'id="diff"' in text and 'id="launch"' in text


@pytest.mark.parametrize("args, message", [
    (["--space", "nope"], "neither a built-in space"),
    (["--objective", "latency"], "unknown objective 'latency'"),
    (["--resume", "missing"], "no study in"),
    (["--executor", "http://h:1"], "dask://HOST:PORT"),
])
def test_bad_flags_exit_2_with_a_clear_message(workspace, capsys, args, message):
    code = main(["--workspace", str(workspace.root), "tune", *args, "--particles", "2",
                 "--iterations", "1", "--no-mlflow"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_report_of_an_unknown_study_lists_the_existing_ones(workspace, capsys):
    code = main(["--workspace", str(workspace.root), "report", "nope"])
    assert code == 2
    assert "no study 'nope'" in capsys.readouterr().err


def _script_cluster(tmp_path) -> Path:
    """The hardware tests' scripted OpenAI-compatible server, started by the real dispatcher on
    this machine through the ``script`` launcher (no GPU engine can run here)."""
    import sys

    from _helpers_hardware import free_port

    helper = Path(__file__).parent / "_helpers_hardware.py"
    cluster = tmp_path / "cluster.toml"
    command = json.dumps([sys.executable, str(helper), "--token-ms", "1"])
    cluster.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 10\n'
                       f'candidate_timeout_s = 60\nstop_grace_s = 3\n[[service_groups]]\n'
                       f'service_port = {free_port()}\nstart_command = {command}\n'
                       f'nodes = [{{ host = "local", work_dir = "{tmp_path / "w"}" }}]\n')
    return cluster


VERIFY_WORKLOAD = "poisson:rate=40,n=30,input=const:64,output=const:8"
# the synthetic traces' model records no engine constants, so the KV cache is sized from these
MEMORY = ["--set", "gpu_memory_gib=80", "--set", "model_weights_gib=2.3", "--set",
          "kv_bytes_per_token=32768"]


def test_verify_measures_the_candidates_and_recommends_the_measured_best(workspace, capsys,
                                                                         tmp_path):
    from _helpers_hardware import session_alive

    before = set(TraceStore.for_workspace(workspace).query("runs")["run_id"])
    code = main(["--workspace", str(workspace.root), "tune", "--workload", VERIFY_WORKLOAD,
                 "--particles", "3", "--iterations", "1", "--top-k", "2", "--study",
                 "verified", "--no-mlflow", *MEMORY, "--verify", "--cluster",
                 str(_script_cluster(tmp_path)), "--json"])
    out = capsys.readouterr()
    assert code in (0, 3), out.err  # measured (drift against a synthetic model is no failure)
    doc = json.loads(out.out)
    verification = doc["verification"]
    assert verification["exit_code"] == code
    outcomes = verification["outcomes"]
    names = sorted(c["name"] for c in doc["candidates"])
    assert sorted(o["candidate"] for o in outcomes) == names and "default" in names
    assert all(o["status"] == "measured" for o in outcomes)
    tuned = next(o for o in outcomes if o["candidate"] == "rank1")
    assert tuned["config"] == doc["best"]["config"]

    # the recommendation is the best by measurement on the study's objective
    scored = {c["name"]: c["measured_objective"] for c in verification["candidates"]}
    best = max(scored, key=lambda name: scored[name])
    recommended = doc["recommendation"]
    assert recommended["chosen_on"] == "measurements" and recommended["name"] == best
    assert recommended["measured_objective"] == scored[best]
    assert recommended["objective"] == doc["study"]["objective"]
    assert recommended["launch"] == next(c["launch"] for c in doc["candidates"]
                                         if c["name"] == best)
    # each measured objective is the study's objective (goodput) of that candidate's runs
    for entry in verification["candidates"]:
        runs = next(o for o in outcomes if o["candidate"] == entry["name"])["measurements"]
        goodput = [r["metrics"]["goodput_rps"] for r in runs]
        assert entry["measured_objective"] == pytest.approx(sum(goodput) / len(goodput))
        assert entry["metrics"]["ttft_mean_ms"]["predicted"] is not None

    saved = json.loads((Path(doc["study"]["path"]) / "measurements.json").read_text())
    assert saved == verification
    runs = TraceStore.for_workspace(workspace).query("runs")
    new = runs[~runs["run_id"].isin(before)]
    measured = {m["run_id"] for o in outcomes for m in o["measurements"]}
    assert set(new["run_id"]) == measured and set(new["source"]) == {"measured"}
    assert len(measured) == verification["statistics"]["measurements"]
    sessions = [sid for o in outcomes for a in o["attempts"] for _, sid in a["sessions"]]
    assert sessions and all(session_alive(sid) == [] for sid in sessions)


def test_verify_prints_the_recommendation_chosen_on_measurements(workspace, capsys, tmp_path):
    code = main(["--workspace", str(workspace.root), "tune", "--workload", VERIFY_WORKLOAD,
                 "--particles", "2", "--iterations", "1", "--top-k", "1", "--study",
                 "verified-text", "--no-mlflow", *MEMORY, "--verify", "--cluster",
                 str(_script_cluster(tmp_path))])
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    assert "measured best on goodput" in out.out
    assert "recommended (chosen on measurements): " in out.out
    assert out.out.index("study verified-text") < out.out.index("measured best on")


def test_verify_repeats_each_candidate_and_takes_the_threshold(workspace, capsys, tmp_path):
    code = main(["--workspace", str(workspace.root), "tune", "--workload", VERIFY_WORKLOAD,
                 "--particles", "2", "--iterations", "1", "--top-k", "1", "--study",
                 "verified-repeats", "--no-mlflow", *MEMORY, "--verify", "--cluster",
                 str(_script_cluster(tmp_path)), "--repeats", "2", "--threshold", "0.4",
                 "--json"])
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    verification = json.loads(out.out)["verification"]
    assert verification["threshold"] == 0.4
    assert [len(o["measurements"]) for o in verification["outcomes"]] == [2, 2]


def test_repeats_and_threshold_need_verify(workspace, capsys):
    code = main(["--workspace", str(workspace.root), "tune", "--repeats", "3", "--no-mlflow"])
    assert code == 2 and "only used with --verify" in capsys.readouterr().err


def test_verify_needs_a_cluster(workspace, capsys):
    code = main(["--workspace", str(workspace.root), "tune", "--verify", "--no-mlflow"])
    assert code == 2 and "--verify needs --cluster" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_study_killed_mid_run_resumes_to_the_uninterrupted_result(workspace, capsys):
    """``servetune tune`` as a real subprocess, SIGKILLed once two iterations are checkpointed,
    then ``--resume``: the same evaluations as an uninterrupted run (real simulator)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    workload = "poisson:rate=60,n=1500,input=lognormal:600:0.8:3000,output=lognormal:80:0.6:400"
    flags = ["--workload", workload, "--particles", "6", "--iterations", "8", "--no-mlflow",
             *MEMORY]
    code = main(["--workspace", str(workspace.root), "tune", *flags, "--study", "whole",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    studies = workspace.studies_dir()
    expected = [asdict(r) for r in Study.load(studies / "whole").records]

    servetune = str(Path(sys.executable).parent / "servetune")
    proc = subprocess.Popen([servetune, "--workspace", str(workspace.root), "tune", *flags,
                             "--study", "killed"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = studies / "killed" / "checkpoint.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["iteration"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the study ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(checkpoint.read_text())
    assert state["status"] == "running" and state["iteration"] < 8
    code = main(["--workspace", str(workspace.root), "tune", "--resume", "killed", "--json",
                 "--no-mlflow"])
    assert code == 0, capsys.readouterr().err
    assert [asdict(r) for r in Study.load(studies / "killed").records] == expected
