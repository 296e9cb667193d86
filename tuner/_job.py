"""The main job: tune an engine's configuration in simulation and list the candidates.

On a fresh workspace :func:`run_tune` ingests the bundled samples and trains the champion
step-time model (through :func:`servetune.models.ensure_champion`), builds the workload, evaluates
the engine default as the baseline, runs a checkpointed study with the chosen optimiser through
a process pool or a Dask cluster, logs it to MLflow, and writes candidates and plots into
``<workspace>/studies/NAME/``.

Example:
    >>> ws = Workspace.resolve("/tmp/ws")
    >>> summary = run_tune(ws, TuneSettings(iterations=5))  # doctest: +SKIP
    >>> summary["best"]["config"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from servetune import ConfigError
from servetune.data import Workspace, atomic_write_bytes
from servetune.tuner._candidates import (
    NEAR_BEST_TOLERANCE,
    build_candidates,
    candidate_notes,
    candidates_table,
    default_near_best,
    write_candidates,
)
from servetune.tuner._evaluators import SimulatorEvaluator, engine_defaults
from servetune.tuner._executors import describe_executor, open_executor
from servetune.tuner._importers import import_space
from servetune.tuner._intervals import attach_intervals, slow_end_objective
from servetune.tuner._objective import DomainRule, parse_objective
from servetune.tuner._space import SearchSpace, builtin_spaces
from servetune.tuner._study import Study

__all__ = ["TuneSettings", "run_tune", "DEFAULT_WORKLOAD", "DEFAULT_SPACE", "DEFAULT_OBJECTIVE",
           "load_space",
           "optimizer_spec", "require_result"]

log = logging.getLogger(__name__)

DEFAULT_SPACE = "transformers-cb"
# Splitwise-conversation-like requests: lognormal lengths with the first 2,000 requests' medians
# (1,032 -> 1,000 input, 238 output tokens) and spread chosen so the means match too (about
# 1,210 / 290 against the trace's 1,105 / 265), gamma arrivals with the trace's cv (1.1), 2,000
# requests at 1.5 req/s: a load the engine default (eager, what transformers resolves for
# paged|sdpa) serves. With the champion of the bundled H200 sample (88 runs, part D included)
# the default predicts TTFT p90 0.38 s, TPOT p90 115 ms, goodput 1.50 req/s (all of it) at
# 1.5 req/s; at 2 req/s it tips (TTFT p90 2.6 s, TPOT p90 1.3 s, goodput 0.2 req/s) and at the
# former 4 req/s its TTFT p90 was 349-467 s: "115x the engine default" compared against an
# overloaded baseline.
DEFAULT_WORKLOAD = ("gamma:rate=1.5,n=2000,cv=1.1,input=lognormal:1000:0.6:7930,"
                    "output=lognormal:238:0.6:1000")
# SLOs sized for the bundled sample's engine (transformers CB, llama-1b-like on one H200): its
# measured TPOT is 30 ms median at short outputs and the champion predicts 70-170 ms for large
# batches of Splitwise-length requests; a 100 ms TPOT bound leaves almost no goodput to tune.
DEFAULT_OBJECTIVE = "goodput:ttft_ms=5000,tpot_ms=150"


@dataclass(frozen=True)
class TuneSettings:
    """What ``servetune tune`` does; each field is one CLI flag.

    Attributes:
        space: a built-in space name or a space file (servetune TOML, LLMServingTuner TOML,
            auto-tuning-vllm YAML).
        workload: a workload file or synthetic spec (``servetune.data.resolve_workload``).
        qps: rescale the workload's arrivals to this mean rate.
        limit: keep the first N requests of the workload.
        objective: objective spec (``goodput``, ``throughput:ttft_ms=500``, ``fitness``...).
        optimizer: ``pso``, ``random`` or ``grid``.
        particles, iterations: PSO swarm size and iterations (random: their product is the
            budget, in batches of ``particles``).
        top_k: tuned candidates to keep (plus the baseline).
        seed: optimiser seed (the simulation seed is ``sim_seed``).
        sim_seed: simulation and synthetic-workload seed.
        study: the study's name (default: ``tune-<UTC time>``).
        jobs: local worker processes.
        executor: Dask scheduler URL (``dask://HOST:PORT``), overrides ``jobs``.
        model_uri: step-time model (default: the workspace champion, trained if missing).
        base_config: simulator keys applied under every configuration (hardware, memory).
        track: log the study to MLflow.
        domain: how candidates outside the model's training data are ranked: ``strict``
            (refused unless none is inside), ``penalise`` or ``ignore`` (:class:`DomainRule`).
        near_best_tolerance: relative gap under which the engine default is "already
            near-best" when the best has no calibrated prediction interval (with one, the
            default must reach the interval's low end).
    """

    space: str = DEFAULT_SPACE
    workload: str = DEFAULT_WORKLOAD
    qps: float | None = None
    limit: int | None = None
    objective: str = DEFAULT_OBJECTIVE
    optimizer: str = "pso"
    particles: int = 30
    iterations: int = 20
    top_k: int = 5
    seed: int = 0
    sim_seed: int = 0
    study: str | None = None
    jobs: int = 1
    executor: str | None = None
    model_uri: str | None = None
    base_config: dict = field(default_factory=dict)
    track: bool = True
    domain: str = "strict"
    near_best_tolerance: float = NEAR_BEST_TOLERANCE


def load_space(name_or_path: str) -> SearchSpace:
    """A built-in space by name, else a space file in any supported format."""
    if name_or_path in builtin_spaces():
        return SearchSpace.builtin(name_or_path)
    if not Path(name_or_path).exists():
        raise ConfigError(f"--space {name_or_path!r} is neither a built-in space "
                          f"({', '.join(builtin_spaces())}) nor an existing file")
    return import_space(name_or_path)


def optimizer_spec(settings: TuneSettings) -> dict:
    """The study's optimiser spec from the flags."""
    if settings.optimizer == "pso":
        return {"name": "pso", "particles": settings.particles,
                "iterations": settings.iterations}
    if settings.optimizer == "random":
        return {"name": "random", "budget": settings.particles * settings.iterations,
                "batch_size": settings.particles}
    if settings.optimizer == "grid":
        return {"name": "grid", "batch_size": max(settings.particles, 1)}
    raise ConfigError(f"unknown --optimizer {settings.optimizer!r}; choose pso, random or grid")


def _pin_model(workspace: Workspace, model_uri: str | None, engine: str):
    """The compiled step-time model of ``engine`` (``models.step_model_for_engine``) and a URI
    pinned to its version (exact resume)."""
    from servetune.models import step_model_for_engine

    model = step_model_for_engine(workspace, engine, model_uri)
    uri = model_uri or f"models:/{model.name}@champion"
    pinned = f"models:/{model.name}/{model.version}" if model.name and model.version else uri
    return model.compile(), pinned


def run_tune(workspace: Workspace, settings: TuneSettings, *, resume: str | None = None,
             progress: bool = True) -> dict:
    """Run (or resume) a tuning study; returns the ``--json`` summary."""
    from servetune.data import resolve_workload

    started = time.perf_counter()
    if settings.executor:
        describe_executor(settings.jobs, settings.executor)  # a bad URL fails before training
    studies = workspace.studies_dir(ensure=True)
    if resume:
        study = Study.load(studies / resume)
        info = study.spec.evaluator
        space = study.space
        compiled, model_uri = _pin_model(workspace, info["model_uri"], space.engine)
        workload = resolve_workload(info["workload"], seed=info["sim_seed"], qps=info["qps"],
                                    limit=info["limit"])
        base_config = dict(info.get("base_config", {}))
        sim_seed = info["sim_seed"]
        top_k = int(info.get("top_k", settings.top_k))
        rule = DomainRule(**info.get("domain", {}))  # studies before domains: the default
        tolerance = float(info.get("near_best_tolerance", NEAR_BEST_TOLERANCE))
    else:
        space = load_space(settings.space)
        objective = parse_objective(settings.objective)
        compiled, model_uri = _pin_model(workspace, settings.model_uri, space.engine)
        workload = resolve_workload(settings.workload, seed=settings.sim_seed, qps=settings.qps,
                                    limit=settings.limit)
        base_config = dict(settings.base_config)
        sim_seed = settings.sim_seed
        top_k = settings.top_k
        rule = DomainRule(settings.domain)
        tolerance = float(settings.near_best_tolerance)
        name = settings.study or "tune-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        info = {"engine": space.engine, "workload": settings.workload, "qps": settings.qps,
                "limit": settings.limit, "requests": len(workload), "model_uri": model_uri,
                "sim_seed": sim_seed, "base_config": base_config, "top_k": top_k,
                "domain": rule.to_dict(), "near_best_tolerance": tolerance}
        study = Study.create(studies / name, space=space, objective=objective,
                             optimizer=optimizer_spec(settings), seed=settings.seed,
                             evaluator=info, name=name)
    objective = study.objective
    evaluator = SimulatorEvaluator.for_space(space, workload, compiled, slo=objective.slo,
                                             seed=sim_seed, base_config=base_config)
    # The engine default, evaluated first: the baseline, and a warm-up of the JIT-compiled
    # simulator before worker processes fork from this one.
    baseline_config = space.baseline_config(engine_defaults(space.engine))
    baseline_metrics = evaluator(baseline_config)
    baseline_score = objective.score(baseline_metrics)

    tracker = None
    if settings.track:
        from servetune.tuner._tracking import StudyTracker

        tracker = StudyTracker(workspace.tracking_uri, workspace.artifact_root)
        tracker.start(study, extra_params={"executor": describe_executor(settings.jobs,
                                                                         settings.executor),
                                           "workload_requests": len(workload)})
    bar = _progress_bar(study, progress)

    def on_iteration(current: Study, batch) -> None:
        if tracker is not None:
            tracker.log_iteration(current, batch)
        if bar is not None:
            best = current.best()
            bar.update(len(batch))
            bar.set_postfix(best=f"{best.score:.4g}" if best else "-", refresh=False)

    # a local pool gets one chunk per worker; a Dask cluster one task per configuration
    parallel = settings.jobs if settings.executor is None else 1_000_000
    with open_executor(settings.jobs, settings.executor) as executor:
        study.run(evaluator, executor=executor, on_iteration=on_iteration, parallelism=parallel)
    if bar is not None:
        bar.close()
    try:
        require_result(study)
    except ConfigError:
        if tracker is not None:
            tracker.abort()
        raise

    candidates = build_candidates(study, top_k, (baseline_config, baseline_metrics,
                                                 baseline_score),
                                  rule=rule, domain_of=evaluator.domain_report,
                                  slow_objective=slow_end_objective(evaluator, objective.score))
    attach_intervals(candidates, evaluator, objective.score)
    notes = study_notes(study, candidates, rule, tolerance)
    files = write_candidates(study.directory, candidates, space.names, notes)
    plots = _write_plots(study, candidates)
    if tracker is not None:
        tracker.finish(study, candidates, plots, files + [study.directory / "study.json",
                                                          study.directory / "evaluations.jsonl"])
        study.checkpoint()  # keeps the run id next to the state
    return summary(study, candidates, wall_s=time.perf_counter() - started, rule=rule,
                   notes=notes, tolerance=tolerance)


