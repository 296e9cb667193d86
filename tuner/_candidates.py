"""Candidates: the top-K distinct configurations plus the engine default, ready to launch.

Example:
    >>> cands = build_candidates(study, k=3, baseline=(config, metrics, score))  # doctest: +SKIP
    >>> print(candidates_table(cands))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from servetune.data import atomic_write_text
from servetune.tuner._export import launch_args

__all__ = ["build_candidates", "candidates_table", "write_candidates", "format_cell",
           "TABLE_METRICS"]

TABLE_METRICS = ("goodput_rps", "output_throughput_tok_s", "ttft_p90_ms", "tpot_p90_ms",
                 "success_rate")


def build_candidates(study, k: int, baseline: tuple[dict, dict, float | None] | None = None
                     ) -> list[dict]:
    """``k`` best distinct configurations (rank 1..k) and, if given, the baseline.

    Args:
        study: a finished :class:`~servetune.tuner.Study`.
        k: how many tuned configurations.
        baseline: ``(config, metrics, score)`` of the engine default, evaluated the same way.
    """
    targets = study.space.targets or None
    out = []
    for rank, record in enumerate(study.top(k), start=1):
        out.append({"name": f"rank{rank}", "label": f"#{rank}", "rank": rank,
                    "baseline": False, "config": record.config,
                    "objective": record.score, "metrics": record.metrics,
                    "evaluation": record.index,
                    "launch": launch_args(study.space.engine, record.config, targets)})
    if baseline is not None:
        config, metrics, score = baseline
        out.append({"name": "default", "label": "baseline", "rank": None, "baseline": True,
                    "config": config, "objective": score,
                    "metrics": metrics, "evaluation": None,
                    "launch": launch_args(study.space.engine, config, targets)})
    return out


def candidates_table(candidates: list[dict], tuned_keys: tuple[str, ...] = ()) -> str:
    """A Markdown table: label, objective, key metrics, then the tuned knobs."""
    keys = list(tuned_keys) or sorted({k for c in candidates for k in c["config"]})
    head = ["", "objective", *TABLE_METRICS, *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in candidates:
        m = c.get("metrics") or {}
        cells = [c["label"], format_cell(c.get("objective"))]
        cells += [format_cell(m.get(k)) for k in TABLE_METRICS]
        cells += [format_cell(c["config"].get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_candidates(directory: Path, candidates: list[dict], tuned_keys: tuple[str, ...] = ()
                     ) -> list[Path]:
    """``candidates.json`` and ``candidates.md`` (table + launch commands), atomically."""
    json_path = Path(directory) / "candidates.json"
    md_path = Path(directory) / "candidates.md"
    atomic_write_text(json_path, json.dumps(candidates, indent=1, default=str))
    parts = ["# Candidates", "", candidates_table(candidates, tuned_keys), "", "## Launch", ""]
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
