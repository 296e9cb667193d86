"""``servetune train``: fit, evaluate, log and register a step-time model from the store."""

from __future__ import annotations

import click

from servetune.cli._main import Context, emit_json

__all__ = ["command"]


@click.command("train")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Filter the training steps (repeatable): engine, model, hardware, run_id, or "
                   "any steps/runs column, e.g. --where async_batching=true.")
@click.option("--feature-set", default=None, metavar="NAME",
              help="Feature set (default: step_v5; see servetune.features).")
@click.option("--trials", type=click.IntRange(1, 50), default=None,
              help="Settings (feature sets, then hyperparameters) tried by grouped CV on the "
                   "training runs (default 8; 1: no search).")
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.5), default=None,
              help="Share of runs held out for testing (default 0.2).")
@click.option("--calibrate-from", default=None, metavar="MODEL_URI",
              help="Calibrate this model (e.g. models:/NAME@champion) on the selected steps "
                   "instead of training from scratch: per-host calibration with --where "
                   "hardware=GPU; registered under the selected data's name.")
@click.option("--source", type=click.Choice(["auto", "measured", "reconstructed"]),
              default="auto", show_default=True,
              help="Steps to train on: auto = each run's recorded steps, else those rebuilt from "
                   "its token timings (a servetune validate measurement); measured or "
                   "reconstructed only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def command(ctx: Context, where: tuple[str, ...], feature_set: str | None, trials: int | None,
            test_fraction: float | None, calibrate_from: str | None, source: str, seed: int,
            as_json: bool) -> None:
    """Train a step-time model on held-out-run evaluation; move `champion` if it is better.

    On a workspace without step traces, the bundled H200 samples are ingested first.
    """
    from dataclasses import replace

    from servetune.data import TraceStore
    from servetune.features import get_feature_set
    from servetune.models import TrainConfig, parse_where, train_step_time_model
    from servetune.models._training import ingest_samples_if_empty

    filters = parse_where(where)
    config = TrainConfig(seed=seed, source=source)
    if feature_set is not None:
        config = replace(config, feature_set=get_feature_set(feature_set).name)
    if trials is not None:
        config = replace(config, n_trials=trials)
    if test_fraction is not None:
        config = replace(config, test_fraction=test_fraction)
    if calibrate_from is not None:
        config = replace(config, calibrate_from=calibrate_from)
    if ingest_samples_if_empty(TraceStore.for_workspace(ctx.workspace)):
        click.echo("servetune: the trace store had no step traces; ingested the bundled samples",
                   err=True)
    result = train_step_time_model(ctx.workspace, filters, config)
    if as_json:
        emit_json(result.to_dict())
        return
    m = result.metrics
    click.echo(f"run {result.run_id}: {result.model_uri} "
               f"({'champion' if result.champion else 'not champion'})")
    click.echo(f"held-out runs ({int(m['test_runs'])}, {int(m['n_steps'])} steps): "
               f"MAPE {m['mape']:.2f}%  p50 {m['p50_ape']:.2f}%  p90 {m['p90_ape']:.2f}%  "
               f"R2 {m['r2']:.4f}")
    if "extrap_mape" in m:
        click.echo(f"extrapolation (above {m['extrap_token_cut']:.0f} tokens): "
                   f"MAPE {m['extrap_mape']:.2f}%  p90 {m['extrap_p90_ape']:.2f}%")
    if result.champion_before and "mape" in result.champion_before:
        click.echo(f"previous champion v{result.champion_before['version']} on the same runs: "
                   f"MAPE {result.champion_before['mape']:.2f}%")
    if "interval_low" in m:
        click.echo(f"80 % run-level interval (out of fold): step times x{m['interval_low']:.2f}"
                   f" to x{m['interval_high']:.2f} of the prediction")
    base = result.lineage.get("calibrated_from")
    if base:
        click.echo(f"calibrated from {base['uri']} (v{base['version']}): its trees kept, "
                   f"{int(m['n_trees'])} rounds in all")
    click.echo(f"trained on {result.lineage['rows']} steps from {result.lineage['runs']} runs "
               f"(sha256 {result.lineage['content_sha256'][:12]}) in {result.seconds:.1f} s")
