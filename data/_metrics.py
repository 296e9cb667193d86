"""Run metrics: ONE definition, used by the simulator and by every measured run.

:func:`run_metrics` turns per-request arrays into the ``runs`` table's aggregate columns (see
``data/_schemas.py``). The names are the ``runs`` column names everywhere - the tuner's
objectives and ``METRIC_KEYS``, candidates, reports, MLflow, the CLI:
``{ttft,tpot,itl,e2e}_{mean,p50,p90,p99}_ms``, ``request_throughput_rps``,
``output_throughput_tok_s``, ``total_token_throughput_tok_s``, ``goodput_rps``, ``success_rate``,
``duration_s``, ``completed``, ``failed``, ``num_requests``, ``preemptions``. Three keys are not
``runs`` columns: ``good_requests``, ``slo_attainment`` and the simulator's
``queue_{mean,p50,p90,p99}_ms``.

Definitions (times are seconds on the run's clock, whose 0 is the run's start: the first
scheduled arrival, since a :class:`~servetune.data.Workload`'s arrivals start at 0):

- A request is *completed* when its status is ok. Failed requests count in ``num_requests``,
  ``failed`` and the ``success_rate`` denominator, and in nothing else.
- ``duration_s``: from the run's start to the last finish of a completed request (finish =
  when it was sent + its E2E latency). This is what the collector (``data/collect/_runner.py``:
  the last token's time after its clock ``t0``) and ``vllm bench serve`` (start of the benchmark
  to the last response) measure when every request completes; a failed request's end time is
  not counted (the benchmark client does not know it). ``None`` when nothing completed.
- Throughputs are over ``duration_s``: completed requests, their output tokens, their input +
  output tokens.
- TTFT and E2E are from when the request was sent (measured) or arrived (simulated).
  ``tpot_ms`` of a request is ``(e2e - ttft) / (output_tokens - 1)`` (vLLM's definition;
  requests with one output token have none). ``itl_ms`` pools every inter-token latency of every
  completed request. Latency statistics (mean, p50, p90, p99; ``numpy.percentile``, linear) are
  over completed requests with a finite value.
- Goodput: a request is *good* when it completed and meets every bound the :class:`SLO` gives.
  A missing value fails its bound - a request with no first token is never good under a TTFT
  SLO, one with no E2E never under an E2E SLO - except that a one-token request has no TPOT and
  passes the TPOT bound. ``goodput_rps = good / duration_s``; ``slo_attainment = good /
  num_requests``. With no bound at all, goodput is not defined: ``goodput_rps``,
  ``good_requests`` and ``slo_attainment`` are ``None`` (as ``vllm bench serve`` without
  ``--goodput``).

Example:
    >>> m = run_metrics(arrival_s=[0.0, 0.5], ttft_ms=[100.0, 300.0], e2e_ms=[500.0, 900.0],
    ...                 output_tokens=[5, 5], input_tokens=[10, 10], ok=[True, True],
    ...                 slo=SLO(ttft_ms=200))
    >>> m["duration_s"], m["goodput_rps"], m["ttft_p50_ms"]
    (1.4, 0.7142857142857143, 200.0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SLO", "run_metrics", "metric_name", "streamed_summary", "LATENCY_METRICS", "STATS"]

#: the latency metrics summarised per run, and their statistics (``ttft_p90_ms``, ...)
LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e", "queue")
STATS: tuple[str, ...] = ("mean", "p50", "p90", "p99")


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

    @property
    def bounded(self) -> bool:
        """Whether any bound is given (else goodput is not defined)."""
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def as_dict(self) -> dict:
        """``{"ttft_ms": ..., "tpot_ms": ..., "e2e_ms": ...}``."""
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}

    @classmethod
    def coerce(cls, value: "SLO | Mapping | None") -> "SLO":
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


def _floats(values, n: int, name: str) -> np.ndarray:
    """A float64 array of ``n`` values, ``None`` as NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        arr = values.astype(np.float64, copy=False)
    else:
        arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if arr.shape != (n,):
        from servetune import ConfigError

        raise ConfigError(f"run_metrics: {name} has shape {arr.shape}, expected ({n},)")
    return arr


