"""The verify -> retrain loop (issue 14 part 5): tune in simulation, measure the top candidate and
the engine default on a real engine, rebuild the measured runs' steps from their token timings,
calibrate the model on them and tune again; the recommendation is chosen on measurements.

The engine is a real ``transformers serve --continuous-batching`` with a tiny randomly
initialised Llama on this CPU, started by the real dispatcher on the ``local`` node. The base
step-time model is trained on synthetic steps 20x slower than anything this CPU runs (a GPU-sized
model's steps on another machine), so its first predictions are far off and the calibration has
something to learn. Real store, real MLflow SQLite registry, real XGBoost."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import free_port, make_tiny_model, session_alive  # noqa: E402
from _helpers_models import trained_synthetic_workspace  # noqa: E402

from servetune.data import TraceStore  # noqa: E402
from servetune.models import StepTimeModel  # noqa: E402
from servetune.tuner._job import TuneSettings  # noqa: E402
from servetune.tuner import tune_verify_loop  # noqa: E402
from servetune.tuner.hardware import (  # noqa: E402
    ClusterSpec,
    DispatchOptions,
    NodeSpec,
    ServiceGroupSpec,
)

BIN = Path(sys.executable).parent
SPACE = """
name = "loop-test"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "enum"
choices = [128, 256]
[fixed]
block_size = 16
num_blocks = 128
async_batching = false
cuda_graph = false
"""
WORKLOAD = "poisson:rate=6,n=8,input=const:24,output=const:12"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    # 20x slower than anything this CPU runs: the calibration has work to do
    ws, base = trained_synthetic_workspace(root, n_runs=8, seed=4, scale=20.0, num_blocks=128,
                                           model="tiny")
    space = root / "space.toml"
    space.write_text(SPACE)
    model = make_tiny_model(root / "tiny")
    group = ServiceGroupSpec("g0", (NodeSpec("local", work_dir=str(root / "work")),),
                             service_port=free_port(),
                             start_command=(str(BIN / "transformers"), "serve"))
    cluster = ClusterSpec(groups=(group,), engine="transformers", model=str(model),
                          health_timeout_s=90, candidate_timeout_s=120, stop_grace_s=5,
                          retries=1, backoff_s=0.2,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "CUDA_VISIBLE_DEVICES": ""})
    settings = TuneSettings(space=str(space), workload=WORKLOAD, optimizer="grid", top_k=1,
                            objective="goodput:ttft_ms=2000,tpot_ms=200", study="loop",
                            model_uri=base.model_uri, track=False, domain="ignore")
    store = TraceStore.for_workspace(ws)
    # threshold 0 and no noise allowance: the loop never stops early, so both rounds run
    result = tune_verify_loop(
        ws, settings, cluster, rounds=2, store=store,
        verify_options={"base_config": {"device": "cpu"}, "unapplied": "record",
                        "options": DispatchOptions(repeats=2, warmup_requests=1,
                                                   hardware="cpu"),
                        "threshold": 0.0, "noise_factor": 0.0})
    return ws, base, result, store


def _default(round_):
    return next(c for c in round_.verification.candidates if c.baseline)


def test_two_rounds_and_the_second_simulates_with_a_calibrated_model(loop):
    ws, base, result, store = loop
    assert [r.index for r in result.rounds] == [1, 2] and result.stopped == "rounds"
    first, second = result.rounds
    assert first.model_uri == base.model_uri
    assert second.model_uri == result.calibrated[0] != base.model_uri
    calibrated = StepTimeModel.load(second.model_uri, tracking_uri=ws.tracking_uri)
    assert calibrated.booster.num_boosted_rounds() > StepTimeModel.load(
        base.model_uri, tracking_uri=ws.tracking_uri).booster.num_boosted_rounds()
    # every measured run of round 1 is in the store with its reconstructed steps
    steps = store.query("steps", run_id=list(first.run_ids))
    assert set(steps["run_id"]) == set(first.run_ids) and len(first.run_ids) == 4
    assert set(steps["source"]) == {"reconstructed"}
    for r in result.rounds:
        sessions = [sid for o in r.verification.dispatch.outcomes for a in o.attempts
                    for _, sid in a.sessions]
        assert sessions and all(session_alive(sid) == [] for sid in sessions)


def test_calibration_brings_the_prediction_to_the_measurement(loop):
    _, _, result, _ = loop
    first, second = (_default(r) for r in result.rounds)
    assert first.config == second.config  # the engine default, measured in both rounds
    measured = np.mean([first.measured["tpot_mean_ms"], second.measured["tpot_mean_ms"]])
    before = abs(first.predicted["tpot_mean_ms"] / measured - 1)
    after = abs(second.predicted["tpot_mean_ms"] / measured - 1)
    print(f"default TPOT: measured {first.measured['tpot_mean_ms']:.2f} and {second.measured['tpot_mean_ms']:.2f} ms, predicted {first.predicted['tpot_mean_ms']:.2f}"
          f" -> {second.predicted['tpot_mean_ms']:.2f} ms")
    assert before > 1.0 and after < before / 2, (before, after)


def test_the_recommendation_is_the_best_measurement_of_any_round(loop):
    _, _, result, _ = loop
    rec = result.recommendation
    best = max((c for r in result.rounds for c in r.verification.candidates
                if c.status == "measured"), key=lambda c: c.measured_objective)
    assert rec["chosen_on"] == "measurements"
    assert rec["measured_objective"] == best.measured_objective
    doc = result.to_dict()
    assert len(doc["rounds"]) == 2 and doc["recommendation"] == rec
