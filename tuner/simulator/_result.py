"""What one simulation produces: per-request arrays, run metrics, and the store's records.

Metric definitions follow the collector (``data/collect/_runner.py``) so simulated and measured
runs compare like for like: ``duration_s`` is the last finish time (arrivals start at 0),
throughputs divide by it, TPOT is a request's mean inter-token latency (requests with one output
token have none), goodput counts completed requests within every given SLO.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from servetune.data import Workload, atomic_write_bytes, conform
from servetune.tuner.simulator import _kernel as K

__all__ = ["SLO", "SimulationResult"]

_STATS = ("mean", "p50", "p90", "p99")


@dataclass(frozen=True)
class SLO:
    """Latency objectives for goodput; ``None`` means no bound on that metric.

    Example:
        >>> SLO(ttft_ms=500, tpot_ms=50).as_dict()
        {'ttft_ms': 500.0, 'tpot_ms': 50.0, 'e2e_ms': None}
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    def as_dict(self) -> dict:
        """``{"ttft_ms": ..., "tpot_ms": ..., "e2e_ms": ...}``."""
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}

    @classmethod
    def coerce(cls, value: "SLO | dict | None") -> "SLO":
        """An SLO from an SLO, a mapping with some of its keys, or None (no bounds)."""
        if value is None:
            return cls()
        if isinstance(value, SLO):
            return value
        from servetune import ConfigError

        unknown = set(value) - {"ttft_ms", "tpot_ms", "e2e_ms"}
        if unknown:
            raise ConfigError(f"unknown SLO key(s) {sorted(unknown)}; valid: ttft_ms, tpot_ms, "
                              "e2e_ms")
        return cls(**dict(value))


def _summary(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {s: None for s in _STATS}
    p50, p90, p99 = np.percentile(values, (50, 90, 99))
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99)}


