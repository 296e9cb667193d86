"""``servetune simulate``: one engine configuration replayed against a workload, in simulation."""

from __future__ import annotations

import click

from servetune import ConfigError
from servetune.cli._main import Context, emit_json
from servetune.cli._table import format_table

__all__ = ["command"]


def _parse_sets(values: tuple[str, ...]) -> dict:
    config: dict = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key = key.strip()
        if key in config:
            raise ConfigError(f"--set gives {key!r} twice")
        config[key] = None if value.strip().lower() in ("none", "null", "") else value.strip()
    return config


def _step_model(ctx: Context, engine: str, model_uri: str | None):
    """The engine's step-time model (``models.step_model_for_engine``) and its URI."""
    from servetune.models import step_model_for_engine

    model = step_model_for_engine(ctx.workspace, engine, model_uri)
    uri = model_uri or (f"models:/{model.name}@champion" if model.name else "")
    return uri, model.compile()


@click.command("simulate")
@click.option("--engine", required=True,
              help="Engine: transformers-cb (alias transformers), vllm or static.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A configuration key (repeatable); unknown keys are refused with the list.")
@click.option("--workload", required=True, metavar="FILE|SPEC",
              help="A trace file, or a synthetic spec such as 'poisson:rate=5,n=500'.")
@click.option("--qps", type=float, default=None,
              help="Rescale the arrivals to this mean rate (req/s); default: as is.")
@click.option("--limit", type=int, default=None,
              help="Use only the first N requests; default: all.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthetic workload and of step-time noise.")
@click.option("--model-uri", default=None,
              help="Step-time model (models:/NAME@champion); default: the workspace champion, "
                   "trained from the bundled samples when there is none.")
@click.option("--slo-ttft-ms", type=float, default=None,
              help="Goodput bound on time to first token (ms); default: no TTFT bound.")
@click.option("--slo-tpot-ms", type=float, default=None,
              help="Goodput bound on time per output token (ms); default: no TPOT bound.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write requests/runs (and with --record-steps steps) Parquet files here "
                   "(source=simulated; `servetune ingest DIR/*.parquet` stores them).")
@click.option("--record-steps", is_flag=True, help="Record every simulated step (with --out).")
@click.option("--json", "as_json", is_flag=True, help="Print config, seed and metrics as JSON.")
@click.pass_obj
def command(ctx: Context, engine: str, sets: tuple[str, ...], workload: str, qps: float | None,
            limit: int | None, seed: int, model_uri: str | None, slo_ttft_ms: float | None,
            slo_tpot_ms: float | None, out_dir: str | None, record_steps: bool,
            as_json: bool) -> None:
    """Simulate one engine configuration serving a workload with the learned step-time model."""
    from servetune.data import resolve_workload
    from servetune.models._domain import format_domain_warning
    from servetune.tuner._intervals import format_interval, simulation_interval
    from servetune.tuner.simulator import SLO, Simulator, get_policy

    config = _parse_sets(sets)
    slo = SLO(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms)
    # validate the configuration's keys and values before any (possibly long) model training;
    # sizes derived from the model's engine constants (the KV cache) are checked once it exists
    get_policy(engine).resolve(config)
    trace = resolve_workload(workload, seed=seed, qps=qps, limit=limit)
    uri, step_model = _step_model(ctx, engine, model_uri)
    simulator = Simulator(engine, config, step_model, slo=slo, labels={"model_uri": uri})
    keep_steps = record_steps and out_dir is not None
    # the domain check needs the steps: recorded whenever the model knows its domain (whole
    # Splitwise trace: 5,724 steps, run time unchanged at ~0.08 s, check 0.5 ms), dropped
    # again unless --record-steps asked for them
    check_steps = getattr(step_model, "domain", None) is not None
    result = simulator.run(trace, seed, record_steps=keep_steps or check_steps)
    domain = simulator.domain_report(result)
    calibrated = bool(domain.get("known")) and not domain.get("outside")
    interval = simulation_interval(simulator, trace, seed, result.flat_metrics(), calibrated)
    if not keep_steps:
        result.steps = None
    payload = {"engine": simulator.engine, "config": result.config, "seed": seed,
               "workload": trace.descriptor, "model_uri": uri, "metrics": result.metrics,
               "domain": domain, "interval": interval}
    if out_dir is not None:
        written = result.write_parquet(out_dir)
        payload["files"] = {kind: str(path) for kind, path in written.items()}
    if as_json:
        emit_json(payload)
        return
    m = result.metrics

    click.echo(f"engine {simulator.engine}  workload {trace.name} ({len(trace)} requests)  "
               f"model {uri}")
    click.echo(f"completed {m['completed']}/{m['num_requests']}  steps {m['steps']}  "
               f"preemptions {m['preemptions']}  duration {m['duration_s'] or 0:.1f} s")
    goodput = ("- (no SLO given)" if m["goodput_rps"] is None
               else f"{m['goodput_rps']:.2f} req/s")
    click.echo(f"throughput {m['request_throughput_rps'] or 0:.2f} req/s  "
               f"{m['output_throughput_tok_s'] or 0:.0f} output tok/s  goodput {goodput}")
    stats = ("mean", "p50", "p90", "p99")
    click.echo(format_table(["latency", *stats], [
        [name, *("-" if m[name].get(k) is None else f"{m[name][k]:.1f}" for k in stats)]
        for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")]))
    if interval is not None:
        click.echo(format_interval(interval))
    warning = format_domain_warning(domain)
    if warning:
        click.echo(f"warning: {warning}")
    for kind, path in payload.get("files", {}).items():
        click.echo(f"wrote {kind:8s} {path}")
