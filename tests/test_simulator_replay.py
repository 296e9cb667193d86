"""replay_run: a measured run's own requests through the simulator with its resolved config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from servetune import InputError
from servetune.data._ingest import SAMPLES_DIR
from servetune.features import DEFAULT_FEATURE_SET, KNOB_COLUMNS, PREV_COLUMNS, RAW_COLUMNS
from servetune.models._engine_constants import capture_fit
from servetune.tuner.simulator import REPLAY_METRICS, Replay, replay_run
from servetune.tuner.simulator._fidelity import (
    HELD_OUT,
    sample_frame,
    sim_config,
    simulate_replay,
    train_step_model,
)
from servetune.tuner.simulator._replay import WARMUP_GAP_S, replay_config

COLUMNS = [*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]


@pytest.fixture(scope="module")
def sample():
    """The shipped sample, a default-parameter step model trained on every run's steady steps
    (in-sample: this tests the replay, not the model) and capture costs fitted on the rest."""
    runs, requests, frame, captured = sample_frame(SAMPLES_DIR)
    model = train_step_model(frame[~captured & (frame.duration_ms > 0)],
                             DEFAULT_FEATURE_SET, search_trials=1, seed=0)
    captures = frame[captured]
    fits = capture_fit(captures, model.predict(captures[COLUMNS]), runs)
    return runs, requests, model.compile(), fits


def _eager_run(runs: pd.DataFrame) -> pd.Series:
    return runs[~runs.cuda_graph & runs.run_id.str.contains("fifo-512-bs64-sync")].iloc[0]


def test_replay_of_an_eager_run_is_close_to_its_measurement(sample):
    runs, requests, compiled, _ = sample
    run = _eager_run(runs)
    replay = replay_run(run, requests, compiled)
    assert isinstance(replay, Replay) and set(replay.metrics) == set(REPLAY_METRICS)
    mine = requests[requests.run_id == run.run_id]
    # the collector's four warm-up requests come first, then the run's own ones
    assert replay.warmup == json.loads(run.provenance)["warmup_requests"] == 4
    assert len(replay.result.workload) == len(mine) + 4
    assert replay.clock_s == WARMUP_GAP_S
    assert (replay.result.workload.arrival_s[4:] >= WARMUP_GAP_S).all()
    for column in REPLAY_METRICS:  # an in-sample model: within 25 % of the measurement
        assert replay.metrics[column] == pytest.approx(float(run[column]), rel=0.25), column


def test_throughput_counts_from_the_runs_clock_and_only_its_own_requests(sample):
    runs, requests, compiled, _ = sample
    run = _eager_run(runs)
    base = replay_run(run, requests, compiled)
    late = requests.copy()
    late.loc[late.run_id == run.run_id, "arrival_s"] += 2.0  # first request 2 s after the clock
    shifted = replay_run(run, late, compiled)
    # the same simulation (arrivals are rebased), so TTFT and TPOT agree exactly ...
    assert shifted.metrics["ttft_mean_ms"] == base.metrics["ttft_mean_ms"]
    assert shifted.metrics["tpot_mean_ms"] == base.metrics["tpot_mean_ms"]
    # ... while the duration grows by the 2 s before the first arrival
    tokens = requests.loc[requests.run_id == run.run_id, "output_tokens"].sum()
    duration = tokens / base.metrics["output_throughput_tok_s"]
    assert tokens / shifted.metrics["output_throughput_tok_s"] == pytest.approx(duration + 2.0)


def test_warmup_and_overrides_change_the_simulation(sample):
    runs, requests, compiled, _ = sample
    run = _eager_run(runs)
    base = replay_run(run, requests, compiled)
    cold = replay_run(run, requests, compiled, warmup=0)
    assert cold.warmup == 0 and cold.clock_s == 0.0
    assert len(cold.result.workload) == len(base.result.workload) - 4
    slow = replay_run(run, requests, compiled, overrides={"step_overhead_ms": 5.0})
    # every decode step 5 ms longer: TPOT rises by about that much
    assert slow.metrics["tpot_mean_ms"] - base.metrics["tpot_mean_ms"] == pytest.approx(5, abs=1.5)
    assert slow.result.config["step_overhead_ms"] == 5.0


def test_graph_run_replays_with_fitted_capture_costs(sample):
    runs, requests, compiled, fits = sample
    run = runs[runs.config_name == HELD_OUT[0]].iloc[0]
    engine, config = replay_config(run)
    assert isinstance(config["use_cuda_graph"], bool) and config["use_cuda_graph"]
    assert config == sim_config(run)
    with pytest.raises(Exception, match="capture cost"):  # no constants in a bare regressor
        replay_run(run, requests, compiled)
    metrics, result = simulate_replay(run, requests, fits, compiled, 4, record_steps=True)
    assert result.metrics["graph_captures"] > 0 and result.steps is not None
    assert metrics["tpot_ms"] == pytest.approx(float(run.tpot_mean_ms), rel=0.25)
    again, _ = simulate_replay(run, requests, fits, compiled, 4, record_steps=True)
    assert again == metrics  # deterministic for a seed


def test_a_run_without_requests_is_an_input_error(sample):
    runs, requests, compiled, _ = sample
    with pytest.raises(InputError, match="no requests"):
        replay_run(_eager_run(runs), requests.iloc[:0], compiled)
    assert np.isfinite(list(replay_run(_eager_run(runs), requests, compiled,
                                       seed=3).metrics.values())).all()
