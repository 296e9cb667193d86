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
from servetune.features import RUN_KNOB_COLUMNS, add_previous_step, graph_captured, join_knobs
from servetune.models import StepTimeRegressor, held_out_runs, regression_metrics

RESULT = Path(__file__).resolve().parent / "results" / "step_reconstruction.json"
MIN_TRAIN_CONFIDENCE = 0.5


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


def training_frame(steps: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Steps with their run knobs and previous step, graph-capture steps dropped (as
    ``load_training_frame`` does)."""
    frame = add_previous_step(join_knobs(steps, runs[["run_id", *RUN_KNOB_COLUMNS]]))
    keep = (frame.duration_ms > 0) & ~pd.Series(graph_captured(frame), index=frame.index)
    return frame[keep].reset_index(drop=True)


def confidence(steps: pd.DataFrame) -> np.ndarray:
    """The per-step confidence in a rebuilt steps' ``extra``."""
    return np.array([json.loads(e)["confidence"] for e in steps["extra"]])


def model_comparison(steps, rebuilt, runs) -> dict:
    """Held-out MAPE of a model trained on recorded vs on rebuilt steps (same runs)."""
    test_runs = set(held_out_runs(runs.run_id.to_numpy()))
    real = training_frame(steps, runs)
    trusted = rebuilt[confidence(rebuilt) >= MIN_TRAIN_CONFIDENCE]
    candidates = {"recorded": real, "rebuilt": training_frame(rebuilt, runs),
                  f"rebuilt_confidence_ge_{MIN_TRAIN_CONFIDENCE}": training_frame(trusted, runs)}
    test = real[real.run_id.isin(test_runs)]
    out = {"held_out_runs": len(test_runs), "test_steps": int(len(test))}
    for name, frame in candidates.items():
        train = frame[~frame.run_id.isin(test_runs)]
        started = time.perf_counter()
        model = StepTimeRegressor().fit(train, train.duration_ms.to_numpy(),
                                        groups=train.run_id.to_numpy())
        metrics = regression_metrics(test.duration_ms.to_numpy(), model.predict(test))
        out[name] = {"train_steps": int(len(train)), "fit_s": round(time.perf_counter() - started, 1),
                     **{k: round(float(metrics[k]), 4) for k in ("mape", "p50_ape", "p90_ape", "r2")}}
    out["mape_ratio_rebuilt_vs_recorded"] = round(out["rebuilt"]["mape"] / out["recorded"]["mape"], 3)
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
    args = parser.parse_args(argv)
    steps, requests, runs = load_sample()
    rebuilt, seconds = rebuild_all(requests, runs)
    table = per_run_accuracy(steps, rebuilt, runs)
    result = {"commit": commit(), "machine": machine(), "gpu": "none (CPU only)",
              "data": {"runs": int(len(runs)), "recorded_steps": int(len(steps)),
                       "rebuilt_steps": int(len(rebuilt)), "requests": int(len(requests))},
              "rebuild_seconds": round(seconds, 2),
              "summary": summarise(table),
              "per_run": table.round(5).to_dict(orient="records")}
    if not args.no_train:
        result["model"] = model_comparison(steps, rebuilt, runs)
    write_record(args.json_out.stem, result, args=args, results_dir=args.json_out.parent,
                 measured_on=sorted(runs.gpu_name.dropna().unique()))
    print(json.dumps({k: result[k] for k in ("rebuild_seconds", "summary", "model")
                      if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
