"""Eager-mode noise floor: how well can ANY per-step model predict an eager (no CUDA graph) step?

Data: ``benchmarks/data/eager_noise/`` (collected by ``eager_noise_sweep.toml`` on an NVIDIA H200:
the sample's two eager configurations, three runs each on its poisson12 workload). For every
step, the "oracle" predicts the median duration of the steps with the same composition key
(sequences, prefill sequences, prefill tokens and KV tokens in buckets) in the OTHER two runs of
the same configuration: it knows the exact engine, configuration and workload, so its error is
run-to-run noise, a floor no step-time model can beat on average. The default step-time model
trained on the whole shipped sample (another H200 of the same kind) is scored on the same steps.

Usage:
    python benchmarks/eager_noise.py [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import RESULTS_DIR, measured_gpus, write_record
from servetune.features import add_previous_step, graph_captured, join_knobs
from servetune.models import StepTimeRegressor, regression_metrics

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "eager_noise"
SAMPLES = HERE.parent / "data" / "samples"


def _frame(directory: Path) -> pd.DataFrame:
    steps = pd.read_parquet(directory / "steps.parquet")
    runs = pd.read_parquet(directory / "runs.parquet")
    frame = add_previous_step(join_knobs(steps, runs))
    frame = frame[~graph_captured(frame)]
    frame["configuration"] = frame.run_id.str.replace(r"-r\d-[0-9a-f]+$", "", regex=True)
    return frame[frame.duration_ms > 0].reset_index(drop=True)


def oracle(frame: pd.DataFrame) -> np.ndarray:
    """Median duration of same-key steps in the other runs of the configuration (NaN: none)."""
    key = (frame.num_seqs.astype(str) + "/" + frame.num_prefill_seqs.astype(str) + "/"
           + (np.ceil(frame.prefill_tokens / 64)).astype(int).astype(str) + "/"
           + (np.ceil(frame.kv_tokens_sum / 2048)).astype(int).astype(str))
    out = np.full(len(frame), np.nan)
    for _, group in frame.groupby("configuration"):
        for run_id in group.run_id.unique():
            mine = group.run_id == run_id
            others = group[~mine]
            medians = others.groupby(key[others.index]).duration_ms.median()
            out[group.index[mine]] = key[group.index[mine]].map(medians).to_numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    frame = _frame(DATA)
    y = frame.duration_ms.to_numpy()
    floor = oracle(frame)
    sample = _frame(SAMPLES)
    model = StepTimeRegressor(n_jobs=1).fit(sample, sample.duration_ms.to_numpy(),
                                            groups=sample.run_id.to_numpy())
    pred = model.predict(frame)
    result = {"steps": int(len(frame)), "runs": int(frame.run_id.nunique()), "by_configuration": {}}
    for name, idx in frame.groupby("configuration").groups.items():
        idx = np.asarray(idx)
        matched = idx[np.isfinite(floor[idx])]
        result["by_configuration"][name] = {
            "steps": int(idx.size), "oracle_matched_steps": int(matched.size),
            "oracle": {k: round(v, 2) for k, v in
                       regression_metrics(y[matched], floor[matched]).items()},
            "model_on_matched": {k: round(v, 2) for k, v in
                                 regression_metrics(y[matched], pred[matched]).items()},
            "model_all_steps": {k: round(v, 2) for k, v in
                                regression_metrics(y[idx], pred[idx]).items()},
            "within_run_duration_cv": round(float(frame.loc[idx].groupby("run_id").duration_ms
                                                  .agg(lambda d: d.std() / d.mean()).mean()), 3),
        }
    result["model"] = {"feature_set": model.feature_set, "trees": int(model.n_estimators_),
                       "trained_on": f"data/samples ({sample.run_id.nunique()} runs)"}
    print(json.dumps(result, indent=2))
    out = args.json_out or RESULTS_DIR / "eager_noise.json"
    write_record(out.stem, result, args=args, measured_on=measured_gpus(DATA),
                 results_dir=out.parent)


if __name__ == "__main__":
    main()
