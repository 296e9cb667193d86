"""A small, bounded hyperparameter search scored by grouped (run-level) cross-validation.

The space is data (``SEARCH_SPACE``); candidates are drawn without replacement from its grid
with a seeded generator, capped by ``n_trials`` and a time budget, and each is scored by the
MAPE of its out-of-fold predictions over whole held-out runs.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from servetune.models._evaluation import grouped_oof_predict, regression_metrics

__all__ = ["SEARCH_SPACE", "SearchResult", "search_hyperparameters"]

log = logging.getLogger(__name__)

SEARCH_SPACE: Mapping[str, tuple] = {
    "max_depth": (6, 8, 10),
    "learning_rate": (0.05, 0.1, 0.2),
    "min_child_weight": (1.0, 5.0, 20.0),
    "subsample": (0.7, 1.0),
}


@dataclass
class SearchResult:
    """The best parameters and one row per trial (params, CV MAPE, seconds)."""

    best_params: dict
    trials: pd.DataFrame


def search_hyperparameters(estimator, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, *,
                           n_trials: int = 6, n_splits: int = 3, seed: int = 0,
                           time_budget_s: float = 120.0, space: Mapping[str, tuple] = SEARCH_SPACE,
                           feature_sets: tuple[str, ...] = (), max_rows: int | None = 30_000,
                           progress=None) -> SearchResult:
    """Try up to ``n_trials`` settings; keep the one with the lowest grouped-CV MAPE.

    First the estimator's own settings, then each of ``feature_sets`` with those settings, then
    random draws from ``space`` on the best feature set so far. Stops early once
    ``time_budget_s`` is spent (at least one trial always runs). To bound its cost the search
    scores on at most ``max_rows`` steps (every k-th step of every run, so all runs and their
    whole time span stay in) and without the final refit: it only ranks settings.
    """
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(X) > max_rows:
        stride = int(np.ceil(len(X) / max_rows))
        keep = np.arange(len(X)) % stride == 0
        X, y, groups = X[keep], np.asarray(y)[keep], np.asarray(groups)[keep]
    estimator = clone(estimator).set_params(refit=False)
    names = list(space)
    grid = [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]
    own = {n: estimator.get_params()[n] for n in [*names, "feature_set"]}
    queue = [own] + [{**own, "feature_set": fs} for fs in feature_sets
                     if fs != own["feature_set"]]
    draws = [grid[i] for i in rng.permutation(len(grid))]
    rows: list[dict] = []
    tried: list[dict] = []
    started = time.perf_counter()
    while len(rows) < max(1, n_trials):
        if rows and time.perf_counter() - started > time_budget_s:
            log.info("search stopped after %d trials: time budget %.0f s spent", len(rows),
                     time_budget_s)
            break
        if queue:
            params = queue.pop(0)
        else:
            best_fs = tried[int(np.argmin([r["cv_mape"] for r in rows]))]["feature_set"]
            params = next(({**d, "feature_set": best_fs} for d in draws
                           if {**d, "feature_set": best_fs} not in tried), None)
            if params is None:
                break
        tried.append(params)
        t0 = time.perf_counter()
        oof = grouped_oof_predict(clone(estimator).set_params(**params), X, y, groups,
                                  n_splits=n_splits)
        metrics = regression_metrics(y, oof)
        rows.append({**params, "cv_mape": metrics["mape"], "cv_p90_ape": metrics["p90_ape"],
                     "seconds": time.perf_counter() - t0})
        if progress is not None:
            progress.update(1)
    trials = pd.DataFrame(rows)
    return SearchResult(best_params=tried[int(np.argmin(trials.cv_mape.to_numpy()))],
                        trials=trials)
