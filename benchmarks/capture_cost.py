"""What does a CUDA-graph capture cost? The capture steps of the shipped H200 sample, as extra
time over a step-time model trained on all its non-capture steps (default settings), per batching
mode:

1. median extra of captures of a new padded query and KV shape vs of a shape the run had captured
   before (by the other async IO pair, or with another padded key length: the simulator's key);
2. leaving each configuration out in turn, least squares on the others:
   - the left-out configuration's summed capture cost error, relative to the total duration of
     its capture steps, for ``a + b q + c kv`` and ``+ d max_batch_tokens``;
   - the per-capture mean absolute error of one cost for all captures vs the simulator's model
     (new shapes ``a + b q + c kv + d budget``, captured shapes that times a factor).

Usage:
    python benchmarks/capture_cost.py [--samples DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data._benchmark_record import measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR as SAMPLES
from servetune.features import (
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    add_previous_step,
    graph_captured,
    join_knobs,
)
from servetune.models import StepTimeRegressor
from servetune.models._engine_constants import capture_terms
from servetune.tuner.simulator._fidelity import labelled_runs

COLUMNS = [*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]


def capture_table(root: Path) -> pd.DataFrame:
    """One row per capture step: configuration, mode, extra ms, the cost terms, repeated."""
    runs = labelled_runs(root / "runs.parquet")
    frame = add_previous_step(join_knobs(pd.read_parquet(root / "steps.parquet"),
                                         runs))
    captured = graph_captured(frame)
    train = frame[~captured & (frame.duration_ms > 0)]
    model = StepTimeRegressor(n_jobs=1).fit(train[COLUMNS], train.duration_ms.to_numpy(),
                                            groups=train.run_id.to_numpy())
    caps = frame[captured].copy()
    terms, asynchronous, repeated = capture_terms(caps, runs)
    return pd.DataFrame({
        "run_id": caps.run_id.to_numpy(),
        "config": caps.run_id.map(runs.set_index("run_id")["config_name"]).to_numpy(),
        "asynchronous": asynchronous,
        "extra": caps.duration_ms.to_numpy() - model.predict(caps[COLUMNS]),
        "duration": caps.duration_ms.to_numpy(), "one": terms[:, 0], "q": terms[:, 1],
        "kv": terms[:, 2], "budget": terms[:, 3], "repeated": repeated})


def _fit(d: pd.DataFrame, terms: list[str], repeat: bool) -> tuple[np.ndarray, float]:
    new = ~d.repeated.to_numpy() if repeat else np.ones(len(d), dtype=bool)
    coef, *_ = np.linalg.lstsq(d.loc[new, terms].to_numpy(float), d.extra.to_numpy()[new],
                               rcond=None)
    if not repeat or new.all():
        return coef, 1.0
    cost = d.loc[~new, terms].to_numpy(float) @ coef
    return coef, float((d.extra.to_numpy()[~new] * cost).sum() / (cost * cost).sum())


def _predict(d: pd.DataFrame, terms: list[str], coef: np.ndarray, factor: float) -> np.ndarray:
    cost = d[terms].to_numpy(float) @ coef
    return np.where(d.repeated.to_numpy(), factor * cost, cost)


def leave_one_out(d: pd.DataFrame, terms: list[str], repeat: bool) -> dict:
    """Per left-out configuration: summed-cost error relative to its capture steps' duration,
    and the per-capture mean absolute error (ms); both averaged over configurations."""
    total, mae = [], []
    for name in d.config.unique():
        out = (d.config == name).to_numpy()
        coef, factor = _fit(d[~out], terms, repeat)
        err = d.extra.to_numpy()[out] - _predict(d[out], terms, coef, factor)
        total.append(abs(err.sum()) / d.duration.to_numpy()[out].sum() * 100)
        mae.append(np.abs(err).mean())
    return {"summed_cost_error_pct": round(float(np.mean(total)), 1),
            "per_capture_mae_ms": round(float(np.mean(mae)), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    args = parser.parse_args(argv)
    table = capture_table(Path(args.samples))
    report = {}
    for asynchronous, d in table.groupby("asynchronous"):
        d = d.reset_index(drop=True)
        report["async" if asynchronous else "sync"] = {
            "captures": len(d), "repeated": int(d.repeated.sum()),
            "median_extra_ms_new": round(float(d.extra[~d.repeated].median()), 1),
            "median_extra_ms_repeated": round(float(d.extra[d.repeated].median()), 1),
            "median_extra_ms_new_by_run": {
                run: round(float(extra), 1)
                for run, extra in d[~d.repeated].groupby("run_id").extra.median().items()},
            "one_cost_a_b_c": leave_one_out(d, ["one", "q", "kv"], repeat=False),
            "one_cost_a_b_c_d": leave_one_out(d, ["one", "q", "kv", "budget"], repeat=False),
            "new_and_repeated": leave_one_out(d, ["one", "q", "kv", "budget"], repeat=True)}
    print(json.dumps(report, indent=2))
    write_record("capture_cost", report, args=args, measured_on=measured_gpus(args.samples))
    return report


if __name__ == "__main__":
    main()
