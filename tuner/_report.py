"""A self-contained HTML report of a study: the recommendation as a diff against the engine
default, its predicted interval and domain status, measured values when verified, the step
model's accuracy and lineage, the launch and ``validate`` commands, and inline SVG plots.

The page is rendered from the Jinja2 template ``tuner/templates/report.html.j2`` (autoescaped);
:func:`report_context` gathers its plain-data context, also usable by scripts.

Example:
    >>> path = write_report(workspace.studies_dir() / "tune-1")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

from servetune.data import atomic_write_text
from servetune.tuner._candidates import (
    NEAR_BEST_TOLERANCE,
    NO_EFFECT,
    TABLE_METRICS,
    candidate_cells,
    format_cell,
)
from servetune.tuner._plots import convergence_png, pareto_png
from servetune.tuner._study import Study

__all__ = ["render_report", "write_report", "report_context", "model_summary",
           "recommendation_diff"]

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
MEASUREMENTS = "measurements.json"
#: headline metrics of the recommendation: key -> (label, unit, better: "high"/"low")
KEY_METRICS = {
    "goodput_rps": ("goodput", "req/s", "high"),
    "output_throughput_tok_s": ("output throughput", "tok/s", "high"),
    "request_throughput_rps": ("request throughput", "req/s", "high"),
    "ttft_mean_ms": ("TTFT mean", "ms", "low"),
    "ttft_p90_ms": ("TTFT p90", "ms", "low"),
    "tpot_mean_ms": ("TPOT mean", "ms", "low"),
    "tpot_p90_ms": ("TPOT p90", "ms", "low"),
    "e2e_mean_ms": ("end-to-end mean", "ms", "low"),
    "success_rate": ("success rate", "", "high"),
}


def render_report(study_dir: str | Path, *, tracking_uri: str | None = None) -> str:
    """The report's HTML text for the study in ``study_dir``.

    Args:
        tracking_uri: MLflow store holding the study's step model (default: the workspace's
            store two levels above the study folder, when it exists).
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("servetune.tuner", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["cell"] = format_cell
    env.filters["pct"] = _pct
    return env.get_template(TEMPLATE).render(
        **report_context(study_dir, tracking_uri=tracking_uri, plots=True))


def write_report(study_dir: str | Path, output: str | Path | None = None, *,
                 tracking_uri: str | None = None) -> Path:
    """Write the report (default ``<study>/report.html``) atomically; returns its path."""
    path = Path(output) if output else Path(study_dir) / "report.html"
    atomic_write_text(path, render_report(study_dir, tracking_uri=tracking_uri))
    return path


def report_context(study_dir: str | Path, *, tracking_uri: str | None = None,
                   plots: bool = False) -> dict:
    """Everything the report shows, as plain data (``plots``: with the two inline SVGs)."""
    folder = Path(study_dir).resolve()
    study = Study.load(folder)
    candidates = _read_json(folder / "candidates.json") or []
    measurements = _read_json(folder / MEASUREMENTS)
    info = study.spec.evaluator
    keys = list(study.space.names)
    recommended = _recommended(candidates, measurements)
    statuses = [r.status for r in study.records]
    context = {
        "study": {"name": study.spec.name, "path": str(folder), "status": study.status,
                  "engine": study.space.engine, "space": study.space.name,
                  "objective": study.objective.spec(), "workload": info.get("workload"),
                  "requests": info.get("requests"), "seed": study.spec.seed,
                  "optimizer": json.dumps(study.spec.optimizer), "created": study.spec.created,
                  "mlflow_run": study.tracking_run_id,
                  "evaluations": f"{len(statuses)} ({statuses.count('ok')} scored, "
                                 f"{sum(r.cached for r in study.records)} cached duplicates, "
                                 f"{statuses.count('infeasible')} infeasible, "
                                 f"{statuses.count('failed')} failed)"},
        "model": model_summary(info.get("model_uri"), _tracking_uri(folder, tracking_uri)),
        "recommendation": None, "notes": _notes(study, candidates),
        "candidate_head": ["", "objective", "domain", *TABLE_METRICS, *keys, NO_EFFECT],
        "candidate_rows": [{"best": c is recommended, "cells": candidate_cells(c, keys)}
                           for c in candidates],
        "measured": _measured(candidates, measurements),
        "space": [{"name": p.name, "definition": json.dumps(p.to_dict())}
                  for p in study.space.params],
        "constraints": [{"expr": c.expr.text, "mode": "repair" if c.repair else "penalise"}
                        for c in study.space.constraints],
        "plots": None,
    }
    if recommended is not None:
        context["recommendation"] = _recommendation_block(
            study, candidates, recommended, measurements, folder)
    if plots:
        context["plots"] = [
            {"title": "Convergence", "svg": _svg(convergence_png(study, fmt="svg"))},
            {"title": "TTFT vs throughput",
             "svg": _svg(pareto_png(study, candidates, fmt="svg"))}]
    return context


def recommendation_diff(engine: str, default: dict | None, config: dict,
                        candidate: dict | None = None) -> list[dict]:
    """The knobs of ``config`` that differ from ``default``: ``{"knob", "default",
    "recommended", "help", "notes"}``; notes say when a knob has no modelled effect or cannot
    be set on the engine's command line."""
    from servetune import ConfigError
    from servetune.data.engines import get_engine

    try:
        spec = get_engine(engine)
    except ConfigError:  # a study of an engine this servetune does not define
        spec = None
    if default is None:
        default = {} if spec is None else {
            k: spec.default_config().get(spec.spellings.get(k)) for k in config}
    candidate = candidate or {}
    no_effect = candidate.get("no_effect") or {}
    unused = set((candidate.get("launch") or {}).get("unused") or [])
    rows = []
    for key, value in config.items():
        before = default.get(key)
        if before == value:
            continue
        canonical = spec.spellings.get(key, key) if spec else key
        knob = spec.knob(key) if spec and key in spec.spellings else None
        notes = []
        if key in no_effect:
            notes.append(f"{NO_EFFECT}: the simulator gave identical metrics for "
                         f"{', '.join(format_cell(v) for v in no_effect[key])}")
        elif knob is not None and not knob.simulated:
            notes.append(f"{NO_EFFECT} (the simulator does not model it)")
        if canonical in unused or key in unused:
            notes.append("not expressible on the engine's command line (set it in the engine's "
                         "configuration; validate needs --unapplied record)")
        rows.append({"knob": key, "default": format_cell(before),
                     "recommended": format_cell(value), "help": knob.help if knob else "",
                     "flag": knob.flag if knob and knob.flag else "", "notes": notes})
    return rows


def model_summary(model_uri: str | None, tracking_uri: str | None) -> dict:
    """The step model behind a study, read from the MLflow registry as ``servetune models ls``
    does: URI, version, training run, feature set, held-out metrics, prediction interval and
    training-domain size. ``error`` says why any of it is missing."""
    out: dict = {"uri": model_uri, "version": None, "run_id": None, "feature_set": None,
                 "metrics": {}, "interval": None, "domain": None, "error": None}
    if not model_uri:
        out["error"] = "the study records no model URI"
        return out
    if tracking_uri is None:
        out["error"] = "no MLflow store found next to the study (pass the workspace)"
        return out
    try:
        _fill_model(out, model_uri, tracking_uri)
    except Exception as exc:  # the report still renders; the header says what is missing
        log.warning("report: cannot read model %s from %s: %s", model_uri, tracking_uri, exc)
        out["error"] = f"cannot read it from {tracking_uri}: {exc}"
    return out


def _fill_model(out: dict, model_uri: str, tracking_uri: str) -> None:
    from servetune.models import TrainingDomain, list_registered
    from servetune.models._domain import DOMAIN_ARTIFACT
    from servetune.models._interval import INTERVAL_ARTIFACT, StepTimeInterval
    from servetune.models._registry import client_for, parse_model_uri

    ref = parse_model_uri(model_uri)
    client = client_for(tracking_uri)
    model = next((m for m in list_registered(client) if m["name"] == ref.name), None)
    if model is None:
        out["error"] = f"no registered model {ref.name!r} in {tracking_uri}"
        return
    version = ref.version or model["aliases"].get(ref.alias)
    entry = next((v for v in model["versions"] if str(v["version"]) == str(version)), None)
    if entry is None:
        out["error"] = f"{model_uri} resolves to no version in {tracking_uri}"
        return
    out.update(version=entry["version"], run_id=entry["run_id"],
               feature_set=entry["feature_set"], metrics=entry["metrics"],
               aliases=entry["aliases"])
    interval = _artifact_json(client, entry["run_id"], INTERVAL_ARTIFACT)
    if interval:
        out["interval"] = StepTimeInterval.from_dict(interval).describe()
    domain = _artifact_json(client, entry["run_id"], DOMAIN_ARTIFACT)
    if domain:
        d = TrainingDomain.from_dict(domain)
        out["domain"] = (f"{d.n_runs} runs, {d.n_steps:,} steps, "
                         f"{len(d.knob_combinations)} knob combinations, "
                         f"{len(d.modes)} modes ({', '.join(d.modes)})")


def _artifact_json(client, run_id: str, path: str) -> dict | None:
    """An artifact of the model's training run as JSON, read in place from a local artifact
    root (else downloaded); ``None`` when absent (a model registered before that artifact)."""
    import tempfile
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mlflow.exceptions import MlflowException

    try:
        root = client.get_run(run_id).info.artifact_uri
        if root.startswith("file:"):
            local = Path(url2pathname(urlparse(root).path)) / path
            return json.loads(local.read_text()) if local.exists() else None
        with tempfile.TemporaryDirectory(prefix="servetune-report-") as tmp:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def _tracking_uri(folder: Path, given: str | None) -> str | None:
    if given:
        return given
    db = folder.parent.parent / "mlruns" / "mlflow.db"
    return f"sqlite:///{db}" if db.exists() else None


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _recommended(candidates: list[dict], measurements: dict | None) -> dict | None:
    """The measured best when verified, else the first tuned candidate (else the baseline)."""
    chosen = (measurements or {}).get("measured_best")
    by_name = {c.get("name"): c for c in candidates}
    if chosen in by_name:
        return by_name[chosen]
    return next((c for c in candidates if not c.get("baseline")),
                candidates[0] if candidates else None)


def _recommendation_block(study: Study, candidates: list[dict], chosen: dict,
                          measurements: dict | None, folder: Path) -> dict:
    base = next((c for c in candidates if c.get("baseline")), None)
    interval = chosen.get("interval") or {}
    bounds = interval.get("metrics") or {}
    metrics = chosen.get("metrics") or {}
    measured = _measured_entry(measurements, chosen.get("name"))
    rows = []
    for key, (label, unit, better) in KEY_METRICS.items():
        if key not in metrics and key not in measured:
            continue
        b = bounds.get(key)
        m = (measured.get(key) or {}) if measured else {}
        value = m.get("measured")
        rows.append({"label": label, "unit": unit, "better": better,
                     "predicted": format_cell(metrics.get(key)),
                     "interval": f"{format_cell(b[0])}–{format_cell(b[2])}" if b else "",
                     "measured": format_cell(value) if m else None,
                     "error": _pct(m.get("error")) if m else None,
                     "in_interval": (None if not b or value is None
                                     else b[0] <= value <= b[2])})
    objective = interval.get("objective")
    launch = chosen.get("launch") or {}
    domain = chosen.get("domain") or {"status": "unknown", "reasons": [], "message": "not recorded"}
    validate = ["servetune", "validate", "--cluster", "CLUSTER", "--candidates", str(folder)]
    if launch.get("unused"):
        validate += ["--unapplied", "record"]
    chosen_on = "measurements" if measured else "prediction"
    m_obj = _measured_objective(measurements, chosen.get("name"))
    return {
        "label": chosen.get("label"), "name": chosen.get("name"),
        "is_default": bool(chosen.get("baseline")), "chosen_on": chosen_on,
        "objective": format_cell(chosen.get("objective")),
        "objective_interval": (f"{format_cell(objective[0])}–{format_cell(objective[2])}"
                               if objective else ""),
        "measured_objective": format_cell(m_obj) if m_obj is not None else None,
        "baseline_objective": format_cell(base.get("objective")) if base else None,
        "gain": (f"{chosen['objective'] / base['objective']:.3g}x" if base
                 and base.get("objective") and chosen.get("objective") is not None else None),
        "interval_level": (f"{100 * interval['level']:.0f} %" if interval.get("level")
                           else None),
        "interval_calibrated": interval.get("calibrated"),
        "interval_ratios": interval.get("ratios"),
        "metrics": rows,
        "domain": domain,
        "domain_extra": [r for r in domain.get("reasons") or []
                         if r not in (domain.get("message") or "")],
        "diff": recommendation_diff(study.space.engine, base and base.get("config"),
                                    chosen.get("config") or {}, chosen),
        "launch": launch.get("command") or "",
        "kwargs": (json.dumps(launch["kwargs"]) if launch.get("kwargs") else None),
        "unused": launch.get("unused") or [],
        "validate": shlex.join(validate),
    }


def _measured_entry(measurements: dict | None, name: str | None) -> dict:
    for c in (measurements or {}).get("candidates", []):
        if c.get("name") == name and c.get("status") == "measured":
            return c.get("metrics") or {}
    return {}


def _measured_objective(measurements: dict | None, name: str | None) -> float | None:
    for c in (measurements or {}).get("candidates", []):
        if c.get("name") == name:
            return c.get("measured_objective")
    return None


def _measured(candidates: list[dict], measurements: dict | None) -> dict | None:
    """Predicted vs measured objective of every verified candidate, the measured best marked."""
    if not measurements:
        return None
    labels = {c.get("name"): c.get("label") for c in candidates}
    best = measurements.get("measured_best")
    rows = [{"label": labels.get(c.get("name"), c.get("name")), "name": c.get("name"),
             "best": c.get("name") == best, "status": c.get("status"),
             "reason": c.get("reason") or "",
             "predicted": format_cell(c.get("predicted_objective")),
             "measured": format_cell(c.get("measured_objective")),
             "error": _pct(c.get("objective_error")),
             "cv": _pct(c.get("objective_cv")), "agrees": c.get("agrees")}
            for c in measurements.get("candidates", [])]
    rec = measurements.get("recommendation") or {}
    return {"rows": rows, "finished_at": measurements.get("finished_at"),
            "best": labels.get(best, best), "same_as_predicted": rec.get("same_as_predicted"),
            "predicted_best": labels.get(measurements.get("predicted_best"))}


def _notes(study: Study, candidates: list[dict]) -> list[str]:
    """The study's verdict lines (as ``servetune tune`` printed them), when its candidates
    carry domain labels."""
    if not candidates or any("domain" not in c for c in candidates):
        return []
    from servetune.tuner._job import study_notes
    from servetune.tuner._objective import DomainRule

    info = study.spec.evaluator
    rule = DomainRule(**info.get("domain", {}))
    return study_notes(study, candidates, rule, float(info.get("near_best_tolerance",
                                                              NEAR_BEST_TOLERANCE)))


def _svg(data: bytes):
    """Matplotlib's SVG document as inline markup (its XML prolog dropped). Matplotlib writes
    text as paths or escaped XML, so the markup is trusted as is."""
    from markupsafe import Markup

    text = data.decode()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)
    return Markup(text)


def _pct(value) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f} %"
