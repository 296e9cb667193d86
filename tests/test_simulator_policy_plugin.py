"""Pluggable simulator policies: the shipped policies' outputs are frozen, bit for bit, and a
policy defined outside the package (a schedule function and an ``EnginePolicy``) simulates.

``tests/data/simulator_policy_golden.npz`` holds the outputs of every case below (transformers
sync/async, graphs/eager, FIFO/prefill-first, offloading; vLLM chunked/unchunked/long-prefill,
preemption; static; DP replicas behind both routers; step noise and capture noise) as the
simulator computed them before the event loop took its policy as functions (commit a2f04de,
where it picked the scheduler by an integer code). The step-time model is frozen with them: a
small XGBoost forest over a feature set defined here, so nothing outside the simulator changes
the expected values. Regenerate only for an intended change of simulated behaviour:
``python tests/test_simulator_policy_plugin.py``.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numba
import numpy as np
import pytest
from _helpers_simulator import constant_step_model

from servetune import ConfigError
from servetune.data import Workload
from servetune.features import make_feature_set
from servetune.models import CompiledForest, CompiledStepTime, forest_predict_row
from servetune.models._jit_cache import cached_entry
from servetune.tuner.simulator import (
    EnginePolicy,
    PolicyRegistry,
    Simulator,
    get_policy,
    model_knobs,
)
from servetune.tuner.simulator import _kernel as K
from servetune.tuner.simulator import _state as S

GOLDEN = Path(__file__).resolve().parent / "data" / "simulator_policy_golden.npz"

_FEATURES = {"num_seqs": 1, "query_tokens": 1, "kv_sum": 1, "kv_max": 1, "attn": 1,
             "prev_captured": 0, "prev_seqs": 0, "block_size": 0, "async": 0, "graphs": 0}


def _golden_formulas(r, k):
    return (r[0], r[3] + r[4], r[5], r[6], r[7], r[16], r[8], k[0], k[1], k[2])


# Explicit values for every key whose default might move (memory sizes, capture costs).
_TF = {"block_size": 32, "num_blocks": 400, "max_batch_tokens": 512,
       "max_requests_per_batch": 32, "q_padding_interval_size": 64,
       "kv_padding_interval_size": 2048, "cuda_graph_capture_ms": 20.0,
       "cuda_graph_capture_ms_per_token": 0.01, "cuda_graph_capture_ms_per_kv_token": 1e-4,
       "cuda_graph_capture_repeat_factor": 0.4, "use_cuda_graph": False,
       "use_async_batching": False, "scheduler_type": "fifo"}
_TF_GRAPHS = {**_TF, "use_cuda_graph": True}
_TF_ASYNC = {**_TF_GRAPHS, "use_async_batching": True}
_VLLM = {"block_size": 16, "num_gpu_blocks_override": 600, "max_num_batched_tokens": 512,
         "max_num_seqs": 32}
_STATIC = {"block_size": 16, "num_blocks": 2000, "max_batch_size": 8}

# name -> (engine, config, seed, record_steps, fast_forest)
CASES = {
    "tf_fifo_sync_eager": ("transformers", _TF, 0, False, True),
    "tf_fifo_sync_graphs": ("transformers", _TF_GRAPHS, 0, True, True),
    "tf_fifo_async_eager": ("transformers", {**_TF, "use_async_batching": True}, 0, False, True),
    "tf_fifo_async_graphs": ("transformers", _TF_ASYNC, 0, True, True),
    "tf_prefill_first_sync_eager": ("transformers", {**_TF, "scheduler_type": "prefill_first"},
                                    0, False, True),
    "tf_prefill_first_async_graphs": ("transformers",
                                      {**_TF_ASYNC, "scheduler_type": "prefill_first"}, 0, True,
                                      True),
    "tf_decode_fast_path": ("transformers", {**_TF_ASYNC, "max_blocks_per_request": 8}, 0, False,
                            True),
    "tf_small_cache_offload": ("transformers", {**_TF_GRAPHS, "num_blocks": 60}, 0, True, True),
    "tf_safety_margin": ("transformers", {**_TF, "safety_margin": 0.3}, 0, False, True),
    "tf_capture_noise": ("transformers", {**_TF_ASYNC, "cuda_graph_capture_noise_cv": 0.3,
                                          "cuda_graph_capture_run_cv": 0.2}, 3, False, True),
    "tf_step_noise": ("transformers", {**_TF_GRAPHS, "step_noise_cv": 0.2}, 5, False, True),
    "tf_step_and_capture_noise": ("transformers", {**_TF_ASYNC, "step_noise_cv": 0.1,
                                                   "cuda_graph_capture_noise_cv": 0.3,
                                                   "cuda_graph_capture_run_cv": 0.2}, 7, True,
                                  True),
    "tf_dp2_round_robin": ("transformers", {**_TF_ASYNC, "dp_size": 2}, 0, True, True),
    "tf_dp3_least_pending": ("transformers", {**_TF_GRAPHS, "dp_size": 3, "step_noise_cv": 0.1,
                                              "router": "least_pending_tokens"}, 11, True, True),
    "tf_reference_forest": ("transformers", _TF_ASYNC, 0, False, False),
    "tf_overhead_floor": ("transformers", {**_TF, "step_overhead_ms": 1.5, "min_step_ms": 5.0},
                          0, False, True),
    "vllm_chunked": ("vllm", _VLLM, 0, True, True),
    "vllm_unchunked": ("vllm", {**_VLLM, "enable_chunked_prefill": False,
                                "max_num_batched_tokens": 4096}, 0, True, True),
    "vllm_long_prefill": ("vllm", {**_VLLM, "long_prefill_token_threshold": 128}, 0, False,
                          True),
    "vllm_small_cache_preempt": ("vllm", {**_VLLM, "num_gpu_blocks_override": 150}, 0, True,
                                 True),
    "vllm_watermark": ("vllm", {**_VLLM, "watermark": 0.1}, 0, False, True),
    "vllm_dp2_round_robin": ("vllm", {**_VLLM, "dp_size": 2}, 0, False, True),
    "vllm_dp2_least_pending_noise": ("vllm", {**_VLLM, "dp_size": 2, "step_noise_cv": 0.2,
                                              "router": "least_pending_tokens"}, 13, True, True),
    "vllm_reference_forest": ("vllm", _VLLM, 0, False, False),
    "static": ("static", _STATIC, 0, True, True),
    "static_small_cache": ("static", {**_STATIC, "num_blocks": 200}, 0, False, True),
    "static_dp2_round_robin_noise": ("static", {**_STATIC, "dp_size": 2, "step_noise_cv": 0.2},
                                     17, True, True),
    "static_dp3_least_pending": ("static", {**_STATIC, "dp_size": 3,
                                            "router": "least_pending_tokens"}, 0, False, True),
}
WORKLOADS = ("poisson", "bursts")
_FOREST_FIELDS = ("feature", "threshold", "left", "right", "default_left", "value", "roots")


def golden_feature_set():
    """The feature set the frozen forest splits on (raw step columns and knobs, no formula
    shared with the package's feature sets)."""
    return make_feature_set("policy_golden", 1, _FEATURES, _golden_formulas)


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str} {a.shape} ".encode() + a.tobytes()).hexdigest()


