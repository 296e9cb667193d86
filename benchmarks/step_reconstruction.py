"""Steps rebuilt from per-token timings vs the steps the collector recorded, on the H200 sample.

For every run of ``data/samples``: rebuild its steps from its ``requests`` rows alone
(:func:`servetune.data.reconstruct_steps`) and compare them with the recorded steps
(:func:`servetune.data.compare_reconstruction`: step count ratio, share of recorded steps
matched by end time within 1 ms, median / p90 relative duration error of matched steps, share
of matched steps with the same decode batch size). Then train the project's step-time model
(``StepTimeRegressor``, default parameters) once on recorded and once on rebuilt steps of the
same training runs and score both on the recorded steps of the same held-out runs
(``held_out_runs``).

Usage:
    python benchmarks/step_reconstruction.py [--json-out PATH] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data import compare_reconstruction, reconstruct_steps
from servetune.data._benchmark_record import write_record
from servetune.data._ingest import SAMPLES_DIR
from servetune.data._reconstruct import match_steps
from servetune.features import (
    PREV_COLUMNS,
    RAW_COLUMNS,
    RUN_KNOB_COLUMNS,
    add_previous_step,
    graph_captured,
    join_knobs,
)
from servetune.models import StepTimeRegressor, held_out_runs, regression_metrics

RESULT = Path(__file__).resolve().parent / "results" / "step_reconstruction.json"
MIN_TRAIN_CONFIDENCE = 0.5
CAPTURED = "graph_captured"
# what the step-time model reads of a step, compared column by column on matched steps
COMPARED_COLUMNS = (*RAW_COLUMNS, CAPTURED, *PREV_COLUMNS, "duration_ms")
# columns replaced one at a time by the recorded ones before training on rebuilt steps
SWAPPED_COLUMNS = (*RAW_COLUMNS, CAPTURED, "duration_ms")


def load_sample() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The sample's steps, requests and runs."""
    return tuple(pd.read_parquet(SAMPLES_DIR / f"{kind}.parquet")
                 for kind in ("steps", "requests", "runs"))


