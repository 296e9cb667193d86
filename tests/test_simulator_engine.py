"""Scheduling, KV cache, preemption, routing and accounting of the simulated engines.

Hand-computed scenarios use a constant 10 ms step model, so every expected time is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _helpers_simulator import (
    SAMPLE_CONSTANTS,
    constant_step_model,
    trained_step_model,
    with_constants,
)

from servetune import ConfigError
from servetune.data import Workload, synthetic_workload
from servetune.tuner.simulator import simulate

STEP = constant_step_model(10.0)


@pytest.fixture(scope="module")
def trained():
    return trained_step_model(n_trees=40)[0]


def one(inp, out):
    return Workload.from_arrays([0.0], [inp], [out])


def steps_of(result):
    return result.steps  # columns: dp_rank, start_s, duration_ms, then the 8 RAW_COLUMNS


def test_transformers_splits_a_prompt_by_the_token_budget():
    r = simulate("transformers", {"max_batch_tokens": 64, "block_size": 16, "num_blocks": 100},
                 one(100, 5), STEP, record_steps=True)
    s = steps_of(r)
    assert len(s) == 6
    # step 1: 64-token chunk; step 2: the 36-token rest (context 100), then 4 decodes
    assert s[0, 3:].tolist() == [1, 1, 0, 64, 0, 64, 64, 64 * 64]
    assert s[1, 3:].tolist() == [1, 1, 0, 36, 0, 100, 100, 36 * 100]
    assert s[2, 3:].tolist() == [1, 0, 1, 0, 1, 101, 101, 0]
    assert s[5, 8] == 104
    assert r.ttft_ms[0] == pytest.approx(20.0) and r.e2e_ms[0] == pytest.approx(60.0)
    assert r.tpot_ms[0] == pytest.approx(10.0)
    assert np.diff(r.token_s).tolist() == pytest.approx([0.01] * 4)


def test_transformers_async_batching_keeps_a_finished_request_one_more_step():
    base = {"max_batch_tokens": 64, "block_size": 16, "num_blocks": 100}
    sync = simulate("transformers", base, one(100, 5), STEP, record_steps=True)
    asyn = simulate("transformers", {**base, "use_async_batching": True}, one(100, 5), STEP,
                    record_steps=True)
    assert len(asyn.steps) == len(sync.steps) + 1
    assert asyn.steps[-1, 3:].tolist() == [1, 0, 1, 0, 1, 105, 105, 0]
    # a batch's tokens are read back while the next batch is launched: each token is stamped at
    # the end of the following step (10 ms later here), the last one after the discarded step
    np.testing.assert_allclose(asyn.token_s, sync.token_s + 0.010)
    assert asyn.e2e_ms[0] == pytest.approx(sync.e2e_ms[0] + 10.0)
    assert asyn.ttft_ms[0] == pytest.approx(sync.ttft_ms[0] + 10.0)


def test_transformers_safety_margin_stops_new_prefills():
    w = Workload.from_arrays([0.0, 0.0], [100, 20], [3, 3])
    cfg = {"block_size": 16, "num_blocks": 10}
    # request 0 takes ((100+1)//16)+1 = 7 blocks; 3 of 10 free is below a 50% margin
    held = simulate("transformers", {**cfg, "safety_margin": 0.5}, w, STEP)
    free = simulate("transformers", {**cfg, "safety_margin": 0.0}, w, STEP)
    assert free.first_scheduled_s.tolist() == [0.0, 0.0]
    assert held.first_scheduled_s[1] > 0.0
    assert held.metrics["completed"] == free.metrics["completed"] == 2


def test_prefill_first_finishes_split_prefills_before_decodes():
    w = Workload.from_arrays([0.0, 0.005], [16, 200], [20, 2])
    cfg = {"max_batch_tokens": 64, "block_size": 16, "num_blocks": 100}
    fifo = simulate("transformers", cfg, w, STEP, record_steps=True)
    first = simulate("transformers", {**cfg, "scheduler_type": "prefill_first"}, w, STEP,
                     record_steps=True)
    # both put request 1's chunks and request 0's decode together, but the prefill-first
    # scheduler serves the split prefill first, so the decode no longer fits the budget
    assert fifo.steps[1, 3:5].tolist() == [2, 1]
    assert first.steps[2, 3:5].tolist() == [1, 1]
    assert first.tpot_ms[0] > fifo.tpot_ms[0]  # request 0's decodes waited


@pytest.mark.parametrize("engine, cfg", [
    ("transformers", {"block_size": 16, "num_blocks": 10}),
    ("vllm", {"block_size": 16, "num_gpu_blocks_override": 10}),
])
def test_preemption_by_recompute_when_blocks_run_out(engine, cfg):
    w = Workload.from_arrays([0.0, 0.0], [60, 60], [60, 60])
    r = simulate(engine, cfg, w, STEP, record_steps=True)
    assert r.metrics["completed"] == 2 and r.metrics["preemptions"] >= 1
    assert r.generated.tolist() == [60, 60]
    # the cache never holds more than its 160 tokens
    assert r.steps[:, 8].max() <= 160
    # recomputation re-prefills prompt + generated tokens
    assert r.steps[:, 6].sum() > 120


def test_vllm_long_prefill_threshold_and_partial_prefills():
    r = simulate("vllm", {"max_num_batched_tokens": 64, "long_prefill_token_threshold": 32},
                 one(100, 2), STEP, record_steps=True)
    assert r.steps[:4, 6].tolist() == [32, 32, 32, 4] and r.ttft_ms[0] == pytest.approx(40.0)
    w = Workload.from_arrays([0.0, 0.0], [100, 100], [2, 2])
    # the V1 scheduler gives both prompts a chunk in one step: max_num_partial_prefills (1, the
    # only value V1 accepts) does not cap it
    both = simulate("vllm", {"max_num_partial_prefills": 1}, w, STEP, record_steps=True)
    assert both.steps[0, 4] == 2
    with pytest.raises(ConfigError, match="max_num_partial_prefills' must be <= 1"):
        simulate("vllm", {"max_num_partial_prefills": 2}, w, STEP)


def test_vllm_max_num_seqs_and_no_chunking():
    w = Workload.from_arrays([0.0] * 3, [10, 10, 10], [4, 4, 4])
    r = simulate("vllm", {"max_num_seqs": 2}, w, STEP)
    assert r.first_scheduled_s.tolist() == [0.0, 0.0, pytest.approx(0.04)]
    r = simulate("vllm", {"enable_chunked_prefill": False, "max_num_batched_tokens": 16},
                 Workload.from_arrays([0.0, 0.0], [10, 10], [2, 2]), STEP)
    assert r.first_scheduled_s[1] > 0  # 10 + 10 tokens do not fit a 16-token step unsplit


def test_static_batches_do_not_admit_mid_batch():
    w = Workload.from_arrays([0.0, 0.001], [10, 10], [5, 5])
    r = simulate("static", {"max_batch_size": 1}, w, STEP)
    assert r.first_token_s[1] > r.finish_s[0]
    r = simulate("static", {"max_batch_size": 2}, Workload.from_arrays([0.0, 0.0], [10, 10],
                                                                       [5, 2]), STEP)
    assert r.finish_s.tolist() == pytest.approx([0.05, 0.02])


def test_dp_routers():
    w = Workload.from_arrays([0.0, 0.001, 0.002, 0.003], [1000, 10, 10, 10], [50, 2, 2, 2])
    rr = simulate("vllm", {"dp_size": 2}, w, STEP)
    assert rr.replica.tolist() == [0, 1, 0, 1]
    lp = simulate("vllm", {"dp_size": 2, "router": "least_pending_tokens"}, w, STEP)
    assert lp.replica.tolist() == [0, 1, 1, 1]


def test_request_larger_than_the_cache_fails_alone():
    w = Workload.from_arrays([0.0, 0.1], [5000, 10], [4, 4])
    for engine, cfg in [("transformers", {"block_size": 16, "num_blocks": 20}),
                        ("vllm", {"num_gpu_blocks_override": 20}),
                        ("static", {"num_blocks": 20})]:
        r = simulate(engine, cfg, w, STEP)
        assert r.ok.tolist() == [False, True], engine
        assert r.metrics["failed"] == 1


@pytest.mark.parametrize("engine, cfg", [
    ("transformers", {"num_blocks": 400, "block_size": 32, "max_batch_tokens": 512}),
    ("transformers", {"num_blocks": 400, "block_size": 32, "scheduler_type": "prefill_first",
                      "use_async_batching": True}),
    ("vllm", {"num_gpu_blocks_override": 600, "max_num_batched_tokens": 1024}),
    ("static", {"max_batch_size": 8}),
    ("vllm", {"dp_size": 3, "router": "least_pending_tokens"}),
])
def test_token_accounting(engine, cfg, trained):
    w = synthetic_workload("gamma:rate=40,cv=2,n=300,input=lognormal:300:0.8:2000,"
                           "output=lognormal:40:0.8:300", seed=3)
    r = simulate(engine, cfg, w, trained, record_steps=True)
    assert r.ok.all()
    assert (r.generated == w.output_tokens).all()
    s = r.steps
    prefill, decode = s[:, 6].sum(), s[:, 7].sum()
    if r.metrics["preemptions"] == 0:
        assert prefill == w.input_tokens.sum()
        extra = s[:, 5].sum() - (w.output_tokens - 1).sum()  # async: finished ones' extra step
        assert decode == (w.output_tokens - 1).sum() + (extra if "use_async_batching" in cfg
                                                        else 0)
    else:
        assert prefill > w.input_tokens.sum()
    assert (s[:, 3] == s[:, 4] + s[:, 5]).all() and (s[:, 3] > 0).all()
    for i in range(len(w)):
        times = r.token_s[r.token_offset[i]:r.token_offset[i + 1]]
        assert (np.diff(times) > 0).all()
    assert (r.queue_ms >= 0).all() and (r.ttft_ms >= r.queue_ms).all()
    # each replica's steps do not overlap in time
    for rank in np.unique(s[:, 0]):
        mine = s[s[:, 0] == rank]
        assert (mine[1:, 1] >= mine[:-1, 1] + mine[:-1, 2] / 1e3 - 1e-12).all()


def test_bit_identical_for_a_seed_and_noise_follows_the_seed(trained):
    w = synthetic_workload("poisson:rate=30,n=400", seed=1)
    cfg = {"step_noise_cv": 0.1, "num_blocks": 300, "block_size": 32}
    a = simulate("transformers", cfg, w, trained, seed=7)
    b = simulate("transformers", cfg, w, trained, seed=7)
    c = simulate("transformers", cfg, w, trained, seed=8)
    for name in ("token_s", "finish_s", "first_token_s", "first_scheduled_s", "preemptions"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True)
    assert a.metrics == b.metrics
    assert a.requests_table().equals(b.requests_table())
    assert not np.array_equal(a.token_s, c.token_s)


def test_branch_free_forest_is_bit_identical_to_the_reference():
    from _helpers_simulator import synthetic_steps

    from servetune.models import forest_predict_row
    from servetune.tuner.simulator._forest import fast_forest_margin, pack_forest

    model, _ = trained_step_model(n_trees=70, depth=7, seed=1)
    feat, thr, left, max_depth, ok = pack_forest(model.forest)
    assert ok and max_depth == 7
    X = model.feature_set.frame(synthetic_steps(n=3000, seed=9))
    nodes = np.zeros(16, dtype=np.int64)
    for x in X:
        ref = forest_predict_row(*model.arrays, x)
        assert fast_forest_margin(feat, thr, left, model.forest.value, model.forest.roots,
                                  max_depth, model.forest.base_margin, x, nodes) == ref
    # the input box of a walk: every row inside it has exactly the reference margin
    from servetune.tuner.simulator._forest import fast_forest_margin_box

    inside = 0
    for a in range(0, 600, 2):
        lo = np.full(X.shape[1], -np.inf, dtype=np.float32)
        hi = np.full(X.shape[1], np.inf, dtype=np.float32)
        m = fast_forest_margin_box(feat, thr, left, model.forest.value, model.forest.roots,
                                   max_depth, model.forest.base_margin, X[a], nodes, lo, hi)
        assert m == forest_predict_row(*model.arrays, X[a])
        assert ((lo <= X[a]) & (X[a] < hi)).all()
        for b in range(X.shape[0]):
            if ((lo <= X[b]) & (X[b] < hi)).all():
                inside += 1
                assert forest_predict_row(*model.arrays, X[b]) == m
    assert inside > 300  # some rows besides the walked ones fall in the boxes
    from servetune.tuner.simulator import Simulator

    w = synthetic_workload("gamma:rate=40,cv=2,n=1500", seed=5)
    for engine, cfg in [("vllm", {}), ("transformers", {"num_blocks": 500, "block_size": 32}),
                        ("static", {"dp_size": 2})]:
        fast = simulate(engine, cfg, w, model)
        slow = Simulator(engine, cfg, model, fast_forest=False).run(w)
        assert np.array_equal(fast.token_s, slow.token_s), engine


def test_transformers_cuda_graphs_are_captured_once_per_padded_shape():
    cfg = {"max_batch_tokens": 256, "block_size": 16, "num_blocks": 100,
           "use_cuda_graph": True, "cuda_graph_capture_ms": 50.0,
           "cuda_graph_capture_ms_per_token": 0.0, "cuda_graph_capture_ms_per_kv_token": 0.0,
           "max_blocks_per_request": 0}
    r = simulate("transformers", cfg, one(100, 5), STEP, record_steps=True)
    # the prefill (q 100 -> 128) and the decodes (q 1 -> 64) are two shapes; KV reads stay in the
    # first 16384-token interval and key lengths under the 1024 minimum
    assert r.metrics["graph_captures"] == 2
    assert r.steps[:, 2].tolist() == [60.0, 60.0, 10.0, 10.0, 10.0]
    asyn = simulate("transformers", {**cfg, "use_async_batching": True,
                                     "cuda_graph_capture_repeat_factor": 1.0}, one(100, 5), STEP,
                    record_steps=True)
    assert asyn.metrics["graph_captures"] == 3  # each IO pair captures its own decode graph
    # the prefill (pair 0) and the first decode (pair 1) are new shapes; the second decode
    # (pair 0) repeats a shape pair 1 captured: it costs the repeat factor of a capture
    again = simulate("transformers", {**cfg, "use_async_batching": True,
                                      "cuda_graph_capture_repeat_factor": 0.5},
                     one(100, 5), STEP, record_steps=True)
    assert asyn.steps[:3, 2].tolist() == [60.0, 60.0, 60.0]
    assert again.steps[:3, 2].tolist() == [60.0, 60.0, 35.0]
    eager = simulate("transformers", {**cfg, "use_cuda_graph": False}, one(100, 5), STEP)
    assert eager.metrics["graph_captures"] == 0 and eager.e2e_ms[0] == pytest.approx(50.0)
    assert r.e2e_ms[0] == pytest.approx(150.0)
    # a capture also costs per padded KV token read: both shapes' KV read pads to one 16384-token
    # interval, capped at the cache's 100 x 16 = 1600 tokens
    kv = simulate("transformers", {**cfg, "cuda_graph_capture_ms_per_kv_token": 0.001},
                  one(100, 5), STEP, record_steps=True)
    np.testing.assert_allclose(kv.steps[:, 2], [61.6, 61.6, 10.0, 10.0, 10.0])


def test_a_capture_of_a_captured_query_and_kv_shape_costs_the_repeat_factor():
    """Sync: a decode whose longest key crosses 2048 tokens needs a new graph (the padded key
    length is part of the engine's graph key) of a padded query and KV shape already captured."""
    cfg = {"max_batch_tokens": 4096, "block_size": 16, "num_blocks": 512, "use_cuda_graph": True,
           "cuda_graph_capture_ms": 50.0, "cuda_graph_capture_ms_per_token": 0.0,
           "cuda_graph_capture_ms_per_kv_token": 0.0, "max_blocks_per_request": 0,
           "cuda_graph_capture_repeat_factor": 0.5}
    r = simulate("transformers", cfg, one(2040, 12), STEP, record_steps=True)
    assert r.metrics["graph_captures"] == 3
    kv_max = r.steps[:, 9]
    # prefill, first decode: new shapes; the step reading 2049 keys: the decode shape again
    assert r.steps[:, 2].tolist() == [60.0, 60.0] + [10.0] * 7 + [35.0, 10.0, 10.0]
    assert kv_max[9] == 2049 and kv_max[8] == 2048


def test_capture_cost_noise_is_seeded_and_leaves_other_steps_alone():
    """Per-capture and per-run log-normal noise scales only the capture steps' extra cost; the
    same seed repeats it exactly, and step noise draws the same numbers with or without it."""
    cfg = {"max_batch_tokens": 256, "block_size": 16, "num_blocks": 100,
           "use_cuda_graph": True, "cuda_graph_capture_ms": 50.0,
           "cuda_graph_capture_ms_per_token": 0.0, "cuda_graph_capture_ms_per_kv_token": 0.0,
           "max_blocks_per_request": 0}
    w = Workload.from_arrays([0.0, 0.0, 0.05], [100, 300, 40], [5, 6, 7])
    plain = simulate("transformers", cfg, w, STEP, record_steps=True)
    captured = plain.steps[:, 2] > 10.0
    assert captured.sum() >= 3
    noisy = {**cfg, "cuda_graph_capture_noise_cv": 0.3}
    a = simulate("transformers", noisy, w, STEP, seed=3, record_steps=True)
    b = simulate("transformers", noisy, w, STEP, seed=3, record_steps=True)
    c = simulate("transformers", noisy, w, STEP, seed=4, record_steps=True)
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.token_s, b.token_s)
    assert not np.array_equal(a.steps[:, 2], c.steps[:, 2])
    extra = a.steps[:, 2] - 10.0
    assert np.all(extra[a.steps[:, 2] != 10.0] > 0)
    assert len(set(np.round(extra[extra > 0], 9))) >= 3  # each capture drew its own factor
    # the run-level factor alone: every capture of the run costs the same multiple of 50 ms
    run = simulate("transformers", {**cfg, "cuda_graph_capture_run_cv": 0.3}, w, STEP, seed=3,
                   record_steps=True)
    ratio = (run.steps[captured, 2] - 10.0) / (plain.steps[captured, 2] - 10.0)
    assert np.ptp(ratio) < 1e-9 and abs(ratio[0] - 1.0) > 1e-6
    # step noise is unchanged by capture noise when nothing is captured
    eager = {**cfg, "use_cuda_graph": False, "step_noise_cv": 0.2}
    with_noise = simulate("transformers", {**eager, "cuda_graph_capture_noise_cv": 0.5,
                                           "cuda_graph_capture_run_cv": 0.5}, w, STEP, seed=9)
    assert np.array_equal(with_noise.token_s, simulate("transformers", eager, w, STEP,
                                                       seed=9).token_s)


