"""Objectives: turn one evaluation's raw metrics into a score to maximise.

Every evaluator returns a flat dict of metrics (see :data:`METRIC_KEYS`); an objective reads it
and returns one float, higher is better. The study always stores the raw metrics beside the
score.

- ``goodput`` (default): requests per second that met both the TTFT and TPOT SLO
  (``goodput_rps``, computed per request by the evaluator from :attr:`Objective.slo`).
- ``throughput``: output tokens/s when the SLO percentile holds (e.g. p90 TTFT <= SLO and p90
  TPOT <= SLO); otherwise a negative score equal to the relative SLO overshoot, so any
  compliant configuration beats every violating one and violators still rank by how close
  they are.
- ``fitness``: the weighted fitness of LLMServingTuner-style tuners,
  ``w_speed * speed/speed_target + w_ttft * exp(-p_ttft * over(ttft)) + w_tpot * exp(-p_tpot *
  over(tpot)) + w_success * exp(-p_success * (1 - success_rate))`` with
  ``over(x) = max(0, x / slo - 1)``.

Spec strings select and parametrise one: ``goodput``, ``throughput:percentile=p99``,
``fitness:ttft_ms=500,w_speed=0.5``; ``ttft_ms``/``tpot_ms`` set the SLOs of any objective.

Out-of-domain evaluations (the step-time model extrapolating) are ranked by
:class:`DomainRule`: refused (``strict``), given a pessimistic estimate (``penalise``) or only
labelled (``ignore``).

Example:
    >>> obj = parse_objective("goodput:ttft_ms=500,tpot_ms=50")
    >>> obj.score({"goodput_rps": 3.5})
    3.5
    >>> DomainRule("penalise").ranked(3.5, {"domain_extrapolations": 1})
    1.75
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from servetune import ConfigError

__all__ = ["SLO", "Objective", "GoodputObjective", "ThroughputObjective", "FitnessObjective",
           "parse_objective", "OBJECTIVES", "METRIC_KEYS", "DomainRule", "DOMAIN_MODES",
           "DOMAIN_METRIC_KEYS"]

# What an evaluator returns (all floats; :func:`servetune.data.run_metrics` names, the ``runs``
# columns): the objective reads a subset.
METRIC_KEYS = (
    "num_requests", "completed", "success_rate", "duration_s",
    "request_throughput_rps", "output_throughput_tok_s", "goodput_rps", "slo_attainment",
    "ttft_mean_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms",
    "tpot_mean_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms",
    "e2e_mean_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms",
)

# What the simulator evaluator adds about the step-time model's training domain (None when the
# model carries no domain): config-level reasons (all, and those that extrapolate: a mode never
# trained, a token budget or KV cache size outside its mode's trained range), and the share of
# simulated steps outside the trained step-composition ranges with the worst ratio.
DOMAIN_METRIC_KEYS = ("domain_reasons", "domain_extrapolations", "domain_share_outside",
                      "domain_worst_ratio")
DOMAIN_MODES = ("strict", "penalise", "ignore")


@dataclass(frozen=True)
class SLO:
    """Latency targets of one request: time to first token, time per output token and, when
    given, end-to-end latency (ms; ``e2e_ms=None``: no end-to-end bound, as vLLM's
    ``--goodput e2el:`` left out)."""

    ttft_ms: float = 2000.0
    tpot_ms: float = 100.0
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "e2e_ms" and value is None:
                continue
            if not value > 0:
                raise ConfigError(f"SLO {f.name} must be > 0 ms; got {value}")

    def as_dict(self) -> dict:
        """``{"ttft_ms", "tpot_ms", "e2e_ms"}`` (what ``servetune.data.run_metrics`` takes)."""
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}


@dataclass(frozen=True)
class Objective:
    """Base class: ``score(metrics) -> float`` (higher is better), named, with SLOs."""

    slo: SLO = SLO()
    name = "objective"

    def score(self, metrics: dict) -> float:  # pragma: no cover - abstract
        """The score of one evaluation's metrics."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain data: ``{"name": ..., <params>...}`` (what studies and MLflow record)."""
        data = asdict(self)
        slo = data.pop("slo")
        return {"name": self.name, **slo, **data}

    def spec(self) -> str:
        """The spec string that rebuilds this objective with :func:`parse_objective`."""
        params = {k: v for k, v in self.to_dict().items() if k != "name" and v is not None}
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class GoodputObjective(Objective):
    """Requests per second meeting both SLOs (``goodput_rps``)."""

    name = "goodput"

    def score(self, metrics: dict) -> float:
        return float(_need(metrics, "goodput_rps"))


