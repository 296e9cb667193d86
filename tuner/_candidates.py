"""Candidates: the top-K distinct configurations plus the engine default, ready to launch.

Candidates are ranked under a :class:`~servetune.tuner.DomainRule` (out-of-domain ones refused
or ranked by a pessimistic estimate) and each carries its ``domain`` label. Configurations
whose simulated metrics are identical (or that differ only in knobs the simulator does not
model) are one candidate: the knobs that differ are listed as "no modelled effect".

Example:
    >>> cands = build_candidates(study, k=3, baseline=(config, metrics, score))  # doctest: +SKIP
    >>> print(candidates_table(cands))  # doctest: +SKIP
"""

from __future__ import annotations

import heapq

import json
from pathlib import Path
from typing import Callable

from servetune.data import atomic_write_text
from servetune.tuner._export import launch_args
from servetune.tuner._intervals import interval_cell
from servetune.tuner._objective import METRIC_KEYS, DomainRule

__all__ = ["build_candidates", "candidates_table", "write_candidates", "format_cell",
           "candidate_notes", "candidate_cells", "domain_label", "default_near_best", "TABLE_METRICS", "NEAR_BEST_TOLERANCE",
           "NO_EFFECT"]

TABLE_METRICS = ("goodput_rps", "output_throughput_tok_s", "ttft_p90_ms", "tpot_p90_ms",
                 "success_rate")
# Relative tolerance under which the engine default counts as "already near-best" when the
# best candidate has no calibrated prediction interval (a model trained before intervals, or a
# best outside the training domain); with one, the interval decides.
NEAR_BEST_TOLERANCE = 0.05
NO_EFFECT = "no modelled effect"


def build_candidates(study, k: int, baseline: tuple[dict, dict, float | None] | None = None,
                     *, rule: DomainRule | None = None,
                     domain_of: Callable[[dict], dict] | None = None,
                     slow_objective: Callable[[dict], float | None] | None = None
                     ) -> list[dict]:
    """``k`` best distinct candidates (rank 1..k) under ``rule`` and, if given, the baseline.

    Args:
        study: a finished :class:`~servetune.tuner.Study`.
        k: how many tuned candidates.
        baseline: ``(config, metrics, score)`` of the engine default, evaluated the same way.
        rule: how out-of-domain evaluations are ranked (default: ``DomainRule()``, strict).
        domain_of: ``config -> domain report`` (the evaluator's ``domain_report``) for the
            labels' reasons; without it the labels carry the metrics only.
        slow_objective: ``config -> objective`` with every step time at the model's interval
            slow end (:func:`~servetune.tuner._intervals.slow_end_objective`); an outside
            evaluation is then ranked by the lower of that and the flat penalty. It is computed
            only for the outside evaluations that reach the front of the ranking.
    """
    rule = rule or DomainRule()
    space = study.space
    targets = space.targets or None
    unmodelled = _unmodelled_knobs(space.engine)
    distinct = study.top(max(k, len(getattr(study, "records", ()))))  # every distinct one
    ranked = [(r, rule.status(r.metrics), rule.ranked(r.score, r.metrics)) for r in distinct]
    inside = [x for x in ranked if x[1] != "outside"]
    if rule.mode == "strict" and inside:
        ranked = inside
    groups: list[dict] = []
    for record, status, score, slow in _best_first(ranked, rule, slow_objective):
        group = next((g for g in groups if g["domain"]["status"] == status
                      and _same_effect(g, record, unmodelled)), None)
        if group is not None:
            group["merged"].append(record.config)
            continue
        if len(groups) == k:
            continue
        rank = len(groups) + 1
        groups.append({"name": f"rank{rank}", "label": f"#{rank}", "rank": rank,
                       "baseline": False, "config": record.config,
                       "objective": record.score, "ranked_objective": score,
                       "slow_end_objective": slow,
                       "metrics": record.metrics, "evaluation": record.index,
                       "domain": domain_label(record.config, record.metrics, rule, domain_of),
                       "merged": [], "no_effect": {},
                       "launch": launch_args(space.engine, record.config, targets)})
    for g in groups:
        g["no_effect"] = _differing(g["config"], g["merged"])
    if baseline is not None:
        config, metrics, score = baseline
        slow = None if score is None else _slow(slow_objective, config, rule, metrics)
        groups.append({"name": "default", "label": "baseline", "rank": None, "baseline": True,
                       "config": config, "objective": score,
                       "ranked_objective": None if score is None else rule.ranked(score, metrics,
                                                                                  slow),
                       "slow_end_objective": slow,
                       "metrics": metrics, "evaluation": None,
                       "domain": domain_label(config, metrics, rule, domain_of),
                       "merged": [], "no_effect": {},
                       "launch": launch_args(space.engine, config, targets)})
    return groups