DIGESTED = ("first_scheduled_s", "first_token_s", "finish_s", "token_s", "token_offset", "steps")


def outputs(result) -> dict[str, np.ndarray]:
    """What a case is compared on: replica, status, preemptions and generated tokens of every
    request, the step and capture counts, and digests of the float arrays (``DIGESTED``)."""
    return {"req": np.stack([result.replica, result.status, result.preemptions,
                             result.generated], axis=1).astype(np.int32),
            "counts": np.array([result.num_steps, result.graph_captures], dtype=np.int64),
            "digests": np.array([_digest(getattr(result, name)) if getattr(result, name)
                                 is not None else "" for name in DIGESTED])}


def _workloads(rng: np.random.Generator) -> dict[str, Workload]:
    n = 120
    arrival = np.cumsum(rng.exponential(1 / 40.0, n))
    inp = np.clip(rng.lognormal(6.0, 1.0, n), 8, 3500).astype(np.int64)
    out = rng.integers(1, 100, n)
    bursts = np.repeat(np.arange(10) * 0.4, 12)  # 12 requests arrive at the same instant
    inp_b = np.clip(rng.lognormal(6.5, 1.2, n), 8, 6000).astype(np.int64)
    out_b = rng.integers(1, 60, n)
    return {"poisson": Workload.from_arrays(arrival, inp, out, name="poisson"),
            "bursts": Workload.from_arrays(bursts, inp_b, out_b, name="bursts")}


