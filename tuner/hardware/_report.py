"""Predicted vs measured: per-host calibration from the baseline, noise, and the drift flag.

For each measured candidate and metric: the raw prediction, the calibrated prediction (raw x
the ratio measured/predicted of the baseline on the same group), the measured mean and its
relative spread over repeats, and the relative error. *Noise* is the larger of the candidate's
and the group baseline's coefficient of variation over repeats; a metric *drifts* when its error
exceeds both the threshold and ``noise_factor`` x noise - measurement noise alone never raises
the flag. The baseline itself is the calibration reference of its group and never drifts. The per-group ``step_time_scale`` is the baseline's measured/predicted TPOT: the
factor by which real steps are slower than the step-time model predicts on that host.

Example:
    >>> metric_row("tpot_mean_ms", predicted=10.0, calibration=1.2, measured=[12.1, 11.9],
    ...            noise_floor=0.0, threshold=0.1, noise_factor=2.0)["drift"]
    False
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from servetune.tuner.hardware._dispatcher import CandidateOutcome, DispatchResult
from servetune.tuner.hardware._records import REPORT_METRICS

__all__ = ["ValidationReport", "build_report", "metric_row"]


def _cv(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2 or arr.mean() == 0:
        return 0.0
    return float(arr.std(ddof=1) / abs(arr.mean()))


def metric_row(metric: str, *, predicted: float | None, calibration: float | None,
               measured: Sequence[float], noise_floor: float, threshold: float,
               noise_factor: float) -> dict:
    """One metric of one candidate: predictions, measurement, error, noise and drift."""
    mean = float(np.mean(measured)) if len(measured) else None
    spread = _cv(measured)
    noise = max(spread, noise_floor)
    calibrated = predicted * calibration if predicted is not None and calibration else None
    reference = calibrated if calibrated is not None else predicted
    error = None
    if reference is not None and mean:
        error = (reference - mean) / abs(mean)
    drift = bool(error is not None and abs(error) > threshold
                 and abs(error) > noise_factor * noise)
    return {"metric": metric, "predicted": predicted, "calibrated": calibrated,
            "measured_mean": mean, "measured_cv": spread, "repeats": len(measured),
            "noise": noise, "error": error, "drift": drift}


@dataclass
class ValidationReport:
    """Rows of predicted vs measured, per-group calibration, and whether anything drifted."""

    rows: list[dict]
    calibration: dict[str, dict]
    drift: bool
    threshold: float
    noise_factor: float

    def to_dict(self) -> dict:
        return {"rows": self.rows, "calibration": self.calibration, "drift": self.drift,
                "threshold": self.threshold, "noise_factor": self.noise_factor}

    def table(self) -> str:
        """A Markdown table (one line per candidate and metric)."""
        lines = ["| candidate | group | metric | predicted | calibrated | measured (mean ± cv) | "
                 "error | drift |", "|---|---|---|---:|---:|---:|---:|---|"]

        def fmt(x):
            return "-" if x is None else f"{x:.4g}"
        for r in self.rows:
            err = "-" if r["error"] is None else f"{100 * r['error']:+.1f}%"
            lines.append(f"| {r['candidate']} | {r['group']} | {r['metric']} | "
                         f"{fmt(r['predicted'])} | {fmt(r['calibrated'])} | "
                         f"{fmt(r['measured_mean'])} ± {100 * r['measured_cv']:.1f}% | {err} | "
                         f"{'DRIFT' if r['drift'] else ''} |")
        return "\n".join(lines)


def _by_group(outcome: CandidateOutcome) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for m in outcome.measurements:
        groups.setdefault(m.group, []).append(m.metrics)
    return groups


def build_report(result: DispatchResult, *, metrics: Sequence[str] = REPORT_METRICS,
                 threshold: float = 0.15, noise_factor: float = 2.0) -> ValidationReport:
    """Compare each measured candidate's predictions with its measurements."""
    baseline = next((o for o in result.outcomes if o.candidate.baseline), None)
    calibration: dict[str, dict] = {}
    if baseline is not None:
        for group, runs in _by_group(baseline).items():
            factors, noise = {}, {}
            for metric in metrics:
                values = [r[metric] for r in runs if r.get(metric) is not None]
                predicted = baseline.candidate.predicted.get(metric)
                if values and predicted:
                    factors[metric] = float(np.mean(values)) / predicted
                if values:
                    noise[metric] = _cv(values)
            calibration[group] = {"factors": factors, "noise": noise,
                                  "step_time_scale": factors.get("tpot_mean_ms"),
                                  "repeats": len(runs)}
    rows = []
    for outcome in result.outcomes:
        for group, runs in _by_group(outcome).items():
            cal = calibration.get(group, {})
            is_baseline = outcome is baseline
            for metric in metrics:
                values = [r[metric] for r in runs if r.get(metric) is not None]
                predicted = outcome.candidate.predicted.get(metric)
                if not values or predicted is None or not math.isfinite(predicted):
                    continue
                row = metric_row(metric, predicted=predicted,
                                 calibration=None if is_baseline else
                                 cal.get("factors", {}).get(metric),
                                 measured=values,
                                 noise_floor=cal.get("noise", {}).get(metric, 0.0),
                                 threshold=threshold, noise_factor=noise_factor)
                if is_baseline and cal.get("factors"):
                    # the calibration reference: its calibrated error is 0 by construction and
                    # its raw error is the host's offset, which calibration exists to absorb
                    row["drift"] = False
                    row["calibration_reference"] = True
                rows.append({"candidate": outcome.candidate.name, "group": group, **row})
    return ValidationReport(rows, calibration, any(r["drift"] for r in rows), threshold,
                            noise_factor)
