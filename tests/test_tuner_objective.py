"""Objectives: goodput, throughput under SLOs, weighted fitness with exponential penalties."""

from __future__ import annotations

import math

import pytest

from servetune import ConfigError
from servetune.tuner import (
    SLO,
    FitnessObjective,
    GoodputObjective,
    ThroughputObjective,
    parse_objective,
)

METRICS = {"goodput_rps": 4.0, "output_throughput_tok_s": 2000.0, "success_rate": 1.0,
           "ttft_mean_ms": 300.0, "ttft_p90_ms": 800.0, "ttft_p99_ms": 1500.0,
           "tpot_mean_ms": 30.0, "tpot_p90_ms": 45.0, "tpot_p99_ms": 90.0}


def test_default_objective_is_goodput():
    objective = parse_objective(None)
    assert isinstance(objective, GoodputObjective)
    assert objective.score(METRICS) == 4.0


def test_throughput_counts_only_when_the_slo_percentile_holds():
    ok = parse_objective("throughput:ttft_ms=1000,tpot_ms=50")
    assert ok.score(METRICS) == 2000.0
    strict = parse_objective("throughput:ttft_ms=1000,tpot_ms=50,percentile=p99")
    # p99: ttft 1.5x over, tpot 1.8x over -> overshoot 0.5 + 0.8
    assert strict.score(METRICS) == pytest.approx(-1.3)
    worse = dict(METRICS, ttft_p99_ms=3000.0)
    assert strict.score(worse) < strict.score(METRICS) < 0 < ok.score(METRICS)


def test_fitness_penalises_slo_overshoot_exponentially():
    objective = FitnessObjective(slo=SLO(ttft_ms=300, tpot_ms=30), speed_target=2000)
    at_slo = objective.score(METRICS)
    assert at_slo == pytest.approx(0.4 + 0.2 + 0.3 + 0.1)
    over = objective.score(dict(METRICS, ttft_mean_ms=600.0))  # 100% over the TTFT SLO
    assert at_slo - over == pytest.approx(0.2 * (1 - math.exp(-3.0)))
    failed = objective.score(dict(METRICS, success_rate=0.5))
    assert at_slo - failed == pytest.approx(0.1 * (1 - math.exp(-2.5)))


def test_spec_round_trips_and_sets_slos():
    objective = parse_objective("fitness:ttft_ms=500,w_speed=0.7")
    assert objective.slo.ttft_ms == 500 and objective.w_speed == 0.7
    assert parse_objective(objective.spec()) == objective
    assert isinstance(parse_objective("throughput"), ThroughputObjective)


@pytest.mark.parametrize("spec, message", [
    ("latency", "unknown objective 'latency'"),
    ("goodput:ttft=3", "no parameter 'ttft'"),
    ("goodput:ttft_ms=fast", "must be a number"),
    ("goodput:ttft_ms=0", "must be > 0"),
    ("throughput:percentile=p75", "percentile must be"),
])
def test_bad_objective_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_objective(spec)


def test_missing_metric_names_what_the_evaluator_returned():
    with pytest.raises(ConfigError, match="no 'goodput_rps'.*ttft_mean_ms"):
        GoodputObjective().score({"ttft_mean_ms": 1.0})
