"""Verification: measure a study's top-K and the engine default on hardware, choose on measurements.

:func:`verify_study` is the tuner's hardware evaluator. It reads the study's candidates (the
top-K configurations and the engine default as the baseline), refuses knobs the engine cannot
take before touching any host, runs the :class:`~servetune.tuner.hardware.Dispatcher` over the
cluster's service groups (every measurement goes into the trace store as it arrives), writes
``<study>/measurements.json`` atomically and returns a :class:`VerificationResult`: predicted vs
measured metrics per candidate, the measured best on the study's objective (the recommendation
is chosen on measurements, not predictions) and whether that best agrees with its prediction.

Example:
    >>> result = verify_study(ws.studies_dir() / "s1", load_cluster("local", engine="script"),
    ...                       store=TraceStore.for_workspace(ws))  # doctest: +SKIP
    >>> result.measured_best.name, result.agrees  # doctest: +SKIP
    ('rank2', True)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from servetune import ConfigError, InputError
from servetune.data import TraceStore, Workload, atomic_write_text, resolve_workload
from servetune.data.engines import canonical_engine_name, engine_names, redact_secrets
from servetune.tuner._objective import Objective, parse_objective
from servetune.tuner._study import STUDY_FILE, Study
from servetune.tuner.hardware import (
    Candidate,
    CandidateOutcome,
    ClientOptions,
    ClusterSpec,
    Dispatcher,
    DispatchOptions,
    DispatchResult,
    EngineLauncher,
    ValidationReport,
    build_report,
    launcher_for,
    load_study_candidates,
    study_engine,
)

__all__ = ["VERIFY_METRICS", "MEASUREMENTS_FILE", "EXIT_OK", "EXIT_DRIFT", "EXIT_FAILED",
           "CandidateVerification", "VerificationResult", "verify_study", "verify_candidates",
           "study_workload", "engine_to_launch"]

MEASUREMENTS_FILE = "measurements.json"
EXIT_OK, EXIT_DRIFT, EXIT_FAILED = 0, 3, 4
# predicted vs measured per candidate (servetune.data.run_metrics names)
VERIFY_METRICS = ("goodput_rps", "output_throughput_tok_s", "request_throughput_rps",
                  "ttft_mean_ms", "ttft_p90_ms", "tpot_mean_ms", "tpot_p90_ms", "e2e_mean_ms",
                  "success_rate")


def _error(predicted: float | None, measured: float | None) -> float | None:
    """Relative error of a prediction, ``(predicted - measured) / |measured|`` (``None`` when
    either is missing or the measurement is 0)."""
    if predicted is None or measured is None or measured == 0:
        return None
    return (predicted - measured) / abs(measured)


def _cv(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2 or arr.mean() == 0:
        return 0.0
    return float(arr.std(ddof=1) / abs(arr.mean()))


@dataclasses.dataclass(frozen=True)
class CandidateVerification:
    """One candidate's prediction next to its measurements.

    Attributes:
        name: the candidate's name (``rank1``, ``default``, ...).
        baseline: whether it is the engine default.
        config: its knobs.
        status: ``measured`` or ``failed``.
        reason: why it failed (``None`` when measured).
        error_kind: the failure's class (``service-unhealthy``, ``host-unreachable``, ...).
        predicted: the study's predicted metrics.
        measured: the mean of each numeric metric over its measurements (all groups, repeats).
        predicted_objective: the objective of ``predicted`` (``None`` if it lacks a metric).
        measured_objective: the mean objective of its measurements, each scored alone.
        objective_cv: the coefficient of variation of those scores (repeat spread).
        measurements: how many measurements it has.
    """

    name: str
    baseline: bool
    config: Mapping[str, object]
    status: str
    reason: str | None
    error_kind: str | None
    predicted: Mapping[str, float]
    measured: Mapping[str, float]
    predicted_objective: float | None
    measured_objective: float | None
    objective_cv: float
    measurements: int

    @classmethod
    def from_outcome(cls, outcome: CandidateOutcome, objective: Objective | None
                     ) -> "CandidateVerification":
        """Summarise a dispatcher outcome, scored with ``objective``."""
        runs = [m.metrics for m in outcome.measurements]
        measured = {}
        for key in sorted({k for r in runs for k in r}):
            values = [float(r[key]) for r in runs if _number(r.get(key))]
            if values:
                measured[key] = float(np.mean(values))
        scores = [s for s in (_score(objective, r) for r in runs) if s is not None]
        predicted = dict(outcome.candidate.predicted)
        return cls(name=outcome.candidate.name, baseline=outcome.candidate.baseline,
                   config=dict(outcome.candidate.config), status=outcome.status,
                   reason=outcome.reason, error_kind=outcome.error_kind, predicted=predicted,
                   measured=measured,
                   predicted_objective=_score(objective, predicted),
                   measured_objective=float(np.mean(scores)) if scores else None,
                   objective_cv=_cv(scores), measurements=len(runs))

    @property
    def objective_error(self) -> float | None:
        """Relative error of the predicted objective against the measured one."""
        return _error(self.predicted_objective, self.measured_objective)

    def agrees(self, threshold: float, noise_factor: float) -> bool | None:
        """Whether the predicted objective is within ``threshold`` or ``noise_factor`` x the
        repeat spread of the measured one (``None`` when either is missing; a measured 0
        agrees only with a predicted 0)."""
        if self.predicted_objective is None or self.measured_objective is None:
            return None
        error = self.objective_error
        if error is None:
            return self.predicted_objective == 0
        return bool(abs(error) <= max(threshold, noise_factor * self.objective_cv))

    def to_dict(self, threshold: float, noise_factor: float) -> dict:
        """Plain data, with ``metrics``: predicted, measured and error of each verify metric."""
        metrics = {m: {"predicted": self.predicted.get(m), "measured": self.measured.get(m),
                       "error": _error(self.predicted.get(m), self.measured.get(m))}
                   for m in VERIFY_METRICS if m in self.predicted or m in self.measured}
        return {"name": self.name, "baseline": self.baseline,
                "config": redact_secrets(self.config),
                "status": self.status, "reason": self.reason, "error_kind": self.error_kind,
                "predicted_objective": self.predicted_objective,
                "measured_objective": self.measured_objective,
                "objective_cv": self.objective_cv, "objective_error": self.objective_error,
                "agrees": self.agrees(threshold, noise_factor),
                "measurements": self.measurements, "metrics": metrics}


def _number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _score(objective: Objective | None, metrics: Mapping) -> float | None:
    """The objective of ``metrics``, ``None`` when it cannot be scored (a metric missing)."""
    if objective is None:
        return None
    try:
        value = objective.score(dict(metrics))
    except (ConfigError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """What a verification measured and which candidate it recommends.

    Attributes:
        study: the study's name (``None`` for loose candidates).
        objective: the objective's spec the candidates were scored on (``None``: unknown).
        candidates: one :class:`CandidateVerification` per candidate, in dispatch order.
        dispatch: the dispatcher's result (outcomes, attempts, statistics).
        report: predicted vs measured per metric, calibrated per host, with the drift flag.
        finished_at: UTC time the measurements ended.
        threshold: relative error within which a prediction agrees (and below which no metric
            drifts).
        noise_factor: a prediction also agrees within this many repeat spreads.
    """

    study: str | None
    objective: str | None
    candidates: tuple[CandidateVerification, ...]
    dispatch: DispatchResult
    report: ValidationReport
    finished_at: str
    threshold: float = 0.15
    noise_factor: float = 2.0

    @property
    def measured_best(self) -> CandidateVerification | None:
        """The measured candidate with the best measured objective (earliest wins ties); a
        failed candidate is never chosen, whatever it measured before it failed."""
        scored = [c for c in self.candidates
                  if c.status == "measured" and c.measured_objective is not None]
        return max(scored, key=lambda c: c.measured_objective) if scored else None

    @property
    def predicted_best(self) -> CandidateVerification | None:
        """The candidate the study predicted best."""
        scored = [c for c in self.candidates if c.predicted_objective is not None]
        return max(scored, key=lambda c: c.predicted_objective) if scored else None

    @property
    def agrees(self) -> bool | None:
        """Whether the measured best's objective agrees with its prediction."""
        best = self.measured_best
        return None if best is None else best.agrees(self.threshold, self.noise_factor)

    @property
    def exit_code(self) -> int:
        """``validate``'s code: 0 ok, 3 drift beyond threshold and noise, 4 a failure."""
        if self.dispatch.failed:
            return EXIT_FAILED
        return EXIT_DRIFT if self.report.drift else EXIT_OK

    def summary(self) -> str:
        """One line: failures, drift, or ok."""
        stats = self.dispatch.statistics()
        if self.dispatch.failed:
            return f"{stats['failed']} of {stats['candidates']} candidate(s) failed"
        if self.report.drift:
            return ("predictions drifted beyond threshold and noise: retrain the step-time "
                    "model")
        return "ok"

    def recommendation(self) -> dict | None:
        """The measured best as the recommendation (``None`` when nothing could be scored)."""
        best = self.measured_best
        if best is None:
            return None
        predicted = self.predicted_best
        return {"chosen_on": "measurements", "name": best.name, "baseline": best.baseline,
                "config": redact_secrets(best.config), "objective": self.objective,
                "measured_objective": best.measured_objective,
                "predicted_objective": best.predicted_objective,
                "agrees": best.agrees(self.threshold, self.noise_factor),
                "predicted_best": None if predicted is None else predicted.name,
                "same_as_predicted": predicted is not None and predicted.name == best.name}

    def to_dict(self) -> dict:
        """The ``measurements.json`` document (also ``validate --json``)."""
        best, predicted = self.measured_best, self.predicted_best
        return {"finished_at": self.finished_at, "exit_code": self.exit_code,
                "statistics": self.dispatch.statistics(),
                "outcomes": [o.to_dict() for o in self.dispatch.outcomes],
                "report": self.report.to_dict(), "study": self.study,
                "objective": self.objective,
                "candidates": [c.to_dict(self.threshold, self.noise_factor)
                               for c in self.candidates],
                "measured_best": None if best is None else best.name,
                "predicted_best": None if predicted is None else predicted.name,
                "agrees": self.agrees, "threshold": self.threshold,
                "noise_factor": self.noise_factor, "recommendation": self.recommendation()}


