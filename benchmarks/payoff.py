"""Payoff on hardware: the tuned recommendation against the engine default, measured.

For each workload of ``benchmarks/payoff_{a,b}.toml`` this re-runs ``servetune tune`` (same
workload, seeds and default objective as when the configurations were chosen) to get the
*predicted* metrics of rank 1 and of the engine default, checks that rank 1 is still the
configuration that was measured, and compares with the measured runs in
``benchmarks/data/payoff/`` (collector traces, repeats interleaved). Metrics of every measured
run are recomputed from its requests with the study's SLOs.

    python benchmarks/payoff.py --workspace WS [--measured benchmarks/data/payoff]

Checks (issue 14): the recommendation is never measurably worse than the default; on at least
one workload it is better by >= 30 %; its measured gain lies within the repeat spread or
+-25 % of the predicted gain; its measured mean TTFT, TPOT and throughput are within 15 % of
the prediction.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data import Workspace
from servetune.data._benchmark_record import write_record
from servetune.data._metrics import run_metrics
from servetune.tuner import TuneSettings, run_tune
from servetune.tuner._objective import parse_objective

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "payoff.json"
# The tune settings each measured configuration came from (the sweep files' comments).
STUDIES = {
    "splitwise150": dict(sweep="payoff_a.toml", workload="../shared/workloads/splitwise_conv.csv",
                         limit=150, sim_seed=0),
    "long3k": dict(sweep="payoff_b.toml", sim_seed=31,
                   workload="poisson:rate=2.5,n=100,input=lognormal:3072:0.4:8192,"
                            "output=uniform:64:192"),
}
# The study's configuration keys -> the runs columns the collector wrote.
RUN_COLUMNS = {"max_batch_tokens": "max_batch_tokens", "max_requests_per_batch": "max_num_seqs",
               "block_size": "block_size", "scheduler": "scheduler",
               "async_batching": "async_batching", "cuda_graph": "cuda_graph"}
METRICS = ("ttft_mean_ms", "tpot_mean_ms", "output_throughput_tok_s")


def measured_metrics(runs: pd.DataFrame, requests: pd.DataFrame, slo: dict) -> pd.DataFrame:
    """One row per run: its metrics recomputed from its requests with ``slo``."""
    rows = []
    for run in runs.itertuples():
        req = requests[requests.run_id == run.run_id]
        rows.append({"run_id": run.run_id, **run_metrics(
            arrival_s=req.arrival_s, ttft_ms=req.ttft_ms, e2e_ms=req.e2e_ms,
            output_tokens=req.output_tokens, input_tokens=req.input_tokens,
            ok=req.status == "ok", slo=slo, itl_ms=list(req.itl_ms))})
    return pd.DataFrame(rows).set_index("run_id")


def run_matches(run: pd.Series, config: dict) -> bool:
    """Whether a measured run used the study configuration ``config``."""
    return all(run[col] == config[key] for key, col in RUN_COLUMNS.items())


def spread(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            "n": int(len(values)), "values": [float(v) for v in values]}


def compare_workload(name: str, spec: dict, ws: Workspace, runs, requests) -> dict:
    """Predicted vs measured for one workload's rank-1 candidate and engine default."""
    settings = TuneSettings(workload=str(ROOT.parent / spec["workload"]) if spec["workload"]
                            .endswith(".csv") else spec["workload"], limit=spec.get("limit"),
                            sim_seed=spec["sim_seed"], study=f"payoff-{name}-{time.time_ns()}", jobs=2,
                            track=False)
    summary = run_tune(ws, settings, progress=False)
    best, base = summary["best"], summary["baseline"]
    objective = parse_objective(summary["study"]["objective"])
    mine = runs[runs.workload_name == name]
    measured = measured_metrics(mine, requests, asdict(objective.slo))
    rec_runs = [r.run_id for _, r in mine.iterrows() if run_matches(r, best["config"])]
    default_runs = [r.run_id for _, r in mine.iterrows() if r.config_name == "default"]
    if not rec_runs:
        raise SystemExit(f"{name}: rank 1 is now {best['config']}, which was not measured; "
                         "measure it (benchmarks/payoff_*.toml) before comparing")
    out = {"workload": name, "objective": summary["study"]["objective"],
           "recommended": best["config"], "configs": {}}
    for label, cand, ids in (("recommended", best, rec_runs), ("default", base, default_runs)):
        m = measured.loc[ids]
        interval = (summary_candidate(summary, cand).get("interval") or {})
        out["configs"][label] = {
            "predicted": {k: cand["metrics"][k] for k in (*METRICS, "goodput_rps")},
            "predicted_interval": {k: interval.get("metrics", {}).get(k) for k in METRICS},
            "interval_calibrated": interval.get("calibrated"),
            "predicted_objective": cand["objective"],
            "measured_objective": spread([objective.score(row.to_dict())
                                          for _, row in m.iterrows()]),
            **{f"measured_{k}": spread(m[k]) for k in METRICS}}
    rec, dft = out["configs"]["recommended"], out["configs"]["default"]
    mo_r, mo_d = rec["measured_objective"], dft["measured_objective"]
    out["predicted_gain"] = _gain(rec["predicted_objective"], dft["predicted_objective"])
    out["measured_gain"] = _gain(mo_r["mean"], mo_d["mean"])
    # the gain's spread over repeats: worst and best pairing of the two configurations' runs
    out["measured_gain_range"] = [_gain(mo_r["min"], mo_d["max"]), _gain(mo_r["max"], mo_d["min"])]
    out["checks"] = checks(out)
    return out


