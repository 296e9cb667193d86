"""The ``python_function`` flavor of a logged step-time model: XGBoost trees plus the linear base.

MLflow's own xgboost pyfunc returns the trees' output alone, which for a model with a linear base
(``FeatureSet.base_terms``) is log(duration / base), not log(duration). This loader reads the base
from the model's ``MLmodel`` metadata (``servetune_step_time``) and adds it as XGBoost's base
margin, so ``mlflow.pyfunc.load_model(uri).predict(features)`` returns the same margin as
``StepTimeRegressor.predict_margin`` (log ms with a log target) — the model signature's output.

The file is copied into each logged model (``code/``) and needs only numpy, pandas, xgboost and
mlflow, not servetune, so the model loads wherever its pip requirements are installed.

Example:
    >>> import mlflow
    >>> model = mlflow.pyfunc.load_model("models:/step-time....@champion")  # doctest: +SKIP
    >>> log_ms = model.predict(feature_frame)  # the signature's input columns  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["StepTimePyfunc", "base_margin"]

METADATA_KEY = "servetune_step_time"


def base_margin(x: np.ndarray, coef: np.ndarray, intercept: float, log_target: bool,
                floor_ms: float) -> np.ndarray | None:
    """The linear base of feature rows ``x`` (NaN counts as 0) as a margin; None without one."""
    if coef.size == 0:
        return None
    total = intercept + np.nan_to_num(x.astype(np.float64), nan=0.0) @ coef
    return np.log(np.maximum(total, floor_ms)) if log_target else total


class StepTimePyfunc:
    """The loaded model: ``predict(frame)`` gives the margin of every row."""

    def __init__(self, booster, metadata: dict) -> None:
        self.booster = booster
        self.feature_names = list(metadata["feature_names"])
        self.log_target = bool(metadata["log_target"])
        base = metadata.get("linear_base") or {}
        self.coef = np.array([float(base.get("coef", {}).get(n, 0.0))
                              for n in self.feature_names]) if base else np.zeros(0)
        self.intercept = float(base.get("intercept", 0.0))
        self.floor_ms = float(base.get("floor_ms", 1e-3))

    def predict(self, model_input, params=None) -> np.ndarray:
        """Margins (log ms with a log target) of a frame holding the feature columns."""
        import xgboost as xgb

        missing = [n for n in self.feature_names if n not in model_input.columns]
        if missing:
            raise ValueError(f"step-time model input lacks the feature columns {missing}")
        x = model_input[self.feature_names].to_numpy(dtype=np.float32)
        margin = base_margin(x, self.coef, self.intercept, self.log_target, self.floor_ms)
        return self.booster.predict(xgb.DMatrix(x, feature_names=self.feature_names,
                                                base_margin=margin))


def _load_pyfunc(path: str) -> StepTimePyfunc:
    """MLflow's loader hook: ``path`` is the model's data file (``model.ubj``)."""
    import xgboost as xgb
    from mlflow.models import Model

    data = Path(path)
    root = data.parent if data.is_file() else data
    metadata = json.loads((Model.load(str(root / "MLmodel")).metadata or {})[METADATA_KEY])
    booster = xgb.Booster()
    booster.load_model(str(data if data.is_file() else next(root.glob("model.*"))))
    return StepTimePyfunc(booster, metadata)
