"""When does the engine timestamp a batch's tokens? For every request of the shipped H200 sample
whose prompt fits one step (<= 256 tokens), count the recorded steps that start at or after its
arrival and end by its first token. With synchronous batching the step that computes the token
also returns it (1 step); if async batching reads a batch's tokens back while launching the next
batch, at least 2 steps separate arrival and first token. The simulator stamps async tokens at
the end of the following step accordingly (``tuner/simulator/_kernel.py``, ``lag_tokens``).

Usage:
    python benchmarks/token_readback.py [--samples DIR] [--max-prompt N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES


def steps_to_first_token(steps: pd.DataFrame, requests: pd.DataFrame) -> np.ndarray:
    """Per request: recorded steps that start at or after its arrival and end by its first
    token (1 ms of timestamp slack)."""
    start = steps["start_s"].to_numpy()
    end = start + steps["duration_ms"].to_numpy() / 1e3
    first = (requests["arrival_s"] + requests["ttft_ms"] / 1e3).to_numpy()
    return np.array([int(((start >= a) & (end <= t + 1e-3)).sum())
                     for a, t in zip(requests["arrival_s"].to_numpy(), first)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    parser.add_argument("--max-prompt", type=int, default=256)
    args = parser.parse_args(argv)
    root = Path(args.samples)
    steps = pd.read_parquet(root / "steps.parquet")
    requests = pd.read_parquet(root / "requests.parquet")
    runs = pd.read_parquet(root / "runs.parquet").set_index("run_id")
    counts: dict[str, dict[int, int]] = {"sync": {}, "async": {}}
    for run_id, reqs in requests[requests.input_tokens <= args.max_prompt].groupby("run_id"):
        mode = "async" if runs.loc[run_id, "async_batching"] else "sync"
        n = steps_to_first_token(steps[steps.run_id == run_id], reqs)
        for value, count in zip(*np.unique(np.minimum(n, 3), return_counts=True)):
            counts[mode][int(value)] = counts[mode].get(int(value), 0) + int(count)
    summary = {mode: {("3+" if k == 3 else str(k)): v for k, v in sorted(c.items())}
               for mode, c in counts.items()}
    figures = {"max_prompt_tokens": args.max_prompt,
               "requests_by_steps_from_arrival_to_first_token": summary}
    print(json.dumps(figures, indent=2))
    write_record("token_readback", figures, args=args, measured_on=measured_gpus(args.samples))
    return summary


if __name__ == "__main__":
    main()
