"""Learn from every verification: simulate, measure, calibrate on what was measured, re-tune.

Round ``r`` of :func:`tune_verify_loop` (``servetune tune --verify --rounds N``):

1. tune in simulation with the round's step-time model (round 1: the settings' model or the
   champion), as study ``NAME-rR``;
2. measure its top-K and the engine default on the cluster (:func:`verify_study`); every measured
   run lands in the trace store with its engine steps rebuilt from the client's token timings
   (``source = "reconstructed"``);
3. stop when the measured best agrees with its prediction (within the threshold or the repeat
   spread, :attr:`VerificationResult.agrees`) or after the last round;
4. otherwise calibrate round 1's model on the reconstructed steps of every run measured so far
   (``TrainConfig.calibrate_from``: its trees kept, a few shallow trees learn this cluster's
   error) and use that model in the next round.

The recommendation is the best *measured* candidate over all rounds (every round measures on the
same cluster with the same workload), never a prediction.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from servetune import ModelError
from servetune.tuner._job import TuneSettings, run_tune
from servetune.tuner._verify import VERIFY_METRICS, VerificationResult, verify_study

__all__ = ["LoopRound", "LoopResult", "tune_verify_loop", "calibrate_on_runs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopRound:
    """One round: its study summary, the model it simulated with, what was measured."""

    index: int
    model_uri: str
    summary: dict
    verification: VerificationResult
    run_ids: tuple[str, ...]

    def to_dict(self) -> dict:
        best = self.verification.measured_best
        return {"round": self.index, "study": self.summary["study"]["name"],
                "model_uri": self.model_uri, "measured_runs": list(self.run_ids),
                "agrees": self.verification.agrees,
                "measured_best": None if best is None else best.name,
                "candidates": [{"name": c.name, "baseline": c.baseline, "config": c.config,
                                "status": c.status,
                                "predicted_objective": c.predicted_objective,
                                "measured_objective": c.measured_objective,
                                "objective_error": c.objective_error,
                                "metrics": {key: {"predicted": (c.predicted or {}).get(key),
                                                  "measured": (c.measured or {}).get(key)}
                                            for key in VERIFY_METRICS}}
                               for c in self.verification.candidates]}


@dataclass(frozen=True)
class LoopResult:
    """All rounds, why the loop stopped, and the recommendation chosen on measurements."""

    rounds: tuple[LoopRound, ...]
    stopped: str
    calibrated: tuple[str, ...] = field(default=())

    @property
    def recommendation(self) -> dict | None:
        """The best measured candidate of any round (``None``: nothing measured)."""
        best, where = None, None
        for r in self.rounds:
            c = r.verification.measured_best
            if c is not None and (best is None or c.measured_objective > best.measured_objective):
                best, where = c, r
        if best is None:
            return None
        return {"chosen_on": "measurements", "round": where.index,
                "study": where.summary["study"]["name"], "name": best.name,
                "baseline": best.baseline, "config": dict(best.config),
                "measured_objective": best.measured_objective,
                "predicted_objective": best.predicted_objective,
                "agrees": best.agrees(where.verification.threshold,
                                      where.verification.noise_factor)}

    def to_dict(self) -> dict:
        return {"stopped": self.stopped, "rounds": [r.to_dict() for r in self.rounds],
                "calibrated_models": list(self.calibrated),
                "recommendation": self.recommendation}


def measured_run_ids(verification: VerificationResult) -> tuple[str, ...]:
    """The store run ids of every measurement of a verification."""
    return tuple(m.run_id for o in verification.dispatch.outcomes for m in o.measurements)


def calibrate_on_runs(workspace, base_model_uri: str, run_ids, *, seed: int = 0) -> str:
    """``base_model_uri`` calibrated on the reconstructed steps of ``run_ids``; its URI.

    One run is held out for the registry's test metrics (a verification round has only a
    few); with 6 or more runs the calibration also stops early on a quarter of the rest."""
    from servetune.models import TrainConfig, train_step_time_model

    ids = sorted(set(run_ids))
    # too few runs to stop early on: a fixed 60 rounds at eta 0.05 learn ~95 % of a constant
    # correction without chasing single steps
    few = {"n_estimators": 60, "early_stopping_rounds": 0} if len(ids) < 6 else {}
    config = TrainConfig(calibrate_from=base_model_uri, source="reconstructed", seed=seed,
                         test_fraction=0.0, n_trials=1, estimator_params=few)
    result = train_step_time_model(workspace, {"run_id": ids}, config, progress=False)
    return result.model_uri


def tune_verify_loop(workspace, settings: TuneSettings, cluster, *, rounds: int,
                     store, verify_options: Mapping[str, object] | None = None,
                     on_round: Callable[[LoopRound], None] | None = None) -> LoopResult:
    """Run up to ``rounds`` rounds (module docstring); ``verify_options`` go to
    :func:`verify_study` (``base_config``, ``unapplied``, ``options``, ``client``, ...)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    base = settings.study or "loop"
    model_uri = settings.model_uri
    done: list[LoopRound] = []
    measured: list[str] = []
    calibrated: list[str] = []
    base_model = None
    stopped = "rounds"
    for index in range(1, rounds + 1):
        round_settings = dataclasses.replace(settings, study=f"{base}-r{index}",
                                             model_uri=model_uri)
        summary = run_tune(workspace, round_settings, progress=False)
        used = summary["study"]["evaluator"]["model_uri"]
        base_model = base_model or used
        verification = verify_study(summary["study"]["path"], cluster, store=store,
                                    **dict(verify_options or {}))
        ids = measured_run_ids(verification)
        measured.extend(ids)
        current = LoopRound(index, used, summary, verification, ids)
        done.append(current)
        if on_round is not None:
            on_round(current)
        if verification.agrees:
            stopped = "agreement"
            break
        if index == rounds:
            break
        try:
            model_uri = calibrate_on_runs(workspace, base_model, measured, seed=settings.seed)
        except ModelError as exc:  # e.g. no run's steps could be reconstructed
            log.warning("round %d: no calibration (%s); stopping", index, exc)
            stopped = f"no calibration: {exc}"
            break
        calibrated.append(model_uri)
        log.info("round %d: measured best disagrees with its prediction; calibrated %s on %d "
                 "measured runs", index, model_uri, len(measured))
    return LoopResult(tuple(done), stopped, tuple(calibrated))
