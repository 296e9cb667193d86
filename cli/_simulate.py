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
@click.option("--slo-e2e-ms", type=float, default=None,
              help="Goodput bound on end-to-end latency (ms); default: no end-to-end bound.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write requests/runs (and with --record-steps steps) Parquet files here "
                   "(source=simulated; `servetune ingest DIR/*.parquet` stores them).")
@click.option("--record-steps", is_flag=True, help="Record every simulated step (with --out).")
@click.option("--json", "as_json", is_flag=True, help="Print config, seed and metrics as JSON.")
@click.pass_obj
def command(ctx: Context, engine: str, sets: tuple[str, ...], workload: str, qps: float | None,
            limit: int | None, seed: int, model_uri: str | None, slo_ttft_ms: float | None,
            slo_tpot_ms: float | None, slo_e2e_ms: float | None, out_dir: str | None,
            record_steps: bool,
            as_json: bool) -> None:
    """Simulate one engine configuration serving a workload with the learned step-time model."""
    from servetune._simulation import run_simulation
    from servetune.models._domain import format_domain_warning
    from servetune.tuner._intervals import format_interval
    from servetune.tuner.simulator import SLO

    config = _parse_sets(sets)
    slo = SLO(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, e2e_ms=slo_e2e_ms)
    report = run_simulation(ctx.workspace, engine, config, workload, seed=seed,
                            model_uri=model_uri, slo=slo,
                            record_steps=record_steps and out_dir is not None,
                            workload_options={"qps": qps, "limit": limit},
                            keep_result=out_dir is not None)
    result, trace, uri, interval = report.result, report.trace, report.model_uri, report.interval
    payload = report.to_dict()
    if out_dir is not None:
        written = result.write_parquet(out_dir)
        payload["files"] = {kind: str(path) for kind, path in written.items()}
    if as_json:
        emit_json(payload)
        return
    m = report.metrics

    click.echo(f"engine {report.engine}  workload {trace.name} ({len(trace)} requests)  "
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
    warning = format_domain_warning(report.domain)
    if warning:
        click.echo(f"warning: {warning}")
    for kind, path in payload.get("files", {}).items():
        click.echo(f"wrote {kind:8s} {path}")
