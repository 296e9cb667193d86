"""What one simulation produces: per-request arrays, run metrics, and the store's records.

The run metrics are :func:`servetune.data.run_metrics` of the per-request arrays - the same
function, definitions and names as every measured run (``data/_metrics.py`` says which):
:meth:`SimulationResult.flat_metrics` is its flat dict (the ``runs`` column names, what the tuner
scores) plus the simulator's step counts, and :attr:`SimulationResult.metrics` the same numbers
nested for people (``{"ttft_ms": {"mean", "p50", "p90", "p99"}, ...}``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from servetune.data import SLO, Workload, atomic_write_bytes, conform, run_metrics
from servetune.data._metrics import LATENCY_METRICS, STATS, streamed_summary
from servetune.tuner.simulator import _kernel as K

__all__ = ["SLO", "SimulationResult", "POOLED_ITL_LIMIT"]

#: latency metrics that are ``runs`` columns (queue is the simulator's own)
_RUNS_LATENCIES = ("ttft", "tpot", "itl", "e2e")
#: runs with at most this many output tokens pool their ITLs in one array and summarise them
#: with numpy (bit for bit the measured path); longer runs stream them (:func:`_itl_streamed`:
#: percentiles identical, the mean within 1e-12 relative), so their metrics need no memory
#: beyond the token times (1 M requests of ~150 tokens pooled 4 more copies: 6.3 GiB)
POOLED_ITL_LIMIT = 1 << 21


@numba.njit(cache=True)
def _itl_moments(token_s, token_offset, ok):
    """Count and compensated (Neumaier) sum of the finite ITLs (ms) of completed requests, and
    whether any is negative; each ITL is ``token_s[j] * 1e3 - token_s[j - 1] * 1e3``, the
    arithmetic of ``np.diff(token_s * 1e3)``."""
    count = 0
    total = 0.0
    carry = 0.0
    negative = False
    for i in range(ok.shape[0]):
        if not ok[i]:
            continue
        for j in range(token_offset[i] + 1, token_offset[i + 1]):
            d = token_s[j] * 1e3 - token_s[j - 1] * 1e3
            if not np.isfinite(d):
                continue
            if d < 0.0:
                negative = True
            count += 1
            t = total + d
            if abs(total) >= abs(d):
                carry += (total - t) + d
            else:
                carry += (d - t) + total
            total = t
    return count, total + carry, negative


@numba.njit(cache=True)
def _itl_select(token_s, token_offset, ok, ranks):
    """The finite, non-negative ITLs (ms) of completed requests at 0-based ``ranks`` of their
    sorted order, without sorting or storing them: a radix select on their IEEE bit patterns
    (monotone for non-negative floats), 16 bits per pass over the token times."""
    k = ranks.shape[0]
    prefix = np.zeros(k, dtype=np.uint64)
    left = ranks.copy()
    hist = np.zeros((k, 1 << 16), dtype=np.int64)
    cell = np.zeros(1, dtype=np.float64)
    bits = cell.view(np.uint64)
    for level in range(4):
        shift = np.uint64(48 - 16 * level)
        mask = np.uint64(0) if level == 0 else ~((np.uint64(1) << (shift + np.uint64(16)))
                                                 - np.uint64(1))
        hist[:, :] = 0
        for i in range(ok.shape[0]):
            if not ok[i]:
                continue
            for j in range(token_offset[i] + 1, token_offset[i + 1]):
                cell[0] = token_s[j] * 1e3 - token_s[j - 1] * 1e3
                if not np.isfinite(cell[0]):
                    continue
                b = bits[0]
                digit = (b >> shift) & np.uint64(0xFFFF)
                for t in range(k):
                    if (b & mask) == prefix[t]:
                        hist[t, digit] += 1
        for t in range(k):
            seen = 0
            for digit in range(1 << 16):
                if seen + hist[t, digit] > left[t]:
                    prefix[t] |= np.uint64(digit) << shift
                    left[t] -= seen
                    break
                seen += hist[t, digit]
    out = np.zeros(k)
    for t in range(k):
        bits[0] = prefix[t]
        out[t] = cell[0]
    return out


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
        """Time per output token per request, ``(e2e - ttft) / (tokens - 1)`` (NaN with fewer
        than two tokens or failed)."""
        n = self.generated
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (self.e2e_ms - self.ttft_ms) / (n - 1)
        return np.where(self.ok & (n > 1), tpot, np.nan)

    def _itl_flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every request's inter-token latencies (ms) as one array and per-request offsets
        (the same values as the ``itl_ms`` lists of :meth:`requests_table`)."""
        diffs = np.diff(self.token_s * 1e3)
        counts = np.diff(self.token_offset)
        owner = np.repeat(np.arange(len(self.workload)), counts)
        keep = owner[1:] == owner[:-1]
        offsets = np.concatenate(([0], np.cumsum(np.maximum(counts - 1, 0))))
        return diffs[keep], offsets

    def _itl_streamed(self) -> dict | None:
        """The ``itl_*_ms`` statistics of a long run computed over the token times in place
        (None below :data:`POOLED_ITL_LIMIT` tokens, or with a negative ITL: pool them)."""
        if self.token_s.shape[0] <= POOLED_ITL_LIMIT:
            return None
        args = (self.token_s, self.token_offset, np.ascontiguousarray(self.ok))
        count, total, negative = _itl_moments(*args)
        if negative:
            return None

        def select(ranks: np.ndarray) -> np.ndarray:
            unique, back = np.unique(ranks, return_inverse=True)
            return _itl_select(*args, unique.astype(np.int64))[back]
        return streamed_summary("itl", count, total / count if count else None, select)

    def itl_ms(self) -> np.ndarray:
        """Every inter-token latency of every completed request, pooled (ms)."""
        values, offsets = self._itl_flat()
        owner = np.repeat(np.arange(len(self.workload)), np.diff(offsets))
        return values[self.ok[owner]]

    # -- per run --------------------------------------------------------------------------------

    @property
    def metrics(self) -> dict:
        """The run metrics nested for people: counts, throughputs, goodput, the SLO, and
        ``{"ttft_ms": {"mean", "p50", "p90", "p99"}, ...}`` - the numbers of
        :meth:`flat_metrics`, regrouped."""
        flat = self.flat_metrics()
        nested = {k: flat[k] for k in (
            "num_requests", "completed", "failed", "duration_s", "request_throughput_rps",
            "output_throughput_tok_s", "total_token_throughput_tok_s", "goodput_rps",
            "good_requests")}
        nested.update({"slo": self.slo.as_dict(), "preemptions": flat["preemptions"],
                       "steps": flat["steps"], "graph_captures": flat["graph_captures"]})
        for metric in LATENCY_METRICS:
            nested[f"{metric}_ms"] = {s: flat[f"{metric}_{s}_ms"] for s in STATS}
        return nested

    def flat_metrics(self) -> dict:
        """:func:`servetune.data.run_metrics` of this run (the ``runs`` column names, what the
        tuner scores: ``ttft_p90_ms``, ``goodput_rps``, ...) plus ``steps`` and
        ``graph_captures``. Computed once."""
        if self._metrics is None:
            streamed = self._itl_streamed()
            itl, offsets = self._itl_flat() if streamed is None else (None, None)
            self._metrics = {
                **run_metrics(arrival_s=self.workload.arrival_s, ttft_ms=self.ttft_ms,
                              e2e_ms=self.e2e_ms, output_tokens=self.generated,
                              input_tokens=self.workload.input_tokens, ok=self.ok, slo=self.slo,
                              itl_ms=itl, itl_offsets=offsets, queue_ms=self.queue_ms,
                              preemptions=self.preemptions, itl_summary=streamed),
                "steps": int(self.num_steps), "graph_captures": int(self.graph_captures)}
        return dict(self._metrics)

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

        m = self.flat_metrics()
        c = self.config
        row = {
            "gpu_name": self.labels.get("gpu_name"), "gpu_count": c["tp_size"] * c["dp_size"],
            "tp_size": c["tp_size"], "pp_size": 1, "dp_size": c["dp_size"],
            "config": json.dumps(c, sort_keys=True),
            **get_policy(self.engine).runs_columns(c),
            "workload": self.workload.to_json(),
            **{k: m[k] for k in ("num_requests", "duration_s", "completed", "failed",
                                 "success_rate", "request_throughput_rps",
                                 "output_throughput_tok_s", "total_token_throughput_tok_s",
                                 "goodput_rps", "preemptions")},
            **{f"{metric}_{s}_ms": m[f"{metric}_{s}_ms"] for metric in _RUNS_LATENCIES
               for s in STATS},
            "started_at": started_at or datetime.fromtimestamp(0, tz=timezone.utc),
            "provenance": json.dumps({"simulator": "servetune", "seed": self.seed,
                                      "model_uri": self.labels.get("model_uri"),
                                      "slo": self.slo.as_dict()}, sort_keys=True),
            "extra": json.dumps({"steps": m["steps"],
                                 "queue_ms": {s: m[f"queue_{s}_ms"] for s in STATS}},
                                sort_keys=True),
        }
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
