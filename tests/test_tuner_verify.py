"""``verify_study``: a real small study's top-K and default measured on service groups.

The study is a real checkpointed :class:`Study` (grid search) over one knob, ``token_ms``, whose
analytic evaluator is a deliberately wrong surrogate: it predicts that slower token pacing
raises goodput. The candidates are measured by the real dispatcher, which starts the hardware
tests' scripted OpenAI-compatible server (tests/_helpers_hardware.py) through the ``script``
launcher - as a local subprocess, or over real loopback ``sshd`` hosts - and that server paces
its tokens by the ``--token-ms`` flag the launcher renders from the knob. Under a 10 ms TPOT SLO
only the engine default (1 ms) can have goodput, so the measured best must be the default, not
the predicted best. Every measurement must be in the trace store, ``measurements.json`` must
hold the result, and no process the dispatcher started may survive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port, session_alive, sshd_kit_or_skip  # noqa: E402

from servetune import InputError  # noqa: E402
from servetune.data import TraceStore  # noqa: E402
from servetune.tuner import (  # noqa: E402
    SearchSpace,
    Study,
    VerificationResult,
    build_candidates,
    verify_study,
    write_candidates,
)
from servetune.tuner.hardware import (  # noqa: E402
    ClusterSpec,
    DispatchOptions,
    NodeSpec,
    ServiceGroupSpec,
    SSHOptions,
)

HELPER = str(Path(__file__).parent / "_helpers_hardware.py")
OBJECTIVE = "goodput:ttft_ms=2000,tpot_ms=10"
WORKLOAD = "poisson:rate=20,n=8,input=const:8,output=const:6"
SPACE = {"name": "pace", "engine": "script",
         "params": {"token_ms": {"type": "enum", "choices": [15, 25]}},
         "targets": {"token_ms": "--token-ms"}}


def wrong_surrogate(config: dict) -> dict:
    """Predicts goodput rising with token pacing (the opposite of what the server does)."""
    pace = float(config["token_ms"])
    return {"goodput_rps": pace / 4, "output_throughput_tok_s": 60.0 / pace,
            "request_throughput_rps": 10.0, "ttft_mean_ms": 20.0, "ttft_p90_ms": 25.0,
            "tpot_mean_ms": pace / 3, "tpot_p90_ms": pace / 2, "e2e_mean_ms": 20 + 5 * pace,
            "success_rate": 1.0}


def make_study(directory: Path) -> Study:
    """Run the grid study and write its candidates (top 2 + the default, token_ms=1)."""
    study = Study.create(directory, space=SearchSpace.from_dict(SPACE), objective=OBJECTIVE,
                         optimizer={"name": "grid", "batch_size": 2}, seed=0,
                         evaluator={"engine": "script", "workload": WORKLOAD, "sim_seed": 3})
    study.run(wrong_surrogate)
    default = {"token_ms": 1}
    metrics = wrong_surrogate(default)
    candidates = build_candidates(study, 2, (default, metrics, study.objective.score(metrics)))
    write_candidates(study.directory, candidates, study.space.names)
    return study


def local_cluster(tmp_path: Path, *args: str, **settings) -> ClusterSpec:
    group = ServiceGroupSpec("g0", (NodeSpec("local", work_dir=str(tmp_path / "w")),),
                             service_port=free_port(),
                             start_command=(sys.executable, HELPER, *args))
    base = dict(engine="script", model="m", health_timeout_s=15, candidate_timeout_s=60,
                stop_grace_s=3, retries=1, backoff_s=0.2)
    return ClusterSpec(groups=(group,), **{**base, **settings})


def sessions(result: VerificationResult) -> list[int]:
    return [sid for o in result.dispatch.outcomes for a in o.attempts for _, sid in a.sessions]


def assert_measured_best_is_the_default(result: VerificationResult) -> None:
    by_name = {c.name: c for c in result.candidates}
    assert set(by_name) == {"rank1", "rank2", "default"}
    assert result.predicted_best.name == "rank1"  # token_ms=25: the surrogate's favourite
    assert by_name["rank1"].config == {"token_ms": 25}
    for name in ("rank1", "rank2"):  # 15-25 ms per token: every request misses the TPOT SLO
        assert by_name[name].measured["tpot_mean_ms"] > 10
        assert by_name[name].measured_objective == 0.0
    default = by_name["default"]
    assert default.measured_objective > 0
    assert result.measured_best is default  # chosen on measurements, not on predictions
    # the surrogate predicted 0.25 req/s for it; 8 requests at 20 req/s measure far more
    assert default.predicted_objective == pytest.approx(0.25)
    assert abs(default.objective_error) > result.threshold and result.agrees is False
    assert result.recommendation()["name"] == "default"
    assert result.recommendation()["same_as_predicted"] is False
    # a measured 0 agrees only with a predicted 0: the tuned candidates predicted > 0
    assert by_name["rank1"].agrees(result.threshold, result.noise_factor) is False


def test_verify_study_measures_top_k_and_default_and_chooses_on_measurements(tmp_path):
    study = make_study(tmp_path / "studies" / "pace")
    store = TraceStore(tmp_path / "traces")
    result = verify_study(study.directory, local_cluster(tmp_path), store=store,
                          options=DispatchOptions(warmup_requests=0))

    assert result.study == "pace" and result.objective == study.objective.spec()
    assert all(c.status == "measured" for c in result.candidates)
    assert result.exit_code in (0, 3)  # drift is expected of a wrong surrogate, failure is not
    assert_measured_best_is_the_default(result)

    # every measurement is a measured run in the store, goodput under the study's SLO
    runs = store.query("runs")
    run_ids = {m.run_id for o in result.dispatch.outcomes for m in o.measurements}
    assert set(runs["run_id"]) == run_ids and len(run_ids) == 3
    assert set(runs["source"]) == {"measured"}
    assert json.loads(runs["workload"].iloc[0])["seed"] == 3  # the study's own workload
    assert len(store.query("requests")) == 3 * 8
    slow = runs[runs["run_id"].str.startswith("hw-rank1-")]
    assert (slow["goodput_rps"] == 0).all() and (slow["tpot_mean_ms"] > 10).all()

    saved = json.loads((study.directory / "measurements.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict(), default=str))
    assert saved["measured_best"] == "default" and saved["predicted_best"] == "rank1"
    entry = next(c for c in saved["candidates"] if c["name"] == "rank2")
    assert entry["metrics"]["tpot_mean_ms"]["predicted"] == pytest.approx(5.0)
    assert entry["metrics"]["tpot_mean_ms"]["measured"] > 10
    assert all(session_alive(sid) == [] for sid in sessions(result)) and sessions(result)


def test_a_study_object_and_a_failed_candidate(tmp_path):
    """A candidate whose service never turns healthy fails with its reason, is never scored,
    and the verification exits 4; the best is chosen among the measured ones."""
    study = make_study(tmp_path / "pace")
    path = study.directory / "candidates.json"
    entries = json.loads(path.read_text())
    entries[1]["config"] = {**entries[1]["config"], "mode": "never-healthy"}  # rank2
    path.write_text(json.dumps(entries))
    result = verify_study(Study.load(study.directory),
                          local_cluster(tmp_path, health_timeout_s=3, retries=0),
                          store=TraceStore(tmp_path / "traces"),
                          options=DispatchOptions(warmup_requests=0))
    failed = next(c for c in result.candidates if c.name == "rank2")
    assert failed.status == "failed" and failed.error_kind == "service-unhealthy"
    assert "did not answer 200" in failed.reason
    assert failed.measured_objective is None and failed.measurements == 0
    assert result.exit_code == 4 and "1 of 3 candidate(s) failed" in result.summary()
    assert result.measured_best.name == "default"
    assert all(session_alive(sid) == [] for sid in sessions(result))


def test_an_engine_other_than_the_studys_is_refused_before_any_host(tmp_path):
    study = make_study(tmp_path / "pace")
    group = ServiceGroupSpec("g0", (NodeSpec("127.0.0.1", port=free_port()),))
    cluster = ClusterSpec(groups=(group,), engine="vllm", model="m")
    with pytest.raises(InputError, match="the study tuned script but vllm would be launched"):
        verify_study(study.directory, cluster, store=None)
    assert not (study.directory / "measurements.json").exists()


def test_verify_study_over_two_sshd_service_groups(tmp_path):
    """Two real loopback sshd hosts, one service group each: the default is measured on both
    (per-host calibration), the tuned candidates wherever a group is free."""
    kit = sshd_kit_or_skip(tmp_path / "ssh")
    try:
        hosts = [kit.start_host(f"h{i}") for i in range(2)]
        groups = tuple(ServiceGroupSpec(
            f"g{i}", (NodeSpec("127.0.0.1", port=h.port, user="root", key=kit.user_key,
                               work_dir=str(tmp_path / f"w{i}")),),
            service_port=free_port(), start_command=(sys.executable, HELPER))
            for i, h in enumerate(hosts))
        ssh = SSHOptions(known_hosts=kit.known_hosts, allow_agent=False, connect_timeout_s=5,
                         command_timeout_s=20)
        cluster = ClusterSpec(groups=groups, engine="script", model="m", ssh=ssh,
                              health_timeout_s=20, candidate_timeout_s=60, stop_grace_s=3)
        study = make_study(tmp_path / "pace")
        store = TraceStore(tmp_path / "traces")
        result = verify_study(study.directory, cluster, store=store,
                              options=DispatchOptions(warmup_requests=0, hardware="cpu"))
    finally:
        kit.close()
    assert all(c.status == "measured" for c in result.candidates)
    default = next(o for o in result.dispatch.outcomes if o.candidate.baseline)
    assert sorted(m.group for m in default.measurements) == ["g0", "g1"]
    assert set(result.report.calibration) == {"g0", "g1"}
    assert_measured_best_is_the_default(result)
    runs = store.query("runs")
    assert len(runs) == 4 and set(runs["hardware"]) == {"cpu"}
    assert all(session_alive(sid) == [] for sid in sessions(result)) and sessions(result)


def test_validate_candidates_goes_through_verify_study(tmp_path, capsys):
    """``servetune validate --candidates`` keeps its document and exit codes and adds the
    measured best; goodput is measured under the study objective's SLOs by default."""
    from servetune.cli import main

    workspace = tmp_path / "ws"
    make_study(workspace / "studies" / "pace")
    cluster = tmp_path / "cluster.toml"
    command = json.dumps([sys.executable, HELPER])
    cluster.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 15\n'
                       f'candidate_timeout_s = 60\nstop_grace_s = 3\n[[service_groups]]\n'
                       f'service_port = {free_port()}\nstart_command = {command}\n'
                       f'nodes = [{{ host = "local", work_dir = "{tmp_path / "w"}" }}]\n')
    code = main(["--workspace", str(workspace), "validate", "--cluster", str(cluster),
                 "--candidates", "pace", "--top", "1", "--warmup", "0", "--json"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert code == doc["exit_code"] and code in (0, 3), out.err
    assert {"finished_at", "statistics", "outcomes", "report"} <= set(doc)
    assert sorted(c["name"] for c in doc["candidates"]) == ["default", "rank1"]
    assert doc["measured_best"] == "default" and doc["recommendation"]["name"] == "default"
    runs = TraceStore(workspace / "traces").query("runs")
    assert len(runs) == 2 and runs["goodput_rps"].notna().all()
    saved = json.loads((workspace / "studies" / "pace" / "measurements.json").read_text())
    assert saved == doc
    sids = [sid for o in doc["outcomes"] for a in o["attempts"] for _, sid in a["sessions"]]
    assert sids and all(session_alive(sid) == [] for sid in sids)
