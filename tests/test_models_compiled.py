"""The compiled forest (flat arrays + numba) agrees with ``xgboost.Booster.predict``."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from _helpers_models import synthetic_traces

from servetune import ModelError
from servetune.features import KNOB_COLUMNS, RAW_COLUMNS, get_feature_set, join_knobs, knob_vector
from servetune.models import CompiledForest, CompiledStepTime, forest_predict_row


def _train(fs, frame, *, rounds=40, log_target=True, missing_rows=True):
    X = fs.frame(frame)
    if missing_rows:  # teach some splits a missing-value direction
        X[::7, 6] = np.nan
    y = np.log(frame["duration_ms"].to_numpy()) if log_target else frame["duration_ms"].to_numpy()
    dtrain = xgb.DMatrix(X, label=y, feature_names=list(fs.feature_names))
    params = {"max_depth": 6, "eta": 0.3, "nthread": 1, "seed": 0,
              "monotone_constraints": "(" + ",".join(map(str, fs.monotone)) + ")"}
    return xgb.train(params, dtrain, num_boost_round=rounds), X


@pytest.fixture(scope="module")
def trained():
    fs = get_feature_set()
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=300, seed=11)
    frame = join_knobs(steps, runs)
    booster, X = _train(fs, frame)
    return fs, frame, runs, booster, X


def test_compiled_margin_matches_booster_predict(trained):
    fs, frame, _, booster, X = trained
    forest = CompiledForest.from_booster(booster, log_target=True, feature_set=fs.name,
                                         feature_set_version=fs.version)
    expected = booster.predict(xgb.DMatrix(X, feature_names=list(fs.feature_names)))
    got = forest.predict_margin(X)
    assert forest.n_trees == 40
    # XGBoost sums 40 leaves in float32 (rounding error up to ~40 ulp); the compiled forest sums
    # them in float64, so the two agree to float32 precision, not bit for bit.
    np.testing.assert_allclose(got, expected, rtol=40 * np.finfo(np.float32).eps, atol=0)
    # the row function (the simulator's entry point) gives the same numbers
    row = np.array([forest_predict_row(*forest.arrays, X[i]) for i in range(50)])
    np.testing.assert_array_equal(row, got[:50])


def test_missing_values_follow_default_direction(trained):
    fs, _, _, booster, X = trained
    forest = CompiledForest.from_booster(booster)
    X_nan = X.copy()
    X_nan[:, :] = np.nan
    expected = booster.predict(xgb.DMatrix(X_nan[:5], feature_names=list(fs.feature_names)))
    np.testing.assert_allclose(forest.predict_margin(X_nan[:5]), expected, rtol=2e-6)


def test_compiled_step_time_predicts_ms_like_the_booster(trained):
    fs, frame, runs, booster, _ = trained
    clean_booster, _ = _train(fs, frame, missing_rows=False)
    compiled = CompiledStepTime(
        CompiledForest.from_booster(clean_booster, log_target=True, feature_set=fs.name,
                                    feature_set_version=fs.version), fs)
    run = runs.iloc[2]
    one_run = frame[frame.run_id == run.run_id]
    raw = one_run[list(RAW_COLUMNS)].to_numpy(dtype=np.float64)
    knobs = knob_vector(run.to_dict())
    got = compiled.predict_ms(raw, knobs)
    expected = np.exp(clean_booster.predict(
        xgb.DMatrix(fs.frame(one_run), feature_names=list(fs.feature_names))).astype(np.float64))
    # XGBoost sums leaves in float32: margins ~9 carry ~1e-6 absolute (so relative in ms) error
    np.testing.assert_allclose(got, expected, rtol=2e-6)
    assert compiled.n_features == fs.n_features and len(KNOB_COLUMNS) == knobs.shape[0]


def test_linear_target_and_base_score():
    X = np.linspace(0, 10, 200, dtype=np.float32).reshape(100, 2)
    y = 3.0 + X[:, 0] ** 2
    booster = xgb.train({"max_depth": 3, "nthread": 1, "base_score": 7.25}, xgb.DMatrix(X, y), 5)
    forest = CompiledForest.from_booster(booster)
    assert forest.base_margin == pytest.approx(7.25)
    np.testing.assert_allclose(forest.predict_margin(X), booster.predict(xgb.DMatrix(X)),
                               rtol=2e-6)


def test_refuses_non_identity_objective():
    X = np.random.default_rng(0).random((50, 2)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(X, (X[:, 0] > 0.5).astype(float)), 2)
    with pytest.raises(ModelError, match="objective"):
        CompiledForest.from_booster(booster)


def test_refuses_forest_of_another_feature_set(trained):
    fs, _, _, booster, _ = trained
    forest = CompiledForest.from_booster(booster, feature_set="raw_v1", feature_set_version=1)
    with pytest.raises(ModelError, match="raw_v1"):
        CompiledStepTime(forest, fs)
    stale = CompiledForest.from_booster(booster, feature_set=fs.name,
                                        feature_set_version=fs.version + 1)
    with pytest.raises(ModelError, match="retrain"):
        CompiledStepTime(stale, fs)
