"""Cache size as a model input (issue 14 part 1/3): step_v5 vs step_v6 on the same held-out runs,
and an extrapolation check on the async 0.9-memory cache.

1. Both feature sets trained by ``train_step_time_model`` (same salt, so the same held-out runs;
   no other feature set tried) on the shipped sample: held-out MAPE/p90 and the search's
   grouped-CV MAPE on the training runs (the figure the default is chosen by).
2. Extrapolation: the same, trained WITHOUT part D's largest async caches (the ``a-*-auto90`` and
   ``a-*-1m`` runs, 2.1-3.1 M tokens), then asked for those runs' steps; and trained WITH them
   (every run except the one predicted: one model per left-out run). Reported per run: the
   median measured and predicted duration of the floor steps (<= 8 sequences, no prefill, no
   graph capture nor the step after one), as in BENCHMARKS.md's async section.

Usage:
    python benchmarks/cache_tokens_model.py [--json-out benchmarks/results/cache_tokens_model.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.data import TraceStore, Workspace
from servetune.data._benchmark_record import RESULTS_DIR, measured_gpus, write_record
from servetune.data._ingest import SAMPLES_DIR, ingest_paths, sample_paths
from servetune.data.adapters import default_registry
from servetune.models import (
    StepTimeModel,
    StepTimeRegressor,
    TrainConfig,
    held_out_runs,
    load_training_frame,
    regression_metrics,
    train_step_time_model,
)

FEATURE_SETS = ("step_v5", "step_v6")
LARGE = ("-a-g-auto90-", "-a-e-auto90-", "-a-g-1m-", "-a-e-1m-")


def _score(y, p) -> dict:
    m = regression_metrics(y, p)
    return {k: round(float(m[k]), 3) for k in ("mape", "p50_ape", "p90_ape", "r2", "n_steps")}


def _workspace(root: Path) -> Workspace:
    ws = Workspace.resolve(root)
    ingest_paths(TraceStore.for_workspace(ws), sample_paths(), default_registry(), progress=False)
    return ws


def _floor(frame: pd.DataFrame) -> np.ndarray:
    return ((frame.num_seqs <= 8) & (frame.num_prefill_seqs == 0)
            & (frame.prev_graph_captured == 0)).to_numpy()


def held_out(ws: Workspace, frame: pd.DataFrame) -> dict:
    """Section 1."""
    y, groups = frame.duration_ms.to_numpy(), frame.run_id.to_numpy()
    config = TrainConfig()
    test = np.isin(groups, held_out_runs(groups, config.test_fraction, config.holdout_salt))
    out = {"test_runs": int(np.unique(groups[test]).size), "test_steps": int(test.sum())}
    for name in FEATURE_SETS:
        cfg = TrainConfig(feature_set=name, candidate_feature_sets=())
        result = train_step_time_model(ws, config=cfg, progress=False)
        model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
        pred = model.predict(frame[test])
        out[name] = {"held_out": _score(y[test], pred), "cv_mape_search":
                     round(float(result.metrics.get("cv_mape", float("nan"))), 3),
                     "params": result.params}
    return out


def extrapolation(frame: pd.DataFrame, params: dict) -> dict:
    """Section 2."""
    y, groups = frame.duration_ms.to_numpy(), frame.run_id.to_numpy()
    large = np.array([any(tag in g for tag in LARGE) for g in groups])
    floor = _floor(frame)
    out = {}
    for name in FEATURE_SETS:
        kw = {**params[name], "feature_set": name}
        without = StepTimeRegressor(**kw).fit(frame[~large], y[~large], groups=groups[~large])
        rows = {}
        for run in sorted(set(groups[large])):
            mine = groups == run
            with_others = StepTimeRegressor(**kw).fit(frame[~mine], y[~mine],
                                                      groups=groups[~mine])
            sel = mine & floor
            part = frame[sel]
            rows[run] = {"floor_steps": int(sel.sum()),
                         "cache_tokens": float(part.cache_tokens.iloc[0]),
                         "measured_median_ms": round(float(np.median(y[sel])), 1),
                         "without_large_caches_ms": round(float(np.median(
                             without.predict(part))), 1),
                         "with_large_caches_ms": round(float(np.median(
                             with_others.predict(part))), 1),
                         "all_steps_mape_without": _score(y[mine], without.predict(
                             frame[mine]))["mape"],
                         "all_steps_mape_with": _score(y[mine], with_others.predict(
                             frame[mine]))["mape"]}
        out[name] = rows
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="servetune-cache-") as tmp:
        ws = _workspace(Path(tmp) / "ws")
        frame, lineage = load_training_frame(TraceStore.for_workspace(ws))
        first = held_out(ws, frame)
        params = {name: first[name]["params"] for name in FEATURE_SETS}
        out = {"commit": commit, "machine": {"cpus": os.cpu_count(),
                                             "platform": platform.platform()},
               "data": {"rows": lineage["rows"], "runs": lineage["runs"],
                        "content_sha256": lineage["content_sha256"]},
               "held_out": first, "extrapolation": extrapolation(frame, params)}
    print(json.dumps(out, indent=2, default=str))
    path = args.json_out or RESULTS_DIR / "cache_tokens_model.json"
    write_record(path.stem, out, args=args, measured_on=measured_gpus(SAMPLES_DIR),
                 results_dir=path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