def test_transformers_capture_cost_defaults_depend_on_the_batching_mode():
    from servetune.tuner.simulator._policies import capture_cost, get_policy

    policy = get_policy("transformers")
    graphs = {"use_cuda_graph": True}
    sync = capture_cost(policy.resolve(graphs, SAMPLE_CONSTANTS))
    asyn = capture_cost(policy.resolve({**graphs, "use_async_batching": True}, SAMPLE_CONSTANTS))
    assert sync != asyn and all(v >= 0 for v in sync + asyn)
    assert asyn[0] + 512 * asyn[1] + 16384 * asyn[2] > sync[0] + 512 * sync[1] + 16384 * sync[2]
    set_one = capture_cost(policy.resolve({**graphs, "cuda_graph_capture_ms": 7.0},
                                          SAMPLE_CONSTANTS))
    assert set_one == (7.0, *sync[1:])
    assert 0.0 < sync[3] < 1.0 and 0.0 < asyn[3] < 1.0  # a shape's first capture costs most


def test_unknown_knobs_take_the_missing_value_branches_exactly(caplog):
    import logging

    import xgboost as xgb
    from _helpers_simulator import synthetic_steps

    from servetune.features import get_feature_set
    from servetune.models import CompiledForest, CompiledStepTime
    from servetune.tuner.simulator import Simulator

    steps = synthetic_steps(n=3000, seed=2)
    steps["cuda_graph"] = np.random.default_rng(0).integers(0, 2, len(steps))
    steps.loc[steps.index % 5 == 0, ["async_batching", "cuda_graph"]] = np.nan
    steps["duration_ms"] *= np.where(steps.cuda_graph == 1, 0.7, 1.0) * np.where(
        steps.async_batching == 1, 0.9, 1.0)
    fs = get_feature_set()
    booster = xgb.train({"max_depth": 5, "eta": 0.2, "nthread": 1},
                        xgb.DMatrix(fs.frame(steps), label=np.log(steps.duration_ms)), 60)
    forest = CompiledForest.from_booster(booster, log_target=True)
    used = {fs.feature_names[f] for f in np.unique(forest.feature[forest.feature >= 0])}
    assert {"async_batching", "cuda_graph"} <= used  # the trees do split on the knobs
    model = CompiledStepTime(forest, fs)
    w = synthetic_workload("poisson:rate=30,n=800", seed=6)
    # static batching reports no async/cuda_graph knob: those features are NaN all run long
    caplog.set_level(logging.DEBUG, logger="servetune.tuner.simulator._simulate")
    fast = simulate("static", {"max_batch_size": 16}, w, model)
    reused = [r for r in caplog.records if "reused" in r.getMessage()]
    assert reused and not reused[-1].getMessage().startswith("0") and " 0 step" not in \
        reused[-1].getMessage()
    slow = Simulator("static", {"max_batch_size": 16}, model, fast_forest=False).run(w)
    assert np.array_equal(fast.token_s, slow.token_s)


