"""Async mask copy vs KV cache size: the step floor of transformers continuous batching.

Data: ``benchmarks/data/async_cache/`` (collected on an NVIDIA H200 by
``async_cache_sweep.toml``, workload ``light3``, and ``async_cache_extras.toml``). With async
batching and ``paged|sdpa`` the engine copies its whole static attention mask, ``max_batch_tokens
x (cache tokens + max_batch_tokens)`` bf16, plus the index tensors, host-to-device before every
forward pass (:func:`servetune.data.engines._transformers_resolve.h2d_bytes_per_step`, from the
transformers 5.17.0 source). The copy overlaps the previous step's compute, so the model of the
async step floor is

    floor = max(compute floor, H2D bytes per step / bandwidth)

where the compute floor is the floor of the run with the same batching and CUDA-graph setting
and the smallest cache (32 k tokens, whose copy is a fraction of it), synchronous batching copies
no static tensor (its prediction is its compute floor), and the effective host-to-device bandwidth is ONE constant fitted across all async runs of the
sweep (least squares on the log of the floors). The bandwidth is a property of the GPU host, so
it belongs to a trained model, not to code: this script fits and reports it.

Per run it reports the cache tokens (num_blocks x block_size as the engine resolved them), the
bytes copied per decode step, the median and 10th percentile duration of steady steps with at
most 8 sequences and no prefill (steps that captured a CUDA graph and the step after one are
left out: a capture step also waits for the copy, so the next step's copy is already done), and
the model's prediction. Synchronous runs are listed with the same figures, to show whether they
scale with the cache (their prediction is the compute floor). A second table gives the request
metrics of the engine default and the eager vs CUDA-graph pair (``async_cache_extras.toml``).

Usage:
    python benchmarks/async_cache_floor.py [--data DIR] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import RESULTS_DIR, write_record
from servetune.data.engines._transformers_resolve import (
    h2d_bytes_per_step,
    mask_copy_bytes_per_step,
)
from servetune.features import graph_captured

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "async_cache"
SWEEP_WORKLOAD = "light3"
MAX_SEQS = 8
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def load(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs (one row each, with the copy sizes) and their steady floor steps."""
    runs = pd.read_parquet(directory / "runs.parquet")
    steps = pd.read_parquet(directory / "steps.parquet")
    rows = []
    for run in runs.itertuples():
        config, provenance = json.loads(run.config), json.loads(run.provenance)
        extra = json.loads(run.extra)
        resolved = {**config, "attn_implementation": provenance["attn_implementation"],
                    "dtype_bytes": DTYPE_BYTES[provenance["dtype"]], "num_layer_groups": 1}
        h2d = h2d_bytes_per_step(resolved, reads_cache=True)
        rows.append({"run_id": run.run_id, "config": extra["config_name"],
                     "workload": json.loads(run.workload)["name"],
                     "async_batching": bool(run.async_batching), "cuda_graph": bool(run.cuda_graph),
                     "max_batch_tokens": int(config["max_batch_tokens"]),
                     "block_size": int(config["block_size"]),
                     "cache_tokens": int(config["num_blocks"]) * int(config["block_size"]),
                     "mask_bytes": mask_copy_bytes_per_step(resolved),
                     "h2d_bytes": h2d["total"], "gpu": provenance.get("gpu_name"),
                     "gpu_uuid": provenance.get("gpu_uuid"),
                     "started_at": str(run.started_at), "tpot_mean_ms": run.tpot_mean_ms,
                     "tpot_p50_ms": run.tpot_p50_ms, "ttft_p50_ms": run.ttft_p50_ms,
                     "ttft_p90_ms": run.ttft_p90_ms, "duration_s": run.duration_s,
                     "output_tok_s": run.output_throughput_tok_s, "steps": len(steps[
                         steps.run_id == run.run_id])})
    table = pd.DataFrame(rows)
    steps = steps.sort_values(["run_id", "step_index"]).reset_index(drop=True)
    captured = graph_captured(steps)
    after_capture = np.r_[False, captured[:-1]] & np.r_[False, (steps.run_id.to_numpy()[1:]
                                                                == steps.run_id.to_numpy()[:-1])]
    steady = ~captured & ~after_capture
    floor = steps[steady & (steps.num_seqs <= MAX_SEQS) & (steps.prefill_tokens == 0)]
    return table, floor


def floors(table: pd.DataFrame, floor_steps: pd.DataFrame) -> pd.DataFrame:
    stats = floor_steps.groupby("run_id").duration_ms.agg(
        floor_steps="size", median_ms="median", p10_ms=lambda d: float(np.percentile(d, 10)))
    return table.join(stats, on="run_id")


def compute_floors(table: pd.DataFrame) -> dict[tuple[bool, bool], float]:
    """Per (async, CUDA graphs): the median floor of the sweep's run with the smallest cache."""
    sweep = table[table.workload == SWEEP_WORKLOAD]
    out = {}
    for (is_async, graphs), group in sweep.groupby(["async_batching", "cuda_graph"]):
        out[(bool(is_async), bool(graphs))] = float(
            group.sort_values("cache_tokens").iloc[0].median_ms)
    return out


