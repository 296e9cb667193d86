"""A self-contained HTML report of a study (plots embedded as base64 PNG images).

Example:
    >>> path = write_report(workspace.studies_dir() / "tune-1")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from servetune.data import atomic_write_text
from servetune.tuner._candidates import (
    NEAR_BEST_TOLERANCE,
    NO_EFFECT,
    TABLE_METRICS,
    candidate_cells,
)
from servetune.tuner._plots import convergence_png, pareto_png
from servetune.tuner._study import Study

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} code{font-size:12px}
.best{background:#fff6d5} .muted{color:#777} .outside{color:#a40}
"""


def render_report(study_dir: str | Path) -> str:
    """The report's HTML text for the study in ``study_dir``."""
    study = Study.load(study_dir)
    candidates_path = Path(study_dir) / "candidates.json"
    candidates = (json.loads(candidates_path.read_text()) if candidates_path.exists() else [])
    best = study.best()
    statuses = [r.status for r in study.records]
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>servetune study "
             f"{esc(study.spec.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Study {esc(study.spec.name)}</h1>",
             "<table>",
             *(f"<tr><th class=l>{esc(k)}</th><td class=l>{esc(str(v))}</td></tr>" for k, v in [
                 ("status", study.status), ("space", f"{study.space.name} "
                                                     f"({study.space.engine})"),
                 ("objective", study.objective.spec()),
                 ("optimizer", json.dumps(study.spec.optimizer)), ("seed", study.spec.seed),
                 ("iterations", study.iteration),
                 ("evaluations", f"{len(statuses)} ({statuses.count('ok')} scored, "
                                 f"{sum(r.cached for r in study.records)} cached duplicates, "
                                 f"{statuses.count('infeasible')} infeasible, "
                                 f"{statuses.count('failed')} failed)"),
                 ("evaluator", json.dumps(study.spec.evaluator, default=str)),
                 ("MLflow run", study.tracking_run_id or "-"), ("created", study.spec.created)]),
             "</table>"]
    if best is not None:
        parts.append(f"<p>Best objective <b>{best.score:.5g}</b> at evaluation {best.index + 1}"
                     + _baseline_sentence(candidates, best.score) + "</p>")
    notes = _notes(study, candidates)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Convergence</h2>", _img(convergence_png(study), "convergence"),
              "<h2>TTFT vs throughput</h2>", _img(pareto_png(study, candidates), "pareto")]
    if candidates:
        keys = list(study.space.names)
        head = ["", "objective", "domain", *TABLE_METRICS, *keys, NO_EFFECT]
        parts.append("<h2>Candidates</h2><table><tr>" + "".join(
            f"<th>{esc(h)}</th>" for h in head) + "</tr>")
        for c in candidates:
            cells = candidate_cells(c, keys)
            cls = " class=best" if c.get("rank") == 1 else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(x)}</td>" for x in cells) + "</tr>")
        parts.append("</table><h3>Domain</h3><ul>")
        for c in candidates:
            domain = c.get("domain") or {}
            cls = " class=outside" if domain.get("status") == "outside" else ""
            parts.append(f"<li{cls}><b>{esc(c['label'])}</b>: "
                         f"{esc(domain.get('message') or 'not recorded')}</li>")
        parts.append("</ul><h3>Launch</h3><ul>")
        for c in candidates:
            launch = c.get("launch") or {}
            parts.append(f"<li><b>{esc(c['label'])}</b>: <code>{esc(launch.get('command', ''))}"
                         "</code>")
            if launch.get("kwargs"):
                parts.append(f"<br><code>ContinuousBatchingConfig(**"
                             f"{esc(json.dumps(launch['kwargs']))})</code>")
            parts.append("</li>")
        parts.append("</ul>")
    parts.append("<h2>Search space</h2><table><tr><th class=l>parameter</th><th class=l>"
                 "definition</th></tr>")
    for p in study.space.params:
        parts.append(f"<tr><td class=l>{esc(p.name)}</td><td class=l><code>"
                     f"{esc(json.dumps(p.to_dict()))}</code></td></tr>")
    for c in study.space.constraints:
        parts.append(f"<tr><td class=l>constraint</td><td class=l><code>{esc(c.expr.text)}"
                     f"</code> ({'repair' if c.repair else 'penalise'})</td></tr>")
    parts.append("</table><p class=muted>Generated by servetune report.</p></body></html>")
    return "\n".join(parts)


def write_report(study_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default ``<study>/report.html``) atomically; returns its path."""
    path = Path(output) if output else Path(study_dir) / "report.html"
    atomic_write_text(path, render_report(study_dir))
    return path


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


def _img(png: bytes, alt: str) -> str:
    return (f"<img alt='{alt}' style='max-width:100%' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def _baseline_sentence(candidates: list[dict], best: float) -> str:
    base = next((c for c in candidates if c.get("baseline")), None)
    if not base or base.get("objective") in (None, 0):
        return "."
    return (f"; the engine default scores {base['objective']:.5g} "
            f"({best / base['objective']:.3g}x).")
