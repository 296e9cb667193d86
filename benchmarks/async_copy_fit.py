"""The async mask-copy floor as the simulator models it: the H2D bandwidth fitted from the
shipped H200 sample (``fit_h2d_bandwidth``), and held-out predictions of the two 0.9-memory
async runs from a fit without them.

    python benchmarks/async_copy_fit.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.models._engine_constants import fit_h2d_bandwidth, small_decode_floor_ms
from servetune.tuner.simulator import resolve_config
from servetune.tuner.simulator._policies import async_copy_floor_ms

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
KEYS = ("use_async_batching", "max_batch_tokens", "block_size", "num_blocks")


def main() -> None:
    runs = pd.read_parquet(SAMPLES / "runs.parquet",
                           columns=["run_id", "engine", "config", "provenance"])
    steps = pd.read_parquet(SAMPLES / "steps.parquet", columns=[
        "run_id", "step_index", "num_seqs", "prefill_tokens", "duration_ms", "extra"])
    all_fit, source = fit_h2d_bandwidth(steps, runs)
    held_out = runs["run_id"].str.contains("-a-[ge]-auto90-")
    fit, _ = fit_h2d_bandwidth(steps, runs[~held_out])
    rows = []
    for run in runs[held_out].itertuples():
        config = {k: v for k, v in json.loads(run.config).items() if k in KEYS}
        predicted = async_copy_floor_ms(resolve_config("transformers-cb",
                                                       {**config, "h2d_gb_per_s": fit}))
        measured = small_decode_floor_ms(steps[steps["run_id"] == run.run_id])
        rows.append({"run": run.run_id, "measured_floor_ms": round(measured, 1),
                     "predicted_floor_ms": round(predicted, 1),
                     "error_pct": round(100 * (predicted / measured - 1), 1)})
    figures = {"h2d_gb_per_s_all_runs": round(all_fit, 2), "source": source,
               "h2d_gb_per_s_without_held_out": round(fit, 2), "held_out": rows}
    print(json.dumps(figures, indent=1))
    write_record("async_copy_fit", figures, measured_on=measured_gpus(SAMPLES))


if __name__ == "__main__":
    main()
