"""Replay a measured run through the simulator: its own requests, its resolved configuration.

The simulator's fidelity is judged this way (``benchmarks/sim_fidelity.py``,
``benchmarks/host_calibration.py``): a measured run's recorded requests (arrival, input and
output tokens) are simulated with the engine configuration the run resolved (``runs.config``),
after the collector's unrecorded warm-up requests, and the simulated mean TTFT, TPOT and output
throughput are compared with the run's measured ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from servetune import InputError
from servetune.data import Workload
from servetune.tuner.simulator._policies import config_keys, get_policy
from servetune.tuner.simulator._result import SimulationResult
from servetune.tuner.simulator._simulate import Simulator

__all__ = ["REPLAY_METRICS", "WARMUP_GAP_S", "Replay", "replay_config", "replay_run"]

#: the runs columns a replay predicts
REPLAY_METRICS = ("ttft_mean_ms", "tpot_mean_ms", "output_throughput_tok_s")
#: simulated seconds between the warm-up requests and the run's first request (the collector
#: runs its warm-up to completion before the clock starts; 30 s lets every warm-up finish)
WARMUP_GAP_S = 30.0
_WARMUP_INPUT, _WARMUP_OUTPUT = 32, 4  # the collector's warm-up requests


@dataclass(frozen=True)
class Replay:
    """One replayed run.

    Attributes:
        metrics: simulated ``ttft_mean_ms``, ``tpot_mean_ms`` and ``output_throughput_tok_s`` of
            the run's own requests (warm-up ones left out); the throughput's duration runs from
            the run's clock start (its first arrival's offset included), as the collector's
            ``duration_s``.
        result: the simulator's result (warm-up requests first).
        warmup: warm-up requests simulated ahead of the run's requests.
        clock_s: simulated time of the run's clock start (0, or :data:`WARMUP_GAP_S`).
    """

    metrics: dict
    result: SimulationResult
    warmup: int
    clock_s: float


def replay_config(run: Mapping | pd.Series) -> tuple[str, dict]:
    """``(engine, simulator config)`` of a measured run's ``engine`` and ``config`` JSON."""
    from servetune.models._engine_constants import transformers_sim_config

    policy = get_policy(str(run["engine"]))
    config = run["config"]
    config = json.loads(config) if isinstance(config, str) else dict(config or {})
    if policy.name == get_policy("transformers").name:
        return policy.name, transformers_sim_config(config)
    keys = set(config_keys(policy.name))
    return policy.name, {k: v for k, v in config.items() if k in keys}


def replay_run(run: Mapping | pd.Series, requests: pd.DataFrame, step_model, *,
               warmup: int | None = None, seed: int = 0, record_steps: bool = False,
               overrides: Mapping[str, object] | None = None) -> Replay:
    """Simulate a measured run's own requests with its resolved engine configuration.

    Args:
        run: a ``runs`` row (``run_id``, ``engine``, ``config``; ``provenance`` for the warm-up).
        requests: ``requests`` rows; those of ``run.run_id`` are replayed.
        step_model: a :class:`servetune.models.CompiledStepTime`.
        warmup: unrecorded warm-up requests (32 input, 4 output tokens, all at time 0) ahead of
            the run's requests; None: the run's ``provenance.warmup_requests``, else 0.
        seed: the simulation's seed.
        record_steps: keep the simulated steps in ``Replay.result.steps``.
        overrides: simulator config keys set over the run's (e.g. capture costs, step noise).

    Example:
        >>> from servetune.data._ingest import SAMPLES_DIR
        >>> from servetune.models import StepTimeModel
        >>> runs = pd.read_parquet(SAMPLES_DIR / "runs.parquet")             # doctest: +SKIP
        >>> requests = pd.read_parquet(SAMPLES_DIR / "requests.parquet")     # doctest: +SKIP
        >>> replay_run(runs.iloc[0], requests, model.compile()).metrics      # doctest: +SKIP
        {'ttft_mean_ms': ..., 'tpot_mean_ms': ..., 'output_throughput_tok_s': ...}
    """
    mine = requests[requests["run_id"] == run["run_id"]].sort_values("arrival_s", kind="stable")
    if mine.empty:
        raise InputError(f"run {run['run_id']!r} has no requests to replay")
    n = _warmup_of(run) if warmup is None else int(warmup)
    arrival = mine["arrival_s"].to_numpy(dtype=np.float64)
    offset = float(arrival[0])  # the first arrival on the run's clock
    arrival = arrival - offset
    inputs, outputs = mine["input_tokens"].to_numpy(), mine["output_tokens"].to_numpy()
    clock = WARMUP_GAP_S if n else 0.0
    workload = Workload.from_arrays(
        np.concatenate([np.zeros(n), arrival + clock]),
        np.concatenate([np.full(n, _WARMUP_INPUT), inputs]),
        np.concatenate([np.full(n, _WARMUP_OUTPUT), outputs]),
        name="replay+warmup" if n else "replay")
    engine, config = replay_config(run)
    result = Simulator(engine, {**config, **dict(overrides or {})}, step_model).run(
        workload, seed=seed, record_steps=record_steps)
    real = slice(n, None)
    duration = float(np.nanmax(result.finish_s[real])) - clock + offset
    metrics = {"ttft_mean_ms": float(np.nanmean(result.ttft_ms[real])),
               "tpot_mean_ms": float(np.nanmean(result.tpot_ms[real])),
               "output_throughput_tok_s": float(outputs.sum()) / duration}
    return Replay(metrics=metrics, result=result, warmup=n, clock_s=clock)


def _warmup_of(run: Mapping | pd.Series) -> int:
    provenance = run.get("provenance") if hasattr(run, "get") else None
    if not isinstance(provenance, str) or not provenance:
        return 0
    try:
        return int(json.loads(provenance).get("warmup_requests") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
