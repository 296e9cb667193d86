"""Measured benchmark results as trace-store rows (``requests`` and ``runs``, source measured,
and the ``steps`` reconstructed from the requests' token timings).

The run row carries the candidate's configuration (JSON plus the known knobs flattened), the
aggregate metrics, and - in its ``extra`` JSON - the candidate's name, the service group, the
repeat index and the *predicted* metrics, so predicted and measured sit side by side.

Example:
    >>> aggregate_metrics([], {"ttft_ms": 500})["completed"]
    0
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from servetune import __version__
from servetune.data import SLO, Workload, conform, run_metrics
from servetune.data.engines import ENGINES, redact_secrets
from servetune.tuner.hardware._client import BenchmarkResult, RequestResult

__all__ = ["aggregate_metrics", "measurement_tables", "reconstructed_steps", "REPORT_METRICS",
           "LOWER_IS_BETTER"]

log = logging.getLogger(__name__)

#: the metrics compared between prediction and measurement, when both have them
REPORT_METRICS = ("request_throughput_rps", "output_throughput_tok_s", "goodput_rps",
                  "ttft_mean_ms", "tpot_mean_ms", "itl_mean_ms", "e2e_mean_ms", "e2e_p90_ms")
LOWER_IS_BETTER = {m for m in REPORT_METRICS if m.endswith("_ms")}


def aggregate_metrics(requests: Sequence[RequestResult], slo: SLO | Mapping | None = None
                      ) -> dict[str, float | int | None]:
    """The runs-table aggregates of a replay: :func:`servetune.data.run_metrics` of its requests
    (TTFT/E2E from when each request was sent; ``duration_s`` to the last completed request's
    finish; the server's ``prompt_tokens`` where it reported them)."""
    return run_metrics(
        arrival_s=[r.sent_s for r in requests], ttft_ms=[r.ttft_ms for r in requests],
        e2e_ms=[r.e2e_ms for r in requests], output_tokens=[r.output_tokens for r in requests],
        input_tokens=[r.prompt_tokens or r.input_tokens for r in requests],
        ok=[r.status == "ok" for r in requests], slo=slo, itl_ms=[r.itl_ms for r in requests])


def measurement_tables(result: BenchmarkResult, *, run_id: str, engine: str, model: str,
                       hardware: str, config: Mapping[str, object], workload: Workload,
                       host: str, command: Sequence[str], gpu_count: int,
                       metrics: Mapping[str, object], extra: Mapping[str, object],
                       provenance: Mapping[str, object]) -> tuple[dict, str]:
    """``{"requests": table, "runs": table}`` for the store, and the content hash to ingest with."""
    n = len(result.requests)
    identity = {"run_id": [run_id] * n, "engine": [engine] * n, "model": [model] * n,
                "hardware": [hardware] * n, "source": ["measured"] * n}
    requests = {
        **identity,
        "request_id": [r.request_id for r in result.requests],
        "arrival_s": [r.arrival_s for r in result.requests],
        "input_tokens": [r.prompt_tokens or r.input_tokens for r in result.requests],
        "output_tokens": [r.output_tokens for r in result.requests],
        "ttft_ms": [r.ttft_ms for r in result.requests],
        "tpot_ms": [r.tpot_ms for r in result.requests],
        "e2e_ms": [r.e2e_ms for r in result.requests],
        "itl_ms": [r.itl_ms if r.status == "ok" else None for r in result.requests],
        "status": [r.status for r in result.requests],
        "error": [r.error for r in result.requests],
        "extra": [json.dumps({"sent_s": None if math.isnan(r.sent_s) else round(r.sent_s, 6),
                              "requested_input_tokens": r.input_tokens})
                  for r in result.requests],
    }
    run = {"run_id": run_id, "engine": engine, "model": model, "hardware": hardware,
           "source": "measured", "engine_version": None, "gpu_count": gpu_count,
           "config": json.dumps(redact_secrets(config), sort_keys=True, default=str),
           "workload": workload.to_json(), "started_at": result.started_at,
           "host": host, "command": " ".join(shlex.quote(a) for a in command),
           "provenance": json.dumps({"servetune": __version__, **provenance}, sort_keys=True,
                                    default=str),
           "extra": json.dumps(dict(extra), sort_keys=True, default=str)}
    run.update(_knob_columns(engine, config))
    run.update({k: v for k, v in metrics.items()})
    runs = {k: [v] for k, v in run.items()}
    tables = {"requests": conform(requests, "requests", path=f"measured run {run_id}"),
              "runs": conform(runs, "runs", path=f"measured run {run_id}")}
    digest = hashlib.sha256()
    for kind in ("requests", "runs"):
        digest.update(json.dumps(tables[kind].to_pylist(), sort_keys=True, default=str).encode())
    steps = reconstructed_steps(result.requests, run)
    if steps is not None:
        tables["steps"] = steps
    return tables, digest.hexdigest()


def reconstructed_steps(requests: Sequence[RequestResult], run: Mapping[str, object]):
    """The run's engine steps rebuilt from its requests' token timings
    (:func:`servetune.data.reconstruct_steps`, ``source = "reconstructed"``), as a steps table;
    None for an engine without a spec (a user start script) or timings that cannot be used
    (logged: the measurement itself is kept either way)."""
    import pandas as pd

    from servetune import InputError
    from servetune.data import reconstruct_steps

    if run["engine"] not in ENGINES:
        return None
    frame = pd.DataFrame({
        # token instants count from when each request was sent (TTFT is measured from there)
        "arrival_s": [r.arrival_s if math.isnan(r.sent_s) else r.sent_s for r in requests],
        "input_tokens": [r.prompt_tokens or r.input_tokens for r in requests],
        "output_tokens": [r.output_tokens for r in requests],
        "ttft_ms": [r.ttft_ms for r in requests],
        "itl_ms": [r.itl_ms if r.status == "ok" else None for r in requests],
        "status": [r.status for r in requests]})
    try:
        steps = reconstruct_steps(frame, run)
    except (InputError, ValueError) as exc:
        log.warning("measured run %s: no steps reconstructed from its token timings (%s)",
                    run["run_id"], exc)
        return None
    return conform(steps, "steps", path=f"reconstructed steps of measured run {run['run_id']}")


def _knob_columns(engine: str, config: Mapping[str, object]) -> dict:
    """The runs table's knob columns of ``config`` under any spelling of its engine's knobs
    (an engine without a spec, such as a user start script, fills none)."""
    if engine not in ENGINES:
        return {}
    return ENGINES[engine].runs_columns(config)


def model_label(model: str | None) -> str:
    """The store's ``model`` value for a model path or id (the last path component)."""
    if not model:
        return "unknown"
    return Path(model.rstrip("/")).name or model
