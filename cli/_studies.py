"""``servetune studies``: list the workspace's tuning studies and show one.

A study folder is read without writing anything (a study may be running in another process:
``Study.load`` would cut its evaluation log back to the checkpoint), from ``study.json``,
``checkpoint.json``, the evaluations the checkpoint covers and ``candidates.json``.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from servetune import ConfigError
from servetune.data import atomic_write_text
from servetune.cli._main import Context, emit_json
from servetune.cli._table import candidates_text, format_table

__all__ = ["command", "read_study", "study_names", "interrupt_hint", "resume_command"]

STATUSES = ("finished", "running", "interrupted")
# an unfinished study whose checkpoint is older than this many of its mean iteration times
# (and older than RUNNING_MIN_S) counts as interrupted
RUNNING_ITERATIONS = 3
RUNNING_MIN_S = 120.0
INTERRUPTED_FILE = "interrupted.json"


def study_names(workspace) -> list[str]:
    """Names of the folders under ``<workspace>/studies/`` that hold a ``study.json``."""
    root = workspace.studies_dir()
    return sorted(p.parent.name for p in root.glob("*/study.json")) if root.is_dir() else []


def resume_command(workspace, name: str) -> str:
    """The command line that continues study ``name`` of ``workspace``."""
    return (f"servetune tune --resume {shlex.quote(name)} "
            f"--workspace {shlex.quote(str(workspace.root))}")


def read_study(folder: Path, *, now: float | None = None) -> dict:
    """What ``studies ls/show`` print about one study folder (plain data, read-only).

    ``status`` is ``finished`` (the checkpoint says so), ``interrupted`` (``tune`` recorded an
    interrupt after the last checkpoint, in ``interrupted.json``), ``running`` (unfinished,
    checkpointed within the last :data:`RUNNING_ITERATIONS` mean iteration times, at least
    :data:`RUNNING_MIN_S` seconds) or ``interrupted`` (killed without a word).
    """
    from servetune.tuner._space import SearchSpace
    from servetune.tuner._study import CHECKPOINT_FILE, EVALUATIONS_FILE, STUDY_FILE, StudySpec

    folder = Path(folder)
    try:
        spec = StudySpec(**json.loads((folder / STUDY_FILE).read_text()))
        space = SearchSpace.from_dict(spec.space, source=str(folder / STUDY_FILE))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{folder / STUDY_FILE}: unreadable study file: {exc}") from None
    checkpoint = folder / CHECKPOINT_FILE
    state = _read_json(checkpoint) or {}
    scores, counts = _read_scores(folder / EVALUATIONS_FILE, int(state.get("records", 0)),
                                  int(state.get("log_bytes", 0)))
    candidates = _read_json(folder / "candidates.json") if state.get("status") == "finished" \
        else None
    info = spec.evaluator or {}
    iterations = int(state.get("iteration", 0))
    last = (checkpoint if checkpoint.exists() else folder / STUDY_FILE).stat().st_mtime
    marker = folder / INTERRUPTED_FILE
    stopped = marker.exists() and marker.stat().st_mtime >= last
    tuned = [c for c in candidates or [] if not c.get("baseline")]
    best = tuned[0]["objective"] if tuned else (max(scores) if scores else None)
    return {
        "name": spec.name, "path": str(folder),
        "status": ("interrupted" if stopped and state.get("status") != "finished" else
                   _status(state.get("status"), spec.created, iterations, last, now)),
        "created": spec.created, "engine": space.engine, "space": space.name,
        "knobs": list(space.names), "workload": info.get("workload"), "qps": info.get("qps"),
        "limit": info.get("limit"), "requests": info.get("requests"),
        "objective": spec.objective, "optimizer": spec.optimizer, "seed": spec.seed,
        "sim_seed": info.get("sim_seed"), "model_uri": info.get("model_uri"),
        "base_config": info.get("base_config") or {}, "top_k": info.get("top_k"),
        "domain": info.get("domain"), "iterations": iterations,
        "planned_iterations": _planned_iterations(spec.optimizer),
        "evaluations": {"total": int(state.get("records", 0)), **counts},
        "planned_evaluations": _planned_evaluations(spec.optimizer),
        "best_objective": best, "last_checkpoint": _iso(last) if state else None,
        "candidates": candidates,
    }


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from None


def _read_scores(path: Path, count: int, size: int) -> tuple[list[float], dict]:
    """Scores of the ``ok`` evaluations among the first ``count`` (``size`` bytes) of the log,
    and the count per status; read only (a running study appends beyond them)."""
    if not count:
        return [], {"ok": 0, "infeasible": 0, "failed": 0}
    try:
        with open(path, "rb") as handle:
            lines = handle.read(size).decode("utf-8").splitlines()[:count]
        records = [json.loads(line) for line in lines]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable evaluation log: {exc}") from None
    statuses = [r.get("status") for r in records]
    scores = [r["score"] for r in records if r.get("status") == "ok"
              and r.get("score") is not None and math.isfinite(r["score"])]
    return scores, {s: statuses.count(s) for s in ("ok", "infeasible", "failed")}


def _status(state: str | None, created: str, iterations: int, last: float,
            now: float | None) -> str:
    if state == "finished":
        return "finished"
    now = time.time() if now is None else now
    try:
        started = datetime.fromisoformat(created).timestamp()
    except ValueError:
        started = last
    mean = (last - started) / iterations if iterations else 0.0
    return "running" if now - last <= max(RUNNING_MIN_S, RUNNING_ITERATIONS * mean) \
        else "interrupted"


def _planned_iterations(optimizer: dict) -> int | None:
    if optimizer.get("name") == "pso":
        return optimizer.get("iterations", 20)
    if optimizer.get("name") == "random" and optimizer.get("budget"):
        return math.ceil(optimizer["budget"] / optimizer.get("batch_size", 30))
    return None


def _planned_evaluations(optimizer: dict) -> int | None:
    if optimizer.get("name") == "pso":
        return optimizer.get("particles", 30) * optimizer.get("iterations", 20)
    return optimizer.get("budget")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def interrupt_hint(workspace, name: str | None, since: float) -> str | None:
    """The line ``tune`` prints when interrupted: the study, its checkpointed evaluations and
    the resume command; records the interrupt in the study's ``interrupted.json``.

    ``name`` None: the newest study created at or after ``since`` (epoch seconds). Returns None
    when no study was created yet (interrupted while training) or it had finished."""
    if name is None:
        newest = None
        for candidate in study_names(workspace):
            try:
                created = read_study(workspace.studies_dir() / candidate)["created"]
                stamp = datetime.fromisoformat(created).timestamp()
            except (ConfigError, ValueError):
                continue
            if stamp >= math.floor(since) and (newest is None or stamp >= newest[0]):
                newest = (stamp, candidate)
        name = newest[1] if newest else None
    if name is None or not (workspace.studies_dir() / name / "study.json").exists():
        return None
    folder = workspace.studies_dir() / name
    study = read_study(folder)
    if study["status"] == "finished":
        return None
    atomic_write_text(folder / INTERRUPTED_FILE, json.dumps(
        {"at": _iso(time.time()), "evaluations": study["evaluations"]["total"]}))
    return (f"study {name} interrupted after {study['evaluations']['total']} evaluations; "
            f"continue with: {resume_command(workspace, name)}")


def _short(text, width: int = 28) -> str:
    text = "-" if text is None else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value) -> str:
    from servetune.tuner._candidates import format_cell

    return format_cell(value)


@click.group("studies")
def command() -> None:
    """List and inspect the tuning studies of the workspace (<workspace>/studies/)."""


@command.command("ls")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: one object per study (settings, status, counts, best).")
@click.pass_obj
def list_studies(ctx: Context, as_json: bool) -> None:
    """One row per study: status, engine/space, workload, objective, evaluations (done/planned),
    best objective and creation time (UTC)."""
    studies = []
    for name in study_names(ctx.workspace):
        try:
            study = read_study(ctx.workspace.studies_dir() / name)
        except ConfigError as exc:
            study = {"name": name, "status": "unreadable", "error": str(exc)}
        study.pop("candidates", None)
        studies.append(study)
    studies.sort(key=lambda s: (s.get("created") or "", s["name"]))
    if as_json:
        emit_json(studies)
        return
    if not studies:
        click.echo(f"no studies in {ctx.workspace.studies_dir()} (start one: servetune tune)")
        return
    rows = []
    for s in studies:
        if s["status"] == "unreadable":
            rows.append([s["name"], "unreadable", "-", "-", "-", "-", "-", "-"])
            continue
        where = s["engine"] if s["space"] == s["engine"] else f"{s['engine']}/{s['space']}"
        planned = s["planned_evaluations"]
        evaluations = f"{s['evaluations']['total']}" + (f"/{planned}" if planned else "")
        created = (s["created"] or "-").replace("T", " ")[:16]
        rows.append([s["name"], s["status"], where, _short(s["workload"]),
                     _short(s["objective"], 36), evaluations, _cell(s["best_objective"]),
                     created])
    click.echo(format_table(["name", "status", "engine/space", "workload", "objective",
                             "evaluations", "best", "created (UTC)"], rows))


@command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help="Print the study's settings, counts, candidates, launch and resume commands "
                   "as JSON.")
@click.pass_obj
def show_study(ctx: Context, name: str, as_json: bool) -> None:
    """A study's settings, its candidates table and launch command, or how to resume it."""
    folder = ctx.workspace.studies_dir() / name
    if not (folder / "study.json").exists():
        known = study_names(ctx.workspace)
        raise ConfigError(f"no study {name!r} in {ctx.workspace.studies_dir()}; known studies: "
                          f"{', '.join(known) or 'none (start one: servetune tune)'}")
    study = read_study(folder)
    tuned = [c for c in study["candidates"] or [] if not c.get("baseline")]
    study["launch"] = tuned[0]["launch"]["command"] if tuned else None
    study["resume"] = (resume_command(ctx.workspace, name) if study["status"] != "finished"
                       else None)
    if as_json:
        emit_json(study)
        return
    ev = study["evaluations"]
    planned = study["planned_iterations"]
    lines = [
        ("study", f"{study['name']}  ({study['status']})"),
        ("path", study["path"]),
        ("created", f"{study['created']}  last checkpoint {study['last_checkpoint'] or '-'}"),
        ("engine", study["engine"] + ("" if study["space"] == study["engine"]
                                     else f"  space {study['space']}")),
        ("knobs", ", ".join(study["knobs"])),
        ("workload", f"{study['workload']}  ({study['requests'] or '?'} requests"
                     + (f", qps {study['qps']:g}" if study["qps"] else "")
                     + (f", first {study['limit']}" if study["limit"] else "") + ")"),
        ("objective", study["objective"]),
        ("optimizer", ", ".join(f"{k}={v}" for k, v in study["optimizer"].items())
         + f"; seed {study['seed']}, sim seed {study['sim_seed']}"),
        ("model", study["model_uri"] or "-"),
        ("fixed keys", ", ".join(f"{k}={v}" for k, v in study["base_config"].items()) or "-"),
        ("iterations", f"{study['iterations']}" + (f"/{planned}" if planned else "")),
        ("evaluations", f"{ev['total']}: {ev['ok']} ok, {ev['infeasible']} infeasible, "
                        f"{ev['failed']} failed"),
        ("best", _cell(study["best_objective"])),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {value}")
    if study["candidates"]:
        click.echo("")
        click.echo(candidates_text(study["candidates"], study["knobs"]))
        click.echo("")
    if study["launch"]:
        click.echo(f"launch: {study['launch']}")
    if study["status"] == "interrupted":
        click.echo(f"interrupted; continue with: {study['resume']}")
    elif study["resume"]:
        click.echo(f"running (checkpointed recently); if no tune process works on it any more, "
                   f"continue with: {study['resume']}")
