"""The Python API: load a workload, train a step-time model, simulate, tune.

Thin wrappers over the private modules with typed results; ``import servetune`` re-exports them
lazily. Every ``workspace`` argument takes a path or a :class:`~servetune.data.Workspace`
(``None``: ``$SERVETUNE_WORKSPACE``, else the current directory).

Example:
    >>> import servetune
    >>> servetune.load_workload("poisson:rate=2,n=10", seed=1).descriptor["n"]  # doctest: +SKIP
    10
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, replace

from servetune import ConfigError
from servetune._results import SimulationReport, TuneResult

__all__ = ["load_workload", "train", "simulate", "tune"]


def _workspace(workspace):
    from servetune.data import Workspace

    if isinstance(workspace, Workspace):
        return workspace
    if workspace is not None and not isinstance(workspace, (str, os.PathLike)):
        raise ConfigError(f"workspace must be a path or a Workspace; got "
                          f"{type(workspace).__name__}")
    return Workspace.resolve(workspace)


def _dataclass_kwargs(cls, values: Mapping, what: str) -> dict:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown settings {unknown}; valid: {', '.join(sorted(known))}")
    return dict(values)


def load_workload(path_or_spec, *, seed: int = 0, qps: float | None = None,
                  limit: int | None = None):
    """A :class:`~servetune.data.Workload` from a trace file or a synthetic spec.

    Args:
        path_or_spec: a request trace (Splitwise/Azure CSV, Mooncake JSONL, BurstGPT, ...) or a
            spec such as ``"poisson:rate=5,n=500"``.
        seed: seed of a synthetic workload.
        qps: rescale the arrivals to this mean rate (req/s).
        limit: keep the first ``limit`` requests.
    """
    from servetune.data import resolve_workload

    return resolve_workload(str(path_or_spec), seed=seed, qps=qps, limit=limit)


def train(workspace=None, *, where=None, calibrate_from: str | None = None,
          progress: bool | None = None, **train_config):
    """Train, evaluate and register a step-time model from the workspace's trace store.

    A store without step traces gets the bundled samples first (as ``servetune train``).

    Args:
        where: step filters, a mapping (``{"engine": "vllm"}``) or ``["engine=vllm", ...]``.
        calibrate_from: a model URI to calibrate instead of training from scratch.
        **train_config: :class:`~servetune.models.TrainConfig` fields (``n_trials``, ``seed``,
            ``feature_set``, ``test_fraction``, ...).

    Returns:
        :class:`~servetune.models.TrainResult` (``model_uri``, ``champion``, ``metrics``...).
    """
    from servetune.data import TraceStore
    from servetune.models import TrainConfig, parse_where, train_step_time_model
    from servetune.models._training import ingest_samples_if_empty

    ws = _workspace(workspace)
    config = TrainConfig(**_dataclass_kwargs(TrainConfig, train_config, "train"))
    if calibrate_from is not None:
        config = replace(config, calibrate_from=calibrate_from)
    if where is None or isinstance(where, Mapping):
        filters = dict(where or {})
    else:
        filters = parse_where([where] if isinstance(where, str) else where)
    ingest_samples_if_empty(TraceStore.for_workspace(ws))
    return train_step_time_model(ws, filters, config, progress=progress)


def simulate(engine: str, config: Mapping | None = None, workload="poisson:rate=2,n=200", *,
             workspace=None, model_uri: str | None = None, slo=None, seed: int = 0,
             record_steps: bool = False) -> SimulationReport:
    """Simulate one configuration of ``engine`` serving ``workload``.

    Args:
        engine: ``vllm``, ``transformers-cb``, ``static`` (or an alias).
        config: engine knobs (unknown keys are refused with the list of knobs).
        workload: a :class:`~servetune.data.Workload`, a trace file or a synthetic spec.
        model_uri: the step-time model (default: the engine's champion, trained on first use).
        slo: goodput bounds: ``{"ttft_ms": ..., "tpot_ms": ..., "e2e_ms": ...}`` or an ``SLO``.
        record_steps: keep every simulated step on ``report.result.steps``.

    Returns:
        :class:`SimulationReport` with metrics, the domain report and the prediction interval.
    """
    from servetune.tuner.simulator import SLO

    if isinstance(slo, Mapping):
        slo = SLO(**_dataclass_kwargs(SLO, slo, "slo"))
    from servetune._simulation import run_simulation

    return run_simulation(_workspace(workspace), engine, dict(config or {}), workload,
                          seed=seed, model_uri=model_uri, slo=slo, record_steps=record_steps)


def tune(workspace=None, *, resume: str | None = None, progress: bool = True,
         **settings) -> TuneResult:
    """Run (or ``resume``) a tuning study in simulation.

    Args:
        **settings: :class:`~servetune.tuner._job.TuneSettings` fields: ``space`` (built-in
            name or a space file: servetune TOML, LLMServingTuner TOML, auto-tuning-vllm YAML),
            ``workload``, ``objective``, ``optimizer``, ``particles``, ``iterations``,
            ``top_k``, ``seed``, ``model_uri``, ``track`` (MLflow), ``domain``...

    Returns:
        :class:`TuneResult`: best, baseline, candidates (intervals, domain, launch command),
        notes, the study's folder and whether the default is already near-best.
    """
    from servetune.tuner._job import TuneSettings, run_tune

    tune_settings = TuneSettings(**_dataclass_kwargs(TuneSettings, settings, "tune"))
    summary = run_tune(_workspace(workspace), tune_settings, resume=resume, progress=progress)
    return TuneResult.from_summary(summary)
