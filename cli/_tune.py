"""``servetune tune``: the main job — tune an engine configuration in simulation."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click

from servetune import ConfigError
from servetune.cli._main import Context, emit_json
from servetune.cli._simulate import _parse_sets
from servetune.cli._table import candidates_text
from servetune.data.engines import redact_document

__all__ = ["command"]


@click.command("tune")
@click.option("--space", default=None, metavar="NAME|FILE",
              help="Search space: a built-in name (transformers-cb, vllm) or a file (servetune "
                   "TOML, LLMServingTuner TOML, auto-tuning-vllm YAML). Default: "
                   "transformers-cb.")
@click.option("--workload", default=None, metavar="FILE|SPEC",
              help="Trace file or synthetic spec; default: 2,000 Splitwise-like requests "
                   "(gamma arrivals at 1.5 req/s, a load the engine default serves).")
@click.option("--qps", type=float, default=None,
              help="Rescale the workload's arrivals to this mean rate (req/s); default: as is.")
@click.option("--limit", type=int, default=None,
              help="Use only the first N requests of the workload; default: all.")
@click.option("--objective", default=None, metavar="SPEC",
              help="goodput | throughput | fitness, with options, e.g. "
                   "'goodput:ttft_ms=1000,tpot_ms=50'. Default: goodput with TTFT <= 5 s and "
                   "TPOT <= 150 ms (sized for the bundled H200 sample's engine).")
@click.option("--optimizer", type=click.Choice(["pso", "random", "grid"]), default="pso",
              show_default=True, help="Search strategy (random: particles x iterations points).")
@click.option("--particles", type=click.IntRange(min=1), default=30, show_default=True,
              help="Configurations simulated per iteration (PSO swarm size; random and grid: "
                   "batch size).")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="PSO iterations (random: particles x iterations points in all; grid: "
                   "unused). Ignored with --resume: a study keeps its own size.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Tuned candidates to keep (the engine default is added as baseline).")
@click.option("--seed", type=int, default=0, show_default=True, help="Optimiser seed.")
@click.option("--sim-seed", type=int, default=0, show_default=True,
              help="Simulation and synthetic-workload seed.")
@click.option("--study", "study_name", default=None,
              help="Study name (folder under <workspace>/studies/); default tune-<UTC time>. "
                   "List them with servetune studies ls.")
@click.option("--resume", default=None, metavar="NAME",
              help="Continue an interrupted study (servetune studies ls) from its last checkpoint, "
                   "with its own space, workload, objective and size.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes for evaluations (1: inline in this process).")
@click.option("--executor", default=None, metavar="URL",
              help="Dask scheduler (dask://HOST:PORT) to evaluate on instead of local workers.")
@click.option("--model-uri", default=None,
              help="Step-time model (models:/NAME@champion or models:/NAME/VERSION); default: the "
                   "workspace champion, trained from the bundled samples on first use.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Simulator key fixed under every configuration (repeatable; e.g. "
                   "gpu_memory_gib=80, in GiB).")
@click.option("--no-mlflow", is_flag=True, help="Do not log the study to MLflow.")
@click.option("--domain", "domain", type=click.Choice(["strict", "penalise", "ignore"]),
              default="strict", show_default=True,
              help="Candidates outside the step-time model's training data: strict = refused "
                   "unless none is inside, penalise = ranked by a pessimistic estimate "
                   "(the lower of objective x 0.5 and the objective with step times at the "
                   "prediction interval's slow end), ignore = labelled only.")
@click.option("--verify", is_flag=True,
              help="Then measure the candidates on real hardware and recommend the best by "
                   "measurement: needs --cluster; knobs the engine's CLI cannot express are "
                   "recorded as unapplied. Exit code as servetune validate (3 drift, 4 a "
                   "candidate failed).")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="With --verify: verify -> calibrate -> re-tune rounds. After a round whose "
                   "measured best disagrees with its prediction, the model is calibrated on the "
                   "steps rebuilt from every measurement so far and the next round tunes with "
                   "it; stops early on agreement. The recommendation is the best measured in "
                   "any round. 1: tune and verify once.")
@click.option("--cluster", default=None, metavar="FILE|NODES",
              help="With --verify: cluster TOML, hostfile or node string (as servetune validate "
                   "--cluster).")
@click.option("--model", "served_model", default=None,
              help="With --verify: the model path or id the engine serves.")
@click.option("--repeats", type=click.IntRange(1, 100), default=1, show_default=True,
              help="With --verify: replays per measured candidate (their spread widens the "
                   "agreement of a prediction: within 2 repeat spreads also agrees).")
@click.option("--threshold", type=click.FloatRange(0, 10), default=0.15, show_default=True,
              help="With --verify: relative objective error under which a prediction agrees "
                   "with its measurement (the loop stops on agreement).")
@click.option("--json", "as_json", is_flag=True,
              help="Print study, best, baseline, candidates and evaluations as JSON.")
@click.pass_obj
def command(ctx: Context, space, workload, qps, limit, objective, optimizer, particles,
            iterations, top_k, seed, sim_seed, study_name, resume, jobs, executor, model_uri,
            sets, no_mlflow, domain, verify, rounds, cluster, served_model, repeats, threshold,
            as_json) -> None:
    """Tune an engine's configuration against a workload in simulation (PSO by default).

    On a fresh workspace this ingests the bundled samples and trains the champion step-time
    model first. The study lives in <workspace>/studies/NAME/ (checkpointed every iteration;
    --resume NAME continues it); --verify hands the candidates to the hardware dispatcher.
    """
    from servetune.tuner._job import (
        DEFAULT_OBJECTIVE,
        DEFAULT_SPACE,
        DEFAULT_WORKLOAD,
        TuneSettings,
        run_tune,
    )

    if verify and not cluster:
        raise ConfigError("--verify needs --cluster FILE|NODES (the service groups to measure "
                          "the candidates on)")
    if cluster and not verify:
        raise ConfigError("--cluster is only used with --verify")
    if not verify and (repeats != 1 or threshold != 0.15):
        raise ConfigError("--repeats and --threshold are only used with --verify")
    verify_options = {"unapplied": "record", "threshold": threshold}
    if repeats != 1:
        from servetune.tuner.hardware import DispatchOptions

        verify_options["options"] = DispatchOptions(repeats=repeats)

    if resume and (space or workload or study_name or objective):
        raise ConfigError("--resume continues a study with its own space, workload, objective "
                          "and name; drop --space/--workload/--objective/--study")
    from servetune.tuner._limits import check_study_size

    check_study_size(particles, iterations)  # refuse sizes that cannot finish, before any work
    settings = TuneSettings(space=space or DEFAULT_SPACE, workload=workload or DEFAULT_WORKLOAD,
                            qps=qps, limit=limit, objective=objective or DEFAULT_OBJECTIVE,
                            optimizer=optimizer,
                            particles=particles, iterations=iterations, top_k=top_k, seed=seed,
                            sim_seed=sim_seed, study=study_name, jobs=jobs, executor=executor,
                            model_uri=model_uri, base_config=_parse_sets(sets),
                            track=not no_mlflow, domain=domain)
    if rounds > 1:
        if not verify or resume:
            raise ConfigError("--rounds needs --verify (each round measures on the cluster) "
                              "and cannot --resume")
        _loop(ctx, settings, rounds, cluster, served_model, verify_options, as_json)
        return
    started = time.time()
    try:
        result = run_tune(ctx.workspace, settings, resume=resume, progress=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (servetune.cli._main)
        from servetune.cli._studies import interrupt_hint

        hint = interrupt_hint(ctx.workspace, resume or study_name, since=started)
        if hint:
            exc.add_note(hint)  # printed by main after "interrupted"
        raise
    result.pop("table")  # the Markdown form (candidates.md); the terminal gets aligned text
    # what is printed never holds a secret env.* value (the study's own files keep them: a
    # verification launches with them)
    result = redact_document(result)
    verification = None
    if verify:
        from servetune.data import TraceStore

        verification = _verify(result, cluster, served_model,
                               TraceStore.for_workspace(ctx.workspace), verify_options)
    if as_json:
        emit_json(result)
        _exit_with(verification)
        return
    study = result["study"]
    ev = result["evaluations"]
    click.echo(f"study {study['name']} ({study['status']}): {ev['total']} evaluations, "
               f"{ev['simulated']} simulated, {ev['cached']} cached, {ev['infeasible']} "
               f"infeasible, {ev['failed']} failed, {result.get('wall_s', 0):.1f} s")
    click.echo(candidates_text(result["candidates"], _knobs(study["path"])))
    for note in result.get("notes", []):
        click.echo("note: " + note)
    best = result["best"]
    if best is not None:
        click.echo(f"best {study['objective']}: {best['objective']:.4g}"
                   + (f"  ({result['improvement_over_baseline']:.3g}x the engine default)"
                      if result.get("improvement_over_baseline") else ""))
        if verification is None:
            click.echo("launch: " + result["candidates"][0]["launch"]["command"])
    if verification is not None:
        from servetune.cli._validate import echo_result

        echo_result(verification)
        chosen = result["recommendation"]
        if chosen is not None:
            click.echo(f"recommended (chosen on measurements): {chosen['name']}; launch: "
                       + (chosen["launch"]["command"] or str(chosen["config"])))
        else:
            click.echo("no candidate could be scored on measurements: nothing recommended")
    click.echo(f"files: {study['path']}  (report: servetune report {study['name']})")
    _exit_with(verification)


def _loop(ctx: Context, settings, rounds: int, cluster_source: str, served_model,
          verify_options: dict, as_json):
    """``--verify --rounds N``: :func:`servetune.tuner.tune_verify_loop`, a line per round."""
    from servetune.data import TraceStore
    from servetune.tuner._loop import tune_verify_loop
    from servetune.tuner.hardware import load_cluster

    if settings.study is None:
        settings = replace(settings, study="tune-" + time.strftime("%Y%m%d-%H%M%S",
                                                                     time.gmtime()))

    def report(r) -> None:
        best = r.verification.measured_best
        click.echo(f"round {r.index}: study {r.summary['study']['name']}, model {r.model_uri}; "
                   f"measured best {best.name if best else '-'} "
                   f"(measured {_fmt(best and best.measured_objective)}, predicted "
                   f"{_fmt(best and best.predicted_objective)}; "
                   f"{'agrees' if r.verification.agrees else 'disagrees'})", err=as_json)

    result = tune_verify_loop(
        ctx.workspace, settings, load_cluster(cluster_source, model=served_model),
        rounds=rounds, store=TraceStore.for_workspace(ctx.workspace),
        verify_options=verify_options, on_round=report)
    doc = result.to_dict()
    if as_json:
        emit_json(doc)
        return
    click.echo(f"stopped: {result.stopped}; calibrated models: "
               f"{', '.join(result.calibrated) or 'none'}")
    rec = doc["recommendation"]
    if rec is None:
        click.echo("no candidate could be scored on measurements: nothing recommended")
    else:
        click.echo(f"recommended (chosen on measurements, round {rec['round']}): {rec['name']} "
                   f"{json.dumps(rec['config'], sort_keys=True)}; measured "
                   f"{_fmt(rec['measured_objective'])}, predicted "
                   f"{_fmt(rec['predicted_objective'])}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _knobs(study_path: str) -> list[str]:
    """The study's tuned knobs in its space's order (the table's columns)."""
    from servetune.tuner._space import SearchSpace

    spec = json.loads((Path(study_path) / "study.json").read_text())
    return list(SearchSpace.from_dict(spec["space"]).names)


def _exit_with(verification) -> None:
    """Exit with validate's code when the verification did not pass (3 drift, 4 failed)."""
    if verification is not None and verification.exit_code:
        from servetune.cli._validate import ValidationOutcome

        raise ValidationOutcome(verification.exit_code, verification.summary())


def _verify(result: dict, cluster_source: str, served_model: str | None, store,
            verify_options: dict):
    """Measure the study's candidates on the cluster with the tuned workload
    (:func:`servetune.tuner.verify_study`): the measurements land in the trace store and
    ``<study>/measurements.json``; ``result`` gains ``verification`` and the measured-best
    ``recommendation``. Returns the :class:`~servetune.tuner.VerificationResult` (its
    ``exit_code`` is validate's: 0 ok, 3 drift, 4 a candidate failed)."""
    import sys

    from tqdm.auto import tqdm

    from servetune.tuner import verify_study
    from servetune.tuner.hardware import load_cluster

    cluster = load_cluster(cluster_source, model=served_model)
    bar = tqdm(total=len(result["candidates"]), unit="candidate", desc="verifying",
               file=sys.stderr, disable=None)
    with bar:
        verification = verify_study(result["study"]["path"], cluster, store=store,
                                    on_outcome=lambda outcome: bar.update(1), **verify_options)
    result["verification"] = verification.to_dict()
    recommendation = verification.recommendation()
    if recommendation is not None:
        chosen = next(c for c in result["candidates"] if c["name"] == recommendation["name"])
        recommendation["launch"] = chosen["launch"]
    result["recommendation"] = recommendation
    return verification
