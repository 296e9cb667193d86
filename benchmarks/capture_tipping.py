"""How sensitive is one held-out run's simulation to the CUDA-graph capture cost?

The step-time model and the capture fit are those of ``sim_fidelity.py`` (training configurations
only). The run is then simulated with one flat capture cost per new padded shape (no per-token
terms; the fitted repeat factor kept) from ``--low`` to ``--high`` ms, and each simulation's mean
TTFT and TPOT are compared with the measurement. The run's measured captures are given beside:
their median extra time over the step-time model, new shapes and shapes captured before.

Usage:
    python benchmarks/capture_tipping.py [--run g-pf-1024-bs256-sync-poisson12]
                                         [--low 50 --high 72 --step 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from servetune.data._benchmark_record import RESULTS_DIR, measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import DEFAULT_FEATURE_SET, KNOB_COLUMNS, PREV_COLUMNS, RAW_COLUMNS
from servetune.models._engine_constants import capture_fit, capture_terms
from servetune.tuner.simulator._fidelity import (
    HELD_OUT,
    sample_frame,
    sim_config_with_capture,
    simulate_replay,
    train_step_model,
)

COLUMNS = [*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]
WARMUP = 4  # the collector's warm-up requests before each run's clock


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    parser.add_argument("--run", default="g-pf-1024-bs256-sync-poisson12",
                        help="a substring of the held-out run's id")
    parser.add_argument("--low", type=float, default=50.0)
    parser.add_argument("--high", type=float, default=72.0)
    parser.add_argument("--step", type=float, default=1.0)
    parser.add_argument("--search-trials", type=int, default=6)
    parser.add_argument("--json", dest="json_out", default=None,
                        help="the record's path (default: benchmarks/results/<script>.json)")
    args = parser.parse_args(argv)
    runs, requests, frame, captured = sample_frame(Path(args.samples))
    held = runs["config_name"].isin(HELD_OUT)
    chosen = runs[held & runs.run_id.str.contains(args.run, regex=False)]
    if len(chosen) != 1:
        parser.error(f"--run {args.run!r} matches {len(chosen)} held-out runs; give one")
    run = chosen.iloc[0]
    mine = frame.run_id.isin(set(runs.loc[~held, "run_id"]))
    model = train_step_model(frame[mine & ~captured & (frame.duration_ms > 0)],
                             DEFAULT_FEATURE_SET, args.search_trials, 0)
    compiled = model.compile()
    captures = frame[mine & captured]
    fits = capture_fit(captures, model.predict(captures[COLUMNS]), runs)
    config = sim_config_with_capture(run, fits)
    own = frame[(frame.run_id == run.run_id).to_numpy() & captured]
    extra = own.duration_ms.to_numpy() - model.predict(own[COLUMNS])
    _, _, repeated = capture_terms(own, runs)
    sweep = []
    for cost in np.arange(args.low, args.high + args.step / 2, args.step):
        sim, result = simulate_replay(run, requests, fits, compiled, WARMUP,
                                      cuda_graph_capture_ms=float(cost),
                                      cuda_graph_capture_ms_per_token=0.0,
                                      cuda_graph_capture_ms_per_kv_token=0.0)
        sweep.append({"capture_ms": float(cost),
                      "ttft_err_%": (sim["ttft_ms"] / run.ttft_mean_ms - 1) * 100,
                      "tpot_err_%": (sim["tpot_ms"] / run.tpot_mean_ms - 1) * 100,
                      "captures": int(result.metrics["graph_captures"])})
        print(json.dumps(sweep[-1]), file=sys.stderr)
    report = {"run_id": run.run_id,
              "measured_captures": int(len(own)),
              "measured_median_extra_ms_new": float(np.median(extra[~repeated])),
              "measured_median_extra_ms_repeated": float(np.median(extra[repeated])),
              "fitted_capture_ms_for_budget": config["cuda_graph_capture_ms"],
              "repeat_factor": config["cuda_graph_capture_repeat_factor"],
              "sweep": sweep}
    print(json.dumps(report, indent=2))
    out = Path(args.json_out) if args.json_out else RESULTS_DIR / "capture_tipping.json"
    write_record(out.stem, report, args=args, measured_on=measured_gpus(args.samples),
                 results_dir=out.parent)
    return report


if __name__ == "__main__":
    main()