def require_result(study: Study) -> None:
    """Raise :class:`ConfigError` when no evaluation of ``study`` gave a score: every point
    was infeasible (a constraint it could not repair) or the evaluator failed on it. The
    message counts both, with the most frequent reason of each."""
    records = study.records
    if any(r.status == "ok" for r in records):
        return
    parts = []
    for status, what in (("infeasible", "infeasible"), ("failed", "failed")):
        reasons = Counter(r.error or "no reason recorded" for r in records if r.status == status)
        if reasons:
            reason, _ = reasons.most_common(1)[0]
            parts.append(f"{sum(reasons.values())} {what} (most often: {reason})")
    raise ConfigError(f"study {study.spec.name}: none of its {len(records)} evaluations gave a "
                      f"result: {', '.join(parts) or 'nothing was evaluated'}; relax the "
                      "space's constraints or ranges, or fix the failure, and run it again "
                      f"(the evaluations are kept in {study.directory})")


def study_notes(study: Study, candidates: list[dict], rule: DomainRule,
                tolerance: float = NEAR_BEST_TOLERANCE) -> list[str]:
    """The verdict lines of a study (:func:`candidate_notes` with its domain counts)."""
    outside, total = _domain_counts(study, rule)
    return candidate_notes(candidates, rule, tolerance, outside, total)


