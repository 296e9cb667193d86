"""Async batching's per-step mask copy as a simulated step floor, with the H2D bandwidth fitted
from the shipped H200 runs (issue 14: the mechanism that made the tuned recommendation slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers_simulator import constant_step_model

from servetune.data import synthetic_workload
from servetune.models._engine_constants import fit_h2d_bandwidth, small_decode_floor_ms
from servetune.tuner.simulator import Simulator, resolve_config
from servetune.tuner.simulator._policies import async_copy_floor_ms

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
# the recommendation that lost on the H200: async, M 1792, block 128, the 0.9-memory cache
# (24,544 blocks = 3,141,632 tokens as the engine sized it in run a-g-auto90)
RECOMMENDATION = {"use_async_batching": True, "use_cuda_graph": True, "max_batch_tokens": 1792,
                  "block_size": 128, "num_blocks": 24544}


@pytest.fixture(scope="module")
def sample():
    runs = pd.read_parquet(SAMPLES / "runs.parquet",
                           columns=["run_id", "engine", "config", "provenance"])
    steps = pd.read_parquet(SAMPLES / "steps.parquet", columns=[
        "run_id", "step_index", "num_seqs", "prefill_tokens", "duration_ms", "extra"])
    return steps, runs


def test_the_floor_is_mask_bytes_over_bandwidth_and_only_for_async():
    c = resolve_config("transformers-cb", {**RECOMMENDATION, "h2d_gb_per_s": 53.8})
    # 1792 x (3,141,632 + 1792) x 2 bytes = 11.27 GB at 53.8 GB/s
    assert async_copy_floor_ms(c) == pytest.approx(1792 * (3141632 + 1792) * 2 / 53.8e6)
    sync = resolve_config("transformers-cb", {**RECOMMENDATION, "use_async_batching": False,
                                              "h2d_gb_per_s": 53.8})
    assert async_copy_floor_ms(sync) == 0.0
    flash = resolve_config("transformers-cb", {**RECOMMENDATION, "h2d_gb_per_s": 53.8,
                                               "attn_implementation": "paged|flash_attention_2"})
    assert async_copy_floor_ms(flash) == 0.0
    unknown = resolve_config("transformers-cb", RECOMMENDATION)
    assert async_copy_floor_ms(unknown) == 0.0


def test_the_fitted_bandwidth_predicts_held_out_large_caches_within_15_percent(sample):
    steps, runs = sample
    bandwidth, source = fit_h2d_bandwidth(steps, runs)
    assert 40 < bandwidth < 60, source  # a direct pinned copy on that H200 ran at 55 GB/s
    held_out = runs["run_id"].str.contains("-a-[ge]-auto90-")
    assert held_out.sum() == 2
    fitted, _ = fit_h2d_bandwidth(steps, runs[~held_out])
    for run in runs[held_out].itertuples():
        config = resolve_config("transformers-cb", {
            **{k: v for k, v in json.loads(run.config).items()
               if k in ("use_async_batching", "max_batch_tokens", "block_size", "num_blocks")},
            "h2d_gb_per_s": fitted})
        predicted = async_copy_floor_ms(config)
        measured = small_decode_floor_ms(steps[steps["run_id"] == run.run_id])
        assert predicted == pytest.approx(measured, rel=0.15), (run.run_id, predicted, measured)


def test_every_simulated_async_step_takes_at_least_the_copy():
    model = constant_step_model(5.0)
    w = synthetic_workload("poisson:rate=3,n=40,input=const:192,output=const:8", seed=1)
    fast = Simulator("transformers-cb", {**RECOMMENDATION, "use_cuda_graph": False},
                     model).run(w, record_steps=True)
    slow = Simulator("transformers-cb", {**RECOMMENDATION, "use_cuda_graph": False,
                                         "h2d_gb_per_s": 53.8}, model).run(w, record_steps=True)
    floor = 1792 * (3141632 + 1792) * 2 / 53.8e6
    assert np.median(fast.steps[:, 2]) == pytest.approx(5.0)
    assert slow.steps[:, 2].min() >= floor - 1e-6
    assert slow.metrics["tpot_ms"]["mean"] > 10 * fast.metrics["tpot_ms"]["mean"]
