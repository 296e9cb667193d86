"""``servetune validate``: measure candidates on real service groups, compare with predictions.

Exit codes (cron-friendly): 0 every candidate measured and no drift; 3 measured but a metric
drifted beyond threshold and noise (retrain hint); 4 at least one candidate failed; 2 bad input;
1 any other error. With ``--every DURATION`` the validation repeats until interrupted (or
``--count`` rounds) and the exit code is the last round's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import click
from tqdm.auto import tqdm

from servetune import InputError, ServetuneError
from servetune.cli._main import Context, emit_json
from servetune.data import TraceStore, resolve_workload
from servetune.tuner._verify import (
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_OK,
    VerificationResult,
    engine_to_launch,
    verify_candidates,
    verify_study,
)
from servetune.tuner.hardware import (
    ClientOptions,
    DispatchOptions,
    EngineBenchmark,
    candidates_from_sets,
    launcher_for,
    load_cluster,
    load_study_candidates,
)

__all__ = ["command", "parse_duration", "ValidationOutcome", "echo_result", "EXIT_OK",
           "EXIT_DRIFT", "EXIT_FAILED"]

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DEFAULT_WORKLOAD = "poisson:rate=2,n=32,input=const:128,output=const:32"


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``1h``, ``1d`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"expected a duration like 30s, 10m, 1h or 1d, got {text!r}",
                         field="--every")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _study_workload(study_dir: Path | None, qps: float | None, limit: int | None, seed: int
                    ) -> tuple[str, float | None, int | None, int]:
    """The workload a study was tuned on (its ``study.json``: spec, rate, limit and the seed
    its synthetic arrivals were drawn with), else the default spec."""
    try:
        info = json.loads((study_dir / "study.json").read_text())["evaluator"]
        return (str(info["workload"]), qps if qps is not None else info.get("qps"),
                limit if limit is not None else info.get("limit"),
                int(info.get("sim_seed", seed)))
    except (TypeError, OSError, ValueError, KeyError):
        return _DEFAULT_WORKLOAD, qps, limit, seed


def _study_dir(ctx: Context, study: str) -> Path:
    path = Path(study).expanduser()
    if path.is_dir():
        return path
    return ctx.workspace.studies_dir() / study


@click.command("validate")
@click.option("--cluster", "cluster_source", required=True, metavar="FILE|NODES",
              help="Cluster TOML, a hostfile, or a node string like n0,n1:n2,n3 ('local' = "
                   "this machine).")
@click.option("--nodes-per-group", type=click.IntRange(min=1), default=1, show_default=True,
              help="Hostfile/node string: consecutive hosts per service group.")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hostfile/node string: GPUs 0..N-1 of each node go to the engine "
                   "(CUDA_VISIBLE_DEVICES); 0: not set, the engine sees every GPU of the node.")
@click.option("--candidates", "study", default=None, metavar="STUDY",
              help="A study name (or folder) whose candidates.json to verify.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Only the top K candidates of the study (plus its baseline); default: all.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="One candidate from knob values (repeatable), instead of --candidates.")
@click.option("--base-set", "base_settings", multiple=True, metavar="KEY=VALUE",
              help="Engine knobs applied under every candidate, not tuned (e.g. device=cuda, "
                   "dtype=bfloat16).")
@click.option("--engine", default=None,
              help="Engine to launch: transformers-cb, vllm, sglang (or an alias such as "
                   "transformers), or script (default: the cluster file's engine, else the "
                   "study's; a study is only launched with the engine it tuned).")
@click.option("--model", default=None, help="Model path or id served by the engine.")
@click.option("--workload", default=None,
              help="Request-arrival trace file or synthetic spec (default: the study's workload "
                   f"with --candidates, else {_DEFAULT_WORKLOAD}).")
@click.option("--requests", "limit", type=click.IntRange(min=1), default=None,
              help="Replay only the first N requests; default: all.")
@click.option("--qps", type=float, default=None,
              help="Rescale arrivals to this mean rate (req/s); default: as is.")
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions",
              show_default=True, help="OpenAI-compatible endpoint the benchmark client calls: "
                                      "/v1/completions or /v1/chat/completions.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Benchmark replays per candidate (mean and spread are reported).")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Measure the baseline first on each group for a per-host correction.")
@click.option("--hardware", default="unknown", show_default=True,
              help="Hardware label of the measured runs (GPU name); unknown: read from each "
                   "group's nodes with nvidia-smi (stays unknown on a node without it).")
@click.option("--slo-ttft-ms", type=float, default=None,
              help="Goodput TTFT bound (ms); default with --candidates: the study objective's, "
                   "else none.")
@click.option("--slo-tpot-ms", type=float, default=None,
              help="Goodput TPOT bound (ms); default with --candidates: the study objective's, "
                   "else none.")
@click.option("--slo-e2e-ms", type=float, default=None,
              help="Goodput end-to-end latency bound (ms); default with --candidates: the study "
                   "objective's, else none.")
@click.option("--ssh-user", default=None,
              help="Hostfile/node string: SSH user (a user@host entry wins); default: the "
                   "local user name.")
@click.option("--ssh-key", default=None, type=click.Path(dir_okay=False),
              help="Hostfile/node string: private key file; default: the SSH agent, then "
                   "~/.ssh's default keys.")
@click.option("--ssh-port", type=click.IntRange(1, 65535), default=22, show_default=True,
              help="Hostfile/node string: SSH port (a host:port entry wins).")
@click.option("--known-hosts", default=None, type=click.Path(dir_okay=False),
              help="known_hosts file (default ~/.ssh/known_hosts).")
@click.option("--trust-new-hosts", is_flag=True,
              help="Accept hosts missing from known_hosts and record their keys (never a "
                   "changed key).")
@click.option("--service-port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Hostfile/node string: HTTP port the engine listens on, on the head node "
                   "(the client must reach it directly).")
@click.option("--work-dir", default="~/.servetune/work", show_default=True,
              help="Work dir on each node for logs and results: the SSH user's own, writable by "
                   "nobody else (created 0700); each service runs in a private dir inside it.")
@click.option("--timeout", "candidate_timeout_s", type=float, default=None,
              help="Seconds one candidate may take in all (start, benchmark, stop); default: the "
                   "cluster file's, else 1800 s.")
@click.option("--health-timeout", "health_timeout_s", type=float, default=None,
              help="Seconds a starting engine may take to answer its health check; default: "
                   "the cluster file's, else 600 s.")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Extra attempts of a candidate after a transient failure (0: none); "
                   "default: the cluster file's, else 2.")
@click.option("--unapplied", type=click.Choice(["error", "record"]), default="error",
              show_default=True, help="Knobs the engine's CLI cannot express: refuse, or run "
                                      "without them and record them.")
@click.option("--drift-threshold", type=float, default=0.15, show_default=True,
              help="Relative error (0.15 = 15 %) beyond which (and beyond 2x noise) a metric "
                   "drifts.")
@click.option("--every", default=None, metavar="DURATION",
              help="Repeat the validation every DURATION (30s, 10m, 1h, 1d).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --every: stop after this many rounds; default: until interrupted.")
@click.option("--benchmark", type=click.Choice(["client", "vllm-bench"]), default="client",
              show_default=True, help="The built-in streaming client, or the engine's own "
                                      "`vllm bench serve` on the head node (JSON fetched and "
                                      "ingested).")
@click.option("--bench-command", default="vllm bench serve", show_default=True,
              help="With --benchmark vllm-bench: the program to run on the head node.")
@click.option("--warmup", "warmup_requests", type=click.IntRange(min=0), default=2,
              show_default=True, help="Unrecorded requests sent once the service is healthy.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the benchmark prompts and of a synthetic workload (a study's own "
                   "workload keeps its seed).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document per round.")
@click.pass_obj
def command(ctx: Context, cluster_source: str, nodes_per_group: int, gpus_per_node: int,
            study: str | None, top: int | None, settings: tuple[str, ...],
            base_settings: tuple[str, ...], engine: str | None,
            model: str | None, workload: str, limit: int | None, qps: float | None, api: str,
            repeats: int, calibrate: bool, hardware: str, slo_ttft_ms: float | None,
            slo_tpot_ms: float | None, slo_e2e_ms: float | None, ssh_user: str | None,
            ssh_key: str | None,
            ssh_port: int, known_hosts: str | None, trust_new_hosts: bool, service_port: int,
            work_dir: str, candidate_timeout_s: float | None, health_timeout_s: float | None,
            retries: int | None, unapplied: str, drift_threshold: float, every: str | None,
            count: int | None, benchmark: str, bench_command: str, warmup_requests: int,
            seed: int, as_json: bool) -> None:
    """Start candidates on real service groups, benchmark them, store and compare the results.

    Every measurement goes into the trace store (source measured) as soon as it is taken.
    Exit codes: 0 all measured, no drift; 3 drift beyond threshold and noise (retrain hint);
    4 a candidate failed; 2 bad input; 1 other errors.

    Example: servetune validate --cluster n0:n1 --engine vllm --model /models/m --set
    max_num_seqs=128 --set max_num_batched_tokens=8192 --repeats 3 --json
    """
    if bool(study) == bool(settings):
        raise InputError("give either --candidates STUDY or --set key=value", field="--set")
    period = parse_duration(every) if every else None
    node_options = {} if cluster_source.endswith(".toml") else {
        "port": ssh_port, "user": ssh_user, "key": ssh_key, "work_dir": work_dir,
        "service_port": service_port}
    cluster = load_cluster(cluster_source, nodes_per_group=nodes_per_group,
                           gpus_per_node=gpus_per_node, **node_options, engine=engine,
                           model=model, candidate_timeout_s=candidate_timeout_s,
                           health_timeout_s=health_timeout_s, retries=retries)
    ssh_overrides = {k: v for k, v in (("known_hosts", known_hosts),
                                       ("trust_new_hosts", trust_new_hosts or None)) if v}
    if ssh_overrides:
        cluster = dataclasses.replace(cluster, ssh=dataclasses.replace(cluster.ssh,
                                                                       **ssh_overrides))
    study_dir = _study_dir(ctx, study) if study else None
    study_spec, study_qps, study_limit, study_seed = _study_workload(study_dir, qps, limit, seed)
    workload_seed = seed
    if workload is None or workload == study_spec:  # replay exactly what was simulated
        workload, qps, limit, workload_seed = study_spec, study_qps, study_limit, study_seed
    replayed = resolve_workload(workload, seed=workload_seed, qps=qps, limit=limit)
    launcher = launcher_for(engine_to_launch(cluster.engine, study_dir), unsupported=unapplied)
    base = candidates_from_sets(base_settings)[0].config if base_settings else None
    client = ClientOptions(model=cluster.model or "model", api=api,
                           extra_body=dict(launcher.request_extras), seed=seed)
    options = DispatchOptions(repeats=repeats, calibrate=calibrate, hardware=hardware,
                              slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms,
                              slo_e2e_ms=slo_e2e_ms,
                              study=study_dir.name if study_dir else None, seed=seed,
                              warmup_requests=warmup_requests,
                              engine_benchmark=EngineBenchmark(
                                  program=tuple(shlex.split(bench_command)), seed=seed)
                              if benchmark == "vllm-bench" else None)
    store = TraceStore.for_workspace(ctx.workspace)

    def one_round(on_outcome) -> VerificationResult:
        common = dict(workload=replayed, store=store, client=client, options=options,
                      launcher=launcher, threshold=drift_threshold, on_outcome=on_outcome)
        if study_dir is not None:
            return verify_study(study_dir, cluster, top=top, base_config=base, **common)
        candidates = candidates_from_sets(settings)
        if base:
            candidates = [dataclasses.replace(c, config={**base, **c.config})
                          for c in candidates]
        return verify_candidates(candidates, cluster, **common)

    total = len(load_study_candidates(study_dir, top=top)) if study_dir is not None else 1
    rounds = 0
    while True:
        result = _one_round(one_round, total, as_json)
        rounds += 1
        if period is None or (count is not None and rounds >= count):
            break
        log.info("next validation in %gs", period)
        time.sleep(period)
    if result.exit_code:
        raise ValidationOutcome(result.exit_code, result.summary())


class ValidationOutcome(ServetuneError):
    """A finished validation that did not pass: exit code 3 (drift) or 4 (failed candidates)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _one_round(measure, total: int, as_json: bool) -> VerificationResult:
    """One validation with a progress bar on stderr; prints the JSON document or the table."""
    bar = tqdm(total=total, unit="candidate", desc="validating", file=sys.stderr, disable=None)
    with bar:
        result = measure(lambda outcome: bar.update(1))
    if as_json:
        emit_json(result.to_dict())
        return result
    echo_result(result)
    return result


def echo_result(result: VerificationResult) -> None:
    """The human-readable verification: outcomes, predicted vs measured, the measured best."""
    for outcome in result.dispatch.outcomes:
        what = (f"{len(outcome.measurements)} measurement(s)" if outcome.status == "measured"
                else f"{outcome.error_kind}: {outcome.reason}")
        click.echo(f"{outcome.candidate.name:16s} {outcome.status:9s} {what}")
    if result.report.rows:
        click.echo(result.report.table())
    stats = result.dispatch.statistics()
    click.echo(f"{stats['measured']}/{stats['candidates']} measured, {stats['retries']} "
               f"retries, {stats['wall_s']:.1f}s; drift: {'yes' if result.report.drift else 'no'}")
    best = result.measured_best
    if best is not None:
        predicted = ("-" if best.predicted_objective is None
                     else f"{best.predicted_objective:.4g}")
        agrees = {True: "agrees", False: "disagrees", None: "no prediction"}[
            best.agrees(result.threshold, result.noise_factor)]
        click.echo(f"measured best on {result.objective}: {best.name} "
                   f"({best.measured_objective:.4g} measured, {predicted} predicted: {agrees})")
