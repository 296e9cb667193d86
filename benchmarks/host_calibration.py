"""Per-host calibration: does a correction learned from one H100's steps fix the H200-trained
model's predictions on another H100's runs?

1. the workspace champion (trained on the bundled H200 sample, ``ensure_champion``);
2. ``servetune ingest`` of ``benchmarks/data/space_fill_h100/`` (12 runs, one H100);
3. ``servetune train --calibrate-from <champion> --where hardware=NVIDIA-H100-80GB-HBM3``;
4. both models scored on ``benchmarks/data/payoff/`` (12 runs on another H100 host, never
   trained on): step-level MAPE, and every run replayed through the simulator with its own
   requests and resolved configuration: mean TTFT, TPOT and output throughput against the
   measured ones, per (configuration, workload) over its 3 repeats.

    python benchmarks/host_calibration.py --workspace WS      # a fresh or sample-trained one
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data import TraceStore, Workspace
from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data.collect._runner import CollectorOptions
from servetune.features import add_previous_step, graph_captured, join_knobs
from servetune.models import StepTimeModel, TrainConfig, ensure_champion, train_step_time_model
from servetune.tuner.simulator import replay_run

ROOT = Path(__file__).resolve().parent
HOST_DATA = ROOT / "data" / "space_fill_h100"
TEST_DATA = ROOT / "data" / "payoff"
HARDWARE = "NVIDIA-H100-80GB-HBM3"
RESULT = ROOT / "results" / "host_calibration.json"
# the test host's runs of this workload calibrate; its other workload's runs test
CALIBRATION_WORKLOAD = "splitwise150"
METRICS = ("ttft_mean_ms", "tpot_mean_ms", "output_throughput_tok_s")


def cli(ws: Workspace, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "servetune.cli._main", "--workspace",
                           str(ws.root), *args], capture_output=True, text=True,
                          check=True).stdout


def ingest(ws: Workspace, directory: Path) -> None:
    """``servetune ingest`` a collector output directory (once)."""
    store = TraceStore.for_workspace(ws)
    ids = set(pd.read_parquet(directory / "runs.parquet", columns=["run_id"]).run_id)
    if not ids <= set(store.query("runs", columns=["run_id"]).run_id):
        cli(ws, "ingest", *map(str, sorted(directory.glob("*.parquet"))))


def calibrate(ws: Workspace, champion: str, run_ids: list[str]) -> dict:
    """The champion calibrated on ``run_ids``' steps (``TrainConfig.calibrate_from``)."""
    result = train_step_time_model(ws, {"run_id": sorted(run_ids)},
                                   TrainConfig(calibrate_from=champion), progress=False)
    m = result.metrics
    print(f"calibrated on {len(run_ids)} runs: {result.model_uri}; its held-out runs' MAPE "
          f"{m['mape']:.2f} %, interval x{m.get('interval_low', float('nan')):.2f}-"
          f"x{m.get('interval_high', float('nan')):.2f}", flush=True)
    return {"uri": result.model_uri, "runs": len(run_ids), "held_out_mape_pct": m["mape"]}


def step_mape(model: StepTimeModel, runs: pd.DataFrame, steps: pd.DataFrame) -> float:
    """MAPE over the test runs' steady steps (graph captures left out, as in training)."""
    frame = add_previous_step(join_knobs(steps, runs))
    frame = frame[~graph_captured(frame) & (frame.duration_ms > 0)]
    pred = model.predict(frame)
    return float(np.mean(np.abs(pred - frame.duration_ms) / frame.duration_ms) * 100)


def score(model: StepTimeModel, runs: pd.DataFrame, requests, steps) -> dict:
    """Step MAPE and per (configuration, workload) replay errors of ``model`` on ``runs``."""
    compiled = model.compile()
    rows = []
    for _, run in runs.iterrows():
        sim = replay_run(run, requests, compiled, warmup=CollectorOptions.warmup_requests).metrics
        rows.append({"label": run.label, **{f"sim_{k}": sim[k] for k in METRICS},
                     **{f"meas_{k}": float(run[k]) for k in METRICS}})
    per_config = pd.DataFrame(rows).groupby("label").mean()
    errors = {k: (per_config[f"sim_{k}"] / per_config[f"meas_{k}"] - 1) * 100 for k in METRICS}
    return {"step_mape_pct": step_mape(model, runs, steps[steps.run_id.isin(runs.run_id)]),
            "error_pct": {k: {label: round(float(v), 1) for label, v in errors[k].items()}
                          for k in METRICS},
            "within_15pct": int(sum((abs(errors[k]) <= 15).sum() for k in METRICS)),
            "cells": int(sum(len(errors[k]) for k in METRICS))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args()
    ws = Workspace.resolve(args.workspace)
    champion = ensure_champion(ws, progress=False)  # before any H100 run is in the store
    ingest(ws, HOST_DATA)
    ingest(ws, TEST_DATA)
    runs = pd.read_parquet(TEST_DATA / "runs.parquet")
    requests = pd.read_parquet(TEST_DATA / "requests.parquet")
    steps = pd.read_parquet(TEST_DATA / "steps.parquet")
    workload = [json.loads(w)["name"] for w in runs.workload]
    runs["label"] = [f"{json.loads(e)['config_name']}/{w}" for e, w in zip(runs.extra, workload)]
    calibration_runs = runs[np.array(workload) == CALIBRATION_WORKLOAD]
    test_runs = runs[np.array(workload) != CALIBRATION_WORKLOAD]
    other_host = list(pd.read_parquet(HOST_DATA / "runs.parquet", columns=["run_id"]).run_id)
    models = {"champion (H200 sample)": {"uri": champion},
              "calibrated on another H100": calibrate(ws, champion, other_host),
              "calibrated on this H100 (other workload)": calibrate(
                  ws, champion, list(calibration_runs.run_id))}
    out = {"test": f"{TEST_DATA.name}: {sorted(set(test_runs.label))}", "models": models}
    for name, info in models.items():
        model = StepTimeModel.load(info["uri"], tracking_uri=ws.tracking_uri)
        info.update(score(model, test_runs, requests, steps))
        print(json.dumps({name: info}), flush=True)
    write_record(RESULT.stem, out, args=args, measured_on=measured_gpus(HOST_DATA, TEST_DATA),
                 results_dir=RESULT.parent)


if __name__ == "__main__":
    main()