def _forest(rng: np.random.Generator) -> CompiledForest:
    """A log-target forest trained on random steps with a duration law that also rewards the
    previous step's capture (so the capture flag reaches the step times)."""
    import xgboost as xgb

    fs = golden_feature_set()
    n = 6000
    raw = np.zeros((n, 17))
    raw[:, 0] = rng.integers(1, 40, n)
    raw[:, 3] = rng.integers(0, 600, n)
    raw[:, 4] = raw[:, 0]
    raw[:, 5] = raw[:, 0] * rng.integers(50, 3000, n)
    raw[:, 6] = rng.integers(50, 6000, n)
    raw[:, 7] = raw[:, 3] * raw[:, 6]
    raw[:, 8] = rng.integers(1, 40, n)
    raw[:, 16] = rng.integers(0, 2, n)
    knobs = np.zeros((n, 5))
    knobs[:, 0] = rng.choice([16.0, 32.0], n)
    knobs[:, 1] = rng.integers(0, 2, n)
    knobs[:, 2] = rng.integers(0, 2, n)
    X = np.zeros((n, fs.n_features), dtype=np.float32)
    for j in range(n):
        fs.kernel(raw[j], knobs[j], X[j])
    ms = (3.0 + 0.08 * raw[:, 0] + 0.004 * (raw[:, 3] + raw[:, 4]) + 2e-5 * raw[:, 5]
          + 1e-7 * raw[:, 7] - 0.5 * raw[:, 16] + 0.3 * knobs[:, 1] - 0.4 * knobs[:, 2])
    booster = xgb.train({"max_depth": 5, "eta": 0.2, "nthread": 1, "seed": 0},
                        xgb.DMatrix(X, label=np.log(ms), feature_names=list(fs.feature_names)),
                        num_boost_round=30)
    return CompiledForest.from_booster(booster, log_target=True, feature_set=fs.name,
                                       feature_set_version=fs.version)


def run_cases(golden) -> dict[str, np.ndarray]:
    """Every case on every workload of ``golden`` with its forest; flat ``case__workload__field``."""
    forest = CompiledForest(*(golden[f"forest__{f}"] for f in _FOREST_FIELDS),
                            base_margin=float(golden["forest__base_margin"]), log_target=True,
                            feature_set="policy_golden", feature_set_version=1)
    model = CompiledStepTime(forest, golden_feature_set())
    workloads = {w: Workload.from_arrays(golden[f"workload__{w}__arrival"],
                                         golden[f"workload__{w}__input"],
                                         golden[f"workload__{w}__output"], name=w)
                 for w in WORKLOADS}
    flat = {}
    for name, (engine, config, seed, record, fast) in CASES.items():
        simulator = Simulator(engine, config, model, fast_forest=fast)
        for w, workload in workloads.items():
            result = simulator.run(workload, seed=seed, record_steps=record)
            for field, value in outputs(result).items():
                flat[f"{name}__{w}__{field}"] = value
    return flat


def regenerate(path: Path = GOLDEN) -> None:
    """Write the fixture: workloads, forest, then every case's outputs under the current code."""
    rng = np.random.default_rng(20240516)
    frozen = {}
    for w, workload in _workloads(rng).items():
        frozen[f"workload__{w}__arrival"] = workload.arrival_s
        frozen[f"workload__{w}__input"] = workload.input_tokens
        frozen[f"workload__{w}__output"] = workload.output_tokens
    forest = _forest(rng)
    for f in _FOREST_FIELDS:
        frozen[f"forest__{f}"] = getattr(forest, f)
    frozen["forest__base_margin"] = np.float64(forest.base_margin)
    frozen.update(run_cases(frozen))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **frozen)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.fixture(scope="module")
