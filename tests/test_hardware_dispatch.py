"""Dispatcher policy (retries, backoff, breaker, persistence), the report, candidates, the CLI.

Services here run through the local transport (real subprocesses in their own sessions) with
the scripted streaming server of tests/_helpers_hardware.py; unreachable hosts are real closed
ports. The SSH paths are covered in test_hardware_ssh.py and test_hardware_integration.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port, session_alive  # noqa: E402

from servetune import InputError  # noqa: E402
from servetune.cli import main  # noqa: E402
from servetune.data import TraceStore, Workload  # noqa: E402
from servetune.tuner.hardware import (  # noqa: E402
    Candidate,
    CandidateOutcome,
    CircuitBreaker,
    ClientOptions,
    ClusterSpec,
    Dispatcher,
    DispatchOptions,
    DispatchResult,
    Measurement,
    NodeSpec,
    ServiceGroupSpec,
    SSHOptions,
    build_report,
    candidates_from_sets,
    launcher_for,
    load_study_candidates,
    metric_row,
)

HELPER = str(Path(__file__).parent / "_helpers_hardware.py")


def local_group(name, tmp_path, *args):
    return ServiceGroupSpec(name, (NodeSpec("local", work_dir=str(tmp_path / name)),),
                            service_port=free_port(), start_command=(sys.executable, HELPER, *args))


def dead_group(name):
    return ServiceGroupSpec(name, (NodeSpec("127.0.0.1", port=free_port(), user="nobody"),),
                            service_port=free_port(), start_command=("true",))


def run(groups, candidates, tmp_path, *, store=True, on_measurement=None, **settings):
    base = dict(engine="script", model="m", health_timeout_s=15, candidate_timeout_s=30,
                stop_grace_s=3, retries=2, backoff_s=0.2, backoff_max_s=2.0,
                breaker_threshold=10, breaker_cooldown_s=60,
                ssh=SSHOptions(known_hosts=str(tmp_path / "kh"), allow_agent=False,
                               connect_timeout_s=2))
    base.update(settings)
    workload = Workload.from_arrays([0, 0.05, 0.1], [8, 8, 8], [4, 4, 4], name="t")
    d = Dispatcher(ClusterSpec(groups=tuple(groups), **base), launcher_for("script"), workload,
                   client=ClientOptions(model="m"),
                   store=TraceStore(tmp_path / "traces") if store else None,
                   options=DispatchOptions(warmup_requests=0), on_measurement=on_measurement)
    return d.run(candidates)


def no_survivors(result):
    sids = [sid for o in result.outcomes for a in o.attempts for _, sid in a.sessions]
    assert all(session_alive(sid) == [] for sid in sids)


def test_transient_failures_retry_with_growing_backoff_then_fail(tmp_path):
    result = run([dead_group("down")], [Candidate("c", {})], tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.error_kind == "host-unreachable"
    assert "after 3 attempt(s)" in outcome.reason
    starts = [a.started_s for a in outcome.attempts]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # backoff 0.2s then 0.4s, each times a jitter in [0.5, 1.5)
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert result.statistics()["retries"] == 2


def test_breaker_takes_a_failing_group_out(tmp_path):
    result = run([dead_group("down"), local_group("up", tmp_path)],
                 [Candidate(f"c{i}", {"i": i}) for i in range(3)], tmp_path,
                 breaker_threshold=1)
    assert [o.status for o in result.outcomes] == ["measured"] * 3
    assert result.groups["down"]["attempts"] == 1
    assert result.groups["down"]["breaker_openings"] == 1
    assert result.groups["up"]["measured"] == 3
    no_survivors(result)


def test_each_measurement_is_in_the_store_when_it_arrives(tmp_path):
    store = TraceStore(tmp_path / "traces")
    seen = []

    def check(measurement: Measurement) -> None:
        runs = store.query("runs", run_id=measurement.run_id)
        seen.append(len(runs))

    result = run([local_group("g", tmp_path)], [Candidate("c", {"i": 1})], tmp_path,
                 on_measurement=check)
    assert result.outcomes[0].status == "measured"
    assert seen == [1]
    requests = store.query("requests")
    assert len(requests) == 3 and set(requests["source"]) == {"measured"}
    assert all(len(itl) == 3 for itl in requests["itl_ms"])  # 4 tokens -> 3 gaps


def test_a_start_failure_is_the_candidates_fault_and_not_retried(tmp_path):
    group = ServiceGroupSpec("g", (NodeSpec("local", work_dir=str(tmp_path / "g")),),
                             service_port=free_port(),
                             start_command=(sys.executable, "-c", "import sys; sys.exit('bad flag')"))
    result = run([group], [Candidate("c", {})], tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.error_kind == "service-start-failed"
    assert "bad flag" in outcome.reason and len(outcome.attempts) == 1


def test_breaker_states():
    breaker = CircuitBreaker(threshold=2, cooldown_s=10)
    breaker.record_failure(now=0)
    assert breaker.allows(now=0)
    breaker.record_failure(now=1)
    assert not breaker.allows(now=5) and breaker.allows(now=11)  # half-open after cooldown
    breaker.record_success()
    assert breaker.failures == 0 and breaker.allows(now=11)
    breaker.open_for_good("auth")
    assert not breaker.allows(now=1e9) and breaker.state == "open (permanent)"


# ------------------------------------------------------------------------------ report
def test_drift_needs_both_threshold_and_noise():
    quiet = metric_row("tpot_mean_ms", predicted=10, calibration=None, measured=[13, 13.1],
                       noise_floor=0.0, threshold=0.15, noise_factor=2)
    assert quiet["drift"] and quiet["error"] == pytest.approx(10 / 13.05 - 1)
    noisy = metric_row("tpot_mean_ms", predicted=10, calibration=None, measured=[9, 17],
                       noise_floor=0.0, threshold=0.15, noise_factor=2)
    assert abs(noisy["error"]) > 0.15 and not noisy["drift"]  # within 2x the measured noise
    floor = metric_row("tpot_mean_ms", predicted=10, calibration=None, measured=[13],
                       noise_floor=0.2, threshold=0.15, noise_factor=2)
    assert not floor["drift"]  # the baseline's noise on that host covers the error
    calibrated = metric_row("tpot_mean_ms", predicted=10, calibration=1.3, measured=[13],
                            noise_floor=0.0, threshold=0.15, noise_factor=2)
    assert calibrated["calibrated"] == pytest.approx(13) and not calibrated["drift"]


def _outcome(name, group, values, predicted, baseline=False):
    o = CandidateOutcome(Candidate(name, {}, predicted, baseline), status="measured")
    o.measurements = [Measurement(name, group, i, f"{name}{i}", {"tpot_mean_ms": v}, "h")
                      for i, v in enumerate(values)]
    return o


def test_report_calibrates_per_host():
    outcomes = [_outcome("default", "slow", [12.0, 12.0], {"tpot_mean_ms": 10.0}, True),
                _outcome("default", "fast", [10.0, 10.0], {"tpot_mean_ms": 10.0}, True),
                _outcome("a", "slow", [6.0, 6.1], {"tpot_mean_ms": 5.0}),
                _outcome("b", "fast", [8.0, 8.1], {"tpot_mean_ms": 5.0})]
    outcomes[0].measurements += outcomes.pop(1).measurements
    report = build_report(DispatchResult(outcomes, 1.0, {}), metrics=["tpot_mean_ms"])
    assert report.calibration["slow"]["step_time_scale"] == pytest.approx(1.2)
    rows = {(r["candidate"], r["group"]): r for r in report.rows}
    assert rows[("a", "slow")]["calibrated"] == pytest.approx(6.0)
    assert not rows[("a", "slow")]["drift"]
    assert rows[("b", "fast")]["drift"]  # 5 predicted vs 8 measured on a calibrated host
    # the baseline is the calibration reference: its raw -17 % error is the host's offset
    assert rows[("default", "slow")]["error"] == pytest.approx(10 / 12 - 1)
    assert not rows[("default", "slow")]["drift"]
    assert report.drift and "DRIFT" in report.table()


# ------------------------------------------------------------------------------ candidates
def test_candidates_from_a_study_folder(tmp_path):
    (tmp_path / "candidates.json").write_text(json.dumps({"candidates": [
        {"name": "default", "kind": "default", "config": {"a": 1}, "predicted": {"x": 1.0}},
        {"rank": 1, "config": {"a": 2}, "metrics": {"x": 2.0, "note": "n/a",
                                                   "ttft_ms_p90": 5.0}},
        {"rank": 2, "params": {"a": 3}}]}))
    cands = load_study_candidates(tmp_path, top=1)
    assert [c.name for c in cands] == ["default", "rank1"]
    assert cands[0].baseline and cands[1].predicted == {"x": 2.0, "ttft_p90_ms": 5.0}


@pytest.mark.parametrize("content, message", [
    ("[", "not valid JSON"), ("[]", "non-empty list"),
    ('[{"name": "a"}]', "row 1, field 'config'"),
    ('[{"config": {}, "name": "a"}, {"config": {}, "name": "a"}]', "unique")])
def test_bad_candidates_file(tmp_path, content, message):
    (tmp_path / "candidates.json").write_text(content)
    with pytest.raises(InputError, match=message):
        load_study_candidates(tmp_path)


def test_set_values_parse_as_json_else_strings():
    (c,) = candidates_from_sets(["a=1", "b=0.5", "c=true", "d=fifo", "e=$(id)"])
    assert c.config == {"a": 1, "b": 0.5, "c": True, "d": "fifo", "e": "$(id)"}
    with pytest.raises(InputError, match="key=value"):
        candidates_from_sets(["novalue"])


# ------------------------------------------------------------------------------ CLI
def cluster_file(tmp_path, *args) -> Path:
    path = tmp_path / "cluster.toml"
    command = json.dumps([sys.executable, HELPER, *args])
    path.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 5\n'
                    f'candidate_timeout_s = 30\nstop_grace_s = 3\n[[service_groups]]\n'
                    f'service_port = {free_port()}\nstart_command = {command}\n'
                    f'nodes = [{{ host = "local", work_dir = "{tmp_path / "w"}" }}]\n')
    return path


def cli(tmp_path, capsys, *args):
    code = main(["--workspace", str(tmp_path / "ws"), "validate", "--workload",
                 "poisson:rate=20,n=4,input=const:8,output=const:4", "--warmup", "0", *args])
    return code, capsys.readouterr()


def test_cli_measures_and_exits_zero(tmp_path, capsys):
    code, out = cli(tmp_path, capsys, "--cluster", str(cluster_file(tmp_path)), "--set",
                    "batch=4", "--json")
    doc = json.loads(out.out)
    assert code == 0 and doc["exit_code"] == 0
    assert doc["outcomes"][0]["status"] == "measured"
    assert doc["statistics"]["measurements"] == 1
    assert len(TraceStore(tmp_path / "ws" / "traces").query("runs")) == 1


def test_cli_study_drift_exit_code_and_measurements_file(tmp_path, capsys):
    study = tmp_path / "ws" / "studies" / "s1"
    study.mkdir(parents=True)
    (study / "candidates.json").write_text(json.dumps([
        {"name": "default", "baseline": True, "config": {"b": 0},
         "predicted": {"tpot_mean_ms": 5.0}},
        {"name": "fast", "config": {"b": 1}, "predicted": {"tpot_mean_ms": 0.5}}]))
    code, out = cli(tmp_path, capsys, "--cluster", str(cluster_file(tmp_path)),
                    "--candidates", "s1", "--repeats", "2")
    assert code == 3, out.err
    assert "DRIFT" in out.out
    saved = json.loads((study / "measurements.json").read_text())
    assert saved["report"]["drift"] and saved["exit_code"] == 3


def test_cli_failed_candidate_exits_four(tmp_path, capsys):
    code, out = cli(tmp_path, capsys, "--cluster",
                    str(cluster_file(tmp_path, "--mode", "never-healthy")), "--set", "a=1")
    assert code == 4 and "service-unhealthy" in out.out


def test_cli_bad_input_exits_two(tmp_path, capsys):
    code, out = cli(tmp_path, capsys, "--cluster", str(cluster_file(tmp_path)))
    assert code == 2 and "--candidates STUDY or --set" in out.err
    code, out = cli(tmp_path, capsys, "--cluster", str(cluster_file(tmp_path)), "--set", "a=1",
                    "--every", "soon")
    assert code == 2 and "duration" in out.err
    code, out = cli(tmp_path, capsys, "--cluster", "local", "--engine", "transformers",
                    "--model", "m", "--set", "scheduler=fifo")
    assert code == 2 and "cannot take scheduler_type; it can take: block_size" in out.err


def test_cli_every_repeats_rounds(tmp_path, capsys):
    code, out = cli(tmp_path, capsys, "--cluster", str(cluster_file(tmp_path)), "--set", "a=1",
                    "--every", "0.2s", "--count", "2", "--json")
    assert code == 0
    assert out.out.count('"exit_code"') == 2
    assert len(TraceStore(tmp_path / "ws" / "traces").query("runs")) == 2


def test_cli_study_defaults_to_its_workload_and_base_knobs(tmp_path, capsys):
    study = tmp_path / "ws" / "studies" / "s2"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"evaluator": {
        "workload": "poisson:rate=30,n=3,input=const:8,output=const:3", "sim_seed": 7}}))
    (study / "candidates.json").write_text(json.dumps([{"name": "only", "config": {"b": 1}}]))
    code = main(["--workspace", str(tmp_path / "ws"), "validate", "--cluster",
                 str(cluster_file(tmp_path)), "--candidates", "s2", "--base-set", "flavour=x",
                 "--no-calibrate", "--warmup", "0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["outcomes"][0]["config"] == {"flavour": "x", "b": 1}
    metrics = doc["outcomes"][0]["measurements"][0]["metrics"]
    assert metrics["num_requests"] == 3 and metrics["output_throughput_tok_s"] > 0
    runs = TraceStore(tmp_path / "ws" / "traces").query("runs")
    assert json.loads(runs["workload"].iloc[0])["seed"] == 7


def test_cancel_stops_the_running_service_and_fails_with_reason(tmp_path):
    group = local_group("g", tmp_path, "--token-ms", "200")
    cluster = ClusterSpec(groups=(group,), engine="script", model="m", health_timeout_s=15,
                          candidate_timeout_s=60, stop_grace_s=3)
    workload = Workload.from_arrays([0, 0.1], [8, 8], [40, 40], name="slow")
    dispatcher = Dispatcher(cluster, launcher_for("script"), workload,
                            client=ClientOptions(model="m"),
                            options=DispatchOptions(warmup_requests=0))
    threading.Timer(2.0, dispatcher.cancel.set).start()  # as Ctrl-C does, mid-benchmark
    started = time.monotonic()
    result = dispatcher.run([Candidate("c", {})])
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.error_kind == "cancelled"
    assert time.monotonic() - started < 8  # the 8 s benchmark did not run to its end
    no_survivors(result)


def fake_nvidia_smi(directory: Path, lines: str) -> Path:
    """A stand-in for ``nvidia-smi`` (no GPU exists on this CPU machine): prints ``lines`` for the
    dispatcher's ``--query-gpu=index,name`` query and fails on anything else."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n"
                      "[ \"$1 $2\" = \"--query-gpu=index,name --format=csv,noheader\" ] || exit 9\n"
                      f"printf '{lines}'\n")
    script.chmod(0o755)
    return directory


def test_measured_runs_carry_the_gpu_names_read_from_the_nodes(tmp_path, monkeypatch):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "0, NVIDIA H200\\n1, NVIDIA H100 80GB HBM3\\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    group = local_group("g0", tmp_path)
    group = ServiceGroupSpec(group.name, (NodeSpec("local", work_dir=str(tmp_path / "g0"),
                                                   gpus=(1,)),),
                             service_port=group.service_port, start_command=group.start_command)
    result = run([group], [Candidate("c", {})], tmp_path)
    assert result.outcomes[0].status == "measured"
    runs = TraceStore(tmp_path / "traces").query("runs")
    # the node's assigned GPU only, as the store writes identity values (spaces to dashes)
    assert set(runs["hardware"]) == {"NVIDIA-H100-80GB-HBM3"}


def test_without_nvidia_smi_the_hardware_stays_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    if any((Path(d) / "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has a real nvidia-smi")
    result = run([local_group("g0", tmp_path)], [Candidate("c", {})], tmp_path)
    assert result.outcomes[0].status == "measured"
    assert set(TraceStore(tmp_path / "traces").query("runs")["hardware"]) == {"unknown"}
