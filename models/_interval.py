"""Prediction intervals of a step-time model, calibrated on whole runs it did not see.

A step-time model's error that matters for a recommendation is not the scatter of single steps
(it averages out over a run) but how far off a whole run of an unseen configuration is: the
held-out runs' total step time is over- or under-predicted by a few percent to tens of percent,
depending on the configuration. So the interval is learned per run, out of fold:

1. split the training store's runs into ``n_splits`` folds (by run id, so no run is split);
2. train the chosen estimator on the other folds and predict every step of each held-out run;
3. each run gives one ratio, measured total step time / predicted total step time;
4. the interval at ``level`` (default 80 %) is the ``(1 - level) / 2`` and ``(1 + level) / 2``
   quantiles of those ratios.

The simulator turns it into run-metric intervals by replaying a configuration with every step
time scaled by the low and the high ratio (``CompiledStepTime.scaled``): TTFT, TPOT,
throughput and the objective get a low-mid-high each, with the queueing amplification of slower
steps included. It is logged as the MLflow artifact ``interval.json`` next to the model.

Example:
    >>> iv = StepTimeInterval.from_ratios([0.9, 1.0, 1.05, 1.1, 1.2], level=0.8)
    >>> round(iv.low, 3), round(iv.high, 3), iv.n_runs
    (0.94, 1.16, 5)
    >>> StepTimeInterval.from_dict(iv.to_dict()) == iv
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from servetune import ModelError

__all__ = ["StepTimeInterval", "INTERVAL_ARTIFACT", "run_time_ratios", "out_of_fold_ratios"]

INTERVAL_ARTIFACT = "interval.json"  # MLflow artifact path in the training run
_METHOD = "out-of-fold per-run ratio of measured to predicted total step time"


@dataclass(frozen=True)
class StepTimeInterval:
    """Multipliers of a predicted step time that bound a run's total step time at ``level``.

    Attributes:
        level: the central probability the interval holds (0.8: 10th to 90th percentile).
        low, high: the ratio quantiles (measured / predicted); ``low <= 1 <= high`` is typical
            but not required (a biased model has both on one side).
        n_runs: runs the quantiles were taken over.
        median: the median ratio (the model's run-level bias).
        method: how the ratios were obtained.
    """

    level: float
    low: float
    high: float
    n_runs: int
    median: float = 1.0
    method: str = _METHOD

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ModelError(f"interval level must be in (0, 1); got {self.level}")
        if not (0.0 < self.low <= self.high) or not np.isfinite(self.high):
            raise ModelError(f"interval ratios must satisfy 0 < low <= high < inf; got "
                             f"{self.low}, {self.high}")

    @classmethod
    def from_ratios(cls, ratios, level: float = 0.8) -> "StepTimeInterval":
        """The interval of per-run ratios (measured / predicted) at ``level``."""
        ratios = np.asarray(ratios, dtype=np.float64)
        ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
        if ratios.size < 3:
            raise ModelError(f"a prediction interval needs at least 3 runs' ratios; got "
                             f"{ratios.size}")
        tail = (1.0 - level) / 2.0
        low, median, high = np.quantile(ratios, [tail, 0.5, 1.0 - tail])
        return cls(level=float(level), low=float(low), high=float(high),
                   n_runs=int(ratios.size), median=float(median))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StepTimeInterval":
        return cls(**{k: data[k] for k in ("level", "low", "high", "n_runs", "median", "method")
                      if k in data})

    def describe(self) -> str:
        """One line for outputs: level, ratios and how many runs they came from."""
        return (f"{100 * self.level:.0f} % interval: a run's step times x{self.low:.2f} to "
                f"x{self.high:.2f} of the prediction ({self.n_runs} runs out of fold)")


def run_time_ratios(run_ids, measured_ms, predicted_ms) -> pd.Series:
    """Per run: measured total step time / predicted total step time."""
    frame = pd.DataFrame({"run": np.asarray(run_ids), "y": np.asarray(measured_ms, float),
                          "p": np.asarray(predicted_ms, float)})
    sums = frame.groupby("run", sort=True)[["y", "p"]].sum()
    return sums.y / sums.p


def out_of_fold_ratios(estimator, frame: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
                       n_splits: int = 5) -> pd.Series:
    """:func:`run_time_ratios` of every run, each predicted by ``estimator`` (cloned, not
    refitted after early stopping) trained on the runs of the other folds."""
    from sklearn.base import clone
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_runs = np.unique(groups).size
    if n_runs < 2:
        raise ModelError(f"out-of-fold ratios need at least 2 runs; got {n_runs}")
    predicted = np.empty(len(y), dtype=np.float64)
    splitter = GroupKFold(n_splits=min(n_splits, n_runs))
    for train_idx, test_idx in splitter.split(frame, y, groups):
        model = clone(estimator).set_params(refit=False)
        model.fit(frame.iloc[train_idx], y[train_idx], groups=groups[train_idx])
        predicted[test_idx] = model.predict(frame.iloc[test_idx])
    return run_time_ratios(groups, y, predicted)
