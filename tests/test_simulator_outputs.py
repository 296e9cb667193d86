"""Simulation outputs: metrics, the store's records, pickling, and the store round trip."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from _helpers_simulator import constant_step_model, trained_step_model

from servetune import ConfigError
from servetune.data import REQUESTS_SCHEMA, RUNS_SCHEMA, synthetic_workload
from servetune.tuner.simulator import SLO, Simulator, simulate


@pytest.fixture(scope="module")
def result():
    model = trained_step_model(n_trees=30)[0]
    w = synthetic_workload("poisson:rate=20,n=200", seed=2)
    first = simulate("vllm", {"max_num_seqs": 32}, w, model, seed=0)
    slo = {"ttft_ms": first.metrics["ttft_ms"]["p50"], "tpot_ms": first.metrics["tpot_ms"]["p90"]}
    return simulate("vllm", {"max_num_seqs": 32}, w, model, seed=0, slo=slo,
                    labels={"model": "tiny"})


def test_metrics_keys_and_values(result):
    m = result.metrics
    assert m["completed"] == 200 and m["failed"] == 0
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms", "queue_ms"):
        assert set(m[name]) == {"mean", "p50", "p90", "p99"}
        assert m[name]["p50"] <= m[name]["p90"] <= m[name]["p99"]
    w = result.workload
    assert m["output_throughput_tok_s"] == pytest.approx(w.output_tokens.sum() / m["duration_s"])
    assert m["request_throughput_rps"] == pytest.approx(200 / m["duration_s"])
    slo = result.slo
    good = ((result.ttft_ms <= slo.ttft_ms) & ~(result.tpot_ms > slo.tpot_ms)).sum()
    assert m["goodput_rps"] == pytest.approx(good / m["duration_s"])
    assert 0 < good < 200  # the SLO separates requests in this run
    assert m["ttft_ms"]["mean"] == pytest.approx(np.mean(result.ttft_ms))
    flat = result.flat_metrics()
    assert flat["ttft_p90_ms"] == m["ttft_ms"]["p90"] and flat["slo_attainment"] == good / 200


def test_no_slo_no_goodput(result):
    again = Simulator("vllm", {"max_num_seqs": 32}, trained_step_model(n_trees=30)[0]).run(
        result.workload)
    assert again.metrics["goodput_rps"] is None and again.metrics["request_throughput_rps"] > 0
    assert again.flat_metrics()["slo_attainment"] is None
    with pytest.raises(ConfigError, match="unknown SLO key"):
        SLO.coerce({"ttft": 1})


def test_records_conform_to_the_store_schemas(result):
    requests = result.requests_table()
    runs = result.runs_row()
    assert requests.schema.equals(REQUESTS_SCHEMA, check_metadata=False)
    assert runs.schema.equals(RUNS_SCHEMA, check_metadata=False)
    assert set(requests.column("source").to_pylist()) == {"simulated"}
    row = runs.to_pylist()[0]
    assert row["source"] == "simulated" and row["engine"] == "vllm"
    assert row["max_num_seqs"] == 32 and row["completed"] == 200
    assert row["ttft_p99_ms"] == result.metrics["ttft_ms"]["p99"]
    itl = requests.column("itl_ms").to_pylist()
    assert all(len(v) == n - 1 for v, n in zip(itl, result.workload.output_tokens))
    assert requests.column("run_id")[0].as_py() == row["run_id"]


def test_steps_table_and_parquet_round_trip(tmp_path):
    w = synthetic_workload("poisson:rate=10,n=30", seed=0)
    r = simulate("transformers", {"num_blocks": 200, "block_size": 32}, w,
                 constant_step_model(5.0), record_steps=True, labels={"model": "tiny"})
    steps = r.steps_table()
    assert steps.num_rows == r.metrics["steps"]
    assert (np.asarray(steps.column("duration_ms")) == 5.0).all()
    with pytest.raises(ConfigError, match="record_steps=True"):
        simulate("vllm", {}, w, constant_step_model(5.0)).steps_table()
    for kind, table in (("steps", steps), ("requests", r.requests_table()),
                        ("runs", r.runs_row())):
        pq.write_table(table, tmp_path / f"{kind}.parquet")
        back = pq.read_table(tmp_path / f"{kind}.parquet")
        assert back.equals(table)


def test_simulator_pickles_and_rebuilds_identically():
    model = trained_step_model(n_trees=20)[0]
    sim = Simulator("transformers", {"max_batch_tokens": 512, "num_blocks": 300,
                                     "block_size": 32}, model, slo=SLO(ttft_ms=100))
    clone = pickle.loads(pickle.dumps(sim))
    w = synthetic_workload("gamma:rate=15,cv=3,n=150", seed=4)
    a, b = sim.run(w, seed=1), clone.run(w, seed=1)
    assert a.metrics == b.metrics
    assert np.array_equal(a.token_s, b.token_s)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="CompiledStepTime"):
        Simulator("vllm", {}, object())
    with pytest.raises(ConfigError, match="Workload"):
        Simulator("vllm", {}, constant_step_model(1.0)).run([1, 2, 3])
