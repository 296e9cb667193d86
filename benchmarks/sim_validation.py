"""Simulator validation on the TRAINING configurations only: leave one configuration out.

``sim_fidelity.py`` scores the simulator on five held-out configurations. Choosing a simulator
change by those 14 runs would fit the test set, so changes are judged here instead, where the
held-out configurations take no part at all. For each of the nine training configurations in
turn:

1. train the step-time model (as ``sim_fidelity.py``: graph-capture steps excluded, the same
   hyperparameter search) on the steps of the OTHER eight configurations,
2. fit the capture cost on their captures,
3. replay each run of the left-out configuration through the simulator and compare mean TTFT,
   mean TPOT and output throughput with the measurement.

Prints the count of runs with all three within 10 % (and 5 %), per-metric counts and mean absolute
errors, split by batching mode; ``--json`` writes every run's errors.

Usage:
    python benchmarks/sim_validation.py [--search-trials 6] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from servetune.data._benchmark_record import RESULTS_DIR, measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import DEFAULT_FEATURE_SET, KNOB_COLUMNS, PREV_COLUMNS, RAW_COLUMNS
from servetune.models._engine_constants import capture_fit
from servetune.tuner.simulator._fidelity import (
    HELD_OUT,
    METRICS,
    sample_frame,
    simulate_replay,
    train_step_model,
)

COLUMNS = [*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]
WARMUP = 4  # the collector's warm-up requests before each run's clock
LABELS = [label for _, label in METRICS]


def summary(table: pd.DataFrame) -> dict:
    """Counts within 10 % / 5 % and mean absolute errors of a table of per-run errors."""
    errors = table[[f"{label}_err_%" for label in LABELS]].abs().to_numpy()
    return {"runs": len(table),
            "all_three_within_10%": int((errors <= 10).all(axis=1).sum()),
            "all_three_within_5%": int((errors <= 5).all(axis=1).sum()),
            **{f"{label}_within_10%": int((errors[:, k] <= 10).sum())
               for k, label in enumerate(LABELS)},
            **{f"{label}_mean_abs_err_%": round(float(errors[:, k].mean()), 2)
               for k, label in enumerate(LABELS)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    parser.add_argument("--search-trials", type=int, default=6)
    parser.add_argument("--json", dest="json_out", default=None,
                        help="the record's path (default: benchmarks/results/<script>.json)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    runs, requests, frame, captured = sample_frame(Path(args.samples))
    training = runs[~runs["config_name"].isin(HELD_OUT)]
    config_of = frame.run_id.map(training.set_index("run_id")["config_name"])
    rows = []
    for name, group in training.groupby("config_name"):
        others = (config_of.notna() & (config_of != name)).to_numpy()
        model = train_step_model(frame[others & ~captured & (frame.duration_ms > 0).to_numpy()],
                                 DEFAULT_FEATURE_SET, args.search_trials, 0)
        compiled = model.compile()
        captures = frame[others & captured]
        fits = capture_fit(captures, model.predict(captures[COLUMNS]), runs)
        for _, run in group.iterrows():
            sim, _ = simulate_replay(run, requests, fits, compiled, WARMUP)
            row = {"run_id": run.run_id, "config": name, "workload": run.workload_name,
                   "async": bool(run.async_batching), "cuda_graph": bool(run.cuda_graph)}
            for column, label in METRICS:
                row[f"{label}_err_%"] = (sim[label] / float(run[column]) - 1) * 100
            rows.append(row)
        print(f"{name}: {len(group)} runs", file=sys.stderr)
    table = pd.DataFrame(rows)
    report = {"left_out_configurations": int(training.config_name.nunique()),
              "search_trials": args.search_trials, "all": summary(table),
              **{f"async={mode}": summary(part) for mode, part in table.groupby("async")},
              "wall_s": round(time.perf_counter() - t0, 1)}
    pd.set_option("display.width", 200)
    print(table.round(1).to_string(), file=sys.stderr)
    print(json.dumps(report, indent=2))
    out = Path(args.json_out) if args.json_out else RESULTS_DIR / "sim_validation.json"
    write_record(out.stem, {**report, "runs": rows}, args=args,
                 measured_on=measured_gpus(args.samples), results_dir=out.parent)
    return report


if __name__ == "__main__":
    main()