@dataclass(eq=False)
class SimulationResult:
    """The outcome of one simulated run.

    Arrays are per request in workload order; times are seconds from the first arrival.
    ``token_s[token_offset[i]:token_offset[i+1]]`` are request ``i``'s output token times.
    """

    engine: str
    store_engine: str
    config: dict
    seed: int
    workload: Workload
    slo: SLO
    replica: np.ndarray
    status: np.ndarray  # 3 ok, 4 failed
    preemptions: np.ndarray
    generated: np.ndarray
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    token_s: np.ndarray
    token_offset: np.ndarray
    num_steps: int
    steps: np.ndarray | None = None
    labels: dict = field(default_factory=dict)
    graph_captures: int = 0
    _metrics: dict | None = field(default=None, repr=False)

    # -- per request ----------------------------------------------------------------------------

    @property
    def ok(self) -> np.ndarray:
        """Completed requests (bool mask)."""
        return self.status == K._DONE

    @property
    def ttft_ms(self) -> np.ndarray:
        """Time to first token per request (NaN when it failed)."""
        return (self.first_token_s - self.workload.arrival_s) * 1e3

    @property
    def e2e_ms(self) -> np.ndarray:
        """End-to-end latency per request (NaN when it failed)."""
        return np.where(self.ok, (self.finish_s - self.workload.arrival_s) * 1e3, np.nan)

    @property
    def queue_ms(self) -> np.ndarray:
        """Arrival to first scheduled step per request."""
        return (self.first_scheduled_s - self.workload.arrival_s) * 1e3

    @property
    def tpot_ms(self) -> np.ndarray:
        """Mean inter-token latency per request (NaN with fewer than two tokens or failed)."""
        n = self.generated
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (self.finish_s - self.first_token_s) * 1e3 / (n - 1)
        return np.where(self.ok & (n > 1), tpot, np.nan)

    def itl_ms(self) -> np.ndarray:
        """Every inter-token latency of every completed request, pooled (ms)."""
        diffs = np.diff(self.token_s) * 1e3
        owner = np.repeat(np.arange(len(self.workload)), np.diff(self.token_offset))
        same = owner[1:] == owner[:-1]
        keep = same & self.ok[owner[1:]]
        return diffs[keep]

    # -- per run --------------------------------------------------------------------------------

    @property
    def metrics(self) -> dict:
        """Run metrics: counts, throughputs, goodput, latency summaries (see the module doc)."""
        if self._metrics is None:
            self._metrics = self._compute_metrics()
        return self._metrics

    def _compute_metrics(self) -> dict:
        ok = self.ok
        completed = int(ok.sum())
        finishes = self.finish_s[ok]
        duration = float(finishes.max()) if completed else None
        out_tokens = int(self.workload.output_tokens[ok].sum())
        in_tokens = int(self.workload.input_tokens[ok].sum())
        ttft, tpot, e2e = self.ttft_ms, self.tpot_ms, self.e2e_ms
        good = ok.copy()
        if self.slo.ttft_ms is not None:
            good &= ttft <= self.slo.ttft_ms
        if self.slo.tpot_ms is not None:
            good &= ~(tpot > self.slo.tpot_ms)  # one-token requests have no TPOT: within
        if self.slo.e2e_ms is not None:
            good &= e2e <= self.slo.e2e_ms

        def rate(x: float) -> float | None:
            return x / duration if duration else None

        return {
            "num_requests": len(self.workload),
            "completed": completed,
            "failed": len(self.workload) - completed,
            "duration_s": duration,
            "request_throughput_rps": rate(completed),
            "output_throughput_tok_s": rate(out_tokens),
            "total_token_throughput_tok_s": rate(in_tokens + out_tokens),
            "goodput_rps": rate(int(good.sum())),
            "good_requests": int(good.sum()),
            "slo": self.slo.as_dict(),
            "preemptions": int(self.preemptions.sum()),
            "steps": int(self.num_steps),
            "graph_captures": int(self.graph_captures),
            "ttft_ms": _summary(ttft[ok]),
            "tpot_ms": _summary(tpot[ok]),
            "itl_ms": _summary(self.itl_ms()),
            "e2e_ms": _summary(e2e[ok]),
            "queue_ms": _summary(self.queue_ms[ok]),
        }

    def flat_metrics(self) -> dict:
        """The metrics as one flat dict (``ttft_ms_p90``, ...; the tuner's ``METRIC_KEYS``),
        plus ``slo_attainment``: the share of all requests that completed within the SLO."""
        m = self.metrics
        n = m["num_requests"]
        good = m["good_requests"]
        flat = {"requests": n, "completed": m["completed"], "success_rate": m["completed"] / n,
                "duration_s": m["duration_s"],
                "request_throughput_rps": m["request_throughput_rps"],
                "output_throughput_tok_s": m["output_throughput_tok_s"],
                "total_token_throughput_tok_s": m["total_token_throughput_tok_s"],
                "goodput_rps": m["goodput_rps"], "slo_attainment": good / n,
                "preemptions": m["preemptions"], "steps": m["steps"]}
        for metric in ("ttft", "tpot", "itl", "e2e", "queue"):
            for stat in _STATS:
                flat[f"{metric}_ms_{stat}"] = m[f"{metric}_ms"][stat]
        return flat

    @property
    def run_id(self) -> str:
        """A deterministic id: a hash of engine, configuration, workload, seed and labels."""
        key = json.dumps({"engine": self.engine, "config": self.config, "seed": self.seed,
                          "workload": self.workload.to_json(), "labels": self.labels},
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        arrays = hashlib.sha256(self.workload.arrival_s.tobytes()
                                + self.workload.input_tokens.tobytes()
                                + self.workload.output_tokens.tobytes()).hexdigest()[:8]
        return f"sim-{digest}-{arrays}"

    def _identity(self, n: int) -> dict:
        return {"run_id": [self.run_id] * n, "engine": [self.store_engine] * n,
                "model": [self.labels.get("model", "unknown")] * n,
                "hardware": [self.labels.get("hardware", "simulated")] * n,
                "engine_version": [self.labels.get("engine_version")] * n,
                "source": ["simulated"] * n}

    def requests_table(self) -> pa.Table:
        """One ``requests`` row per request, conforming to the store's schema (source=simulated)."""
        n = len(self.workload)
        ok = self.ok
        itl = [None] * n
        times_ms = self.token_s * 1e3
        for i in range(n):
            if ok[i]:
                itl[i] = np.diff(times_ms[self.token_offset[i]:self.token_offset[i + 1]]).tolist()
        frame = pd.DataFrame({
            **self._identity(n),
            "request_id": [f"r{i}" for i in range(n)],
            "arrival_s": self.workload.arrival_s,
            "input_tokens": self.workload.input_tokens,
            "output_tokens": np.where(ok, self.generated, 0),
            "queue_ms": self.queue_ms,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "itl_ms": itl,
            "preemptions": self.preemptions.astype(np.int32),
            "status": np.where(ok, "ok", "error"),
            "error": np.where(ok, None, "request larger than the KV cache"),
            "extra": [json.dumps({"dp_rank": int(r)}) for r in self.replica],
        })
        return conform(frame, "requests")

    def runs_row(self, started_at: datetime | None = None) -> pa.Table:
        """The run's one ``runs`` row (source=simulated), conforming to the store's schema."""
        from servetune.tuner.simulator._policies import get_policy

        m = self.metrics
        c = self.config
        row = {
            "gpu_name": self.labels.get("gpu_name"), "gpu_count": c["tp_size"] * c["dp_size"],
            "tp_size": c["tp_size"], "pp_size": 1, "dp_size": c["dp_size"],
            "config": json.dumps(c, sort_keys=True),
            **get_policy(self.engine).runs_columns(c),
            "workload": self.workload.to_json(), "num_requests": m["num_requests"],
            "duration_s": m["duration_s"], "completed": m["completed"], "failed": m["failed"],
            "success_rate": m["completed"] / m["num_requests"],
            "request_throughput_rps": m["request_throughput_rps"],
            "output_throughput_tok_s": m["output_throughput_tok_s"],
            "total_token_throughput_tok_s": m["total_token_throughput_tok_s"],
            "goodput_rps": m["goodput_rps"], "preemptions": m["preemptions"],
            "started_at": started_at or datetime.fromtimestamp(0, tz=timezone.utc),
            "provenance": json.dumps({"simulator": "servetune", "seed": self.seed,
                                      "model_uri": self.labels.get("model_uri"),
                                      "slo": self.slo.as_dict()}, sort_keys=True),
            "extra": json.dumps({"steps": m["steps"], "queue_ms": m["queue_ms"]},
                                sort_keys=True),
        }
        for metric in ("ttft", "tpot", "itl", "e2e"):
            for stat in _STATS:
                row[f"{metric}_{stat}_ms"] = m[f"{metric}_ms"][stat]
        columns = {**self._identity(1), **{k: [v] for k, v in row.items()}}
        return conform(columns, "runs")

    def write_parquet(self, directory: str | Path) -> dict[str, Path]:
        """Write ``requests.parquet``, ``runs.parquet`` (and ``steps.parquet`` when steps were
        recorded) into ``directory``, each atomically; ``servetune ingest`` reads them back.

        Returns:
            trace kind -> written path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tables = {"requests": self.requests_table(), "runs": self.runs_row()}
        if self.steps is not None:
            tables["steps"] = self.steps_table()
        written = {}
        for kind, table in tables.items():
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            path = directory / f"{kind}.parquet"
            atomic_write_bytes(path, buffer.getvalue())
            written[kind] = path
        return written

    def steps_table(self) -> pa.Table:
        """The simulated steps (``record_steps=True`` only) as ``steps`` rows."""
        if self.steps is None:
            from servetune import ConfigError

            raise ConfigError("steps were not recorded; simulate with record_steps=True")
        n = self.steps.shape[0]
        cols = {name: self.steps[:, j] for j, name in enumerate(K.STEP_COLUMNS)}
        frame = pd.DataFrame({
            **self._identity(n),
            "gpu_count": self.config["tp_size"], "tp_size": self.config["tp_size"], "pp_size": 1,
            "dp_rank": cols["dp_rank"].astype(np.int32), "step_index": np.arange(n),
            "start_s": cols["start_s"], "duration_ms": cols["duration_ms"],
            **{name: cols[name].astype(np.int64) for name in K.STEP_COLUMNS[3:]},
            "block_size": self.config.get("block_size"),
        })
        return conform(frame, "steps")