def summary_candidate(summary: dict, headline: dict) -> dict:
    """The full candidate (with its interval) behind a summary's ``best``/``baseline``."""
    return next(c for c in summary["candidates"] if c["config"] == headline["config"])


def _gain(new: float, old: float) -> float:
    return math.inf if old <= 0 < new else (new / old - 1.0 if old > 0 else 0.0)


def checks(out: dict) -> dict:
    rec, dft = out["configs"]["recommended"], out["configs"]["default"]
    lo, hi = out["measured_gain_range"]
    pg = out["predicted_gain"]
    return {
        "never_measurably_worse": rec["measured_objective"]["max"] >= dft["measured_objective"]["min"],
        "better_by_30pct": out["measured_gain"] >= 0.30,
        "gain_within_spread_or_25pct": bool(lo <= pg <= hi or (
            math.isfinite(pg) and abs(out["measured_gain"] - pg) <= 0.25 * abs(pg))),
        **{f"{k}_within_15pct": abs(rec[f"measured_{k}"]["mean"] / rec["predicted"][k] - 1) <= 0.15
           for k in METRICS},
        # the 80 % prediction interval holds the measured mean (both configurations)
        **{f"{label}_{k}_in_interval": _inside(c[f"measured_{k}"]["mean"],
                                               c["predicted_interval"][k])
           for label, c in out["configs"].items() for k in METRICS},
    }


def _inside(value: float, bounds: list | None) -> bool | None:
    return None if not bounds else bool(bounds[0] <= value <= bounds[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--measured", default=str(ROOT / "data" / "payoff"))
    args = parser.parse_args()
    measured = Path(args.measured)
    runs = pd.read_parquet(measured / "runs.parquet")
    requests = pd.read_parquet(measured / "requests.parquet")
    runs["workload_name"] = runs.workload.map(lambda w: json.loads(w).get("name"))
    runs["config_name"] = runs.extra.map(lambda e: json.loads(e).get("config_name"))
    ws = Workspace.resolve(args.workspace)
    results = {"gpu": sorted(runs.gpu_name.unique()), "runs": len(runs), "workloads": []}
    for name, spec in STUDIES.items():
        tomllib.loads((ROOT / spec["sweep"]).read_text())  # the sweep file exists and parses
        results["workloads"].append(compare_workload(name, spec, ws, runs, requests))
        print(json.dumps(results["workloads"][-1], default=str), flush=True)
    write_record(RESULT.stem, results, args=args, measured_on=results["gpu"],
                 results_dir=RESULT.parent)


if __name__ == "__main__":
    main()