def _domain_counts(study: Study, rule: DomainRule) -> tuple[int, int]:
    """Distinct evaluated configurations outside the domain, and all of them."""
    distinct = study.top(len(study.records))
    return sum(rule.status(r.metrics) == "outside" for r in distinct), len(distinct)


_HEADLINE = ("config", "objective", "ranked_objective", "metrics", "domain", "no_effect")


def _progress_bar(study: Study, enabled: bool):
    if not enabled:
        return None
    from servetune._progress import progress

    spec = study.spec.optimizer
    if spec.get("name") == "pso":
        total = spec.get("particles", 30) * spec.get("iterations", 20)
    elif spec.get("name") == "random":
        total = spec.get("budget")
    else:
        total = getattr(study.optimizer, "points", None)
        total = len(total) if total is not None else None
    return progress(total=total, initial=len(study.records), desc=f"tune {study.spec.name}",
                    unit="eval", dynamic_ncols=True, leave=True)


def _write_plots(study: Study, candidates: list[dict]) -> dict[str, bytes]:
    from servetune.tuner._plots import convergence_png, pareto_png

    folder = study.directory / "plots"
    folder.mkdir(exist_ok=True)
    plots = {"convergence": convergence_png(study), "pareto": pareto_png(study, candidates)}
    for name, png in plots.items():
        atomic_write_bytes(folder / f"{name}.png", png)
    return plots


