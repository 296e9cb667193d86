"""Does the simulator capture CUDA graphs where the engine did? Every CUDA-graph run of the
shipped H200 sample is replayed step by step through the simulator's own graph key
(``tuner.simulator._transformers._graph_key``, the engine's ``_get_graph_key``: padded query
tokens, padded KV read, padded longest key; per IO pair with async batching) on the measured
batch compositions; a step "captures" when its key is new. Compared with the collector's
``graph_captured`` flags: steps both flag, steps only the simulator's key flags, steps only the
engine flagged; and the share of the run's step time spent in capture steps. The collector's 4
unrecorded warm-up requests (32 prompt tokens, 4 outputs) captured some small shapes before each
run's clock; their keys are not in the trace, so a few "simulator only" steps per run are
expected.

Usage:
    python benchmarks/capture_keys.py [--samples DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import graph_captured
from servetune.models._engine_constants import CAPTURE_KEYS
from servetune.tuner.simulator._policies import get_policy
from servetune.tuner.simulator._transformers import _graph_key
from servetune.tuner.simulator._fidelity import labelled_runs, sim_config


def compare_run(steps: pd.DataFrame, run: pd.Series) -> dict:
    """Capture flags of one run's measured steps: engine vs the simulator's graph key."""
    policy = get_policy("transformers")
    # the graph key reads the padding and cache sizes, not the capture cost
    p = policy.params(policy.resolve({**sim_config(run), **dict.fromkeys(CAPTURE_KEYS, 0.0)}))
    asynchronous = bool(json.loads(run["config"])["use_async_batching"])
    fast = steps["extra"].fillna("").str.contains('"decode_fast_path":true', regex=False)
    engine = graph_captured(steps)
    seen: set[int] = set()
    both = sim_only = engine_only = 0
    for k, row in enumerate(steps.itertuples()):
        q = row.prefill_tokens + row.decode_tokens
        pair = row.step_index % 2 if asynchronous else 0
        key, _, _, _ = _graph_key(p, row.num_seqs, q, row.kv_tokens_sum - q,
                                  row.kv_tokens_max, bool(fast.iloc[k]), pair)
        new = key not in seen
        seen.add(key)
        both += new and engine[k]
        sim_only += new and not engine[k]
        engine_only += engine[k] and not new
    duration = steps["duration_ms"].to_numpy()
    return {"run_id": run.run_id, "async": asynchronous, "steps": len(steps),
            "capture_time_share": round(float(duration[engine].sum() / duration.sum()), 3),
            "engine_captures": int(engine.sum()), "both": int(both),
            "simulator_only": int(sim_only), "engine_only": int(engine_only)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    args = parser.parse_args(argv)
    root = Path(args.samples)
    steps = pd.read_parquet(root / "steps.parquet").sort_values(["run_id", "step_index"])
    runs = labelled_runs(root / "runs.parquet")
    rows = [compare_run(steps[steps.run_id == run.run_id], run)
            for _, run in runs[runs["cuda_graph"]].iterrows()]
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False), file=sys.stderr)
    summary = {"runs": len(table), "engine_captures": int(table.engine_captures.sum()),
               "both": int(table.both.sum()), "simulator_only": int(table.simulator_only.sum()),
               "engine_only": int(table.engine_only.sum()),
               "simulator_only_per_run_max": int(table.simulator_only.max())}
    print(json.dumps(summary, indent=2))
    write_record("capture_keys", summary, args=args, measured_on=measured_gpus(args.samples))
    return summary


if __name__ == "__main__":
    main()