def test_async_batching_schedules_a_mid_step_arrival_in_the_next_step():
    # request 1 arrives while request 0's first step runs. The engine's loop iteration schedules
    # its batch first and only then launches it, in both modes, so the next iteration sees the
    # arrival (benchmarks/async_admission.py: every such arrival of the sample, sync and async,
    # joins the next recorded step). Async batching only delays the read-back of its tokens.
    w = Workload.from_arrays([0.0, 0.005], [10, 10], [4, 4])
    base = {"block_size": 16, "num_blocks": 100}
    sync = simulate("transformers", base, w, STEP)
    asyn = simulate("transformers", {**base, "use_async_batching": True}, w, STEP)
    assert sync.first_scheduled_s[1] == pytest.approx(0.01)
    assert asyn.first_scheduled_s[1] == pytest.approx(0.01)
    # sync: the prefill step's end; async: the end of the step after it
    assert sync.ttft_ms[1] == pytest.approx(15.0)
    assert asyn.ttft_ms[1] == pytest.approx(25.0)
    # an idle engine picks a new arrival up at once
    late = Workload.from_arrays([0.0, 1.0], [10, 10], [4, 4])
    assert simulate("transformers", {**base, "use_async_batching": True}, late,
                    STEP).first_scheduled_s[1] == 1.0