def summary(study: Study, candidates: list[dict], wall_s: float | None = None, *,
            rule: DomainRule | None = None, notes: list[str] | None = None,
            tolerance: float = NEAR_BEST_TOLERANCE) -> dict:
    """The ``--json`` document: study, best (the first candidate under the domain rule),
    baseline, candidates, evaluations, domain, notes."""
    rule = rule or DomainRule()
    best = next((c for c in candidates if not c.get("baseline")), None)
    baseline = next((c for c in candidates if c.get("baseline")), None)
    statuses = [r.status for r in study.records]
    out = {
        "study": {"name": study.spec.name, "path": str(study.directory),
                  "status": study.status, "space": study.space.name,
                  "engine": study.space.engine, "objective": study.objective.spec(),
                  "optimizer": study.spec.optimizer, "seed": study.spec.seed,
                  "iterations": study.iteration, "mlflow_run_id": study.tracking_run_id,
                  "evaluator": study.spec.evaluator},
        "best": None if best is None else {k: best[k] for k in _HEADLINE},
        "baseline": None if baseline is None else {k: baseline[k] for k in _HEADLINE},
        "candidates": candidates,
        "evaluations": {"total": len(statuses), "ok": statuses.count("ok"),
                        "simulated": sum(1 for r in study.records
                                         if r.status == "ok" and not r.cached),
                        "cached": sum(r.cached for r in study.records),
                        "infeasible": statuses.count("infeasible"),
                        "failed": statuses.count("failed")},
    }
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 3)
    if best is not None and baseline is not None and baseline["objective"] not in (None, 0):
        ratio = best["objective"] / baseline["objective"]
        out["improvement_over_baseline"] = ratio if math.isfinite(ratio) else None
    outside, total = _domain_counts(study, rule)
    out["domain"] = {**rule.to_dict(), "outside_evaluations": outside,
                     "distinct_evaluations": total}
    out["near_best"] = default_near_best(candidates, tolerance)
    out["notes"] = list(notes or [])
    out["table"] = candidates_table(candidates, study.space.names)
    return out


def settings_dict(settings: TuneSettings) -> dict:
    """Plain-data settings (for logs)."""
    return asdict(settings)
