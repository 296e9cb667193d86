"""Run metrics: one definition for simulated and measured runs (``servetune.data.run_metrics``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers_simulator import constant_step_model

from servetune.data import RUNS_SCHEMA, SLO, Workload, metric_name, run_metrics
from servetune.tuner import METRIC_KEYS
from servetune.tuner.hardware import RequestResult, aggregate_metrics
from servetune.tuner.simulator import SLO as SimulatorSLO
from servetune.tuner.simulator import simulate

STEP = constant_step_model(10.0)
#: metrics a benchmark client cannot observe (the simulator knows them)
SIMULATOR_ONLY = {"preemptions", "steps", "graph_captures",
                  *(f"queue_{s}_ms" for s in ("mean", "p50", "p90", "p99"))}


def _as_measured(result) -> list[RequestResult]:
    """The simulated run's stored ``requests`` rows as the benchmark client's results."""
    return [RequestResult(request_id=row["request_id"], arrival_s=row["arrival_s"],
                          sent_s=row["arrival_s"], input_tokens=row["input_tokens"],
                          output_tokens=row["output_tokens"] if row["status"] == "ok" else None,
                          ttft_ms=row["ttft_ms"], itl_ms=row["itl_ms"] or [],
                          tpot_ms=row["tpot_ms"], e2e_ms=row["e2e_ms"], status=row["status"])
            for row in result.requests_table().to_pylist()]


@pytest.fixture(scope="module")
def simulated():
    # request 2 is larger than the cache (fails); request 4 has one output token (no TPOT)
    w = Workload.from_arrays([0.0, 0.02, 0.05, 0.3, 0.31, 0.6], [40, 300, 5000, 64, 20, 100],
                             [30, 12, 4, 50, 1, 20], name="mixed")
    slo = SLO(ttft_ms=60.0, tpot_ms=10.5, e2e_ms=400.0)
    return simulate("vllm", {"num_gpu_blocks_override": 40, "block_size": 16}, w, STEP,
                    slo=slo)


def test_simulated_and_measured_paths_give_identical_metrics(simulated):
    assert simulated.ok.tolist() == [True, True, False, True, True, True]
    sim = simulated.flat_metrics()
    measured = aggregate_metrics(_as_measured(simulated), simulated.slo)
    assert set(measured) | {"steps", "graph_captures"} == set(sim)
    for key in set(sim) - SIMULATOR_ONLY:
        assert measured[key] == sim[key], key  # bit for bit, same function on the same arrays
    assert 0 < sim["good_requests"] < sim["completed"] == 5  # the SLO separates requests
    assert set(METRIC_KEYS) <= set(sim)


def test_names_are_the_runs_columns(simulated):
    m = simulated.flat_metrics()
    not_columns = {"good_requests", "slo_attainment", "steps", "graph_captures",
                   *(f"queue_{s}_ms" for s in ("mean", "p50", "p90", "p99"))}
    assert set(m) - not_columns <= set(RUNS_SCHEMA.names)
    row = simulated.runs_row().to_pylist()[0]
    for key in set(m) - not_columns:
        assert row[key] == m[key], key
    nested = simulated.metrics  # the human form regroups the same numbers
    assert nested["ttft_ms"]["p90"] == m["ttft_p90_ms"] and nested["slo"]["e2e_ms"] == 400.0


def test_missing_ttft_is_never_good():
    # a request the server finished but whose first token was never seen (records used to
    # count a missing TTFT as 0 ms, within any TTFT SLO)
    reqs = [RequestResult("r0", 0.0, 0.0, 10, output_tokens=5, ttft_ms=None, e2e_ms=200.0,
                          status="ok"),
            RequestResult("r1", 0.1, 0.1, 10, output_tokens=5, ttft_ms=50.0, e2e_ms=200.0,
                          status="ok")]
    m = aggregate_metrics(reqs, {"ttft_ms": 100})
    assert m["completed"] == 2 and m["good_requests"] == 1
    assert m["ttft_mean_ms"] == 50.0  # statistics skip the missing value
    # a TPOT bound fails too: without a first token there is no TPOT
    assert aggregate_metrics(reqs, {"tpot_ms": 1000})["good_requests"] == 1


def test_e2e_slo_counts(simulated):
    e2e = simulated.e2e_ms
    strict = simulate("vllm", simulated.config, simulated.workload, STEP,
                      slo={"e2e_ms": float(np.nanmedian(e2e))})
    expected = int((e2e[simulated.ok] <= np.nanmedian(e2e)).sum())
    assert strict.flat_metrics()["good_requests"] == expected
    assert expected < simulated.flat_metrics()["completed"]
    measured = aggregate_metrics(_as_measured(simulated), strict.slo)
    assert measured["good_requests"] == expected
    assert measured["goodput_rps"] == pytest.approx(expected / measured["duration_s"])


def test_one_token_request_passes_the_tpot_bound():
    m = run_metrics(arrival_s=[0.0], ttft_ms=[30.0], e2e_ms=[30.0], output_tokens=[1],
                    input_tokens=[8], ok=[True], slo=SLO(tpot_ms=1.0))
    assert m["good_requests"] == 1 and m["tpot_mean_ms"] is None


def test_duration_runs_from_the_start_to_the_last_completed_finish():
    # arrivals at 1 s and 2 s on the run's clock; the failed request sent last does not count
    m = run_metrics(arrival_s=[1.0, 2.0, 3.0], ttft_ms=[100.0, 100.0, None],
                    e2e_ms=[500.0, 1500.0, None], output_tokens=[10, 20, None],
                    input_tokens=[5, 5, 5], ok=[True, True, False],
                    itl_ms=[[10.0] * 9, [20.0] * 19, None])
    assert m["duration_s"] == 3.5  # not 3.5 - 1.0: the clock starts with the run
    assert m["request_throughput_rps"] == 2 / 3.5
    assert m["output_throughput_tok_s"] == 30 / 3.5
    assert m["total_token_throughput_tok_s"] == 40 / 3.5
    assert m["success_rate"] == pytest.approx(2 / 3) and m["failed"] == 1
    assert m["tpot_p50_ms"] == pytest.approx((400 / 9 + 1400 / 19) / 2)
    assert m["itl_mean_ms"] == pytest.approx((9 * 10 + 19 * 20) / 28)
    # no SLO bound: goodput is not defined
    assert m["goodput_rps"] is None and m["slo_attainment"] is None


def test_nothing_completed():
    m = run_metrics(arrival_s=[0.0], ttft_ms=[None], e2e_ms=[None], output_tokens=[None],
                    input_tokens=[5], ok=[False], slo=SLO(ttft_ms=1))
    assert m["duration_s"] is None and m["request_throughput_rps"] is None
    assert m["good_requests"] == 0 and m["slo_attainment"] == 0.0 and m["ttft_p90_ms"] is None
    empty = aggregate_metrics([])
    assert empty["num_requests"] == 0 and empty["success_rate"] is None


def test_one_slo_class_and_old_names():
    assert SimulatorSLO is SLO
    assert SLO.coerce({"e2e_ms": 5}).e2e_ms == 5.0 and not SLO().bounded
    assert metric_name("ttft_ms_p90") == "ttft_p90_ms" and metric_name("requests") == "num_requests"
    assert metric_name("e2e_mean_ms") == "e2e_mean_ms"
    assert not any(math.isnan(v) for v in run_metrics(
        arrival_s=[0.0], ttft_ms=[1.0], e2e_ms=[2.0], output_tokens=[2], input_tokens=[1],
        ok=[True]).values() if isinstance(v, float))