def current(golden):
    return run_cases(golden)


@pytest.mark.parametrize("case", sorted(CASES))
def test_shipped_policies_reproduce_the_frozen_outputs_bit_for_bit(case, golden, current):
    for w in WORKLOADS:
        prefix = f"{case}__{w}__"
        fields = [k for k in golden if k.startswith(prefix)]
        assert len(fields) == 3, f"fixture has no outputs of {prefix}"
        assert golden[prefix + "req"].tolist() == current[prefix + "req"].tolist(), (
            f"{prefix}: replica, status, preemptions or generated tokens differ")
        assert golden[prefix + "counts"].tolist() == current[prefix + "counts"].tolist(), (
            f"{prefix}: step or capture count differs")
        differ = [name for name, a, b in zip(DIGESTED, golden[prefix + "digests"],
                                             current[prefix + "digests"]) if a != b]
        assert not differ, f"{prefix}: {', '.join(differ)} differ from the frozen output"


def test_the_cases_exercise_what_they_are_named_for(golden):
    """The fixture is not vacuous: captures, preemptions, failures and several replicas occur."""
    def total(case, col):
        return sum(int(golden[f"{case}__{w}__req"][:, col].sum()) for w in WORKLOADS)

    captures = {c: sum(int(golden[f"{c}__{w}__counts"][1]) for w in WORKLOADS) for c in CASES}
    assert all(captures[c] > 0 for c in CASES if CASES[c][1].get("use_cuda_graph"))
    assert all(captures[c] == 0 for c in CASES if not CASES[c][1].get("use_cuda_graph"))
    assert total("vllm_small_cache_preempt", 2) > 0 and total("tf_small_cache_offload", 2) > 0
    for case in ("static_small_cache", "vllm_small_cache_preempt", "tf_small_cache_offload"):
        assert any((golden[f"{case}__{w}__req"][:, 1] == 4).any() for w in WORKLOADS), case
    assert set(golden["tf_dp3_least_pending__bursts__req"][:, 0]) == {0, 1, 2}


# --- a policy defined outside the package: FCFS, whole prompts (no chunking), no preemption ---

@numba.njit
def schedule_fcfs_whole_prompts(r, p, st, rs, run, wq, bq, bl, starved, cand):
    """Running requests take their next token while blocks last; then waiting requests join in
    arrival order while their whole prompt fits the token budget and the free blocks."""
    bs = np.int64(p[S._BS])
    budget = np.int64(p[S._MAXTOK])
    rs[r, S._BATCHCNT] = 0
    for k in range(rs[r, S._RUNCNT]):
        i = run[r, k]
        new = st[i, S._KNOWN] - st[i, S._COMP]
        need = S._cdiv(st[i, S._COMP] + new, bs) - st[i, S._BLOCKS]
        if new <= 0 or new > budget or need > rs[r, S._FREE]:
            continue
        rs[r, S._FREE] -= need
        st[i, S._BLOCKS] += need
        S._add_to_batch(bq, bl, rs, r, i, new)
        budget -= new
    while rs[r, S._WHEAD] < rs[r, S._WTAIL] and rs[r, S._RUNCNT] < np.int64(p[S._MAXSEQ]):
        i = wq[r, rs[r, S._WHEAD]]
        new = st[i, S._KNOWN] - st[i, S._COMP]
        need = S._cdiv(new, bs) - st[i, S._BLOCKS]
        if new > budget or need > rs[r, S._FREE]:
            break
        S._admit_head(st, rs, run, wq, r, need)
        S._add_to_batch(bq, bl, rs, r, i, new)
        budget -= new
    return rs[r, S._BATCHCNT]


