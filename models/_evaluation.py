"""Honest evaluation of step-time models: held-out RUNS, never a row shuffle.

Steps of one run share its warm-up, its machine state and its workload, so a row-shuffled split
puts near-copies of every test step in the training set and reports a leak, not an accuracy.
Everything here splits by run id.

Example:
    >>> import numpy as np
    >>> m = regression_metrics(np.array([10.0, 20.0]), np.array([11.0, 19.0]))
    >>> round(m["mape"], 3), round(m["p50_ape"], 3)
    (7.5, 7.5)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from servetune import InputError

__all__ = ["regression_metrics", "per_run_errors", "held_out_runs", "grouped_oof_predict",
           "extrapolation_split", "EvaluationResult", "evaluate_predictions"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAPE, p50/p90/p99 absolute percentage error (all in %), R², bias (mean signed %), count."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.size == 0:
        raise InputError("cannot score an empty set of steps")
    ape = np.abs(y_pred - y_true) / y_true * 100.0
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mape": float(ape.mean()),
        "p50_ape": float(np.percentile(ape, 50)),
        "p90_ape": float(np.percentile(ape, 90)),
        "p99_ape": float(np.percentile(ape, 99)),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "bias_pct": float(np.mean((y_pred - y_true) / y_true) * 100.0),
        "n_steps": float(y_true.size),
    }


def per_run_errors(run_ids: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """One row per run: steps, MAPE, p90 APE, bias (mean signed %), and total-time error (%)."""
    frame = pd.DataFrame({"run_id": np.asarray(run_ids), "y": y_true, "p": y_pred})
    frame["ape"] = np.abs(frame.p - frame.y) / frame.y * 100.0
    frame["spe"] = (frame.p - frame.y) / frame.y * 100.0
    grouped = frame.groupby("run_id", sort=True)
    out = pd.DataFrame({
        "steps": grouped.size(),
        "mape": grouped.ape.mean(),
        "p90_ape": grouped.ape.quantile(0.9),
        "bias_pct": grouped.spe.mean(),
        "total_time_error_pct": (grouped.p.sum() - grouped.y.sum()) / grouped.y.sum() * 100.0,
    })
    return out.reset_index()


def _unit_hash(run_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def held_out_runs(run_ids, fraction: float = 0.2, salt: str = "servetune-holdout-v1") -> list[str]:
    """The test runs: those whose salted hash falls below ``fraction``.

    The choice depends only on each run's id, so a run is test or train for every model trained
    with the same salt, whatever else is in the store; that is what makes "the new model beats the
    champion on the same held-out runs" a fair comparison. At least one run is always held out and
    at least one kept for training.
    """
    unique = sorted({str(r) for r in run_ids})
    if len(unique) < 2:
        raise InputError(f"need at least 2 runs to hold some out, found {len(unique)}; "
                         "ingest more traces", field="run_id")
    scores = {run: _unit_hash(run, salt) for run in unique}
    test = [run for run in unique if scores[run] < fraction]
    ranked = sorted(unique, key=scores.__getitem__)
    if not test:
        test = ranked[:1]
    if len(test) == len(unique):
        test = ranked[:-1]
    return sorted(test)


def grouped_oof_predict(estimator, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
                        n_splits: int = 5,
                        on_fold: Callable[[int], None] | None = None) -> np.ndarray:
    """Out-of-fold predictions: each run predicted by a clone trained without it (GroupKFold)."""
    groups = np.asarray(groups)
    n_groups = np.unique(groups).size
    splits = min(n_splits, n_groups)
    if splits < 2:
        raise InputError(f"need at least 2 runs for grouped cross-validation, found {n_groups}")
    out = np.full(len(X), np.nan)
    for k, (train, test) in enumerate(GroupKFold(n_splits=splits).split(X, y, groups)):
        model = clone(estimator).fit(X.iloc[train], y[train], groups=groups[train])
        out[test] = model.predict(X.iloc[test])
        if on_fold is not None:
            on_fold(k)
    return out


def extrapolation_split(X: pd.DataFrame, quantile: float = 0.8) -> tuple[np.ndarray, float]:
    """Mask of steps ABOVE the ``quantile`` of batch tokens (prefill + decode), and the cut."""
    tokens = (X["prefill_tokens"].to_numpy(dtype=np.float64)
              + X["decode_tokens"].to_numpy(dtype=np.float64))
    cut = float(np.quantile(tokens, quantile))
    above = tokens > cut
    if not above.any() or above.all():
        raise InputError(f"cannot split at the {quantile:.0%} token quantile ({cut:g}): all "
                         "steps fall on one side")
    return above, cut


@dataclass
class EvaluationResult:
    """Metrics of one set of predictions plus the per-run breakdown."""

    metrics: dict[str, float]
    per_run: pd.DataFrame
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def evaluate_predictions(run_ids, y_true, y_pred, *, started: float | None = None
                         ) -> EvaluationResult:
    """Bundle :func:`regression_metrics` and :func:`per_run_errors`."""
    return EvaluationResult(
        metrics=regression_metrics(y_true, y_pred),
        per_run=per_run_errors(np.asarray(run_ids), np.asarray(y_true), np.asarray(y_pred)),
        seconds=0.0 if started is None else time.perf_counter() - started)
