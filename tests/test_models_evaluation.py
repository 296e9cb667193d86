"""Evaluation by held-out runs: metrics by hand, stable hold-out, no run on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from servetune import InputError
from servetune.models import (
    extrapolation_split,
    grouped_oof_predict,
    held_out_runs,
    per_run_errors,
    regression_metrics,
    search_hyperparameters,
)


def test_metrics_by_hand():
    y = np.array([10.0, 20.0, 40.0, 80.0])
    p = np.array([11.0, 18.0, 40.0, 100.0])  # APE 10, 10, 0, 25
    m = regression_metrics(y, p)
    assert m["mape"] == pytest.approx(11.25)
    assert m["p50_ape"] == pytest.approx(10.0)
    assert m["p90_ape"] == pytest.approx(np.percentile([10, 10, 0, 25], 90))
    assert m["bias_pct"] == pytest.approx((10 - 10 + 0 + 25) / 4)
    ss_res = 1 + 4 + 0 + 400
    ss_tot = np.sum((y - y.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - ss_res / ss_tot)
    with pytest.raises(InputError):
        regression_metrics(np.array([]), np.array([]))


def test_per_run_errors():
    table = per_run_errors(np.array(["a", "a", "b"]), np.array([10.0, 10.0, 5.0]),
                           np.array([11.0, 9.0, 6.0]))
    a, b = table.set_index("run_id").loc["a"], table.set_index("run_id").loc["b"]
    assert a.steps == 2 and a.mape == pytest.approx(10.0) and a.bias_pct == pytest.approx(0.0)
    assert a.total_time_error_pct == pytest.approx(0.0)
    assert b.mape == pytest.approx(20.0) and b.total_time_error_pct == pytest.approx(20.0)


def test_held_out_runs_are_stable_as_the_store_grows():
    runs = [f"run-{i}" for i in range(40)]
    test = held_out_runs(runs, 0.2)
    assert 2 <= len(test) <= 16
    grown = held_out_runs(runs + [f"new-{i}" for i in range(40)], 0.2)
    assert set(test) <= set(grown)
    assert set(held_out_runs(runs, 0.2, salt="other")) != set(test)
    assert len(held_out_runs(["a", "b"], 0.01)) == 1  # at least one held out
    assert len(held_out_runs(["a", "b"], 0.99)) == 1  # at least one kept
    with pytest.raises(InputError, match="at least 2 runs"):
        held_out_runs(["a"])


class _SeenRuns(RegressorMixin, BaseEstimator):
    """Predicts 1 for a row whose run was in its training data, else 0 (a leak detector)."""

    def fit(self, X, y, groups=None):
        self.seen_ = set(groups)
        return self

    def predict(self, X):
        return X["run_id"].isin(self.seen_).to_numpy(dtype=float)


def test_grouped_predictions_never_see_their_own_run():
    X = pd.DataFrame({"run_id": np.repeat([f"r{i}" for i in range(7)], 20)})
    y = np.ones(len(X))
    oof = grouped_oof_predict(_SeenRuns(), X, y, X.run_id.to_numpy(), n_splits=3)
    assert np.array_equal(oof, np.zeros(len(X)))


def test_extrapolation_split_cuts_at_token_quantile():
    X = pd.DataFrame({"prefill_tokens": np.arange(100), "decode_tokens": np.ones(100)})
    above, cut = extrapolation_split(X, 0.8)
    assert cut == pytest.approx(np.quantile(np.arange(100) + 1.0, 0.8))
    assert above.sum() == 20
    with pytest.raises(InputError):
        extrapolation_split(pd.DataFrame({"prefill_tokens": [5] * 4, "decode_tokens": [0] * 4}))


def test_search_is_bounded_and_starts_from_the_given_settings():
    from _helpers_models import synthetic_traces

    from servetune.features import join_knobs
    from servetune.models import StepTimeRegressor

    steps, runs = synthetic_traces(n_runs=4, steps_per_run=120, seed=2)
    frame = join_knobs(steps, runs)
    est = StepTimeRegressor(n_estimators=20, n_jobs=1, max_depth=3)
    result = search_hyperparameters(est, frame, frame.duration_ms.to_numpy(),
                                    frame.run_id.to_numpy(), n_trials=3, n_splits=2, seed=1)
    assert len(result.trials) == 3
    assert result.trials.max_depth.iloc[0] == 3
    best_row = result.trials.iloc[int(result.trials.cv_mape.argmin())]
    assert all(best_row[k] == v for k, v in result.best_params.items())
    assert isinstance(result.best_params["max_depth"], int)


def test_search_tries_candidate_feature_sets_then_hyperparameters_on_the_best():
    from _helpers_models import synthetic_traces

    from servetune.features import join_knobs
    from servetune.models import StepTimeRegressor

    steps, runs = synthetic_traces(n_runs=4, steps_per_run=120, seed=3)
    frame = join_knobs(steps, runs)
    est = StepTimeRegressor(n_estimators=20, n_jobs=1)
    result = search_hyperparameters(est, frame, frame.duration_ms.to_numpy(),
                                    frame.run_id.to_numpy(), n_trials=4, n_splits=2, seed=0,
                                    feature_sets=("raw_v1", "step_v1"))
    fs = result.trials.feature_set.tolist()
    assert fs[:3] == [est.feature_set, "raw_v1", "step_v1"]
    best_of_first_three = fs[int(result.trials.cv_mape.iloc[:3].argmin())]
    assert fs[3] == best_of_first_three
