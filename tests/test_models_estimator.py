"""StepTimeRegressor follows the scikit-learn estimator contract; constraints really apply."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from _helpers_models import synthetic_traces
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from servetune import ConfigError, InputError
from servetune.features import get_feature_set, join_knobs
from servetune.models import StepTimeRegressor


@pytest.fixture(scope="module")
def data():
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=300, seed=5)
    frame = join_knobs(steps, runs)
    return frame, frame["duration_ms"].to_numpy(), frame["run_id"].to_numpy()


def test_init_stores_params_and_fit_returns_self_with_trailing_underscore_state(data):
    frame, y, groups = data
    est = StepTimeRegressor(max_depth=4, n_estimators=300, n_jobs=1)
    assert est.get_params()["max_depth"] == 4
    assert not any(k.endswith("_") for k in vars(est))
    with pytest.raises(NotFittedError):
        est.predict(frame)
    assert est.fit(frame, y, groups=groups) is est
    assert est.best_iteration_ is not None and est.n_estimators_ == est.best_iteration_ + 1
    assert est.n_features_in_ == get_feature_set().n_features
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "booster_")
    pred = est.predict(frame)
    assert np.mean(np.abs(pred - y) / y) < 0.1
    assert est.score(frame, y) > 0.8


def test_without_groups_trains_all_rounds(data):
    frame, y, _ = data
    est = StepTimeRegressor(n_estimators=7, n_jobs=1).fit(frame, y)
    assert est.best_iteration_ is None and est.n_estimators_ == 7


def test_invalid_parameters_and_targets_are_refused(data):
    frame, y, _ = data
    with pytest.raises(ConfigError, match="max_depth"):
        StepTimeRegressor(max_depth=0).fit(frame, y)
    with pytest.raises(ConfigError, match="feature_set"):
        StepTimeRegressor(feature_set="nope").fit(frame, y)
    bad = y.copy()
    bad[3] = 0.0
    with pytest.raises(InputError) as err:
        StepTimeRegressor(n_estimators=2).fit(frame, bad)
    assert err.value.row == 4 and err.value.field == "duration_ms"


def test_monotone_constraints_hold_in_the_fitted_trees(data):
    frame, y, groups = data
    fs = get_feature_set()
    est = StepTimeRegressor(n_estimators=100, n_jobs=1, early_stopping_rounds=0).fit(frame, y)
    X = fs.frame(frame.iloc[:200])
    for j, sign in enumerate(fs.monotone):
        if sign != 1:
            continue
        grid = np.quantile(X[:, j], np.linspace(0, 1, 12)).astype(np.float32)
        preds = []
        for value in grid:
            Xv = X.copy()
            Xv[:, j] = value
            preds.append(est.booster_.predict(xgb.DMatrix(Xv, feature_names=list(fs.feature_names))))
        diffs = np.diff(np.stack(preds), axis=0)
        assert (diffs >= -1e-6).all(), fs.feature_names[j]


def test_compile_matches_predict(data):
    frame, y, groups = data
    est = StepTimeRegressor(n_estimators=60, n_jobs=1).fit(frame, y, groups=groups)
    compiled = est.compile()
    margin = compiled.forest.predict_margin(get_feature_set().frame(frame))
    np.testing.assert_allclose(margin, est.predict_margin(frame),
                               rtol=compiled.forest.n_trees * np.finfo(np.float32).eps)
    importance = est.feature_importance()
    assert importance.index.tolist() == list(est.feature_names_) and importance.sum() > 0


def test_linear_base_is_nonnegative_and_extrapolates_past_the_trained_kv_range(data):
    frame, y, groups = data
    fs = get_feature_set("step_v5")
    kv = frame["kv_tokens_sum"].to_numpy()
    graphs = frame["cuda_graph"].to_numpy(dtype=bool)
    train = kv <= np.quantile(kv, 0.7)
    est = StepTimeRegressor(feature_set="step_v5", n_estimators=300, n_jobs=1).fit(
        frame[train], y[train], groups=groups[train])
    assert est.base_coef_.shape == (fs.n_features,) and (est.base_coef_ >= 0).all()
    outside = np.zeros(fs.n_features, dtype=bool)
    outside[fs.base_indices] = True
    assert (est.base_coef_[~outside] == 0).all() and est.base_intercept_ >= 0
    # the synthetic steps cost 2e-5 ms per KV token; on CUDA-graph runs the base's padded-KV
    # term must carry that growth beyond the largest KV read trained on
    assert est.base_coef_[fs.feature_names.index("kv_padded_graphs")] > 0
    above = ~train & graphs
    flat = StepTimeRegressor(feature_set="step_v4", n_estimators=300, n_jobs=1).fit(
        frame[train], y[train], groups=groups[train])
    err_base = np.mean(np.abs(est.predict(frame[above]) - y[above]) / y[above])
    err_flat = np.mean(np.abs(flat.predict(frame[above]) - y[above]) / y[above])
    assert err_base < 0.8 * err_flat, (err_base, err_flat)
    # the compiled form carries the base too
    margin = est.compile().forest.predict_margin(fs.frame(frame[above]))
    np.testing.assert_allclose(margin, est.predict_margin(frame[above]), rtol=1e-5)
