"""The dispatcher against real sshd test hosts serving real OpenAI-compatible servers.

Every host is a real OpenSSH daemon on loopback (tests/_helpers_hardware.py). The clean run
serves a real ``transformers serve --continuous-batching`` with a tiny randomly initialised
Llama on the CPU. The failure scenarios that need a server to misbehave on purpose (hang, never
become healthy) or to run long enough to be killed mid-benchmark use the small scripted
streaming server in the helper module, started by the ``script`` launcher over SSH the same way.
After every scenario no process of any session the dispatcher started may be alive.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import (  # noqa: E402
    free_port,
    make_tiny_model,
    session_alive,
    sshd_kit_or_skip,
)

from servetune.data import TraceStore, Workload  # noqa: E402
from servetune.tuner.hardware import (  # noqa: E402
    Candidate,
    ClientOptions,
    ClusterSpec,
    Dispatcher,
    DispatchOptions,
    EngineBenchmark,
    NodeSpec,
    ServiceGroupSpec,
    SSHOptions,
    build_report,
    launcher_for,
)

HELPER = str(Path(__file__).parent / "_helpers_hardware.py")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = sshd_kit_or_skip(tmp_path_factory.mktemp("ssh"))
    yield kit
    kit.close()


@pytest.fixture(scope="module")
def hosts(kit):
    """Three registered hosts shared by the scenarios that do not kill theirs."""
    return [kit.start_host(f"shared{i}") for i in range(3)]


def node(kit, host, work: Path, **kw) -> NodeSpec:
    return NodeSpec("127.0.0.1", port=host.port if host else kw.pop("port"), user="root",
                    key=kw.pop("key", kit.user_key), work_dir=str(work), **kw)


def script_group(name, node_spec, *args, port=None) -> ServiceGroupSpec:
    return ServiceGroupSpec(name, (node_spec,), service_port=port or free_port(),
                            start_command=(sys.executable, HELPER, *args))


def cluster(kit, groups, **kw) -> ClusterSpec:
    settings = dict(health_timeout_s=20, candidate_timeout_s=60, stop_grace_s=5, retries=2,
                    backoff_s=0.2, backoff_max_s=1.0, breaker_threshold=2,
                    breaker_cooldown_s=30, model="tiny", engine="script")
    settings.update(kw)
    ssh = SSHOptions(known_hosts=kit.known_hosts, allow_agent=False, connect_timeout_s=5,
                     command_timeout_s=20)
    return ClusterSpec(groups=tuple(groups), ssh=ssh, **settings)


def small_workload(n=6, rate=20.0, output=6) -> Workload:
    return Workload.from_arrays([i / rate for i in range(n)], [16] * n, [output] * n,
                                name="test")


def assert_nothing_survives(result) -> None:
    sessions = [sid for o in result.outcomes for a in o.attempts for _, sid in a.sessions]
    survivors = {sid: session_alive(sid) for sid in sessions}
    assert all(not pids for pids in survivors.values()), survivors
    for o in result.outcomes:
        assert o.status in ("measured", "failed")
        if o.status == "failed":
            assert o.reason and o.error_kind


def dispatch(spec, candidates, tmp_path, launcher="script", **options):
    store = TraceStore(tmp_path / "traces")
    client = ClientOptions(model=spec.model, extra_body=launcher_for(launcher).request_extras)
    dispatcher = Dispatcher(spec, launcher_for(launcher), options.pop("workload", small_workload()),
                            client=client, store=store,
                            options=DispatchOptions(hardware="cpu", **options))
    return dispatcher.run(candidates), store


# ------------------------------------------------------------------------------ clean run
def test_clean_run_with_real_transformers_serve(kit, hosts, tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    groups = [ServiceGroupSpec(f"g{i}", (node(kit, hosts[i], tmp_path / f"w{i}"),),
                               service_port=free_port(),
                               start_command=(str(BIN / "transformers"), "serve"))
              for i in range(2)]
    spec = cluster(kit, groups, engine="transformers", model=str(model), health_timeout_s=90,
                   env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "CUDA_VISIBLE_DEVICES": ""})
    # without --cb-max-batch-tokens transformers 5.17 CB on the CPU never answers (seen here)
    base = {"device": "cpu", "block_size": 16, "num_blocks": 128, "max_batch_tokens": 256}
    predicted = {"ttft_mean_ms": 50.0, "tpot_mean_ms": 20.0, "e2e_mean_ms": 150.0}
    candidates = [Candidate("default", base, predicted, baseline=True),
                  Candidate("c1", {**base, "max_batch_tokens": 128}, predicted)]
    result, store = dispatch(spec, candidates, tmp_path, launcher="transformers", repeats=2,
                             workload=small_workload(n=4, rate=8.0, output=4))
    assert [o.status for o in result.outcomes] == ["measured", "measured"], \
        [o.reason for o in result.outcomes]
    # the baseline ran first on both groups (calibration), the candidate once, 2 repeats each
    assert sorted(m.group for m in result.outcomes[0].measurements) == ["g0", "g0", "g1", "g1"]
    assert len(result.outcomes[1].measurements) == 2
    runs = store.query("runs")
    assert len(runs) == 6 and set(runs["source"]) == {"measured"}
    assert set(runs["engine"]) == {"transformers-cb"}
    c1 = runs[runs["extra"].map(lambda e: json.loads(e)["candidate"]) == "c1"]
    assert json.loads(c1["extra"].iloc[0])["predicted"] == predicted
    assert (c1["max_batch_tokens"] == 128).all() and (c1["completed"] == 4).all()
    assert "--cb-max-batch-tokens" in c1["command"].iloc[0]
    requests = store.query("requests", run_id=list(c1["run_id"]))
    assert len(requests) == 8 and set(requests["status"]) == {"ok"}
    assert (requests["ttft_ms"] > 0).all() and (requests["e2e_ms"] >= requests["ttft_ms"]).all()
    # every measured run's engine steps, rebuilt from the client's token timings (issue 15)
    steps = store.query("steps", run_id=list(runs["run_id"]))
    assert set(steps["source"]) == {"reconstructed"} and set(steps["run_id"]) == set(runs["run_id"])
    per_run = steps.groupby("run_id")
    assert (per_run.prefill_tokens.sum() > 0).all() and (per_run.decode_tokens.sum() > 0).all()
    assert (steps["duration_ms"] >= 0).all()
    report = build_report(result)
    calibrated = [r for r in report.rows if r["candidate"] == "c1"]
    assert calibrated and all(r["calibrated"] is not None for r in calibrated)
    assert set(report.calibration) == {"g0", "g1"}
    assert_nothing_survives(result)


# ------------------------------------------------------------------------------ failures
def test_host_down_at_start_moves_the_candidate(kit, hosts, tmp_path):
    down_port = free_port()  # nothing listens there
    groups = [script_group("down", node(kit, None, tmp_path / "d", port=down_port)),
              script_group("up", node(kit, hosts[0], tmp_path / "u"))]
    candidates = [Candidate(f"c{i}", {"label": i}) for i in range(2)]
    result, store = dispatch(cluster(kit, groups), candidates, tmp_path)
    assert [o.status for o in result.outcomes] == ["measured", "measured"]
    assert all(m.group == "up" for o in result.outcomes for m in o.measurements)
    down = result.groups["down"]
    assert down["measured"] == 0 and down["failures"].get("host-unreachable", 0) >= 1
    assert len(store.query("runs")) == 2
    assert_nothing_survives(result)


def test_host_killed_mid_benchmark_is_retried_elsewhere(kit, tmp_path):
    victim = kit.start_host("victim")
    other = kit.start_host("survivor")
    marker = tmp_path / "started.jsonl"
    slow = ("--ttft-ms", "50", "--token-ms", "100")
    groups = [script_group("victim", node(kit, victim, tmp_path / "v"), *slow,
                           "--record", str(marker)),
              script_group("other", node(kit, other, tmp_path / "o"), *slow)]
    killed: list[int] = []

    def kill_victim_host() -> None:
        deadline = time.monotonic() + 60
        # wait until the victim's server has started and received a benchmark request
        while time.monotonic() < deadline and (
                not marker.exists() or len(marker.read_text().splitlines()) < 2):
            time.sleep(0.02)
        sids = {sid for sid in _sessions_with(str(marker))}
        victim.kill()  # the host's sshd and every connection it served
        for sid in sids:
            for pid in session_alive(sid):
                os.kill(pid, 9)  # ...and the service on it: the whole host is gone
        killed.extend(sids)

    killer = threading.Thread(target=kill_victim_host, daemon=True)
    killer.start()
    candidates = [Candidate(f"c{i}", {"label": i}) for i in range(2)]
    result, store = dispatch(cluster(kit, groups, breaker_threshold=1), candidates, tmp_path,
                             workload=small_workload(n=6, rate=4.0, output=20), warmup_requests=0)
    killer.join(timeout=5)
    assert killed, "the victim's service was never seen running"
    assert [o.status for o in result.outcomes] == ["measured", "measured"], \
        [o.reason for o in result.outcomes]
    lost = [a for o in result.outcomes for a in o.attempts if a.group == "victim"]
    assert lost and lost[0].status == "failed" and lost[0].error_kind in (
        "service-lost", "host-unreachable")
    assert all(m.group == "other" for o in result.outcomes for m in o.measurements)
    assert result.statistics()["retries"] >= 1
    assert_nothing_survives(result)


def _sessions_with(text: str) -> set[int]:
    sids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if text in cmdline and "_helpers_hardware" in cmdline:
            sids.add(int(stat[stat.rindex(")") + 2:].split()[3]))
    return sids


def test_service_that_never_becomes_healthy_fails_with_reason(kit, hosts, tmp_path):
    groups = [script_group("g0", node(kit, hosts[1], tmp_path / "w"), "--mode", "never-healthy")]
    result, store = dispatch(cluster(kit, groups, health_timeout_s=2), [Candidate("c", {})],
                             tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.error_kind == "service-unhealthy"
    assert "did not answer 200 within 2s" in outcome.reason
    assert len(outcome.attempts) == 1  # a candidate fault: not retried
    assert store.query("runs").empty
    assert_nothing_survives(result)


def test_benchmark_hanging_past_its_timeout_fails_with_reason(kit, hosts, tmp_path):
    groups = [script_group("g0", node(kit, hosts[2], tmp_path / "w"), "--mode", "hang")]
    started = time.monotonic()
    result, store = dispatch(cluster(kit, groups, candidate_timeout_s=5), [Candidate("c", {})],
                             tmp_path, warmup_requests=0)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.error_kind == "benchmark-timeout"
    assert "candidate timeout (5s" in outcome.reason
    assert time.monotonic() - started < 30
    assert store.query("runs").empty
    assert_nothing_survives(result)


def test_unknown_host_key_and_bad_key_are_refused_and_never_retried(kit, hosts, tmp_path):
    stranger = kit.start_host("stranger", register=False)
    groups = [script_group("unknown", node(kit, stranger, tmp_path / "s")),
              script_group("badauth", node(kit, hosts[0], tmp_path / "b", key=kit.wrong_key)),
              script_group("good", node(kit, hosts[1], tmp_path / "g"))]
    candidates = [Candidate(f"c{i}", {"label": i}) for i in range(3)]
    result, _ = dispatch(cluster(kit, groups), candidates, tmp_path)
    assert [o.status for o in result.outcomes] == ["measured"] * 3
    assert result.groups["unknown"]["attempts"] <= 1
    assert result.groups["badauth"]["attempts"] <= 1
    assert result.groups["unknown"]["breaker"] == "open (permanent)" or \
        result.groups["unknown"]["attempts"] == 0
    assert_nothing_survives(result)
    # alone, they leave every candidate failed with the reason, after a single attempt each
    only_bad = [groups[0], groups[1]]
    result, _ = dispatch(cluster(kit, only_bad), [Candidate("c", {})], tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "failed"
    assert "unknown host key" in outcome.reason and "authentication failed" in outcome.reason
    assert len(outcome.attempts) == 2
    assert "[127.0.0.1]:%d" % stranger.port not in Path(kit.known_hosts).read_text()


def test_hostile_configuration_values_stay_data(kit, hosts, tmp_path):
    pwned = tmp_path / "pwned"
    record = tmp_path / "argv.jsonl"
    hostile = f"$(touch {pwned}); touch {pwned} `touch {pwned}`"
    work = tmp_path / "work dir; touch pwned-too"
    groups = [script_group("g0", node(kit, hosts[2], work), "--record", str(record))]
    spec = cluster(kit, groups, env={"HOSTILE": hostile})
    result, store = dispatch(spec, [Candidate("c", {"label": hostile, "env.X": hostile})],
                             tmp_path)
    assert result.outcomes[0].status == "measured", result.outcomes[0].reason
    seen = json.loads(record.read_text().splitlines()[0])
    assert "argv" in seen
    assert seen["argv"][-2:] == ["--label", hostile]
    assert seen["env"]["SERVETUNE_LABEL"] == hostile
    assert not pwned.exists() and not (tmp_path / "pwned-too").exists()
    assert work.is_dir()
    assert json.loads(store.query("runs")["config"].iloc[0])["label"] == hostile
    assert_nothing_survives(result)


def test_engine_benchmark_json_is_fetched_over_sftp_and_ingested(kit, hosts, tmp_path):
    """The engine's own benchmark path; ``vllm bench serve`` is played by a stand-in that
    writes a real vLLM result file (vLLM cannot be installed on this CPU machine)."""
    work = tmp_path / "w"
    groups = [script_group("g0", node(kit, hosts[0], work))]
    bench = EngineBenchmark(program=(sys.executable, HELPER, "fake-vllm-bench"))
    predicted = {"ttft_mean_ms": 60.0}
    result, store = dispatch(cluster(kit, groups), [Candidate("c", {"a": 1}, predicted)],
                             tmp_path, engine_benchmark=bench)
    (outcome,) = result.outcomes
    assert outcome.status == "measured", outcome.reason
    (measurement,) = outcome.measurements
    assert measurement.metrics["ttft_mean_ms"] == pytest.approx(66.49527438861105)
    runs = store.query("runs", run_id=measurement.run_id)
    assert len(runs) == 1 and runs["source"].iloc[0] == "measured"
    assert runs["engine"].iloc[0] == "script" and runs["hardware"].iloc[0] == "cpu"
    assert json.loads(runs["config"].iloc[0])["servetune_candidate"] == "c"
    assert len(store.query("requests", run_id=measurement.run_id)) == 60
    argv = json.loads((work / "results" / f"{measurement.run_id}.argv.json").read_text())
    assert argv[argv.index("--num-prompts") + 1] == "6" and "--ignore-eos" in argv
    assert build_report(result).rows[0]["measured_mean"] == pytest.approx(66.49527438861105)
    assert_nothing_survives(result)


def test_multi_node_group_runs_one_command_per_node_and_stops_both(kit, hosts, tmp_path):
    record = tmp_path / "roles.jsonl"
    group = ServiceGroupSpec("pair", (node(kit, hosts[1], tmp_path / "n0"),
                                      node(kit, hosts[2], tmp_path / "n1")),
                             service_port=free_port(),
                             start_command=(sys.executable, HELPER, "--record", str(record)))
    result, _ = dispatch(cluster(kit, [group]), [Candidate("c", {"k": 1})], tmp_path)
    (outcome,) = result.outcomes
    assert outcome.status == "measured", outcome.reason
    (attempt,) = outcome.attempts
    assert [label for label, _ in attempt.sessions] == [  # the worker starts before the head
        f"root@127.0.0.1:{hosts[2].port}", f"root@127.0.0.1:{hosts[1].port}"]
    started = [json.loads(line) for line in record.read_text().splitlines()
               if line.startswith('{"argv"')]
    ranks = sorted(entry["env"]["SERVETUNE_NODE_RANK"] for entry in started)
    assert ranks == ["0", "1"]
    assert {entry["env"]["SERVETUNE_NUM_NODES"] for entry in started} == {"2"}
    assert_nothing_survives(result)