def _study_json(directory: Path) -> dict:
    try:
        data = json.loads((directory / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def study_workload(directory: str | Path) -> Workload:
    """The workload a study was tuned on: its spec, rate, limit and seed from ``study.json``.

    Raises:
        InputError: the study records no workload.
    """
    info = _study_json(Path(directory)).get("evaluator")
    if not isinstance(info, dict) or not info.get("workload"):
        raise InputError("the study records no workload (study.json evaluator.workload); pass "
                         "one", path=str(Path(directory) / STUDY_FILE), field="workload")
    return resolve_workload(str(info["workload"]), seed=int(info.get("sim_seed", 0)),
                            qps=info.get("qps"), limit=info.get("limit"))


def engine_to_launch(cluster_engine: str | None, study_dir: str | Path | None) -> str:
    """The cluster's engine, else the study's; a named engine other than the study's is refused
    (``script``, a user start script, may serve any engine)."""
    tuned = study_engine(study_dir) if study_dir is not None else None
    chosen = cluster_engine or tuned
    if chosen is None:
        raise InputError("no engine to launch: pass --engine (one of "
                         f"{', '.join(engine_names())} or script) or set `engine` in the "
                         "cluster file", field="--engine")
    if tuned is not None and chosen != "script" and canonical_engine_name(chosen) != tuned:
        raise InputError(f"the study tuned {tuned} but {chosen} would be launched; drop "
                         "--engine / the cluster file's engine, or validate a study of that "
                         "engine", field="--engine")
    return chosen


def verify_candidates(candidates: Sequence[Candidate], cluster: ClusterSpec, *,
                      launcher: EngineLauncher, workload: Workload,
                      store: TraceStore | None = None, client: ClientOptions | None = None,
                      options: DispatchOptions | None = None,
                      objective: Objective | str | None = None, study: str | None = None,
                      threshold: float = 0.15, noise_factor: float = 2.0,
                      on_outcome: Callable[[CandidateOutcome], None] | None = None
                      ) -> VerificationResult:
    """Measure ``candidates`` on the cluster and compare with their predictions.

    Every candidate is rendered for every group first, so a knob the engine cannot take fails
    before any host is touched.

    Args:
        candidates: what to measure (one may be the ``baseline``).
        cluster: the service groups.
        launcher: renders a candidate into the engine's command.
        workload: the requests replayed against each candidate.
        store: the trace store every measurement is ingested into (``None``: not stored).
        client: benchmark-client options (default: the cluster's model, the launcher's
            request extras, the options' seed).
        options: repeats, calibration, SLOs, ... (default :class:`DispatchOptions`).
        objective: what the measured best is chosen on (``None``: no choice is made).
        study: the study's name in the result.
        threshold: relative error within which a prediction agrees / a metric does not drift.
        noise_factor: predictions also agree within this many repeat spreads.
        on_outcome: called as each candidate ends (progress).
    """
    options = options or DispatchOptions()
    model = cluster.model or "model"
    for candidate in candidates:
        for group in cluster.groups:
            launcher.render(candidate.config, group, model=model)
    client = client or ClientOptions(model=model, extra_body=dict(launcher.request_extras),
                                     seed=options.seed)
    dispatcher = Dispatcher(cluster, launcher, workload, client=client, store=store,
                            options=options, on_outcome=on_outcome)
    result = dispatcher.run(candidates)
    report = build_report(result, threshold=threshold, noise_factor=noise_factor)
    if isinstance(objective, str):
        objective = parse_objective(objective)
    return VerificationResult(
        study=study, objective=objective.spec() if objective is not None else None,
        candidates=tuple(CandidateVerification.from_outcome(o, objective)
                         for o in result.outcomes),
        dispatch=result, report=report,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        threshold=threshold, noise_factor=noise_factor)


def verify_study(study: Study | str | Path, cluster: ClusterSpec, *,
                 store: TraceStore | None, workload: Workload | None = None,
                 client: ClientOptions | None = None, options: DispatchOptions | None = None,
                 launcher: EngineLauncher | None = None, top: int | None = None,
                 base_config: Mapping[str, object] | None = None, unapplied: str = "error",
                 objective: Objective | str | None = None, threshold: float = 0.15,
                 noise_factor: float = 2.0,
                 on_outcome: Callable[[CandidateOutcome], None] | None = None
                 ) -> VerificationResult:
    """Measure a study's top-K and its engine default; choose the best on measurements.

    Args:
        study: a :class:`Study` or its folder (``candidates.json``; ``study.json`` gives the
            objective, the workload and the name when present).
        cluster: the service groups to measure on.
        store: the trace store every measurement is ingested into.
        workload: the requests to replay (default: the study's own, with its seed).
        client: benchmark-client options (see :func:`verify_candidates`).
        options: dispatch options; missing SLOs are the objective's and the study name is the
            study's.
        launcher: default: the cluster's engine, else the study's (a mismatch is refused).
        top: only the K best tuned candidates (the baseline always goes too).
        base_config: knobs applied under every candidate (``device``, ``dtype``, ...).
        unapplied: knobs the engine's CLI cannot express: ``error`` or ``record``.
        objective: what the best is chosen on (default: the study's objective).
        threshold, noise_factor, on_outcome: see :func:`verify_candidates`.

    Returns:
        The result; ``<study>/measurements.json`` holds its :meth:`VerificationResult.to_dict`.
    """
    if isinstance(study, Study):
        directory, name = study.directory, study.spec.name
        objective = objective if objective is not None else study.objective
    else:
        directory = Path(study)
        info = _study_json(directory)
        name = str(info.get("name") or directory.name)
        if objective is None and info.get("objective"):
            objective = parse_objective(str(info["objective"]))
    if isinstance(objective, str):
        objective = parse_objective(objective)
    launcher = launcher or launcher_for(engine_to_launch(cluster.engine, directory),
                                        unsupported=unapplied)
    candidates = load_study_candidates(directory, top=top)
    if base_config:
        candidates = [dataclasses.replace(c, config={**base_config, **c.config})
                      for c in candidates]
    options = options or DispatchOptions()
    changes: dict = {} if options.study else {"study": name}
    if objective is not None and options.slo_ttft_ms is None and options.slo_tpot_ms is None:
        changes.update(slo_ttft_ms=objective.slo.ttft_ms, slo_tpot_ms=objective.slo.tpot_ms,
                       slo_e2e_ms=objective.slo.e2e_ms)
    options = dataclasses.replace(options, **changes)
    result = verify_candidates(
        candidates, cluster, launcher=launcher,
        workload=workload if workload is not None else study_workload(directory), store=store,
        client=client, options=options, objective=objective, study=name, threshold=threshold,
        noise_factor=noise_factor, on_outcome=on_outcome)
    if directory.is_dir():
        atomic_write_text(directory / MEASUREMENTS_FILE,
                          json.dumps(result.to_dict(), indent=1, default=str))
    return result
