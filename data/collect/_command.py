"""``servetune collect``: measure real traces from a serving engine on this machine.

The click group lives here, not in :mod:`servetune.cli`, so that a GPU host can run it as
``python -m servetune.data.collect ...`` with only the collector's own dependencies installed
(``servetune.cli`` imports every sub-command, some of which need xgboost, mlflow or paramiko).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import click

from servetune import InputError
from servetune.data.collect._plan import (
    EngineConfig,
    SweepPlan,
    WorkloadSpec,
    load_sweep,
    parse_assignments,
)

log = logging.getLogger(__name__)

__all__ = ["command", "build_plan"]


def emit_json(payload: object) -> None:
    """One JSON document on stdout (the same format as ``servetune.cli.emit_json``)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


@click.group("collect")
def command() -> None:
    """Collect real step/request/run traces from a serving engine (run on the GPU host)."""


def sweep_options(function):
    """The options every collector shares: the sweep, its measurement and its output."""
    options = [
        click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
                     help="A ContinuousBatchingConfig knob for every configuration "
                          "(repeatable)."),
        click.option("--config", "config_items", multiple=True, metavar="K=V,K=V",
                     help="One configuration (repeatable; keys name= and repeat= are special)."),
        click.option("--sweep", "sweep_file", type=click.Path(dir_okay=False), default=None,
                     help="TOML sweep file: [defaults], [[config]], [[workload]]."),
        click.option("--workload", "workload_texts", multiple=True, metavar="FILE|SPEC",
                     help="A trace file or a synthetic spec such as "
                          "'poisson:rate=4,n=200,input=lognormal:512:0.6,output=uniform:16:256'."),
        click.option("--only-workload", "only_workloads", multiple=True, metavar="NAME",
                     help="Run only these workloads of the sweep (repeatable), e.g. to split "
                          "a sweep."),
        click.option("--repeat", default=1, show_default=True, type=click.IntRange(1),
                     help="Measurements per configuration and workload (for --config/--set "
                          "runs)."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seeds the weights, prompts and synthetic workloads."),
        click.option("--warmup-requests", default=4, show_default=True,
                     type=click.IntRange(0),
                     help="Unrecorded requests sent through each fresh engine before the clock "
                          "starts."),
        click.option("--slo-ttft-ms", type=float, default=None, help="TTFT SLO for goodput."),
        click.option("--slo-tpot-ms", type=float, default=None, help="TPOT SLO for goodput."),
        click.option("--run-timeout", "run_timeout_s", default=900.0, show_default=True,
                     type=float, help="Seconds after which an unfinished run is stopped (the "
                                      "rest count as errors; the sweep goes on)."),
        click.option("--label", default="", help="Prefix of every run id."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="Directory for steps.parquet, requests.parquet and runs.parquet."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def report_summary(summary, as_json: bool) -> None:
    """A collected sweep: its JSON summary, or a line per run and the files written."""
    if as_json:
        emit_json(summary.to_dict())
        return
    for run in summary.runs:
        click.echo(f"{run['run_id']}: {run['steps']} steps, {run['completed']}/{run['requests']} "
                   f"requests ok, {run['output_throughput_tok_s'] or 0:.0f} output tok/s")
    click.echo(f"wrote {', '.join(summary.files.values())}")


@command.command("transformers-cb")
@click.option("--model", default="llama-1b-like", show_default=True,
              help="Architecture preset (random weights, no download) or a local model directory.")
@click.option("--dtype", default="bfloat16", show_default=True,
              type=click.Choice(["bfloat16", "float16", "float32"]),
              help="Weights and activations dtype of the model.")
@click.option("--attn", "attn_implementation", default="paged|sdpa", show_default=True,
              help="Attention implementation (transformers name).")
@click.option("--device", default="cuda", show_default=True, help="torch device (cuda, cuda:1, cpu).")
@sweep_options
def transformers_cb(model: str, dtype: str, attn_implementation: str, device: str,
                    set_items: tuple[str, ...], config_items: tuple[str, ...],
                    sweep_file: str | None, workload_texts: tuple[str, ...],
                    only_workloads: tuple[str, ...], repeat: int, seed: int,
                    warmup_requests: int, slo_ttft_ms: float | None, slo_tpot_ms: float | None,
                    run_timeout_s: float, label: str, out_dir: str, as_json: bool) -> None:
    """Drive transformers continuous batching online and record its real traces.

    Requests are submitted at their arrival times through the engine's manager API, each with
    its own output length (EOS disabled); every engine step's batch composition and wall time is
    recorded. The model is built once for all configurations.
    """
    from servetune.data.collect._collect import collect_sweep
    from servetune.data.collect._runner import CollectorOptions

    plan = build_plan(set_items, config_items, sweep_file, workload_texts, repeat, seed,
                      only_workloads)
    options = CollectorOptions(model=model, dtype=dtype, attn_implementation=attn_implementation,
                               device=device, seed=seed, warmup_requests=warmup_requests,
                               run_timeout_s=run_timeout_s, slo_ttft_ms=slo_ttft_ms,
                               slo_tpot_ms=slo_tpot_ms, label=label)
    summary = collect_sweep(plan, options, Path(out_dir), progress=True)
    report_summary(summary, as_json)


def build_plan(set_items, config_items, sweep_file, workload_texts, repeat, seed,
               only_workloads=()) -> SweepPlan:
    """The sweep described by the command-line flags (and an optional TOML file), restricted
    to ``only_workloads`` when given."""
    base = parse_assignments(set_items)
    if sweep_file:
        plan = load_sweep(sweep_file, base_knobs=base)
        configs, workloads = list(plan.configs), list(plan.workloads)
        if config_items:
            raise InputError("give configurations either in the sweep file or with --config",
                             field="--config")
    else:
        configs, workloads = [], []
        for i, item in enumerate(config_items, start=1):
            knobs = parse_assignments([item], field_name="--config")
            name = str(knobs.pop("name", f"c{i}"))
            count = knobs.pop("repeat", repeat)
            if not isinstance(count, int) or count < 1:
                raise InputError(f"expected repeat >= 1, got {count!r}", field="--config")
            configs.append(EngineConfig(name, {**base, **knobs}, count))
        if not configs:
            configs.append(EngineConfig("default", base, repeat))
    offset = len(workloads)
    workloads += [WorkloadSpec(f"w{offset + i}", text, seed)
                  for i, text in enumerate(workload_texts, start=1)]
    if not workloads:
        raise InputError("no workload: give --workload FILE|SPEC or [[workload]] in --sweep",
                         field="--workload")
    plan = SweepPlan(tuple(configs), tuple(workloads))
    return plan.only_workloads(only_workloads) if only_workloads else plan


@command.command("transformers-serve")
@click.option("--model", default="llama-1b-like", show_default=True,
              help="A local model directory, or a preset (random weights with a word-level "
                   "tokenizer of the client's prompt words, no EOS, saved under --work-dir).")
@click.option("--dtype", default="bfloat16", show_default=True,
              type=click.Choice(["bfloat16", "float16", "float32"]),
              help="transformers serve --dtype.")
@click.option("--attn", "attn_implementation", default="sdpa", show_default=True,
              help="transformers serve --attn-implementation (continuous batching pages it).")
@click.option("--device", default="cuda", show_default=True,
              help="transformers serve --device (cuda, cuda:1, cpu).")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(1, 65535),
              help="The server's port on 127.0.0.1.")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="Server logs, recorded steps and a preset's model (gigabytes for the larger "
                   "presets); default: a new directory under the system's temporary directory.")