@pytest.mark.parametrize("engine, cfg", [("vllm", {"dp_size": 2}),
                                         ("transformers", {"use_cuda_graph": False,
                                                           "use_async_batching": True})])
def test_each_step_is_predicted_with_its_replicas_previous_step(engine, cfg):
    """The loop hands the feature kernel each replica's own previous step, as the training frame
    takes it from the preceding step of the same run: recorded durations equal the compiled
    model on each replica's step sequence (``predict_ms`` on (n, 8) rows derives the previous
    step from the row before). step_v4 shows every step its previous one (the default step_v5
    only async ones)."""
    from servetune.tuner.simulator import Simulator
    from servetune.tuner.simulator._simulate import model_knobs
    from servetune.tuner.simulator._policies import get_policy

    trained = trained_step_model(n_trees=40, feature_set="step_v4")[0]
    assert any(n.startswith("prev_") for n in trained.feature_set.feature_names)
    w = synthetic_workload("gamma:rate=30,cv=2,n=300", seed=3)
    sim = Simulator(engine, cfg, trained)
    steps = sim.run(w, record_steps=True).steps
    knobs = model_knobs(get_policy(engine), sim.config)
    from servetune.features import KNOB_COLUMNS

    assert knobs[KNOB_COLUMNS.index("max_batch_tokens")] == sim.config.get(
        "max_batch_tokens", sim.config.get("max_num_batched_tokens"))
    replicas = np.unique(steps[:, 0])
    assert replicas.size == cfg.get("dp_size", 1)
    for r in replicas:
        mine = steps[steps[:, 0] == r]
        expected = trained.predict_ms(mine[:, 3:11], knobs)
        np.testing.assert_allclose(mine[:, 2], expected, rtol=1e-12)
        # the previous step changes the prediction: without it the durations differ
        no_prev = np.hstack([mine[:, 3:11], np.zeros((len(mine), 9))])
        assert not np.allclose(mine[:, 2], trained.predict_ms(no_prev, knobs), rtol=1e-6)


