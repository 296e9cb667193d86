"""A champion trained on first use over steps of several GPUs says so (issue 14: after
``validate`` stores runs of another host, the next ``tune`` would otherwise blend them silently).
Real Parquet store, real MLflow SQLite registry, real XGBoost."""

from __future__ import annotations

import logging

from servetune.data import TraceStore, Workspace
from servetune.models import TrainConfig, ensure_champion
from servetune.testing import synthetic_traces

SMALL = TrainConfig(n_trials=1, cv_splits=2, search_budget_s=20)


def store_with(root, hardware_of_run) -> Workspace:
    ws = Workspace.resolve(root / "ws")
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=120, seed=5)
    runs["num_blocks"] = 512
    hardware = {run: hardware_of_run(i) for i, run in enumerate(runs["run_id"])}
    runs["hardware"] = runs["run_id"].map(hardware)
    steps["hardware"] = steps["run_id"].map(hardware)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256=f"mix-{root.name}", format="test")
    return ws


def test_a_champion_over_two_gpus_warns_and_names_them(tmp_path, caplog):
    ws = store_with(tmp_path, lambda i: "GPU-A" if i < 3 else "GPU-B")
    with caplog.at_level(logging.WARNING, logger="servetune.models._training"):
        uri = ensure_champion(ws, config=SMALL, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 hardware together (GPU-A, GPU-B)" in w and "--calibrate-from" in w
               for w in warnings), warnings
    assert uri.endswith("@champion")


def test_one_gpu_trains_without_the_warning(tmp_path, caplog):
    ws = store_with(tmp_path, lambda i: "GPU-A")
    with caplog.at_level(logging.WARNING, logger="servetune.models._training"):
        ensure_champion(ws, config=SMALL, progress=False)
    assert not [r for r in caplog.records if "hardware together" in r.getMessage()]