@sweep_options
def transformers_serve(model, dtype, attn_implementation, device, set_items, config_items,
                       sweep_file, workload_texts, only_workloads, repeat, seed,
                       warmup_requests, slo_ttft_ms, slo_tpot_ms, run_timeout_s, port, label,
                       work_dir, out_dir, as_json) -> None:
    """Measure `transformers serve` (the engine users deploy) with its own steps recorded.

    Per run the server is started by `serve-recorded` with the configuration's --cb-* flags, the
    workload is replayed through servetune's streaming client over HTTP, and the server is
    stopped: requests and runs as the client measured them, steps as the served engine recorded
    them. A knob the serve command line cannot express is refused before any server starts.
    """
    from servetune.data.collect._collect import collect_sweep
    from servetune.data.collect._served_runner import ServedCollector, ServedOptions
    from servetune.data.engines import TRANSFORMERS_CB

    plan = build_plan(set_items, config_items, sweep_file, workload_texts, repeat, seed,
                      only_workloads)
    for config in plan.configs:  # every configuration launchable, before anything starts
        TRANSFORMERS_CB.check_launchable(config.knobs, unapplied="error")
    work_dir = work_dir or tempfile.mkdtemp(prefix="servetune-serve-")
    log.info("server logs and recorded steps in %s", work_dir)
    options = ServedOptions(model=model, work_dir=work_dir,
                            device=device, dtype=dtype,
                            attn_implementation=attn_implementation, port=port, seed=seed,
                            warmup_requests=warmup_requests, run_timeout_s=run_timeout_s,
                            slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, label=label)
    summary = collect_sweep(plan, None, Path(out_dir), progress=True,
                            collector=ServedCollector(options))
    report_summary(summary, as_json)


@command.command("serve-recorded", context_settings={"ignore_unknown_options": True,
                                                      "allow_interspersed_args": False})
@click.option("--steps-out", required=True, type=click.Path(dir_okay=False),
              help="Parquet file the recorded steps are written to when the server stops.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def serve_recorded_command(steps_out: str, serve_args: tuple[str, ...]) -> None:
    """Run ``transformers serve SERVE_ARGS`` with every engine step recorded in-process.

    The server is the unchanged ``transformers serve`` command line; on SIGTERM/SIGINT it shuts
    down and the steps (with their wall-clock start) are written to --steps-out.
    """
    from servetune.data.collect._served import serve_recorded

    serve_recorded(list(serve_args), steps_out)


@command.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory the merged steps/requests/runs.parquet are written to "
                   "(created if missing).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def merge(dirs: tuple[str, ...], out_dir: str, as_json: bool) -> None:
    """Concatenate collector outputs (DIRS) into one set of three Parquet files in --out."""
    from servetune.data.collect._output import merge_outputs

    counts = merge_outputs(dirs, out_dir)
    if as_json:
        emit_json({"out_dir": out_dir, "rows": counts})
        return
    click.echo(", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" rows in {out_dir}")