def predict(table: pd.DataFrame, base: dict[tuple[bool, bool], float],
            bandwidth: float) -> np.ndarray:
    """Floor = max(compute floor, h2d bytes / bandwidth) in ms; bandwidth in bytes/s."""
    compute = np.array([base.get((bool(a), bool(g)), np.nan)
                        for a, g in zip(table.async_batching, table.cuda_graph)])
    copy_ms = table.h2d_bytes.to_numpy(dtype=float) / bandwidth * 1e3
    return np.maximum(compute, copy_ms)


def fit_bandwidth(table: pd.DataFrame, base: dict[tuple[bool, bool], float]) -> float:
    """The one bandwidth (bytes/s) minimising the squared log error of the async floors."""
    fit = table[(table.workload == SWEEP_WORKLOAD) & table.async_batching]
    grid = np.exp(np.linspace(np.log(1e9), np.log(500e9), 20001))
    measured = np.log(fit.median_ms.to_numpy(dtype=float))
    errors = [np.sum((np.log(predict(fit, base, bw)) - measured) ** 2) for bw in grid]
    return float(grid[int(np.argmin(errors))])


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    table, floor_steps = load(args.data)
    table = floors(table, floor_steps)
    base = compute_floors(table)
    bandwidth = fit_bandwidth(table, base)
    table["copy_ms"] = table.h2d_bytes / bandwidth * 1e3
    table["predicted_ms"] = predict(table, base, bandwidth)
    table["error_pct"] = (table.predicted_ms / table.median_ms - 1) * 100

    sweep = table[table.workload == SWEEP_WORKLOAD].sort_values(
        ["async_batching", "cuda_graph", "cache_tokens"], ascending=[False, False, True])
    gpus = sorted({f"{g} ({u})" for g, u in zip(table.gpu, table.gpu_uuid)})
    print(f"GPU: {', '.join(gpus)}")
    print("compute floors (median floor at the smallest cache): " + ", ".join(
        f"{'async' if a else 'sync'} {'CUDA graphs' if g else 'eager'} {v:.2f} ms"
        for (a, g), v in sorted(base.items(), reverse=True)))
    print(f"fitted effective H2D bandwidth: {bandwidth / 1e9:.1f} GB/s "
          f"(one constant over {int(sweep.async_batching.sum())} async runs)")
    direct = args.data / "h2d_copy.json"
    if direct.exists():
        best = {k: v["GBps_best"] for k, v in json.loads(direct.read_text()).items()}
        print("direct pinned host-to-device copy on the same host: "
              + ", ".join(f"{float(k):g} GB {v:.1f} GB/s" for k, v in best.items()))
    print()
    print("| config | batching | graphs | cache tokens | H2D GB/step | floor steps | median ms "
          "| p10 ms | copy ms | predicted ms | error |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sweep.itertuples():
        print(f"| {r.config} | {'async' if r.async_batching else 'sync'} | {'yes' if r.cuda_graph else 'no'} "
              f"| {r.cache_tokens:,} | {r.h2d_bytes / 1e9:.3f} | {r.floor_steps} "
              f"| {r.median_ms:.1f} | {r.p10_ms:.1f} | {r.copy_ms:.1f} | {r.predicted_ms:.1f} "
              f"| {r.error_pct:+.0f} % |")
    extras = table[table.workload != SWEEP_WORKLOAD].sort_values(["workload", "config"])
    if len(extras):
        print()
        print("| workload | config | graphs | max_batch_tokens | block | cache tokens | median ms "
              "(<= 8 seqs, decode) | TPOT mean ms | TPOT p50 ms | TTFT p50 ms | output tok/s |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in extras.itertuples():
            print(f"| {r.workload} | {r.config} | {'yes' if r.cuda_graph else 'no'} "
                  f"| {r.max_batch_tokens} | {r.block_size} | {r.cache_tokens:,} "
                  f"| {r.median_ms:.1f} | {r.tpot_mean_ms:.1f} | {r.tpot_p50_ms:.1f} "
                  f"| {r.ttft_p50_ms:.0f} | {r.output_tok_s:.0f} |")
    # the record: --json-out's path, else benchmarks/results/async_cache_floor.json
    columns = ["run_id", "config", "workload", "async_batching", "cuda_graph", "max_batch_tokens",
               "block_size", "cache_tokens", "mask_bytes", "h2d_bytes", "floor_steps",
               "median_ms", "p10_ms", "copy_ms", "predicted_ms", "error_pct",
               "tpot_mean_ms", "tpot_p50_ms", "ttft_p50_ms", "output_tok_s", "started_at"]
    result = {"commit": _commit(), "data": str(args.data), "gpus": gpus,
              "max_seqs": MAX_SEQS, "compute_floor_ms": {f"{'async' if a else 'sync'}-{'graphs' if g else 'eager'}": v
                                   for (a, g), v in base.items()},
              "fitted_h2d_bandwidth_GBps": round(bandwidth / 1e9, 2),
              "runs": json.loads(table[columns].to_json(orient="records"))}
    out = args.json_out or RESULTS_DIR / "async_cache_floor.json"
    write_record(out.stem, result, args=args, measured_on=gpus, results_dir=out.parent)


if __name__ == "__main__":
    main()
