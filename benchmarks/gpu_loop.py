"""The verify -> calibrate -> re-tune loop run on a GPU host: predicted against measured.

``benchmarks/gpu_loop.sh`` runs ``servetune tune --verify --rounds 2`` on one GPU host (the
engine is ``transformers serve`` started by the dispatcher on the ``local`` node) and writes the
loop's JSON. This script reads those JSONs (one per workload) and records, per round and
candidate, the predicted and measured objective, mean TTFT, mean TPOT and output throughput with
the relative error, plus the recommendation's gain over the engine default.

    python benchmarks/gpu_loop.py [--data benchmarks/data/gpu_loop]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from servetune.data._benchmark_record import write_record

ROOT = Path(__file__).resolve().parent
METRICS = ("goodput_rps", "ttft_mean_ms", "tpot_mean_ms", "output_throughput_tok_s")
# the workloads of the runs in benchmarks/data/gpu_loop (gpu_loop.sh's WORKLOAD)
WORKLOADS = {
    "rate3": "poisson:rate=3,n=80,input=lognormal:512:0.6:2048,output=uniform:32:160",
    "rate6": "poisson:rate=6,n=90,input=lognormal:512:0.6:2048,output=uniform:32:160",
}


def candidate_row(candidate: dict) -> dict:
    """Predicted, measured and the relative error of each compared metric."""
    row = {"config": candidate["config"], "status": candidate["status"]}
    for key in METRICS:
        pair = candidate["metrics"][key]
        p, m = pair["predicted"], pair["measured"]
        row[key] = {"predicted": p, "measured": m,
                    "error": None if p is None or not m else p / m - 1}
    return row


def gain(tuned: dict, default: dict, which: str) -> float:
    return tuned["goodput_rps"][which] / default["goodput_rps"][which] - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "gpu_loop"))
    args = parser.parse_args()
    data = Path(args.data)
    workloads, gpus = {}, []
    for name, spec in WORKLOADS.items():
        loop = json.loads((data / f"{name}.json").read_text())
        gpus.append((data / f"{name}.gpu.txt").read_text().strip())
        rounds = {}
        for r in loop["rounds"]:
            rows = {c["name"]: {"workload": name, "round": r["round"], **candidate_row(c)}
                    for c in r["candidates"]}
            tuned = rows.get("rank1")
            default = rows.get("default")
            rounds[str(r["round"])] = {
                "model_uri": r["model_uri"], "agrees": r["agrees"], "candidates": rows,
                "gain": None if not (tuned and default) else {
                    "predicted": gain(tuned, default, "predicted"),
                    "measured": gain(tuned, default, "measured")}}
        workloads[name] = {"workload": spec, "stopped": loop["stopped"], "rounds": rounds,
                           "recommendation": loop["recommendation"]}
    print(json.dumps(workloads, indent=1))
    write_record("gpu_loop", {"workloads": workloads}, args=args, measured_on=sorted(set(gpus)))


if __name__ == "__main__":
    main()