def _slow(slow_objective, config: dict, rule: DomainRule, metrics: dict) -> float | None:
    """The slow-end objective of an evaluation the rule ranks pessimistically (else None)."""
    if slow_objective is None or not rule.needs_slow_score(metrics):
        return None
    return slow_objective(config)


def _best_first(ranked: list, rule: DomainRule, slow_objective):
    """``ranked`` (record, status, ranked objective) in descending ranked objective, ties by
    evaluation order, each with its slow-end objective (``None`` when not computed). An outside evaluation's slow-end objective can only lower its score, so
    it is computed when the evaluation first reaches the front, and the evaluation goes back
    into the queue with the refined score: the order is the one of refining them all."""
    queue = [(-score, record.index, False, None, record, status)
             for record, status, score in ranked]
    heapq.heapify(queue)
    while queue:
        negative, index, refined, slow, record, status = heapq.heappop(queue)
        if not refined and status == "outside":
            slow = _slow(slow_objective, record.config, rule, record.metrics)
            if slow is not None:
                score = rule.ranked(record.score, record.metrics, slow)
                heapq.heappush(queue, (-score, index, True, slow, record, status))
                continue
        yield record, status, -negative, slow


def domain_label(config: dict, metrics: dict, rule: DomainRule,
                 domain_of: Callable[[dict], dict] | None = None) -> dict:
    """A candidate's ``domain``: ``status`` (inside/outside/unknown), the config-level
    ``reasons``, the steps' ``share_outside`` and ``worst_ratio``, and a one-line ``message``."""
    report = domain_of(config) if domain_of is not None else {}
    reasons = list(report.get("reasons") or [])
    share, worst = metrics.get("domain_share_outside"), metrics.get("domain_worst_ratio")
    status = rule.status(metrics)
    parts = []
    if share:
        parts.append(f"{100 * share:.0f} % of simulated steps outside the trained ranges "
                     f"(worst {worst:.1f}x)")
    parts += reasons
    if status == "unknown":
        message = "the model carries no training domain"
    elif parts:
        message = ("outside the model's training data: " if status == "outside" else
                   "inside the tolerance, but: ") + "; ".join(parts)
    else:
        message = "inside the model's training data"
    return {"status": status, "reasons": reasons,
            "extrapolations": metrics.get("domain_extrapolations"), "share_outside": share,
            "worst_ratio": worst, "message": message}


def candidate_notes(candidates: list[dict], rule: DomainRule | None = None,
                    tolerance: float = NEAR_BEST_TOLERANCE, outside_evaluations: int = 0,
                    evaluations: int = 0) -> list[str]:
    """The verdict lines every output shows: near-best default, domain refusals, merges."""
    rule = rule or DomainRule()
    notes = []
    tuned = [c for c in candidates if not c.get("baseline")]
    base = next((c for c in candidates if c.get("baseline")), None)
    best = tuned[0] if tuned else None
    if default_near_best(candidates, tolerance):
        interval = _calibrated_objective_interval(best)
        within = (f"inside the best's {100 * best['interval']['level']:.0f} % prediction "
                  f"interval {format_cell(interval[0])}-{format_cell(interval[2])}"
                  if interval else f"within {100 * tolerance:g} % of the best "
                  f"{format_cell(best['objective'])} (the best has no calibrated interval)")
        notes.append(f"the default is already near-best: its objective "
                     f"{format_cell(base['objective'])} is {within}")
    if evaluations and outside_evaluations:
        action = {"strict": "refused as candidates while any inside one exists",
                  "penalise": f"ranked by a pessimistic estimate (objective x {rule.penalty:g}, "
                              "or lower: the objective with step times at the model's "
                              "interval slow end)",
                  "ignore": "ranked on their raw objective (--domain ignore)"}[rule.mode]
        notes.append(f"{outside_evaluations} of {evaluations} evaluated configurations are "
                     f"outside the model's training data: {action}")
    if tuned and all(c["domain"]["status"] == "outside" for c in tuned):
        notes.append("no evaluated configuration is inside the model's training data: every "
                     "candidate is an extrapolation; verify on hardware before trusting it")
    if base is not None and base["domain"]["status"] == "outside":
        notes.append("the engine default is outside the model's training data: its prediction "
                     "is an extrapolation too")
    for c in tuned:
        if c.get("no_effect"):
            notes.append(f"{c['label']} stands for {len(c['merged']) + 1} configurations with "
                         f"identical simulated metrics: {', '.join(c['no_effect'])} "
                         f"{NO_EFFECT}")
    return notes


def candidates_table(candidates: list[dict], tuned_keys: tuple[str, ...] = ()) -> str:
    """A Markdown table: label, objective, domain, key metrics, the tuned knobs, then the
    knobs with no modelled effect."""
    keys = list(tuned_keys) or sorted({k for c in candidates for k in c["config"]})
    head = ["", "objective", "domain", *TABLE_METRICS, *keys, NO_EFFECT]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in candidates:
        lines.append("| " + " | ".join(candidate_cells(c, keys)) + " |")
    return "\n".join(lines)