@dataclass(frozen=True)
class ThroughputObjective(Objective):
    """Output tokens/s when the ``percentile`` TTFT and TPOT meet the SLO, else -overshoot."""

    percentile: str = "p90"
    name = "throughput"

    def __post_init__(self) -> None:
        if self.percentile not in ("mean", "p50", "p90", "p99"):
            raise ConfigError(f"throughput objective: percentile must be mean, p50, p90 or "
                              f"p99; got {self.percentile!r}")

    def score(self, metrics: dict) -> float:
        ttft = _need(metrics, f"ttft_{self.percentile}_ms")
        tpot = _need(metrics, f"tpot_{self.percentile}_ms")
        over = max(0.0, ttft / self.slo.ttft_ms - 1) + max(0.0, tpot / self.slo.tpot_ms - 1)
        if over > 0 or not math.isfinite(over):
            return -over if math.isfinite(over) else -1e9
        return float(_need(metrics, "output_throughput_tok_s"))


@dataclass(frozen=True)
class FitnessObjective(Objective):
    """Weighted fitness with exponential SLO penalties (LLMServingTuner's form)."""

    w_speed: float = 0.4
    w_ttft: float = 0.2
    w_tpot: float = 0.3
    w_success: float = 0.1
    ttft_penalty: float = 3.0
    tpot_penalty: float = 3.0
    success_penalty: float = 5.0
    speed_target: float = 1000.0
    name = "fitness"

    def __post_init__(self) -> None:
        if not self.speed_target > 0:
            raise ConfigError(f"fitness objective: speed_target must be > 0; got "
                              f"{self.speed_target}")

    def score(self, metrics: dict) -> float:
        speed = _need(metrics, "output_throughput_tok_s")
        ttft = _need(metrics, "ttft_mean_ms")
        tpot = _need(metrics, "tpot_mean_ms")
        success = _need(metrics, "success_rate")
        over_ttft = max(0.0, ttft / self.slo.ttft_ms - 1)
        over_tpot = max(0.0, tpot / self.slo.tpot_ms - 1)
        return float(self.w_speed * speed / self.speed_target
                     + self.w_ttft * math.exp(-self.ttft_penalty * over_ttft)
                     + self.w_tpot * math.exp(-self.tpot_penalty * over_tpot)
                     + self.w_success * math.exp(-self.success_penalty * (1 - success)))


