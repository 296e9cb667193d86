"""Simulator fidelity on a collector sample: the held-out split, its step-time model, capture
costs and replays that ``benchmarks/sim_fidelity.py`` and its follow-up studies share.

The sample is collector output (``runs``/``requests``/``steps`` Parquet, e.g. the shipped
``data/samples``); its runs are labelled by configuration and workload, a step-time model is
trained on the training configurations' steady steps, CUDA-graph capture costs are fitted on
their capture steps, and held-out runs are replayed (:func:`replay_run`) with those costs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from servetune.features import (
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    add_previous_step,
    graph_captured,
    join_knobs,
)
from servetune.models import CaptureCost, StepTimeRegressor
from servetune.models._engine_constants import CAPTURE_KEYS, capture_terms
from servetune.models._search import search_hyperparameters
from servetune.tuner.simulator._replay import replay_config, replay_run

__all__ = ["HELD_OUT", "METRICS", "capture_noise", "capture_overrides", "labelled_runs",
           "sample_frame", "sim_config", "sim_config_with_capture", "simulate_replay",
           "train_step_model"]

#: Held-out configurations of the shipped H200 sample: one repeated configuration, sync and
#: async, both schedulers, CUDA graphs on and off, a small KV cache. The other 23 train.
HELD_OUT = ("g-fifo-512-bs64-sync", "g-fifo-1024-bs32-async", "g-pf-1024-bs256-sync",
            "g-fifo-512-bs64-async-smallkv", "e-pf-1024-bs64-async")
#: (runs column, :func:`simulate_replay` key) of the three compared metrics
METRICS = (("ttft_mean_ms", "ttft_ms"), ("tpot_mean_ms", "tpot_ms"),
           ("output_throughput_tok_s", "output_throughput_tok_s"))


def labelled_runs(path: str | Path) -> pd.DataFrame:
    """A collector runs table with ``config_name`` and ``workload_name`` columns."""
    runs = pd.read_parquet(path)
    runs["config_name"] = runs["extra"].map(lambda e: json.loads(e)["config_name"])
    runs["workload_name"] = runs["workload"].map(lambda w: json.loads(w)["name"])
    return runs


def sample_frame(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The sample's labelled runs, requests, steps with knobs and previous steps, and per step
    whether it captured a CUDA graph."""
    root = Path(root)
    runs = labelled_runs(root / "runs.parquet")
    frame = add_previous_step(join_knobs(pd.read_parquet(root / "steps.parquet"), runs))
    return runs, pd.read_parquet(root / "requests.parquet"), frame, graph_captured(frame)


def sim_config(run: pd.Series) -> dict:
    """The simulator's config from a measured run's resolved engine config."""
    return replay_config(run)[1]


def capture_overrides(run: pd.Series, fits: dict) -> dict:
    """The simulator's capture-cost keys for ``run``'s batching mode and token budget from
    ``fits`` (``{async: (fixed, per query, per KV, per budget token, repeat factor)}``, as
    ``servetune.models._engine_constants.capture_fit`` returns)."""
    config = sim_config(run)
    fit = CaptureCost(*fits[bool(config["use_async_batching"])])
    return dict(zip(CAPTURE_KEYS, fit.config_values(config["max_batch_tokens"])))


def sim_config_with_capture(run: pd.Series, fits: dict) -> dict:
    """:func:`sim_config` plus :func:`capture_overrides`."""
    return {**sim_config(run), **capture_overrides(run, fits)}


def simulate_replay(run: pd.Series, requests: pd.DataFrame, fits: dict, compiled, n_warmup: int,
                    seed: int = 0, record_steps: bool = False, **overrides) -> tuple[dict, object]:
    """:func:`replay_run` with the capture cost of ``fits`` and ``overrides``: (mean
    ``ttft_ms``, ``tpot_ms``, ``output_throughput_tok_s`` and simulated ``steps``, the
    simulator's result)."""
    replay = replay_run(run, requests, compiled, warmup=n_warmup, seed=seed,
                        record_steps=record_steps,
                        overrides={**capture_overrides(run, fits), **overrides})
    m = replay.metrics
    return ({"ttft_ms": m["ttft_mean_ms"], "tpot_ms": m["tpot_mean_ms"],
             "output_throughput_tok_s": m["output_throughput_tok_s"],
             "steps": int(replay.result.metrics["steps"])}, replay.result)


def capture_noise(captures: pd.DataFrame, predicted_ms: np.ndarray, runs: pd.DataFrame,
                  fits: dict, repeat_factor: bool = True) -> dict[bool, tuple[float, float]]:
    """Per batching mode: the spread of measured capture costs around ``fits`` as two
    log-normal coefficients of variation, ``(per capture, per run)``, the simulator's
    ``cuda_graph_capture_noise_cv`` and ``cuda_graph_capture_run_cv``. The log ratio measured /
    fitted cost of each capture is split into its run's mean (the run-level factor: its variance
    less the within-run variance's share in a run mean) and the rest."""
    A, mode, repeat = capture_terms(captures, runs, repeat_factor)
    extra = np.maximum(captures["duration_ms"].to_numpy() - predicted_ms, 1.0)
    out = {}
    for is_async in (False, True):
        a, b, c, d, f = fits[is_async]
        mine = mode == is_async
        cost = A[mine] @ np.array([a, b, c, d]) * np.where(repeat[mine], f, 1.0)
        frame = pd.DataFrame({"run": captures["run_id"].to_numpy()[mine],
                              "log_ratio": np.log(extra[mine] / np.maximum(cost, 1e-9))})
        per_run = frame.groupby("run")["log_ratio"].agg(["mean", "var", "size"]).dropna()
        within = float((per_run["var"] * (per_run["size"] - 1)).sum()
                       / (per_run["size"] - 1).sum())
        between = max(float(per_run["mean"].var()) - within * float((1 / per_run["size"]).mean()),
                      0.0)
        out[is_async] = (float(np.sqrt(np.expm1(within))), float(np.sqrt(np.expm1(between))))
    return out


def train_step_model(train: pd.DataFrame, feature_set: str, search_trials: int, seed: int):
    """A ``StepTimeRegressor`` on ``train``'s steps, hyperparameters searched as
    ``servetune train`` does (``search_trials`` <= 1: the defaults)."""
    X, y, groups = (train[[*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]],
                    train["duration_ms"].to_numpy(), train["run_id"].to_numpy())
    base = StepTimeRegressor(feature_set=feature_set, n_jobs=1, random_state=seed)
    if search_trials > 1:
        # a generous time budget so that every trial runs on a loaded machine too (determinism)
        base.set_params(**search_hyperparameters(base, X, y, groups, n_trials=search_trials,
                                                 seed=seed, time_budget_s=3600).best_params)
    return base.fit(X, y, groups=groups)