def candidate_cells(c: dict, keys: list[str]) -> list[str]:
    """One candidate's table cells (``candidates_table`` and the HTML report)."""
    m = c.get("metrics") or {}
    no_effect = c.get("no_effect") or {}
    objective = (c.get("interval") or {}).get("objective")
    cells = [c["label"], interval_cell(c.get("objective"), objective, format_cell),
             _domain_cell(c.get("domain"))]
    cells += [format_cell(m.get(k)) for k in TABLE_METRICS]
    cells += ["*" if k in no_effect else format_cell(c["config"].get(k)) for k in keys]
    cells.append(", ".join(no_effect) or "-")
    return cells


def write_candidates(directory: Path, candidates: list[dict], tuned_keys: tuple[str, ...] = (),
                     notes: list[str] | None = None) -> list[Path]:
    """``candidates.json`` and ``candidates.md`` (table, notes, launch commands), atomically."""
    json_path = Path(directory) / "candidates.json"
    md_path = Path(directory) / "candidates.md"
    atomic_write_text(json_path, json.dumps(candidates, indent=1, default=str))
    parts = ["# Candidates", "", candidates_table(candidates, tuned_keys), ""]
    parts += [f"- {n}" for n in notes or []] + ([""] if notes else [])
    parts += ["## Domain", ""] + [f"- **{c['label']}**: {c['domain']['message']}"
                                  for c in candidates if c.get("domain")]
    parts += ["", "## Launch", ""]
    for c in candidates:
        launch = c["launch"]
        parts.append(f"- **{c['label']}**: `{launch['command']}`")
        if launch.get("kwargs"):
            parts.append(f"  - `ContinuousBatchingConfig(**{json.dumps(launch['kwargs'])})`")
    atomic_write_text(md_path, "\n".join(parts) + "\n")
    return [json_path, md_path]


def format_cell(value) -> str:
    """One table cell: ``-`` for missing, lower-case booleans, 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _domain_cell(domain: dict | None) -> str:
    if not domain:
        return "-"
    if domain["status"] != "outside":
        return domain["status"]
    why = ["config"] if domain.get("extrapolations") else []
    share = domain.get("share_outside") or 0.0
    if share >= 0.005:
        why.append(f"{100 * share:.0f} % steps")
    return "outside" + (f" ({', '.join(why)})" if why else "")


def default_near_best(candidates: list[dict], tolerance: float = NEAR_BEST_TOLERANCE) -> bool:
    """Whether the baseline's objective reaches the low end of the first tuned candidate's
    calibrated prediction interval; without one, whether it is within ``tolerance`` (relative
    to the best's) of the best's objective."""
    best = next((c for c in candidates if not c.get("baseline")), None)
    base = next((c for c in candidates if c.get("baseline")), None)
    if best is None or base is None or None in (best["objective"], base["objective"]):
        return False
    interval = _calibrated_objective_interval(best)
    if interval:
        return base["objective"] >= interval[0]
    return best["objective"] - base["objective"] <= tolerance * abs(best["objective"])


def _calibrated_objective_interval(candidate: dict) -> list | None:
    """The candidate's objective ``[low, mid, high]`` when its interval is calibrated."""
    interval = candidate.get("interval") or {}
    return interval.get("objective") if interval.get("calibrated") else None


def _unmodelled_knobs(engine: str) -> set[str]:
    """Knob names (and aliases) the engine's spec marks ``simulated=False``."""
    from servetune.data.engines import get_engine

    try:
        spec = get_engine(engine)
    except Exception:  # noqa: BLE001 - a space of an unknown engine has none to merge on
        return set()
    return {n for knob in spec.knobs if not knob.simulated
            for n in (knob.name, *knob.aliases, *getattr(knob, "negated_aliases", ()))}


def _same_effect(group: dict, record, unmodelled: set[str]) -> bool:
    """Identical simulated metrics, or configurations equal up to unmodelled knobs."""
    a, b = group["metrics"], record.metrics
    if all(a.get(k) is not None and a.get(k) == b.get(k) for k in METRIC_KEYS):
        return True
    strip = lambda c: {k: v for k, v in c.items() if k not in unmodelled}  # noqa: E731
    return strip(group["config"]) == strip(record.config)


def _differing(config: dict, merged: list[dict]) -> dict:
    """``{knob: [values]}`` of the knobs whose value differs among a candidate's merged
    configurations (the candidate's own value first)."""
    out = {}
    for k, v in config.items():
        values = [v]
        for other in merged:
            if other.get(k) not in values:
                values.append(other.get(k))
        if len(values) > 1:
            out[k] = values
    return out
