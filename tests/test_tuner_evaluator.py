"""The simulator evaluator: space checks, key routing, pickling to workers, determinism."""

from __future__ import annotations

import pickle

import pytest
from _helpers_simulator import trained_step_model

from servetune import ConfigError
from servetune.data import Workload
from servetune.tuner import METRIC_KEYS, SLO, SearchSpace
from servetune.tuner import SimulatorEvaluator, engine_defaults


@pytest.fixture(scope="module")
def step_model():
    return trained_step_model(n_trees=20)[0]


def _workload() -> Workload:
    return Workload.from_arrays([0.05 * i for i in range(60)], [300 + 7 * i for i in range(60)],
                                [20 + (i % 9) for i in range(60)], name="t")


def test_metrics_cover_the_objective_keys_and_pickling_keeps_them_identical(step_model):
    space = SearchSpace.builtin("transformers-cb")
    evaluator = SimulatorEvaluator.for_space(space, _workload(), step_model,
                                             slo=SLO(ttft_ms=500, tpot_ms=50))
    config = space.resolve(space.default_tunables()).config
    metrics = evaluator(config)
    assert set(METRIC_KEYS) <= set(metrics)
    clone = pickle.loads(pickle.dumps(evaluator))
    assert clone(config) == metrics
    assert evaluator(config) == metrics  # deterministic


def test_bookkeeping_fields_are_not_sent_to_the_simulator(step_model):
    space = SearchSpace.builtin("vllm")
    evaluator = SimulatorEvaluator.for_space(space, _workload(), step_model)
    config = space.resolve(space.default_tunables()).config
    assert "gpus" in config and "gpus" not in evaluator.simulator_config(config)
    assert evaluator(config)["completed"] == 60


def test_a_space_tuning_a_knob_the_simulator_lacks_is_refused(step_model):
    space = SearchSpace.from_dict({"name": "x", "engine": "vllm", "params": {
        "kv_cache_dtype": {"type": "enum", "choices": ["auto", "fp8"]}}})
    with pytest.raises(ConfigError, match="kv_cache_dtype.*does not model"):
        SimulatorEvaluator.for_space(space, _workload(), step_model)


def test_engine_defaults_include_the_aliases_the_spaces_use():
    defaults = engine_defaults("transformers-cb")
    assert defaults["scheduler"] == defaults["scheduler_type"] == "fifo"
    baseline = SearchSpace.builtin("transformers-cb").baseline_config(defaults)
    assert baseline["max_batch_tokens"] == defaults["max_batch_tokens"]  # not snapped
