"""Should the simulator's point prediction be the mean of noisy replications? Decided on the
TRAINING runs only, never the held-out ones.

The step-time model is trained on the training configurations' steps (as in ``sim_fidelity.py``).
Each CUDA-graph training configuration is left out of the capture-cost fit in turn (cost terms and
noise from the other training configurations' captures), and its runs are simulated:

- once with every capture at its expected cost (the simulator's default), and
- ``--replications`` times with the fitted per-capture and per-run capture-cost noise (the mean
  of those, and whether the measurement lies inside their 10-90 % band).

Prints, per estimator, how many runs have mean TTFT, mean TPOT and output throughput within 10 %
of the measurement, and the mean absolute errors.

Usage:
    python benchmarks/capture_noise_check.py [--replications 16] [--search-trials 6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import DEFAULT_FEATURE_SET, KNOB_COLUMNS, PREV_COLUMNS, RAW_COLUMNS
from servetune.models._engine_constants import capture_fit
from servetune.tuner.simulator._fidelity import (
    HELD_OUT,
    METRICS,
    capture_noise,
    sample_frame,
    simulate_replay,
    train_step_model,
)

COLUMNS = [*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]
WARMUP = 4  # the collector's warm-up requests before each run's clock


def _errors(sims: list[dict], run: pd.Series) -> list[float]:
    return [(np.mean([s[label] for s in sims]) / float(run[column]) - 1) * 100
            for column, label in METRICS]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    parser.add_argument("--replications", type=int, default=16)
    parser.add_argument("--search-trials", type=int, default=6)
    args = parser.parse_args(argv)
    runs, requests, frame, captured = sample_frame(Path(args.samples))
    training = runs[~runs["config_name"].isin(HELD_OUT)]
    mine = frame.run_id.isin(set(training.run_id))
    model = train_step_model(frame[mine & ~captured & (frame.duration_ms > 0)],
                             DEFAULT_FEATURE_SET, args.search_trials, 0)
    compiled = model.compile()
    captures = frame[mine & captured]
    predicted = model.predict(captures[COLUMNS])
    config_of = captures.run_id.map(training.set_index("run_id")["config_name"]).to_numpy()
    rows = []
    for name, group in training[training["cuda_graph"]].groupby("config_name"):
        others = config_of != name
        fits = capture_fit(captures[others], predicted[others], runs)
        spread = capture_noise(captures[others], predicted[others], runs, fits)
        for _, run in group.iterrows():
            mode = bool(run.async_batching)
            expected, _ = simulate_replay(run, requests, fits, compiled, WARMUP)
            draws = [simulate_replay(run, requests, fits, compiled, WARMUP, seed=seed,
                                     cuda_graph_capture_noise_cv=spread[mode][0],
                                     cuda_graph_capture_run_cv=spread[mode][1])[0]
                     for seed in range(args.replications)]
            inside = [bool(np.percentile([s[label] for s in draws], 10) <= float(run[column])
                           <= np.percentile([s[label] for s in draws], 90))
                      for column, label in METRICS]
            rows.append({"run_id": run.run_id, "expected": _errors([expected], run),
                         "replication_mean": _errors(draws, run), "inside": inside})
    report = {"training_runs_simulated": len(rows), "replications": args.replications}
    for estimator in ("expected", "replication_mean"):
        errors = np.abs(np.array([row[estimator] for row in rows]))
        report[estimator] = {
            "all_three_within_10%": int((errors <= 10).all(axis=1).sum()),
            **{f"{label}_within_10%": int((errors[:, k] <= 10).sum())
               for k, (_, label) in enumerate(METRICS)},
            **{f"{label}_mean_abs_err_%": float(errors[:, k].mean())
               for k, (_, label) in enumerate(METRICS)}}
    inside = np.array([row["inside"] for row in rows])
    report["measured_inside_p10_p90"] = {label: int(inside[:, k].sum())
                                         for k, (_, label) in enumerate(METRICS)}
    print(json.dumps(report, indent=2))
    write_record("capture_noise_check", report, args=args, measured_on=measured_gpus(args.samples))
    return report


if __name__ == "__main__":
    main()
