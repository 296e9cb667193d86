"""``StepTimeRegressor``: XGBoost behind the scikit-learn estimator contract.

Example:
    >>> from servetune.models import StepTimeRegressor
    >>> est = StepTimeRegressor(n_estimators=50)
    >>> est.get_params()["feature_set"]
    'step_v5'
"""

from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.validation import check_is_fitted

from servetune import ConfigError, InputError, ModelError
from servetune.features import DEFAULT_FEATURE_SET, default_feature_registry, get_feature_set
from servetune.models._compiled import (
    NO_BASE,
    CompiledForest,
    CompiledStepTime,
    linear_base_matrix,
)
from servetune.models._linear_base import fit_linear_base

__all__ = ["StepTimeRegressor", "split_validation_groups"]

log = logging.getLogger(__name__)


def _rounds(booster) -> int:
    """Boosting rounds already in ``booster`` (0 for None)."""
    return 0 if booster is None else int(booster.num_boosted_rounds())


def split_validation_groups(groups: np.ndarray, fraction: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of rows whose group (run) is held out for validation (>= 1 group each side)."""
    unique = np.unique(groups)
    if unique.size < 2:
        return np.zeros(len(groups), dtype=bool)
    n_val = min(max(1, int(round(fraction * unique.size))), unique.size - 1)
    chosen = rng.choice(unique, size=n_val, replace=False)
    return np.isin(groups, chosen)


class StepTimeRegressor(RegressorMixin, BaseEstimator):
    """Predicts a step's duration (ms) from its batch composition and the engine knobs.

    ``X`` is a DataFrame with the ``RAW_COLUMNS`` and ``KNOB_COLUMNS`` (a ``steps`` query joined
    with the run knobs); features are computed by the named feature set. With ``log_target`` the
    trees fit log(ms), so squared error there is relative error in ms. When the feature set names
    ``base_terms``, a non-negative linear base step time is fitted first (``base_coef_``,
    ``base_intercept_``) and the trees learn the correction on top of it (see
    ``models._linear_base``).

    Args:
        feature_set: registered feature set name.
        n_estimators: maximum boosting rounds.
        learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda,
            max_bin: XGBoost tree parameters.
        log_target: fit log(duration_ms) instead of duration_ms.
        monotone: apply the feature set's monotone constraints.
        early_stopping_rounds: stop when the validation runs have not improved for this many
            rounds (0: no early stopping). Needs ``groups`` in :meth:`fit`.
        validation_fraction: share of the training runs held out for early stopping.
        refit: after early stopping, refit on all rows with the best number of rounds.
        n_jobs: XGBoost threads. 1 by default: on a small shared machine, OpenMP threads that
            wait on each other at every tree level slow training down several-fold as soon as
            another process takes a core (measured: 3.3 s with 1 thread vs 20 s with 2 on the
            2-core CI machine under load).
        random_state: seed of the validation split and of XGBoost's subsampling.
        init_model: a fitted model to continue from (per-host calibration): an object with
            ``booster``, ``feature_set``, ``log_target``, ``base_coef`` and ``base_intercept``
            (a :class:`~servetune.models.StepTimeModel`). Its trees and linear base are kept;
            the new trees learn what it gets wrong on ``X`` (in log space: a multiplicative
            correction). ``feature_set`` and ``log_target`` must be its own.
    """

    _parameter_constraints = {
        "feature_set": [StrOptions(set(default_feature_registry().names))],
        "n_estimators": [Interval(Integral, 1, 100_000, closed="both")],
        "learning_rate": [Interval(Real, 0, 1, closed="right")],
        "max_depth": [Interval(Integral, 1, 20, closed="both")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "max_bin": [Interval(Integral, 2, 4096, closed="both")],
        "log_target": ["boolean"],
        "monotone": ["boolean"],
        "early_stopping_rounds": [Interval(Integral, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "refit": ["boolean"],
        "n_jobs": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "init_model": "no_validation",
    }

    def __init__(self, feature_set: str = DEFAULT_FEATURE_SET, n_estimators: int = 2000,
                 learning_rate: float = 0.1, max_depth: int = 8, min_child_weight: float = 1.0,
                 subsample: float = 0.8, colsample_bytree: float = 1.0, reg_lambda: float = 1.0,
                 max_bin: int = 256, log_target: bool = True, monotone: bool = True,
                 early_stopping_rounds: int = 50, validation_fraction: float = 0.2,
                 refit: bool = True, n_jobs: int = 1, random_state: int = 0,
                 init_model=None) -> None:
        self.feature_set = feature_set
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.log_target = log_target
        self.monotone = monotone
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.refit = refit
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.init_model = init_model

    # ------------------------------------------------------------------------------- fitting
    def _xgb_params(self) -> dict:
        fs = get_feature_set(self.feature_set)
        params = {
            "objective": "reg:squarederror", "tree_method": "hist", "eta": self.learning_rate,
            "max_depth": self.max_depth, "min_child_weight": self.min_child_weight,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda, "max_bin": self.max_bin, "nthread": self.n_jobs,
            "seed": self.random_state, "eval_metric": "rmse",
        }
        if self.monotone and any(fs.monotone):
            params["monotone_constraints"] = "(" + ",".join(map(str, fs.monotone)) + ")"
        return params

    def fit(self, X: pd.DataFrame, y, groups=None) -> "StepTimeRegressor":
        """Fit on steps ``X`` and durations ``y`` (ms); ``groups`` (run ids) enable early stopping.

        Returns:
            self.

        Raises:
            ConfigError: a parameter is out of range.
            InputError: X lacks a column, or y has non-positive or non-finite durations.
        """
        import xgboost as xgb

        try:
            self._validate_params()
        except InvalidParameterError as exc:
            raise ConfigError(str(exc)) from None
        fs = get_feature_set(self.feature_set)
        features = fs.frame(X)
        target = self._target(y, len(features))
        names = list(fs.feature_names)
        params = self._xgb_params()
        init = self._init_booster(fs)
        if init is not None:
            coef, intercept = (np.asarray(self.init_model.base_coef, np.float64),
                               float(self.init_model.base_intercept))
        else:
            coef, intercept = (fit_linear_base(features, fs.base_indices,
                                               np.asarray(y, np.float64))
                               if fs.base_terms else (NO_BASE, 0.0))
        base = (linear_base_matrix(coef, intercept, self.log_target, features) if coef.size
                else None)
        if base is not None and init is None:
            params["base_score"] = 0.0  # the base margin replaces it; 0 keeps both explicit

        def matrix(rows, **kwargs):
            margin = None if base is None else base[rows]
            if init is not None:  # the init trees must see exact values, not this data's bins
                return xgb.DMatrix(features[rows], label=target[rows], feature_names=names,
                                   nthread=self.n_jobs, base_margin=margin)
            return xgb.QuantileDMatrix(
                features[rows], label=target[rows], feature_names=names, nthread=self.n_jobs,
                base_margin=margin, **kwargs)

        rng = np.random.default_rng(self.random_state)
        self.best_iteration_ = None
        self.evals_result_ = {}
        use_early = self.early_stopping_rounds > 0 and groups is not None
        val = (split_validation_groups(np.asarray(groups), self.validation_fraction, rng)
               if use_early else np.zeros(len(features), dtype=bool))
        if use_early and val.any():
            dtrain = matrix(~val, max_bin=self.max_bin)
            dval = matrix(val, ref=dtrain)
            booster = xgb.train(params, dtrain, num_boost_round=self.n_estimators,
                                evals=[(dval, "validation")],
                                early_stopping_rounds=self.early_stopping_rounds,
                                evals_result=self.evals_result_, verbose_eval=False,
                                xgb_model=init)
            self.best_iteration_ = int(booster.best_iteration)
            rounds = self.best_iteration_ + 1  # the init model's rounds included
            if self.refit:
                booster = xgb.train(params, matrix(slice(None), max_bin=self.max_bin),
                                    num_boost_round=rounds - _rounds(init), verbose_eval=False,
                                    xgb_model=init)
            else:
                booster = booster[:rounds]
        else:
            if self.early_stopping_rounds > 0:
                log.warning("no run groups (or a single run): training %d rounds without early "
                            "stopping", self.n_estimators)
            booster = xgb.train(params, matrix(slice(None), max_bin=self.max_bin),
                                num_boost_round=self.n_estimators, verbose_eval=False,
                                xgb_model=init)
        self.booster_ = booster
        self.base_coef_ = coef
        self.base_intercept_ = intercept
        self.feature_names_ = tuple(names)
        self.feature_set_version_ = fs.version
        self.n_features_in_ = len(names)
        self.n_estimators_ = booster.num_boosted_rounds()
        return self

    def _init_booster(self, fs):
        """A copy of ``init_model``'s booster to continue from (None without one), after
        checking that it was trained on this feature set and target."""
        if self.init_model is None:
            return None
        init = self.init_model
        if init.feature_set.name != fs.name or bool(init.log_target) != self.log_target:
            raise ConfigError(f"init_model was trained on {init.feature_set.name} "
                              f"(log_target={init.log_target}); continue it with the same "
                              f"feature set and target, not {fs.name} "
                              f"(log_target={self.log_target})")
        return init.booster.copy()

    def _target(self, y, n: int) -> np.ndarray:
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        if target.shape[0] != n:
            raise InputError(f"expected {n} durations, got {target.shape[0]}", field="duration_ms")
        bad = ~np.isfinite(target) | (target <= 0 if self.log_target else target < 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"expected a finite duration > 0, got {target[row]}", row=row + 1,
                             field="duration_ms")
        return np.log(target) if self.log_target else target

    # ---------------------------------------------------------------------------- predicting
    def predict_margin(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's raw output (log ms with ``log_target``), float32 as XGBoost returns it."""
        import xgboost as xgb

        check_is_fitted(self, "booster_")
        features = get_feature_set(self.feature_set).frame(X)
        base = (linear_base_matrix(self.base_coef_, self.base_intercept_, self.log_target,
                                   features) if self.base_coef_.size else None)
        return self.booster_.predict(xgb.DMatrix(features, feature_names=list(self.feature_names_),
                                                 nthread=self.n_jobs, base_margin=base))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted step durations in ms (float64)."""
        margin = self.predict_margin(X).astype(np.float64)
        return np.exp(margin) if self.log_target else margin

    def compile(self) -> CompiledStepTime:
        """The fitted trees as flat arrays bundled with the feature set (for the simulator)."""
        check_is_fitted(self, "booster_")
        fs = get_feature_set(self.feature_set)
        forest = CompiledForest.from_booster(self.booster_, log_target=self.log_target,
                                             feature_set=fs.name, feature_set_version=fs.version,
                                             base_coef=self.base_coef_,
                                             base_intercept=self.base_intercept_)
        return CompiledStepTime(forest, fs)

    def feature_importance(self, kind: str = "gain") -> pd.Series:
        """Importance per feature (``gain``, ``weight`` or ``cover``), zeros for unused ones."""
        check_is_fitted(self, "booster_")
        if kind not in ("gain", "weight", "cover", "total_gain", "total_cover"):
            raise ModelError(f"unknown importance kind {kind!r}; expected gain, weight or cover")
        scores = self.booster_.get_score(importance_type=kind)
        return pd.Series({name: float(scores.get(name, 0.0)) for name in self.feature_names_})
