"""Prediction intervals of candidates: each one replayed with the step-time model's run-level
interval (``servetune.models.StepTimeInterval``), giving every headline metric and the objective a
low-mid-high.

The low and high ratios scale every simulated step, so queueing, batching and SLO effects of
faster or slower steps are simulated, not extrapolated. An interval is calibrated only where the
model is inside its training domain; outside it is reported but marked ``calibrated: false``.

Example:
    >>> bounds({"ttft_mean_ms": 100.0}, {"ttft_mean_ms": 90.0}, {"ttft_mean_ms": 130.0},
    ...        ("ttft_mean_ms",))
    {'ttft_mean_ms': [90.0, 100.0, 130.0]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["INTERVAL_METRICS", "attach_intervals", "bounds", "interval_cell",
           "scaled_evaluators", "simulation_interval", "slow_end_objective", "format_interval"]

#: the metrics that get a low-mid-high (the objective always does)
INTERVAL_METRICS = ("ttft_mean_ms", "ttft_p90_ms", "tpot_mean_ms", "tpot_p90_ms",
                    "output_throughput_tok_s", "goodput_rps", "request_throughput_rps")


def bounds(mid: dict, fast: dict, slow: dict, keys) -> dict:
    """``{key: [low, mid, high]}`` over the three replays (low/high are the min/max)."""
    out = {}
    for key in keys:
        values = [m.get(key) for m in (fast, mid, slow)]
        if any(v is None for v in values):
            continue
        out[key] = [float(min(values)), float(mid[key]), float(max(values))]
    return out


def scaled_evaluators(evaluator):
    """``(interval, fast, slow)``: the evaluator with every step time at its model's interval
    low and high ratio; ``None`` when the model has no interval."""
    model = getattr(evaluator, "step_model", None)
    interval = getattr(model, "interval", None)
    if interval is None or not hasattr(model, "scaled"):
        return None
    return (interval, dataclasses.replace(evaluator, step_model=model.scaled(interval.low)),
            dataclasses.replace(evaluator, step_model=model.scaled(interval.high)))


def slow_end_objective(evaluator, score: Callable[[dict], float]
                       ) -> Callable[[dict], float] | None:
    """``config -> objective`` with every step time at the interval's slow end (the
    pessimistic estimate of :class:`~servetune.tuner.DomainRule`); ``None`` without one."""
    scaled = scaled_evaluators(evaluator)
    if scaled is None:
        return None
    slow = scaled[2]
    return lambda config: score(slow(config))


def attach_intervals(candidates: list[dict], evaluator, score: Callable[[dict], float]) -> None:
    """Add ``interval`` to every candidate (in place) when the evaluator's step model has one:
    ``{"level", "ratios": [low, high], "n_runs", "calibrated", "objective": [lo, mid, hi],
    "metrics": {key: [lo, mid, hi]}}``."""
    scaled = scaled_evaluators(evaluator)
    if scaled is None:
        return
    interval, fast, slow = scaled
    for c in candidates:
        lo_metrics, hi_metrics = fast(c["config"]), slow(c["config"])
        scores = [score(lo_metrics), c["objective"], score(hi_metrics)]
        c["interval"] = {
            "level": interval.level, "ratios": [interval.low, interval.high],
            "n_runs": interval.n_runs,
            "calibrated": (c.get("domain") or {}).get("status") != "outside",
            "objective": None if None in scores else [min(scores), scores[1], max(scores)],
            "metrics": bounds(c["metrics"], lo_metrics, hi_metrics, INTERVAL_METRICS)}


def simulation_interval(simulator, workload, seed: int, mid: dict, calibrated: bool
                        ) -> dict | None:
    """The interval of one simulation (``servetune simulate``): ``simulator`` replayed with its
    step model's low and high ratios; ``mid`` is the normal run's flat metrics. None when the
    model has no interval."""
    model = simulator.step_model
    interval = getattr(model, "interval", None)
    if interval is None or not hasattr(model, "scaled"):
        return None
    replays = [dataclasses.replace(simulator, step_model=model.scaled(r)).run(workload, seed)
               .flat_metrics() for r in (interval.low, interval.high)]
    return {"level": interval.level, "ratios": [interval.low, interval.high],
            "n_runs": interval.n_runs, "calibrated": bool(calibrated),
            "metrics": bounds(mid, *replays, INTERVAL_METRICS)}


def format_interval(interval: dict) -> str:
    """One line: the level, the step-time ratios and the headline metrics' low-high."""
    m = interval["metrics"]
    parts = [f"{label} {m[key][0]:.{digits}f}-{m[key][2]:.{digits}f}{unit}"
             for label, key, digits, unit in (
                 ("TTFT mean", "ttft_mean_ms", 0, " ms"), ("TPOT mean", "tpot_mean_ms", 1, " ms"),
                 ("throughput", "output_throughput_tok_s", 0, " tok/s"),
                 ("goodput", "goodput_rps", 2, " req/s")) if key in m]
    lo, hi = interval["ratios"]
    head = (f"{100 * interval['level']:.0f} % interval (step times x{lo:.2f}-x{hi:.2f}, "
            f"{interval['n_runs']} runs out of fold")
    head += ")" if interval["calibrated"] else "; NOT calibrated: outside the training domain)"
    return f"{head}: " + ", ".join(parts)


def interval_cell(value: float, bounds_: list | None, fmt: Callable[[float], str]) -> str:
    """``mid [lo-hi]`` for a table cell; just ``mid`` without bounds."""
    if not bounds_:
        return fmt(value)
    return f"{fmt(bounds_[1])} [{fmt(bounds_[0])}-{fmt(bounds_[2])}]"