def test_the_step_after_a_graph_capture_is_predicted_with_the_capture_flag():
    """With CUDA graphs the loop also hands the kernel whether the previous step captured a
    graph (``prev_graph_captured``). A capture cost of 10^6 ms makes capture steps stand out."""
    import xgboost as xgb
    from _helpers_simulator import synthetic_steps

    from servetune.features import PREV_COLUMNS, add_previous_step, get_feature_set
    from servetune.models import CompiledForest, CompiledStepTime
    from servetune.tuner.simulator import Simulator
    from servetune.tuner.simulator._policies import get_policy
    from servetune.tuner.simulator._simulate import model_knobs

    # a model that learned "the step after a capture is short"
    train = add_previous_step(synthetic_steps(n=3000, seed=4))
    train["prev_graph_captured"] = (np.arange(len(train)) % 4 == 0).astype(float)
    train["duration_ms"] *= np.where(train.prev_graph_captured == 1, 0.3, 1.0)
    fs = get_feature_set()
    booster = xgb.train({"max_depth": 4, "eta": 0.3, "nthread": 1},
                        xgb.DMatrix(fs.frame(train), label=np.log(train.duration_ms)), 30)
    model = with_constants(CompiledStepTime(CompiledForest.from_booster(booster, log_target=True),
                                            fs), SAMPLE_CONSTANTS)

    # async batching: the default feature set shows only async steps their previous one
    cfg = {"use_cuda_graph": True, "use_async_batching": True, "cuda_graph_capture_ms": 1e6,
           "cuda_graph_capture_ms_per_token": 0.0}
    sim = Simulator("transformers", cfg, model)
    result = sim.run(synthetic_workload("poisson:rate=20,n=200", seed=2), record_steps=True)
    steps = result.steps
    captured = steps[:, 2] > 5e5
    assert 0 < captured.sum() == result.graph_captures < len(steps)
    raw = np.zeros((len(steps), 8 + len(PREV_COLUMNS)))
    raw[:, :8] = steps[:, 3:11]
    raw[1:, 8:16] = steps[:-1, 3:11]
    raw[1:, 16] = captured[:-1]
    knobs = model_knobs(get_policy("transformers"), sim.config)
    expected = model.predict_ms(raw, knobs)
    np.testing.assert_allclose(steps[~captured, 2], expected[~captured], rtol=1e-12)
    after = np.flatnonzero(captured[:-1] & ~captured[1:]) + 1
    raw[:, 16] = 0.0
    assert after.size and (steps[after, 2] < 0.6 * model.predict_ms(raw, knobs)[after]).all()