def _run_policy(policy, config, workload, model, seed=0):
    """``Simulator.run``'s call of the event loop, for a policy that is not a shipped one."""
    c = policy.resolve(config)
    arrays = model.arrays
    none_i, none_f = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.float32)
    return K.run_kernel(
        policy.schedule, policy.hook_init, policy.step_hook, K.ROUTER_ROUND_ROBIN,
        int(c["dp_size"]), policy.params(c), workload.arrival_s, workload.input_tokens,
        workload.output_tokens, model_knobs(policy, c), model.kernel, int(model.n_features),
        *arrays[:7], float(arrays[7]), model.base_arrays[0], float(model.base_arrays[1]),
        bool(model.log_target), forest_predict_row, none_i, none_f, none_i, 0, False,
        np.zeros(model.n_features, dtype=np.uint8), 0.0, seed, 1)


def test_a_policy_is_one_schedule_function_and_an_entry(golden):
    from servetune.data.engines import STATIC as STATIC_SPEC

    fcfs = EnginePolicy(engine=STATIC_SPEC, schedule=schedule_fcfs_whole_prompts, knobs=(),
                        to_params=lambda c: {"block_size": c["block_size"],
                                             "num_blocks": c["num_blocks"], "max_tokens": 4096,
                                             "max_seqs": c["max_batch_size"]})
    registry = PolicyRegistry()
    registry.register(fcfs)
    policy = registry.get("static")
    workload = Workload.from_arrays(golden["workload__poisson__arrival"],
                                    np.minimum(golden["workload__poisson__input"], 4096),
                                    golden["workload__poisson__output"], name="poisson")
    model = constant_step_model(4.0)
    config = {"block_size": 16, "num_blocks": 1500, "max_batch_size": 16}
    req, first_sched, first_tok, finish, *_ = _run_policy(policy, config, workload, model)
    assert (req[:, 1] == 3).all() and (req[:, 3] == workload.output_tokens).all()
    assert (req[:, 2] == 0).all()  # no preemption
    # the Simulator runs it as it runs a shipped policy: same event loop, same results
    result = Simulator("static", config, model, policy=policy).run(workload)
    assert np.array_equal(result.first_token_s, first_tok)
    assert np.array_equal(result.first_scheduled_s, first_sched)
    assert result.flat_metrics()["completed"] == len(workload)
    with pytest.raises(ConfigError, match="runs in this process only"):
        pickle.dumps(Simulator("static", config, model, policy=policy))
    # FCFS: requests start in arrival order; whole prompts: the first token comes one step later
    assert (np.diff(first_sched) >= 0).all()
    assert np.allclose(first_tok - first_sched, 0.004, rtol=0, atol=1e-12)
    # the loop is compiled for this policy: not the static policy's loop, and other results
    static = get_policy("static")
    loops = {cached_entry(K._run_kernel, schedule=pol.schedule, hook_init=pol.hook_init,
                          step_hook=pol.step_hook, feat_kernel=model.kernel,
                          predict_row=forest_predict_row).py_func.__module__
             for pol in (policy, static)}
    assert len(loops) == 2
    shipped = Simulator("static", {"block_size": 16, "num_blocks": 1500, "max_batch_size": 16},
                        model).run(workload)
    assert not np.array_equal(shipped.first_token_s, first_tok)


def test_requeued_requests_never_run_past_the_waiting_queue():
    """Requests put back at the queue's end (transformers offloading) move the window back to
    the middle of its row instead of writing past it (the cases with offloads above wrote out
    of bounds before)."""
    from servetune.tuner.simulator._state import _NRCOL, _WHEAD, _WTAIL, _push_back

    n = 5
    wq = np.full((1, 2 * n + 2), -1, dtype=np.int64)
    rs = np.zeros((1, _NRCOL), dtype=np.int64)
    rs[0, _WHEAD] = rs[0, _WTAIL] = n + 1
    order = []
    for step in range(40):  # each request leaves the head and is queued again at the back
        if rs[0, _WTAIL] - rs[0, _WHEAD] == n:
            rs[0, _WHEAD] += 1
            order.pop(0)
        _push_back(wq, rs, 0, step % 7)
        order.append(step % 7)
        assert 0 <= rs[0, _WHEAD] <= rs[0, _WTAIL] <= wq.shape[1]
        assert wq[0, rs[0, _WHEAD]:rs[0, _WTAIL]].tolist() == order


if __name__ == "__main__":
    regenerate()
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
