"""Small generated step traces for the features/models tests (a plausible step-time law).

:func:`synthetic_traces` lives in :mod:`servetune.testing` (shared with the benchmarks).

Real accuracy figures come from the shipped H200 sample (benchmarks/); these frames only exercise
the code paths, so the law is simple: fixed overhead by engine knobs, plus per-sequence, per-token,
KV-read and prefill-attention costs, times multiplicative noise.
"""

from __future__ import annotations

from servetune.testing._traces import synthetic_traces

__all__ = ["synthetic_traces", "trained_synthetic_workspace"]


def trained_synthetic_workspace(root, *, n_runs: int = 6, steps_per_run: int = 200, seed: int = 0,
                                num_blocks: int | None = 512, scale: float = 1.0,
                                model: str | None = None, **train_config):
    """A workspace whose store holds :func:`synthetic_traces` (durations x ``scale``; runs with
    ``num_blocks`` and, if given, ``model``) and a step-time model trained on them (real
    Parquet, real MLflow, real XGBoost). Returns ``(workspace, TrainResult)``."""
    from servetune.data import TraceStore, Workspace
    from servetune.models import TrainConfig, train_step_time_model

    ws = Workspace.resolve(root / "ws")
    steps, runs = synthetic_traces(n_runs=n_runs, steps_per_run=steps_per_run, seed=seed)
    steps["duration_ms"] = steps["duration_ms"] * scale
    if num_blocks is not None:
        runs["num_blocks"] = num_blocks
    if model is not None:
        steps["model"] = runs["model"] = model
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256=f"synthetic-{n_runs}-{steps_per_run}-{seed}-"
                                               f"{scale}-{model}", format="test")
    config = TrainConfig(**{"n_trials": 1, "cv_splits": 2, "search_budget_s": 20,
                            **train_config})
    return ws, train_step_time_model(ws, config=config, progress=False)