def _summary(metric: str, values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {f"{metric}_{s}_ms": None for s in STATS}
    p50, p90, p99 = np.percentile(values, (50, 90, 99))
    return {f"{metric}_mean_ms": float(values.mean()), f"{metric}_p50_ms": float(p50),
            f"{metric}_p90_ms": float(p90), f"{metric}_p99_ms": float(p99)}


#: the percentiles of ``STATS`` (``numpy.percentile``'s q)
_PERCENTILES = (50, 90, 99)


def _linear_percentiles(count: int, select) -> np.ndarray:
    """``numpy.percentile(values, (50, 90, 99))`` (method linear) of ``count`` values known only
    through ``select(ranks)``, which returns the values of those 0-based ranks in sorted order:
    numpy's own index, weight and interpolation arithmetic, on the two neighbours it would
    take from the partitioned array."""
    q = np.true_divide(np.array(_PERCENTILES), 100)
    virtual = (count - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= count - 1
    previous[above] = -1
    following[above] = -1
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    ranks = np.where(np.concatenate((previous, following)) < 0, count - 1,
                     np.concatenate((previous, following))).astype(np.int64)
    values = np.asarray(select(ranks), dtype=np.float64)
    a, b = values[:len(q)], values[len(q):]
    diff = b - a
    result = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=result, where=gamma >= 0.5)
    return result


def streamed_summary(metric: str, count: int, mean: float, select) -> dict:
    """The ``{metric}_{mean,p50,p90,p99}_ms`` of ``count`` finite values that are never held
    in one array (a long simulation's pooled ITLs): ``mean`` as given, and the percentiles
    from the order statistics ``select(ranks)`` returns, interpolated exactly as
    ``numpy.percentile`` would on the whole array."""
    if count <= 0:
        return {f"{metric}_{s}_ms": None for s in STATS}
    p50, p90, p99 = _linear_percentiles(int(count), select)
    return {f"{metric}_mean_ms": float(mean), f"{metric}_p50_ms": float(p50),
            f"{metric}_p90_ms": float(p90), f"{metric}_p99_ms": float(p99)}


def _pooled_itl(itl_ms, itl_offsets, ok: np.ndarray) -> np.ndarray:
    """The ITLs of completed requests as one array."""
    if itl_offsets is not None:
        flat = np.asarray(itl_ms, dtype=np.float64)
        offsets = np.asarray(itl_offsets, dtype=np.int64)
        owner = np.repeat(np.arange(len(ok)), np.diff(offsets))
        return flat[ok[owner]]
    parts = [np.asarray(v, dtype=np.float64) for v, keep in zip(itl_ms, ok)
             if keep and v is not None and len(v)]
    return np.concatenate(parts) if parts else np.empty(0)


def run_metrics(*, arrival_s: Sequence[float], ttft_ms: Sequence[float | None],
                e2e_ms: Sequence[float | None], output_tokens: Sequence[int | None],
                input_tokens: Sequence[int | None], ok: Sequence[bool],
                slo: SLO | Mapping | None = None,
                itl_ms: Sequence[Sequence[float] | None] | np.ndarray | None = None,
                itl_offsets: Sequence[int] | None = None,
                queue_ms: Sequence[float | None] | None = None,
                preemptions: Sequence[int] | int | None = None,
                itl_summary: Mapping[str, float | None] | None = None) -> dict:
    """The run's aggregate metrics from per-request arrays (definitions: the module doc).

    Args:
        arrival_s: when each request was sent (measured) or arrived (simulated), seconds from
            the run's start.
        ttft_ms: time to first token from ``arrival_s`` (NaN/None: no first token).
        e2e_ms: end-to-end latency from ``arrival_s`` (NaN/None: did not finish).
        output_tokens: generated tokens per request.
        input_tokens: prompt tokens per request.
        ok: whether each request completed.
        slo: the goodput bounds (an :class:`SLO`, a mapping of its keys, or None).
        itl_ms: inter-token latencies: one sequence per request, or - with ``itl_offsets`` - one
            flat array where request ``i``'s are ``itl_ms[itl_offsets[i]:itl_offsets[i+1]]``.
        itl_offsets: see ``itl_ms``.
        queue_ms: arrival to first scheduled step per request (the simulator knows it).
        preemptions: per request, or the run's total (None: unknown).
        itl_summary: the ``itl_*_ms`` statistics already computed (:func:`streamed_summary`
            of a long simulation's ITLs, which are never pooled in memory); replaces ``itl_ms``.

    Returns:
        A flat dict keyed like the ``runs`` columns (plus ``good_requests``,
        ``slo_attainment``, ``queue_*_ms``); missing statistics are ``None``.
    """
    ok = np.asarray(ok, dtype=bool)
    n = int(ok.shape[0])
    arrival = _floats(arrival_s, n, "arrival_s")
    ttft = _floats(ttft_ms, n, "ttft_ms")
    e2e = _floats(e2e_ms, n, "e2e_ms")
    out_tok = np.nan_to_num(_floats(output_tokens, n, "output_tokens"))
    in_tok = np.nan_to_num(_floats(input_tokens, n, "input_tokens"))
    slo = SLO.coerce(slo)

    finish = arrival + e2e / 1e3
    finished = ok & np.isfinite(finish)
    completed = int(ok.sum())
    duration = float(finish[finished].max()) if finished.any() else None
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (out_tok > 1), (e2e - ttft) / (out_tok - 1), np.nan)

    def rate(x: float) -> float | None:
        return x / duration if duration else None

    good_count = None
    if slo.bounded:
        good = ok.copy()
        if slo.ttft_ms is not None:
            good &= ttft <= slo.ttft_ms  # NaN (no first token) compares False
        if slo.tpot_ms is not None:
            good &= (tpot <= slo.tpot_ms) | (out_tok <= 1)
        if slo.e2e_ms is not None:
            good &= e2e <= slo.e2e_ms
        good_count = int(good.sum())
    if preemptions is not None and not np.isscalar(preemptions):
        preemptions = np.asarray(preemptions).sum()
    metrics: dict = {
        "num_requests": n,
        "completed": completed,
        "failed": n - completed,
        "success_rate": completed / n if n else None,
        "duration_s": duration,
        "request_throughput_rps": rate(completed),
        "output_throughput_tok_s": rate(float(out_tok[ok].sum())),
        "total_token_throughput_tok_s": rate(float(out_tok[ok].sum() + in_tok[ok].sum())),
        "goodput_rps": None if good_count is None else rate(good_count),
        "good_requests": good_count,
        "slo_attainment": None if good_count is None or not n else good_count / n,
        "preemptions": None if preemptions is None else int(preemptions),
    }
    metrics.update(_summary("ttft", ttft[ok]))
    metrics.update(_summary("tpot", tpot[ok]))
    if itl_summary is not None:
        metrics.update({f"itl_{s}_ms": itl_summary[f"itl_{s}_ms"] for s in STATS})
    else:
        itl = np.empty(0) if itl_ms is None else _pooled_itl(itl_ms, itl_offsets, ok)
        metrics.update(_summary("itl", itl))
    metrics.update(_summary("e2e", e2e[ok]))
    queue = np.full(n, np.nan) if queue_ms is None else _floats(queue_ms, n, "queue_ms")
    metrics.update(_summary("queue", queue[ok]))
    return metrics


_OLD_NAME = re.compile(r"(ttft|tpot|itl|e2e|queue)_ms_(mean|p50|p90|p99)")


def metric_name(key: str) -> str:
    """The current name of a metric key: the old ``ttft_ms_p90`` spelling (studies and
    candidates saved before the names were unified) becomes ``ttft_p90_ms``; ``requests``
    becomes ``num_requests``; other keys are returned unchanged.

    Example:
        >>> metric_name("ttft_ms_p90"), metric_name("goodput_rps")
        ('ttft_p90_ms', 'goodput_rps')
    """
    if key == "requests":
        return "num_requests"
    match = _OLD_NAME.fullmatch(key)
    return f"{match.group(1)}_{match.group(2)}_ms" if match else key
