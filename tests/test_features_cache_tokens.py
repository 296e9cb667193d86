"""The KV cache size as a step-time model knob: runs, configurations and the simulator agree,
and step_v6's async mask-copy term is the engine's own byte count."""

from __future__ import annotations

import numpy as np
import pandas as pd

from servetune.data.engines._transformers_resolve import (
    mask_copy_bytes_per_step,
    resolve_transformers_config,
)
from servetune.features import (
    KNOB_COLUMNS,
    RUN_KNOB_COLUMNS,
    get_feature_set,
    join_knobs,
    knob_vector,
    knobs_from_runs,
)
from servetune.tuner.simulator._policies import get_policy
from servetune.tuner.simulator._simulate import model_knobs

CACHE = KNOB_COLUMNS.index("cache_tokens")
ONE_STEP = np.array([[4, 0, 4, 0, 4, 2000, 600, 0]], dtype=np.float64)


def test_cache_tokens_is_the_last_knob_and_derived_from_runs_columns():
    assert KNOB_COLUMNS[-1] == "cache_tokens" and "num_blocks" in RUN_KNOB_COLUMNS
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "block_size": [128, 64, None],
                         "num_blocks": [24544, None, 512]})
    knobs = knobs_from_runs(runs).set_index("run_id")
    assert knobs.loc["a", "cache_tokens"] == 24544 * 128
    assert np.isnan(knobs.loc["b", "cache_tokens"]) and np.isnan(knobs.loc["c", "cache_tokens"])
    # a runs table that carries the column itself keeps it
    own = knobs_from_runs(runs.assign(cache_tokens=[1.0, 2.0, 3.0]))
    assert own["cache_tokens"].tolist() == [1.0, 2.0, 3.0]


def test_join_and_knob_vector_give_the_same_cache_size():
    runs = pd.DataFrame({"run_id": ["r"], "block_size": [64], "num_blocks": [4096],
                         "async_batching": [True], "max_batch_tokens": [1024]})
    steps = pd.DataFrame({"run_id": ["r", "r"], "step_index": [0, 1]})
    joined = join_knobs(steps, runs)
    assert (joined["cache_tokens"] == 262144.0).all()
    vector = knob_vector(runs.iloc[0].to_dict())
    assert vector[CACHE] == 262144.0
    assert np.array_equal(joined[list(KNOB_COLUMNS)].to_numpy(np.float64)[0], vector,
                          equal_nan=True)
    assert np.isnan(knob_vector({"num_blocks": 10})[CACHE])  # no block size: unknown
    assert knob_vector({"cache_tokens": 5, "num_blocks": 10, "block_size": 2})[CACHE] == 5


def test_simulator_knobs_carry_the_cache_its_policy_sizes():
    for engine, config, expected in (
            ("transformers-cb", {"num_blocks": 4096, "block_size": 128}, 524288.0),
            ("vllm", {"num_gpu_blocks_override": 1000, "block_size": 16}, 16000.0)):
        policy = get_policy(engine)
        knobs = model_knobs(policy, policy.resolve(config))
        assert knobs[CACHE] == expected, engine
    # sized from memory when num_blocks is unset: the policy's own block count
    policy = get_policy("transformers-cb")
    resolved = policy.resolve({"max_memory_percent": 0.9, "block_size": 128,
                               "gpu_memory_gib": 140, "model_weights_gib": 2.5,
                               "kv_bytes_per_token": 32768})
    assert model_knobs(policy, resolved)[CACHE] == 128.0 * policy.to_params(resolved)[
        "num_blocks"]


def test_step_v6_mask_copy_is_the_engines_byte_count():
    fs = get_feature_set("step_v6")
    column = fs.feature_names.index("mask_copy_gb")
    assert "mask_copy_gb" in fs.base_terms and fs.monotone[column] == 1
    for blocks in (256, 4096, 24544):
        knobs = {"use_async_batching": True, "use_cuda_graph": True, "max_batch_tokens": 1792,
                 "block_size": 128, "num_blocks": blocks}
        expected = mask_copy_bytes_per_step(resolve_transformers_config(knobs)) / 1e9
        vector = knob_vector({"async_batching": 1, "max_batch_tokens": 1792,
                              "num_blocks": blocks, "block_size": 128})
        got = float(fs.matrix(ONE_STEP, vector)[0, column])
        assert abs(got - expected) <= 1e-6 * expected
    sync = knob_vector({"async_batching": 0, "max_batch_tokens": 1792, "cache_tokens": 3e6})
    assert fs.matrix(ONE_STEP, sync)[0, column] == 0.0


def test_step_v6_is_step_v5_plus_the_mask_copy():
    v5, v6 = get_feature_set("step_v5"), get_feature_set("step_v6")
    assert v6.feature_names == (*v5.feature_names, "mask_copy_gb")
    assert v6.base_terms == (*v5.base_terms, "mask_copy_gb")
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 4000, size=(50, 17)).astype(np.float64)
    raw[:, 16] = rng.integers(0, 2, size=50)
    for async_batching in (0, 1):
        knobs = knob_vector({"async_batching": async_batching, "cuda_graph": 1,
                             "max_batch_tokens": 512, "cache_tokens": 262144, "tp_size": 1})
        assert np.array_equal(v6.matrix(raw, knobs)[:, :-1], v5.matrix(raw, knobs))
