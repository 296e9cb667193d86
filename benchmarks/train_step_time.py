"""Step-time model benchmark: accuracy on held-out runs, the common recipe side by side, speed.

Runs on the shipped H200 sample (``data/samples/``, ingested into a fresh temporary workspace):

1. this pipeline (``servetune train``: grouped search, early stopping, monotone constraints,
   log target) trained on the training runs and scored on the held-out runs, plus its
   extrapolation check (train on steps up to the 80th token percentile, test above);
2. the recipe common in this field (``XGBRegressor`` defaults, 10 boosting rounds, raw columns,
   shuffled 80/20 row split) scored on the SAME held-out runs, and on its own shuffled test rows
   (the leaky score that recipe reports);
3. both again by 5-fold GroupKFold over all runs (every run predicted by a model that never saw
   it);
4. wall time of training on 100,000 steps (the sample's steps resampled with replacement, run ids
   kept) — the whole ``train_step_time_model`` call and the estimator's ``fit`` alone — and the
   compiled predictor's cost per step.

Usage:
    python benchmarks/train_step_time.py [--json-out results.json] [--feature-set NAME]
                                         [--synthetic]

``--synthetic`` uses generated traces (``servetune.testing.synthetic_traces``) and exists only to develop this
script; its numbers are not a measurement of anything real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import GroupKFold, train_test_split

from servetune.data import TraceStore, Workspace
from servetune.data._benchmark_record import RESULTS_DIR, measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR, ingest_paths, sample_paths
from servetune.data.adapters import default_registry
from servetune.features import KNOB_COLUMNS, RAW_COLUMNS, get_feature_set, knob_vector
from servetune.models import (
    StepTimeModel,
    per_run_errors,
    StepTimeRegressor,
    TrainConfig,
    held_out_runs,
    load_training_frame,
    regression_metrics,
    train_step_time_model,
)

SHOWN = ("mape", "p50_ape", "p90_ape", "r2")


def _workspace_with(frame_or_samples, root: Path) -> Workspace:
    ws = Workspace.resolve(root)
    store = TraceStore.for_workspace(ws)
    if frame_or_samples is None:
        ingest_paths(store, sample_paths(), default_registry(), progress=False)
    else:
        steps, runs = frame_or_samples
        store.ingest({"steps": steps, "runs": runs}, source="benchmark", sha256=str(root),
                     format="benchmark", progress=False)
    return ws


def _recipe_model(X, y) -> xgb.XGBRegressor:
    return xgb.XGBRegressor(n_estimators=10, n_jobs=1).fit(X, y)  # everything else default


def _score(y, p) -> dict:
    m = regression_metrics(y, p)
    return {k: round(m[k], 4) for k in (*SHOWN, "p99_ape", "bias_pct", "n_steps")}


def accuracy(ws: Workspace, config: TrainConfig) -> dict:
    """Sections 1-3."""
    store = TraceStore.for_workspace(ws)
    frame, lineage = load_training_frame(store)
    y = frame.duration_ms.to_numpy()
    groups = frame.run_id.to_numpy()
    test = np.isin(groups, held_out_runs(groups, config.test_fraction, config.holdout_salt))

    t0 = time.perf_counter()
    result = train_step_time_model(ws, config=config, progress=False)
    pipeline_seconds = time.perf_counter() - t0
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    pipeline_pred = model.predict(frame[test])
    pipeline_test = _score(y[test], pipeline_pred)
    assert abs(pipeline_test["mape"] - result.metrics["mape"]) < 1e-3

    raw_fs = get_feature_set("raw_v1")
    X = raw_fs.frame(frame)
    tr_idx = np.flatnonzero(~test)
    fit_idx, leak_idx = train_test_split(tr_idx, test_size=0.2, shuffle=True, random_state=0)
    recipe = _recipe_model(X[fit_idx], y[fit_idx])
    recipe_leaky = _score(y[leak_idx], recipe.predict(X[leak_idx]))
    recipe_pred = recipe.predict(X[test])
    recipe_test = _score(y[test], recipe_pred)

    def total_time(pred):  # per held-out run: error of the summed step time (what a DES adds up)
        table = per_run_errors(groups[test], y[test], pred)
        return {"median_abs_pct": round(float(table.total_time_error_pct.abs().median()), 3),
                "max_abs_pct": round(float(table.total_time_error_pct.abs().max()), 3),
                "per_run": {r: round(float(v), 2) for r, v in
                            zip(table.run_id, table.total_time_error_pct)}}

    # this pipeline's own estimator on the same shuffled rows: its leaky score, for contrast
    best = {k: v for k, v in result.params.items()}
    shuffled = StepTimeRegressor(**best).fit(frame.iloc[fit_idx], y[fit_idx],
                                             groups=groups[fit_idx])
    pipeline_leaky = _score(y[leak_idx], shuffled.predict(frame.iloc[leak_idx]))

    # section 3: 5-fold GroupKFold over all runs, both methods
    n_splits = min(5, np.unique(groups).size)
    oof_pipe, oof_recipe = np.empty(len(y)), np.empty(len(y))
    for tr, te in GroupKFold(n_splits=n_splits).split(X, y, groups):
        est = StepTimeRegressor(**best).fit(frame.iloc[tr], y[tr], groups=groups[tr])
        oof_pipe[te] = est.predict(frame.iloc[te])
        oof_recipe[te] = _recipe_model(X[tr], y[tr]).predict(X[te])
    per_run = (pd.DataFrame({"run": groups, "ape": np.abs(oof_pipe - y) / y * 100})
               .groupby("run").ape.mean())
    mode = (np.where(frame.cuda_graph.to_numpy() == 1, "graphs", "eager") + "+"
            + np.where(frame.async_batching.to_numpy() == 1, "async", "sync"))
    by_mode = {m: {"runs": int(np.unique(groups[mode == m]).size),
                   "pipeline": _score(y[mode == m], oof_pipe[mode == m]),
                   "common_recipe": _score(y[mode == m], oof_recipe[mode == m])}
               for m in sorted(set(mode))}
    return {
        "data": {"rows": lineage["rows"], "runs": lineage["runs"],
                 "content_sha256": lineage["content_sha256"],
                 "test_runs": int(np.unique(groups[test]).size),
                 "test_steps": int(test.sum()), "hardware": lineage["hardware"],
                 "engines": lineage["engines"], "models": lineage["models"]},
        "pipeline": {"held_out_runs": pipeline_test,
                     "held_out_total_time": total_time(pipeline_pred),
                     "extrapolation": {k: round(result.metrics[f"extrap_{k}"], 4)
                                       for k in ("mape", "p90_ape", "r2", "token_cut", "n_steps")
                                       if f"extrap_{k}" in result.metrics},
                     "shuffled_rows_leaky": pipeline_leaky,
                     "group_5fold": _score(y, oof_pipe),
                     "per_run_mape_5fold": {"max": round(float(per_run.max()), 3),
                                            "median": round(float(per_run.median()), 3)},
                     "cv_mape_search": round(result.metrics.get("cv_mape", float("nan")), 4),
                     "search_trials": result.to_dict()["search_trials"],
                     "params": best, "n_trees": int(result.metrics["n_trees"]),
                     "train_seconds": round(pipeline_seconds, 2),
                     "model_uri": result.model_uri},
        "group_5fold_by_mode": by_mode,
        "common_recipe": {"held_out_runs": recipe_test, "shuffled_rows_leaky": recipe_leaky,
                          "held_out_total_time": total_time(recipe_pred),
                          "group_5fold": _score(y, oof_recipe)},
    }


def resampled(frame: pd.DataFrame, runs: pd.DataFrame, n: int, seed: int) -> tuple:
    """``n`` steps drawn with replacement from ``frame`` (run ids kept), and the runs table."""
    rng = np.random.default_rng(seed)
    take = frame.iloc[np.sort(rng.integers(0, len(frame), n))].copy()
    take["step_index"] = take.groupby("run_id").cumcount()
    return take, runs


def speed(ws: Workspace, config: TrainConfig, n_rows: int, tmp: Path) -> dict:
    """Section 4."""
    store = TraceStore.for_workspace(ws)
    frame, _ = load_training_frame(store)
    runs = store.query("runs")
    steps = store.query("steps")
    capture = steps.extra.fillna("").str.contains('"graph_captured":true', regex=False)
    steps = steps[~capture & steps.run_id.isin(frame.run_id.unique())]  # rows training keeps
    big, runs = resampled(steps, runs, n_rows, seed=1)
    ws_big = _workspace_with((big, runs), tmp / "ws100k")
    t0 = time.perf_counter()
    result = train_step_time_model(ws_big, config=config, progress=False)
    total = time.perf_counter() - t0

    big_frame, _ = load_training_frame(TraceStore.for_workspace(ws_big))
    y = big_frame.duration_ms.to_numpy()
    est = StepTimeRegressor(**result.params)
    t0 = time.perf_counter()
    est.fit(big_frame, y, groups=big_frame.run_id.to_numpy())
    fit_seconds = time.perf_counter() - t0

    compiled = est.compile()
    raw = big_frame[list(RAW_COLUMNS)].to_numpy(np.float64)
    knobs = big_frame[list(KNOB_COLUMNS)].iloc[0].to_numpy(np.float64)
    compiled.predict_ms(raw[:10], knobs)  # JIT warm-up
    t0 = time.perf_counter()
    compiled.predict_ms(raw, knobs)
    compiled_us = (time.perf_counter() - t0) / len(raw) * 1e6
    return {"rows": int(len(big_frame)), "resampled_from_rows": int(len(steps)),
            "train_step_time_model_seconds": round(total, 2),
            "search_trials": config.n_trials,
            "fit_seconds": round(fit_seconds, 2), "n_trees": int(est.n_estimators_),
            "compiled_us_per_step": round(compiled_us, 3),
            "knobs_example": knob_vector({}).shape[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--feature-set", default=None,
                        help="feature set the pipeline starts its search from (default: the "
                             "shipped default)")
    parser.add_argument("--synthetic", action="store_true",
                        help="generated traces (script development only; not a measurement)")
    args = parser.parse_args(argv)
    config = TrainConfig() if args.feature_set is None else TrainConfig(
        feature_set=args.feature_set)
    with tempfile.TemporaryDirectory(prefix="servetune-bench-") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            from servetune.testing import synthetic_traces

            ws = _workspace_with(synthetic_traces(n_runs=24, steps_per_run=900), tmp / "ws")
        else:
            if not sample_paths():
                print("no bundled samples in data/samples/", file=sys.stderr)
                return 1
            ws = _workspace_with(None, tmp / "ws")
        out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "xgboost": xgb.__version__},
               "synthetic": args.synthetic, "config": {k: str(v) for k, v in
                                                       vars(config).items()}}
        out["accuracy"] = accuracy(ws, config)
        out["speed"] = speed(ws, config, args.rows, tmp)
    print(json.dumps(out, indent=2, default=str))
    path = args.json_out or RESULTS_DIR / "train_step_time.json"
    write_record(path.stem, out, args=args, results_dir=path.parent,
                 measured_on=None if args.synthetic else measured_gpus(SAMPLES_DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
