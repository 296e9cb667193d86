"""Candidates to verify: configurations with their predicted metrics.

From a study folder (``<workspace>/studies/NAME/candidates.json``, written by the tuner) or from
``--set key=value`` flags (one candidate; values parsed as JSON where they parse, else strings).

Example:
    >>> c = candidates_from_sets(["max_batch_tokens=512", "scheduler=fifo", "cuda_graph=false"])
    >>> c[0].config
    {'max_batch_tokens': 512, 'scheduler': 'fifo', 'cuda_graph': False}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from servetune import InputError
from servetune.data import metric_name

__all__ = ["Candidate", "candidates_from_sets", "load_study_candidates", "study_engine",
           "CANDIDATES_FILE"]

CANDIDATES_FILE = "candidates.json"


@dataclass(frozen=True)
class Candidate:
    """A configuration to measure.

    Attributes:
        name: unique name in reports (``rank1``, ``default``, ...).
        config: engine knobs (``{"max_batch_tokens": 512, ...}``).
        predicted: predicted metrics keyed like the ``runs`` columns (``ttft_mean_ms``, ...;
            the old ``ttft_ms_mean`` spelling of studies saved before the names were unified
            is renamed when a study is read, see :func:`servetune.data.metric_name`).
        baseline: the engine default, measured first on each group for calibration.
    """

    name: str
    config: Mapping[str, object]
    predicted: Mapping[str, float] = field(default_factory=dict)
    baseline: bool = False


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def candidates_from_sets(assignments: Sequence[str], *, name: str = "set") -> list[Candidate]:
    """One candidate from ``key=value`` strings."""
    config: dict[str, object] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {item!r}", field="--set")
        config[key.strip()] = _parse_value(value)
    if not config:
        raise InputError("no --set key=value given", field="--set")
    return [Candidate(name=name, config=config)]


def _predicted(entry: Mapping, path: Path, row: int) -> dict[str, float]:
    raw = entry.get("predicted", entry.get("metrics", {})) or {}
    if not isinstance(raw, Mapping):
        raise InputError(f"expected an object of metric -> number, got {raw!r}", path=str(path),
                         row=row, field="predicted")
    out = {}
    for key, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric_name(str(key))] = float(value)
    return out


def study_engine(study_dir: str | Path) -> str | None:
    """The engine a study tuned (from its candidates' launch arguments), ``None`` if unnamed.

    Raises:
        InputError: candidates of several engines in one study.
    """
    path = Path(study_dir) / CANDIDATES_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, RecursionError):
        return None
    entries = data.get("candidates") if isinstance(data, Mapping) else data
    engines = {e["launch"].get("engine") for e in (entries if isinstance(entries, list) else ())
               if isinstance(e, Mapping) and isinstance(e.get("launch"), Mapping)} - {None}
    if len(engines) > 1:
        raise InputError(f"candidates of several engines ({', '.join(sorted(engines))})",
                         path=str(path), field="launch.engine")
    return engines.pop() if engines else None


def load_study_candidates(study_dir: str | Path, *, top: int | None = None) -> list[Candidate]:
    """Candidates of a study folder: the baseline (engine default) and the top-K configurations.

    Accepts ``candidates.json`` as a list of entries or ``{"candidates": [...]}``; an entry has
    ``config`` (or ``params``), optionally ``name``/``rank``, ``predicted`` (or ``metrics``) and
    ``baseline: true`` (or ``kind``/``role`` equal to ``default``/``baseline``).
    """
    path = Path(study_dir) / CANDIDATES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no {CANDIDATES_FILE} in the study folder; run the study first "
                         f"(servetune tune) or pass --set key=value", path=str(path)) from None
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", path=str(path)) from None
    except RecursionError:
        raise InputError("not valid JSON (nested too deeply)", path=str(path)) from None
    entries = data.get("candidates") if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise InputError("expected a non-empty list of candidates", path=str(path),
                         field="candidates")
    out: list[Candidate] = []
    for row, entry in enumerate(entries, start=1):
        if not isinstance(entry, Mapping):
            raise InputError(f"expected an object, got {entry!r}", path=str(path), row=row)
        config = entry.get("config", entry.get("params"))
        if not isinstance(config, Mapping):
            raise InputError("expected a 'config' object of knob -> value", path=str(path),
                             row=row, field="config")
        role = str(entry.get("kind", entry.get("role", ""))).lower()
        baseline = bool(entry.get("baseline")) or role in ("default", "baseline")
        name = entry.get("name") or ("default" if baseline else f"rank{entry.get('rank', row)}")
        out.append(Candidate(str(name), dict(config), _predicted(entry, path, row), baseline))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise InputError(f"candidate names must be unique, got {names}", path=str(path),
                         field="name")
    if top is not None:
        ranked = [c for c in out if not c.baseline][:top]
        out = [c for c in out if c.baseline] + ranked
    return out
