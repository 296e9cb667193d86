"""Per-host calibration (issue 14 part 5): ``servetune train --calibrate-from MODEL --where
hardware=HOST`` keeps the base model's trees and learns its error on the host's steps with a few
shallow trees. Real Parquet store, real MLflow SQLite registry, real XGBoost, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _helpers_models import synthetic_traces, trained_synthetic_workspace

from servetune import ConfigError
from servetune.data import TraceStore
from servetune.models import StepTimeModel, StepTimeRegressor, TrainConfig
from servetune.models._evaluation import held_out_runs

FAST = TrainConfig(n_trials=1, cv_splits=2, search_budget_s=20)
HOST = "HOST-B"


def _host_traces(seed: int):
    """Runs of another host: eager steps 1.6x and CUDA-graph steps 1.15x slower than the base
    model's host (a correction that depends on the configuration, not one ratio)."""
    steps, runs = synthetic_traces(n_runs=10, steps_per_run=200, seed=seed)
    graph = dict(zip(runs.run_id, runs.cuda_graph))
    factor = steps.run_id.map(lambda r: 1.15 if graph[r] else 1.6)
    steps["duration_ms"] = steps["duration_ms"] * factor
    for frame in (steps, runs):
        frame["hardware"] = HOST
        frame["run_id"] = frame["run_id"].str.replace("run-", "hostb-")
    runs["num_blocks"] = 512
    return steps, runs


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    ws, base = trained_synthetic_workspace(tmp_path_factory.mktemp("calibration"), n_runs=10,
                                           seed=1)
    store = TraceStore.for_workspace(ws)
    host_steps, host_runs = _host_traces(seed=2)
    store.ingest({"steps": host_steps, "runs": host_runs}, source="generated",
                 sha256="host-b", format="test")
    out = subprocess.run(
        [sys.executable, "-m", "servetune.cli._main", "--workspace", str(ws.root), "train",
         "--calibrate-from", base.model_uri, "--where", f"hardware={HOST}", "--json"],
        capture_output=True, text=True, check=True)
    return ws, base, json.loads(out.stdout), host_steps, host_runs


def test_calibration_is_registered_for_the_host_and_keeps_the_base_trees(calibrated):
    ws, base, result, host_steps, _ = calibrated
    assert HOST in result["registered_model"] and result["champion"]
    assert result["lineage"]["calibrated_from"]["uri"] == base.model_uri
    base_model = StepTimeModel.load(base.model_uri, tracking_uri=ws.tracking_uri)
    model = StepTimeModel.load(result["model_uri"], tracking_uri=ws.tracking_uri)
    n_base = base_model.booster.num_boosted_rounds()
    assert model.booster.num_boosted_rounds() > n_base
    # the base model's trees are the calibrated model's first trees, unchanged
    trees = lambda booster: json.loads(bytes(booster.save_raw("json")))[  # noqa: E731
        "learner"]["gradient_booster"]["model"]["trees"]
    kept, original = trees(model.booster)[:n_base], trees(base_model.booster)
    assert [t["split_conditions"] for t in kept] == [t["split_conditions"] for t in original]
    # the domain covers both hosts' training runs
    host_test = held_out_runs(host_steps.run_id.unique(), FAST.test_fraction)
    assert model.domain.n_runs == base_model.domain.n_runs + 10 - len(host_test)


def test_calibration_learns_the_hosts_configuration_dependent_error(calibrated):
    ws, base, result, _, _ = calibrated
    base_model = StepTimeModel.load(base.model_uri, tracking_uri=ws.tracking_uri)
    model = StepTimeModel.load(result["model_uri"], tracking_uri=ws.tracking_uri)
    # fresh runs of the host, never seen: the base model is off by 1.15x-1.6x
    steps, runs = _host_traces(seed=3)
    from servetune.features import add_previous_step, join_knobs

    frame = add_previous_step(join_knobs(steps, runs))
    y = frame.duration_ms.to_numpy()

    def mape(m):
        return float(np.mean(np.abs(m.predict(frame) - y) / y) * 100)

    before, after = mape(base_model), mape(model)
    assert before > 20 and after < before / 3, (before, after)


def test_calibration_needs_the_base_models_feature_set(calibrated):
    ws, base, _, host_steps, host_runs = calibrated
    base_model = StepTimeModel.load(base.model_uri, tracking_uri=ws.tracking_uri)
    other = "raw_v2" if base_model.feature_set.name != "raw_v2" else "step_v4"
    from servetune.features import add_previous_step, join_knobs

    frame = add_previous_step(join_knobs(host_steps, host_runs))
    with pytest.raises(ConfigError, match="continue it with the same feature set"):
        StepTimeRegressor(feature_set=other, init_model=base_model, n_estimators=5).fit(
            frame, frame.duration_ms.to_numpy())
