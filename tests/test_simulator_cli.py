"""``servetune simulate`` end to end: a real workspace, a real MLflow champion, subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _helpers_models import synthetic_traces
from _helpers_simulator import SPLITWISE

from servetune.data import TraceStore, Workspace
from servetune.models import TrainConfig, train_step_time_model

FAST = TrainConfig(n_trials=1, cv_splits=2, search_budget_s=20)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = Workspace.resolve(tmp_path_factory.mktemp("sim") / "ws")
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=200, seed=0)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256="generated-sim", format="test")
    result = train_step_time_model(ws, config=FAST, progress=False)
    return ws, result.model_uri


def _simulate(ws, *args):
    return subprocess.run([sys.executable, "-m", "servetune.cli._main", "--workspace",
                           str(ws.root), "simulate", *args], capture_output=True, text=True,
                          timeout=300)


def test_same_command_twice_prints_identical_json(workspace):
    ws, uri = workspace
    args = ("--engine", "transformers", "--set", "max_batch_tokens=512", "--set",
            "num_blocks=400", "--set", "block_size=32", "--set", "step_noise_cv=0.05",
            "--workload", "gamma:rate=8,cv=2,n=120", "--seed", "3", "--model-uri", uri, "--json")
    first, second = _simulate(ws, *args), _simulate(ws, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    payload = json.loads(first.stdout)
    assert payload["seed"] == 3 and payload["config"]["max_batch_tokens"] == 512
    m = payload["metrics"]
    assert m["completed"] == 120
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(m[key]) >= {"mean", "p50", "p90", "p99"}
    assert m["output_throughput_tok_s"] > 0 and m["request_throughput_rps"] > 0


def test_workspace_champion_is_used_without_a_model_uri(workspace):
    ws, uri = workspace
    out = _simulate(ws, "--engine", "transformers-cb", "--workload", "poisson:rate=4,n=40",
                    "--set", "num_blocks=400", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["model_uri"].endswith("@champion") and payload["metrics"]["completed"] == 40
    assert ".transformers-cb." in payload["model_uri"]
    # no vllm steps in the store: no silent use of the transformers model (issue 15 part 3)
    args = ("--engine", "vllm", "--workload", "poisson:rate=4,n=40", "--qps", "8",
            "--set", "num_gpu_blocks_override=65536", "--json")
    refused = _simulate(ws, *args)
    assert refused.returncode == 1 and refused.stdout == ""  # a ModelError
    assert "no step-time model for vllm" in refused.stderr
    assert "servetune train --where engine=vllm" in refused.stderr
    # named explicitly it runs, and the mismatch is said
    out = _simulate(ws, *args, "--model-uri", uri)
    assert out.returncode == 0, out.stderr
    assert "trained on transformers-cb steps: simulating vllm with it" in out.stderr
    assert json.loads(out.stdout)["metrics"]["completed"] == 40
    # a real trace file, truncated and rescaled, in text mode, records written and ingested
    out_dir = ws.root / "sim-out"
    text = _simulate(ws, "--engine", "static", "--workload", str(SPLITWISE), "--limit", "300",
                     "--qps", "20", "--out", str(out_dir), "--record-steps")
    assert text.returncode == 0, text.stderr
    assert "completed 300/300" in text.stdout and "ttft_ms" in text.stdout
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["requests.parquet", "runs.parquet", "steps.parquet"]
    ingest = subprocess.run([sys.executable, "-m", "servetune.cli._main", "--workspace",
                             str(ws.root), "ingest", *map(str, sorted(out_dir.iterdir())),
                             "--json"], capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    simulated = TraceStore.for_workspace(ws).query("requests", where={"source": "simulated"})
    assert len(simulated) == 300 and set(simulated["engine"]) == {"static"}


def test_unknown_key_exits_2_with_the_valid_keys(workspace):
    ws, _ = workspace
    out = _simulate(ws, "--engine", "vllm", "--set", "max_requests_per_batch=512", "--workload",
                    "poisson:rate=4,n=10")
    assert out.returncode == 2
    assert "unknown vllm config key(s) 'max_requests_per_batch'" in out.stderr
    assert "max_num_batched_tokens" in out.stderr
    out = _simulate(ws, "--engine", "vllm", "--set", "novalue", "--workload", "x")
    assert out.returncode == 2 and "expects key=value" in out.stderr


def test_an_end_to_end_slo_bounds_goodput(workspace):
    """``--slo-e2e-ms`` (vLLM's ``--goodput e2el:``): a bound every request misses leaves no
    goodput; without it the same TTFT/TPOT bounds keep every request good."""
    ws, uri = workspace
    args = ("--engine", "transformers-cb", "--workload", "poisson:rate=4,n=40", "--set",
            "num_blocks=400", "--model-uri", uri, "--slo-ttft-ms", "60000", "--slo-tpot-ms",
            "10000", "--json")
    loose = json.loads(_simulate(ws, *args).stdout)["metrics"]
    tight = _simulate(ws, *args, "--slo-e2e-ms", "0.001")
    assert tight.returncode == 0, tight.stderr
    tight = json.loads(tight.stdout)["metrics"]
    assert loose["goodput_rps"] > 0 and tight["goodput_rps"] == 0
    assert tight["slo"]["e2e_ms"] == 0.001 and loose["slo"]["e2e_ms"] is None


def test_objective_specs_carry_the_end_to_end_bound():
    from servetune.tuner._objective import parse_objective

    goodput = parse_objective("goodput:ttft_ms=500,tpot_ms=50,e2e_ms=4000")
    assert goodput.slo.e2e_ms == 4000.0 and parse_objective(goodput.spec()) == goodput
    assert "e2e_ms" not in parse_objective("goodput").spec()  # unset: no bound, not "None"