def test_a_models_linear_base_is_added_inside_the_loop():
    """A step_v5 model carries a linear base under its trees: the loop adds it to every step."""
    from _helpers_simulator import synthetic_steps

    from servetune.models import CompiledStepTime, StepTimeRegressor
    from servetune.tuner.simulator import Simulator
    from servetune.tuner.simulator._policies import get_policy
    from servetune.tuner.simulator._simulate import model_knobs

    steps = synthetic_steps(seed=1)
    model = StepTimeRegressor(feature_set="step_v5", n_estimators=60, early_stopping_rounds=0,
                              n_jobs=1).fit(steps, steps["duration_ms"].to_numpy())
    compiled = with_constants(model.compile(), SAMPLE_CONSTANTS)
    assert compiled.base_arrays[0].size == compiled.n_features
    cfg = {"use_cuda_graph": False, "use_async_batching": True}
    sim = Simulator("transformers", cfg, compiled)
    recorded = sim.run(synthetic_workload("poisson:rate=20,n=120", seed=2),
                       record_steps=True).steps
    knobs = model_knobs(get_policy("transformers"), sim.config)
    np.testing.assert_allclose(recorded[:, 2], compiled.predict_ms(recorded[:, 3:11], knobs),
                               rtol=1e-12)
    trees_only = dataclasses.replace(compiled.forest, base_coef=np.zeros(0))
    without = CompiledStepTime(trees_only, compiled.feature_set).predict_ms(
        recorded[:, 3:11], knobs)
    assert not np.allclose(recorded[:, 2], without, rtol=1e-3)