def rebuild_all(requests: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Every run's rebuilt steps, and the wall seconds it took."""
    started = time.perf_counter()
    by_run = dict(tuple(requests.groupby("run_id", sort=False)))
    frames = [reconstruct_steps(by_run[run.run_id], run) for _, run in runs.iterrows()]
    return pd.concat(frames, ignore_index=True), time.perf_counter() - started


def per_run_accuracy(steps, rebuilt, runs) -> pd.DataFrame:
    """One row per run: its mode and the comparison figures."""
    real_by_run = dict(tuple(steps.groupby("run_id", sort=False)))
    rebuilt_by_run = dict(tuple(rebuilt.groupby("run_id", sort=False)))
    rows = []
    for _, run in runs.iterrows():
        real = real_by_run[run.run_id].sort_values("step_index")
        figures = compare_reconstruction(real, rebuilt_by_run[run.run_id])
        rows.append({"run_id": run.run_id, "mode": _mode(run), "scheduler": run.scheduler,
                     **figures})
    return pd.DataFrame(rows)


def _mode(run) -> str:
    return ("graphs" if run.cuda_graph else "eager") + "+" + (
        "async" if run.async_batching else "sync")


def summarise(table: pd.DataFrame) -> dict:
    """Figures per mode and over all runs (medians over runs, and the worst run)."""
    groups = {"all": table, **{m: g for m, g in table.groupby("mode")},
              **{f"scheduler={s}": g for s, g in table.groupby("scheduler")}}
    return {name: {
        "runs": int(len(g)),
        "count_ratio_min": round(float(g.count_ratio.min()), 4),
        "count_ratio_max": round(float(g.count_ratio.max()), 4),
        "count_within_2pct_share": round(float((abs(g.count_ratio - 1) <= 0.02).mean()), 4),
        "matched_share_median": round(float(g.matched_share.median()), 4),
        "duration_error_p50_median": round(float(g.duration_error_p50.median()), 5),
        "duration_error_p50_max": round(float(g.duration_error_p50.max()), 5),
        "duration_error_p90_median": round(float(g.duration_error_p90.median()), 5),
        "decode_exact_share_median": round(float(g.decode_exact_share.median()), 4),
        "decode_exact_share_min": round(float(g.decode_exact_share.min()), 4),
        "prefill_tokens_equal_share": round(float(
            (g.real_prefill_tokens == g.rebuilt_prefill_tokens).mean()), 4),
    } for name, g in groups.items()}


def with_columns(steps: pd.DataFrame) -> pd.DataFrame:
    """Steps in run and step order with an explicit ``graph_captured`` column and the previous
    step's columns."""
    ordered = steps.sort_values(["run_id", "step_index"], kind="stable").reset_index(drop=True)
    ordered[CAPTURED] = graph_captured(ordered)
    return add_previous_step(ordered)


def matched_rows(real: pd.DataFrame, rebuilt: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the step pairs matched by end time, over all runs of both frames."""
    real_rows = real.groupby("run_id", sort=False).indices
    rebuilt_rows = rebuilt.groupby("run_id", sort=False).indices
    pairs = [(rows[a], rebuilt_rows[run][b]) for run, rows in real_rows.items()
             if run in rebuilt_rows
             for a, b in [match_steps(real.iloc[rows], rebuilt.iloc[rebuilt_rows[run]])]]
    return (np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))


def column_agreement(real, rebuilt, pairs) -> dict:
    """Per model input column, over matched steps: the share of equal values and the mean
    absolute difference relative to the recorded mean (for the capture flag also its counts)."""
    a, b = pairs
    out = {"matched_steps": int(len(a)), "recorded_steps": int(len(real)),
           "rebuilt_steps": int(len(rebuilt))}
    for name in COMPARED_COLUMNS:
        x = real[name].to_numpy(dtype=np.float64)[a]
        y = rebuilt[name].to_numpy(dtype=np.float64)[b]
        exact = np.isclose(x, y, rtol=1e-9, atol=0) if name == "duration_ms" else x == y
        out[name] = {"equal_share": round(float(exact.mean()), 4),
                     "mean_abs_error_rel": round(float(np.abs(x - y).mean()
                                                       / max(np.abs(x).mean(), 1e-12)), 4)}
    flags_real, flags_rebuilt = real[CAPTURED].to_numpy()[a], rebuilt[CAPTURED].to_numpy()[b]
    out[CAPTURED].update({"recorded": int(real[CAPTURED].sum()),
                          "rebuilt": int(rebuilt[CAPTURED].sum()),
                          "both_on_matched": int((flags_real & flags_rebuilt).sum()),
                          "recorded_only_on_matched": int((flags_real & ~flags_rebuilt).sum()),
                          "rebuilt_only_on_matched": int((~flags_real & flags_rebuilt).sum())})
    return out


def swapped(rebuilt, real, pairs, names) -> pd.DataFrame:
    """Rebuilt steps with ``names`` replaced by the recorded values on the matched steps."""
    a, b = pairs
    out = rebuilt.copy()
    for name in names:
        values = out[name].to_numpy().copy()
        values[b] = real[name].to_numpy()[a]
        out[name] = values
    return out


def training_frame(steps: pd.DataFrame, runs: pd.DataFrame, *, min_confidence: float = 0.0,
                   keep: np.ndarray | None = None) -> pd.DataFrame:
    """Steps with their run knobs and previous step, graph-capture steps dropped (as
    ``load_training_frame`` does), and rebuilt steps below ``min_confidence`` or outside
    ``keep`` (after the previous step is taken, so it stays the batch the engine ran)."""
    frame = add_previous_step(join_knobs(steps, runs[["run_id", *RUN_KNOB_COLUMNS]]))
    kept = (frame.duration_ms > 0).to_numpy() & ~graph_captured(frame)
    if min_confidence > 0:
        kept &= confidence(frame) >= min_confidence
    if keep is not None:
        kept &= keep
    return frame[kept].reset_index(drop=True)


def confidence(steps: pd.DataFrame) -> np.ndarray:
    """The per-step confidence in a rebuilt steps' ``extra``."""
    return np.array([json.loads(e)["confidence"] for e in steps["extra"]])


def fit_and_score(frame: pd.DataFrame, test: pd.DataFrame, test_runs: set) -> dict:
    """Train the default model on ``frame``'s training runs, score on ``test``."""
    train = frame[~frame.run_id.isin(test_runs)]
    started = time.perf_counter()
    model = StepTimeRegressor().fit(train, train.duration_ms.to_numpy(),
                                    groups=train.run_id.to_numpy())
    metrics = regression_metrics(test.duration_ms.to_numpy(), model.predict(test))
    return {"train_steps": int(len(train)), "fit_s": round(time.perf_counter() - started, 1),
            **{k: round(float(metrics[k]), 4) for k in ("mape", "p50_ape", "p90_ape", "r2")}}


def model_comparison(steps, rebuilt, runs, *, ablation: bool = True) -> dict:
    """Held-out MAPE of a model trained on recorded vs on rebuilt steps (same runs); with
    ``ablation`` also trained on rebuilt steps with one column at a time (and then all of
    them) replaced by the recorded one on matched steps."""
    test_runs = set(held_out_runs(runs.run_id.to_numpy()))
    real = training_frame(steps, runs)
    candidates = {"recorded": real, "rebuilt": training_frame(rebuilt, runs),
                  f"rebuilt_confidence_ge_{MIN_TRAIN_CONFIDENCE}": training_frame(
                      rebuilt, runs, min_confidence=MIN_TRAIN_CONFIDENCE)}
    test = real[real.run_id.isin(test_runs)]
    out = {"held_out_runs": len(test_runs), "test_steps": int(len(test))}
    for name, frame in candidates.items():
        out[name] = fit_and_score(frame, test, test_runs)
    out["mape_ratio_rebuilt_vs_recorded"] = round(out["rebuilt"]["mape"] / out["recorded"]["mape"], 3)
    if ablation:
        out["rebuilt_with_recorded_column"] = column_ablation(steps, rebuilt, runs, test, test_runs)
    return out


def column_ablation(steps, rebuilt, runs, test, test_runs) -> dict:
    """Held-out MAPE of models trained on rebuilt steps with recorded columns swapped in."""
    real, ours = with_columns(steps), with_columns(rebuilt)
    pairs = matched_rows(real, ours)
    variants = {name: (name,) for name in SWAPPED_COLUMNS}
    variants["all of them"] = SWAPPED_COLUMNS
    out = {}
    for label, names in variants.items():
        frame = swapped(ours, real, pairs, names).drop(columns=list(PREV_COLUMNS))
        out[label] = fit_and_score(training_frame(frame, runs), test, test_runs)["mape"]
    matched = np.zeros(len(ours), dtype=bool)
    matched[pairs[1]] = True
    frame = swapped(ours, real, pairs, SWAPPED_COLUMNS).drop(columns=list(PREV_COLUMNS))
    out["all of them, unmatched steps left out"] = fit_and_score(
        training_frame(frame, runs, keep=matched), test, test_runs)["mape"]
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform()}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path, default=RESULT)
    parser.add_argument("--no-train", action="store_true", help="skip the model comparison")
    parser.add_argument("--no-ablation", action="store_true",
                        help="skip training with recorded columns swapped in")
    args = parser.parse_args(argv)
    steps, requests, runs = load_sample()
    rebuilt, seconds = rebuild_all(requests, runs)
    table = per_run_accuracy(steps, rebuilt, runs)
    real_cols, rebuilt_cols = with_columns(steps), with_columns(rebuilt)
    agreement = column_agreement(real_cols, rebuilt_cols, matched_rows(real_cols, rebuilt_cols))
    result = {"commit": commit(), "machine": machine(), "gpu": "none (CPU only)",
              "data": {"runs": int(len(runs)), "recorded_steps": int(len(steps)),
                       "rebuilt_steps": int(len(rebuilt)), "requests": int(len(requests))},
              "rebuild_seconds": round(seconds, 2),
              "summary": summarise(table),
              "column_agreement": agreement,
              "per_run": table.round(5).to_dict(orient="records")}
    if not args.no_train:
        result["model"] = model_comparison(steps, rebuilt, runs, ablation=not args.no_ablation)
    write_record(args.json_out.stem, result, args=args, results_dir=args.json_out.parent,
                 measured_on=sorted(runs.gpu_name.dropna().unique()))
    print(json.dumps({k: result[k] for k in ("rebuild_seconds", "column_agreement", "model")
                      if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
