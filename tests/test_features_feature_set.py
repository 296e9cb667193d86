"""Feature sets: the vectorised frame and the numba per-step kernel agree bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from servetune import ConfigError, InputError
from servetune.features import (
    DEFAULT_FEATURE_SET,
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    FeatureSetRegistry,
    add_previous_step,
    default_feature_registry,
    get_feature_set,
    join_knobs,
    knob_vector,
)
from _helpers_models import synthetic_traces


def _kernel_rows(fs, frame: pd.DataFrame) -> np.ndarray:
    """The kernel row by row, walking each run in step order and handing it the previous step
    as the simulator's loop does (its own bookkeeping, not ``add_previous_step``)."""
    raw = frame[list(RAW_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    knobs = frame[list(KNOB_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    captured = [isinstance(e, str) and bool(json.loads(e).get("graph_captured"))
                for e in frame["extra"]]
    out = np.empty((len(frame), fs.n_features), dtype=np.float32)
    for _, rows in frame.groupby("run_id", sort=False):
        previous = np.zeros(len(PREV_COLUMNS))
        for i in rows.sort_values("step_index", kind="stable").index:
            fs.kernel(np.concatenate([raw[i], previous]), knobs[i], out[i])
            previous = np.append(raw[i], float(captured[i]))
    return out


@pytest.mark.parametrize("name", default_feature_registry().names)
def test_frame_and_kernel_agree_exactly(name):
    fs = get_feature_set(name)
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=200, seed=3)
    runs["num_blocks"] = [256, 2048, 4096, 8192, 24544, 1024][:len(runs)]  # 32 k..3.1 M tokens
    frame = join_knobs(steps, runs)
    # Edge rows: empty batch, huge values, missing KV columns and knobs (NaN).
    edge = frame.iloc[:4].copy()
    edge.loc[edge.index[0], list(RAW_COLUMNS)] = 0
    edge.loc[edge.index[1], "prefill_attn_work"] = 3 * 10**12
    edge.loc[edge.index[2], ["kv_tokens_sum", "kv_tokens_max"]] = np.nan
    edge.loc[edge.index[3], ["block_size", "cuda_graph", "max_batch_tokens",
                             "cache_tokens"]] = np.nan
    edge["run_id"] = "edge-run"
    frame = pd.concat([frame, edge], ignore_index=True)
    # the collector's capture flag in ``extra`` (both spellings of its JSON)
    frame["extra"] = np.select(
        [frame.index % 7 == 0, frame.index % 13 == 0, frame.index % 11 == 0],
        ['{"graph_captured":true}', '{"active": 3, "graph_captured": true}',
         '{"graph_captured":false}'], None)
    # rows out of step order: the previous step still comes from the run's step_index order
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    vectorised = fs.frame(frame)
    per_step = _kernel_rows(fs, frame)
    assert vectorised.dtype == np.float32 and vectorised.shape == (len(frame), fs.n_features)
    # Bit-for-bit equality, NaN in the same places.
    assert np.array_equal(vectorised.view(np.uint32), per_step.view(np.uint32))
    edge_rows = frame.index[frame.run_id == "edge-run"][np.argsort(
        frame.step_index[frame.run_id == "edge-run"].to_numpy(), kind="stable")]
    assert np.isnan(vectorised[edge_rows[2]]).any()  # missing KV columns stay missing
    assert np.isfinite(vectorised[edge_rows[0]]).all()  # an empty batch: no division by zero


def test_previous_step_comes_from_the_same_run_in_step_order():
    steps = pd.DataFrame({"run_id": ["b", "a", "a", "b", "a"], "step_index": [1, 2, 0, 0, 1]})
    for j, name in enumerate(RAW_COLUMNS):
        steps[name] = np.arange(5) * 10 + j
    out = add_previous_step(steps)
    # a: steps 0 (row 2), 1 (row 4), 2 (row 1); b: steps 0 (row 3), 1 (row 0)
    assert out["prev_num_seqs"].tolist() == [30.0, 40.0, 0.0, 0.0, 20.0]
    assert out.loc[1, list(PREV_COLUMNS[:8])].tolist() == steps.loc[4, list(RAW_COLUMNS)].tolist()
    assert (out["prev_graph_captured"] == 0).all()  # no capture flags given
    # given prev columns are used as they are (steps dropped after add_previous_step keep them)
    fs = get_feature_set("raw_v2")
    kept = out.drop(index=4).assign(**{name: 1.0 for name in KNOB_COLUMNS})
    column = fs.feature_names.index("prev_num_seqs")
    assert fs.frame(kept)[:, column].tolist() == [30.0, 40.0, 0.0, 0.0]


def test_max_batch_tokens_is_a_knob_of_the_default_feature_set():
    fs = get_feature_set()
    assert "max_batch_tokens" in KNOB_COLUMNS and "max_batch_tokens" in fs.feature_names
    raw = np.array([[4, 0, 4, 0, 4, 2000, 600, 0]], dtype=np.float64)
    # step_v5 (the default) shows the budget to async steps, which overlap the next one's launch
    small = fs.matrix(raw, knob_vector({"max_batch_tokens": 512, "async_batching": 1}))
    large = fs.matrix(raw, knob_vector({"max_batch_tokens": 2048, "async_batching": 1}))
    column = fs.feature_names.index("max_batch_tokens")
    assert small[0, column] == 512 and large[0, column] == 2048


def test_step_v5_sees_the_budget_and_previous_step_only_with_async_batching():
    fs = get_feature_set("step_v5")
    budget = fs.feature_names.index("max_batch_tokens")
    one = np.array([[4, 0, 4, 0, 4, 2000, 600, 0]], dtype=np.float64)
    assert fs.matrix(one, knob_vector({"max_batch_tokens": 2048, "async_batching": 1}))[
        0, budget] == 2048
    assert fs.matrix(one, knob_vector({"max_batch_tokens": 2048, "async_batching": 0}))[
        0, budget] == 0
    raw = np.array([[4, 0, 4, 0, 4, 2000, 600, 0],
                    [5, 1, 4, 100, 4, 2300, 700, 5000]], dtype=np.float64)
    column = fs.feature_names.index("prev_kv_tokens_sum")
    overlapped = fs.matrix(raw, knob_vector({"async_batching": 1}))
    alone = fs.matrix(raw, knob_vector({"async_batching": 0}))
    assert overlapped[1, column] == 2000 and alone[1, column] == 0


def test_step_v5_names_nonnegative_linear_base_terms():
    fs = get_feature_set("step_v5")
    assert fs.base_terms and set(fs.base_terms) <= set(fs.feature_names)
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 5000, size=(200, 8)).astype(np.float64)
    for graphs in (0, 1):
        features = fs.matrix(raw, knob_vector({"cuda_graph": graphs, "async_batching": 1}))
        assert (features[:, fs.base_indices] >= 0).all()


def test_default_feature_set_has_documented_shape():
    fs = get_feature_set()
    assert fs.name == DEFAULT_FEATURE_SET
    assert len(fs.feature_names) == len(fs.monotone) == fs.n_features
    assert set(fs.monotone) <= {-1, 0, 1}
    assert fs.qualified_name == f"{fs.name}@v{fs.version}"


def test_matrix_accepts_one_knob_vector_for_all_steps():
    fs = get_feature_set()
    steps, runs = synthetic_traces(n_runs=1, steps_per_run=50, seed=1)
    frame = join_knobs(steps, runs)
    raw = frame[list(RAW_COLUMNS)].to_numpy(dtype=np.float64)
    knobs = knob_vector(runs.iloc[0].to_dict())
    # (n, 8): consecutive steps of one run, each row's previous step the row before
    assert np.array_equal(fs.matrix(raw, knobs), fs.frame(frame))
    with_prev = add_previous_step(frame)[[*RAW_COLUMNS, *PREV_COLUMNS]].to_numpy(np.float64)
    assert np.array_equal(fs.matrix(with_prev, knobs), fs.frame(frame))


def test_unknown_feature_set_lists_valid_names():
    with pytest.raises(ConfigError, match="step_v1"):
        get_feature_set("nope")


def test_registry_refuses_duplicates():
    fs = get_feature_set()
    with pytest.raises(ConfigError, match="twice"):
        FeatureSetRegistry((fs, fs))


def test_missing_column_names_the_field():
    steps, runs = synthetic_traces(n_runs=1, steps_per_run=5)
    frame = join_knobs(steps, runs).drop(columns=["kv_tokens_max"])
    with pytest.raises(InputError) as err:
        get_feature_set().frame(frame)
    assert err.value.field == "kv_tokens_max"


def test_join_knobs_takes_run_values_and_fills_from_steps():
    steps, runs = synthetic_traces(n_runs=2, steps_per_run=5)
    runs.loc[0, "block_size"] = None
    joined = join_knobs(steps, runs)
    first = joined[joined.run_id == runs.run_id[0]]
    second = joined[joined.run_id == runs.run_id[1]]
    # run 0's block size is missing in runs: taken from the steps' own column
    assert (first.block_size == steps[steps.run_id == runs.run_id[0]].block_size).all()
    assert (second.async_batching == float(runs.async_batching[1])).all()
    assert len(joined) == len(steps) and (joined.index == steps.index).all()


def test_knob_vector_orders_and_refuses_bad_values():
    v = knob_vector({"cuda_graph": False, "block_size": 16, "unrelated": "x"})
    assert v[KNOB_COLUMNS.index("block_size")] == 16.0
    assert v[KNOB_COLUMNS.index("cuda_graph")] == 0.0
    assert np.isnan(v[KNOB_COLUMNS.index("async_batching")])
    with pytest.raises(InputError) as err:
        knob_vector({"block_size": "big"})
    assert err.value.field == "block_size"


def test_step_v3_is_step_v2_without_block_size_features():
    steps, runs = synthetic_traces(n_runs=2, steps_per_run=40, seed=8)
    frame = join_knobs(steps, runs)
    v2, v3 = get_feature_set("step_v2"), get_feature_set("step_v3")
    keep = [i for i, n in enumerate(v2.feature_names) if n not in ("kv_blocks", "block_size")]
    assert v3.feature_names == tuple(v2.feature_names[i] for i in keep)
    assert v3.monotone == tuple(v2.monotone[i] for i in keep)
    assert np.array_equal(v3.frame(frame), v2.frame(frame)[:, keep])


def test_registered_feature_sets_pickle_by_name_for_worker_processes():
    """Process pools and Dask ship step models to workers: the feature set must pickle."""
    import pickle

    from servetune.features import get_feature_set

    for name in default_feature_registry().names:
        feature_set = get_feature_set(name)
        restored = pickle.loads(pickle.dumps(feature_set))
        assert restored.qualified_name == feature_set.qualified_name
        assert restored.feature_names == feature_set.feature_names


def test_a_knob_column_the_frame_lacks_is_unknown():
    steps, runs = synthetic_traces(n_runs=1, steps_per_run=20, seed=4)
    frame = join_knobs(steps, runs)
    fs = get_feature_set()
    column = fs.feature_names.index("max_batch_tokens")
    without = fs.frame(frame.drop(columns=["max_batch_tokens"]))
    assert np.isnan(without[:, column]).all()
    assert np.array_equal(np.delete(without, column, axis=1),
                          np.delete(fs.frame(frame), column, axis=1))


def test_select_features_keeps_the_base_terms_it_does_not_drop():
    from servetune.features import select_features

    v5 = get_feature_set("step_v5")
    fewer = select_features(v5, "step_v5_test", 1, drop=("kv_tokens_eager", "kv_tokens_max"))
    assert fewer.base_terms == tuple(t for t in v5.base_terms if t != "kv_tokens_eager")
    assert [fewer.feature_names[i] for i in fewer.base_indices] == list(fewer.base_terms)
