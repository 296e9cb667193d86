"""Do the shipped sample's two H200 machines agree? Median duration of synchronous CUDA-graph
steps (graph-capture steps excluded) per padded shape (query tokens padded to 64, KV read padded
to 16384, as the engine pads them), first sweep (run ids h200a-/h200b-) vs part C (h200c-), for
the shapes with at least 5 steps on both. The configurations differ between the two sweeps, so
the differences hold configuration effects (sequences per step, block size) as well.

Usage:
    python benchmarks/sample_machines.py [--samples DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import graph_captured
from servetune.models._engine_constants import _padded


def shape_medians(steps: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (padded query, padded KV) shape: median step duration on each machine, and the
    relative difference of part C from the first sweep in %."""
    config = runs.set_index("run_id")["config"].map(json.loads)
    s = steps.merge(runs[["run_id", "async_batching", "cuda_graph"]], on="run_id")
    s = s[s.cuda_graph & ~s.async_batching & ~graph_captured(s)]
    q = (s.prefill_tokens + s.decode_tokens).to_numpy()
    budget = s.run_id.map(lambda r: config[r]["max_batch_tokens"]).to_numpy()
    pages = s.run_id.map(lambda r: config[r]["num_blocks"] * config[r]["block_size"]).to_numpy()
    s = s.assign(q_pad=_padded(q, 64, budget),
                 kv_pad=_padded(s.kv_tokens_sum.to_numpy() - q, 16384, pages),
                 machine=np.where(s.run_id.str.startswith("h200c"), "part_c", "first"))
    t = s.groupby(["q_pad", "kv_pad", "machine"]).duration_ms.agg(["median", "count"])
    t = t[t["count"] >= 5].reset_index()
    t = t.pivot(index=["q_pad", "kv_pad"], columns="machine", values="median").dropna()
    return t.assign(diff_pct=(t.part_c / t.first - 1) * 100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    args = parser.parse_args(argv)
    root = Path(args.samples)
    table = shape_medians(pd.read_parquet(root / "steps.parquet"),
                          pd.read_parquet(root / "runs.parquet"))
    print(table.round(2).to_string())
    summary = {"shapes": len(table), "median_abs_diff_pct": float(table.diff_pct.abs().median()),
               "max_abs_diff_pct": float(table.diff_pct.abs().max())}
    print(json.dumps(summary, indent=2))
    write_record("sample_machines", summary, args=args, measured_on=measured_gpus(args.samples))
    return summary


if __name__ == "__main__":
    main()
