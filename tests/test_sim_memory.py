"""Long runs' ITL statistics are streamed over the token times: percentiles identical to
numpy's on the pooled ITLs, the mean within 1e-12 relative."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_simulator import constant_step_model

from servetune.data import Workload
from servetune.data._metrics import _summary
from servetune.tuner.simulator import _result as R
from servetune.tuner.simulator import simulate


def test_streamed_itl_statistics_match_the_pooled_numpy_ones():
    rng = np.random.default_rng(3)
    n = 300
    w = Workload.from_arrays(np.sort(rng.uniform(0, 3, n)), rng.integers(10, 200, n),
                             rng.integers(1, 60, n), name="itl")
    result = simulate("static", {"max_batch_size": 16}, w, constant_step_model(10.0),
                      seed=0)
    # distinct token times (a constant step model repeats every ITL)
    result.token_s = result.token_s + rng.uniform(0, 1e-4, result.token_s.shape).cumsum()
    values, offsets = result._itl_flat()
    pooled = _summary("itl", values[result.ok[np.repeat(np.arange(n), np.diff(offsets))]])
    count, total, negative = R._itl_moments(result.token_s, result.token_offset, result.ok)
    assert not negative and count == values.size
    streamed = R.streamed_summary(
        "itl", count, total / count,
        lambda ranks: R._itl_select(result.token_s, result.token_offset, result.ok,
                                    np.asarray(ranks, dtype=np.int64)))
    for stat in ("p50", "p90", "p99"):
        assert streamed[f"itl_{stat}_ms"] == pooled[f"itl_{stat}_ms"]
    assert streamed["itl_mean_ms"] == pytest.approx(pooled["itl_mean_ms"], rel=1e-12)


def test_long_runs_take_the_streamed_path(monkeypatch):
    w = Workload.from_arrays([0.0, 0.1, 0.2], [20, 20, 20], [30, 40, 50], name="three")
    result = simulate("static", {"max_batch_size": 4}, w, constant_step_model(10.0))
    exact = result.flat_metrics()
    assert result._itl_streamed() is None  # short: the pooled numpy path
    result._metrics = None
    monkeypatch.setattr(R, "POOLED_ITL_LIMIT", 10)
    streamed = result.flat_metrics()
    for key, value in exact.items():
        if key == "itl_mean_ms":
            assert streamed[key] == pytest.approx(value, rel=1e-12)
        else:
            assert streamed[key] == value, key
