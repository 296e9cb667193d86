"""Which recorded step first schedules a request that arrives while a step runs?

For every request of the shipped H200 sample that arrives during recorded step ``j`` (between its
start and the next step's start), find the step that first scheduled it (``arrival_s +
queue_ms``: the engine stamps a request's lifespan start when it leaves the pending state, in
``_schedule_request``). Only requests for which step ``j + 1`` had room are counted (fewer
tokens than ``max_batch_tokens`` and fewer sequences than ``max_requests_per_batch``), so that
a later step means the scheduler had not seen the request yet (or its KV cache was full: the
runs with such requests are listed). A recorded step is one iteration
of the engine's generation loop, which schedules its batch before launching it; if async batching
scheduled batch ``j + 1`` while step ``j`` ran, mid-step arrivals would wait for ``j + 2``.

Usage:
    python benchmarks/async_admission.py [--samples DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES


def steps_after_arrival(steps: pd.DataFrame, requests: pd.DataFrame, max_tokens: int,
                        max_seqs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per request that arrived during a recorded step ``j`` with room in step ``j + 1``: how
    many steps after ``j`` it was first scheduled, and its arrival's offset into ``j`` (ms)."""
    s = steps.sort_values("step_index")
    start = s["start_s"].to_numpy()
    tokens = (s["prefill_tokens"] + s["decode_tokens"]).to_numpy()
    seqs = s["num_seqs"].to_numpy()
    arrival = requests["arrival_s"].to_numpy()
    scheduled = arrival + requests["queue_ms"].to_numpy() / 1e3
    during = np.searchsorted(start, arrival, side="right") - 1
    first = np.searchsorted(start, scheduled, side="right") - 1
    ok = (during >= 0) & (during + 1 < len(start)) & np.isfinite(scheduled)
    nxt = np.minimum(during + 1, len(start) - 1)
    ok &= (tokens[nxt] < max_tokens) & (seqs[nxt] < max_seqs)
    return (first - during)[ok], ((arrival - start[np.maximum(during, 0)]) * 1e3)[ok]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    args = parser.parse_args(argv)
    root = Path(args.samples)
    steps = pd.read_parquet(root / "steps.parquet")
    requests = pd.read_parquet(root / "requests.parquet")
    runs = pd.read_parquet(root / "runs.parquet").set_index("run_id")
    counts = {"sync": {}, "async": {}}
    offsets = {"sync": [], "async": []}
    later_by_run = {}
    for run_id, reqs in requests.groupby("run_id"):
        config = json.loads(runs.loc[run_id, "config"])
        mode = "async" if config["use_async_batching"] else "sync"
        later, offset = steps_after_arrival(steps[steps.run_id == run_id], reqs,
                                            config["max_batch_tokens"],
                                            config["max_requests_per_batch"])
        for value in later:
            key = str(min(int(value), 3)) if value < 3 else "3+"
            counts[mode][key] = counts[mode].get(key, 0) + 1
        offsets[mode].extend(offset.tolist())
        if (later >= 2).any():
            later_by_run[run_id] = f"{int((later >= 2).sum())} of {len(later)}"
    report = {"requests_by_steps_after_the_arrival_step": counts,
              "arrival_offset_into_the_step_ms": {
                  mode: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                         "max": float(np.max(v))} for mode, v in offsets.items() if v},
              # the KV cache, not the token budget, holds requests back in the small-cache runs
              "runs_with_requests_scheduled_2_or_more_steps_later": later_by_run}
    print(json.dumps(report, indent=2))
    write_record("async_admission", report, args=args, measured_on=measured_gpus(args.samples))
    return report


if __name__ == "__main__":
    main()