@dataclass(frozen=True)
class DomainRule:
    """How evaluations outside the step-time model's training domain are ranked.

    An evaluation is ``outside`` when its configuration extrapolates (``domain_extrapolations``
    > 0: a mode never trained, or a token budget or KV cache size beyond its mode's trained
    range) or more than ``max_share`` of its simulated steps lie outside the trained ranges.
    A new combination of trained knob values alone is interpolation, the model's job, and does
    not count. ``unknown`` when the model carries no domain (ranked as inside). The optimiser
    searches on the raw objective; the rule ranks every distinct evaluation of the study when
    the candidates are chosen.

    Attributes:
        mode: ``strict`` (default): outside evaluations are excluded from the candidates
            unless no inside one exists, then ranked by the pessimistic estimate;
            ``penalise``: they are ranked by the pessimistic estimate (the lower of the
            objective x ``penalty`` -- a negative one / ``penalty`` -- and, when the model has a
            prediction interval, the objective with every step time at its slow end);
            ``ignore``: raw objective, labels only.
        max_share: share of steps outside tolerated (0.05).
        penalty: factor of the pessimistic estimate (0.5).
    """

    mode: str = "strict"
    max_share: float = 0.05
    penalty: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in DOMAIN_MODES:
            raise ConfigError(f"domain mode must be one of {', '.join(DOMAIN_MODES)}; got "
                              f"{self.mode!r}")
        if not 0 <= self.max_share < 1:
            raise ConfigError(f"domain max_share must be in [0, 1); got {self.max_share}")
        if not 0 < self.penalty <= 1:
            raise ConfigError(f"domain penalty must be in (0, 1]; got {self.penalty}")

    def status(self, metrics: dict) -> str:
        """``inside``, ``outside`` or ``unknown`` for one evaluation's metrics."""
        extrapolations = metrics.get("domain_extrapolations")
        share = metrics.get("domain_share_outside")
        if extrapolations is None and share is None:
            return "unknown"
        if (extrapolations or 0) > 0 or (share or 0.0) > self.max_share:
            return "outside"
        return "inside"

    def pessimistic(self, score: float, slow_score: float | None = None) -> float:
        """The pessimistic estimate of an outside evaluation's objective: ``score`` x
        ``penalty`` (divided when negative), or ``slow_score`` (the objective with every step
        time at the model's interval slow end) when that is lower."""
        flat = score * self.penalty if score >= 0 else score / self.penalty
        return flat if slow_score is None else min(flat, slow_score)

    def ranked(self, score: float, metrics: dict, slow_score: float | None = None) -> float:
        """The objective a candidate is ranked by (the raw one unless outside and not
        ``ignore``)."""
        if self.mode == "ignore" or self.status(metrics) != "outside":
            return score
        return self.pessimistic(score, slow_score)

    def needs_slow_score(self, metrics: dict) -> bool:
        """Whether :meth:`ranked` would use a slow-end objective for these metrics."""
        return self.mode != "ignore" and self.status(metrics) == "outside"

    def to_dict(self) -> dict:
        """Plain data (the study records it)."""
        return asdict(self)


OBJECTIVES: dict[str, type[Objective]] = {
    "goodput": GoodputObjective,
    "throughput": ThroughputObjective,
    "fitness": FitnessObjective,
}


def parse_objective(spec: str | None) -> Objective:
    """An objective from ``NAME[:key=value,...]`` (default ``goodput``)."""
    spec = (spec or "goodput").strip()
    name, _, rest = spec.partition(":")
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}",)
    cls = OBJECTIVES[name]
    own = {f.name: f for f in fields(cls) if f.name != "slo"}
    slo_fields = {f.name for f in fields(SLO)}
    kwargs: dict = {}
    slo_kwargs: dict = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"objective {spec!r}: expected key=value, got {item!r}")
        if key in slo_fields:
            slo_kwargs[key] = _float(value, key, spec)
        elif key in own:
            kwargs[key] = value if own[key].type in ("str", str) else _float(value, key, spec)
        else:
            raise ConfigError(f"objective {name!r} has no parameter {key!r}; valid: "
                              f"{', '.join(sorted(slo_fields | set(own)))}")
    objective = cls(**kwargs)
    return replace(objective, slo=SLO(**slo_kwargs)) if slo_kwargs else objective


def _float(text: str, key: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"objective {spec!r}: {key} must be a number; got {text!r}") from None


def _need(metrics: dict, key: str) -> float:
    if key not in metrics or metrics[key] is None:
        raise ConfigError(f"the evaluator returned no {key!r}; it returned "
                          f"{', '.join(sorted(metrics))}")
    return float(metrics[key])
