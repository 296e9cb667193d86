"""The training domain of a step-time model: what data it has seen, so that a use far outside
it is reported instead of silently trusted.

A :class:`TrainingDomain` is computed at training time from the training steps and their runs:
the min/max of the step composition columns, the knob combinations seen, and per
(async_batching, cuda_graph) mode the range of KV cache sizes (``num_blocks * block_size``
tokens) and token budgets (``max_batch_tokens``). It is logged as the MLflow artifact
``domain.json`` next to the model.

Example:
    >>> import pandas as pd
    >>> steps = pd.DataFrame({c: [1, 10] for c in DOMAIN_COLUMNS})
    >>> runs = pd.DataFrame({"run_id": ["a"], "block_size": [16], "async_batching": [1],
    ...                      "cuda_graph": [0], "tp_size": [1], "max_batch_tokens": [512],
    ...                      "num_blocks": [100]})
    >>> d = TrainingDomain.from_training(steps.assign(run_id="a"), runs)
    >>> d.step_coverage(pd.DataFrame({c: [20] for c in DOMAIN_COLUMNS}))["worst_ratio"]
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servetune.features import KNOB_COLUMNS

__all__ = ["TrainingDomain", "DOMAIN_COLUMNS", "DOMAIN_ARTIFACT", "mode_key", "domain_report",
           "format_domain_warning"]

DOMAIN_ARTIFACT = "domain.json"  # MLflow artifact path of the domain inside the training run
# step composition columns checked (``features.RAW_COLUMNS`` order, prefill_attn_work left out)
DOMAIN_COLUMNS: tuple[str, ...] = ("num_seqs", "num_prefill_seqs", "num_decode_seqs",
                                   "prefill_tokens", "decode_tokens", "kv_tokens_sum",
                                   "kv_tokens_max")


def _num(value) -> float | None:
    """A finite float, or None for a missing/NaN value."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def mode_key(async_batching, cuda_graph) -> str:
    """``"async=1,graph=0"``; ``?`` stands for a value the engine does not report."""
    def part(v):
        v = _num(v)
        return "?" if v is None else str(int(bool(v)))
    return f"async={part(async_batching)},graph={part(cuda_graph)}"


def _range(values) -> list[float] | None:
    arr = np.asarray([v for v in (_num(x) for x in values) if v is not None], dtype=np.float64)
    return [float(arr.min()), float(arr.max())] if arr.size else None


def _ratio_outside(value: float, lo: float, hi: float) -> float:
    """How far ``value`` is outside ``[lo, hi]``: value/hi above, lo/value below (1 inside)."""
    if value > hi:
        return value / max(hi, 1.0)
    if value < lo:
        return lo / max(value, 1.0)
    return 1.0


# The knobs whose trained combinations are recorded: the cache size is a range per mode
# (``modes``), not part of a combination (every run may size its own cache).
COMBINATION_KNOBS: tuple[str, ...] = tuple(k for k in KNOB_COLUMNS if k != "cache_tokens")


@dataclass(frozen=True)
class TrainingDomain:
    """What a step-time model was trained on.

    Attributes:
        step_ranges: ``{column: [min, max]}`` of the training steps (``DOMAIN_COLUMNS``).
        knob_combinations: the distinct ``COMBINATION_KNOBS`` tuples of the training runs
            (None for a knob a run does not report), sorted.
        modes: per :func:`mode_key`: ``runs``, ``cache_tokens`` ``[min, max]`` (None when no run
            of the mode reports ``num_blocks``) and ``max_batch_tokens`` ``[min, max]``.
        n_steps, n_runs: how much data it is.
    """

    step_ranges: Mapping[str, tuple[float, float]]
    knob_combinations: tuple[tuple, ...]
    modes: Mapping[str, Mapping[str, object]]
    n_steps: int = 0
    n_runs: int = 0
    knob_names: tuple[str, ...] = field(default=COMBINATION_KNOBS)

    @classmethod
    def from_training(cls, steps: pd.DataFrame, runs: pd.DataFrame) -> "TrainingDomain":
        """The domain of ``steps`` (``DOMAIN_COLUMNS`` + ``run_id``) and their ``runs``
        (``run_id``, ``COMBINATION_KNOBS``, ``num_blocks``; runs without steps are ignored)."""
        used = runs[runs["run_id"].isin(set(steps["run_id"]))].drop_duplicates("run_id")
        ranges = {c: tuple(r) for c in DOMAIN_COLUMNS
                  if c in steps.columns and (r := _range(steps[c].to_numpy())) is not None}
        combos = set()
        modes: dict[str, dict] = {}
        for row in used.itertuples(index=False):
            r = row._asdict()
            combos.add(tuple(_num(r.get(k)) for k in COMBINATION_KNOBS))
            key = mode_key(r.get("async_batching"), r.get("cuda_graph"))
            m = modes.setdefault(key, {"runs": 0, "_cache": [], "_mbt": []})
            m["runs"] += 1
            blocks, size = _num(r.get("num_blocks")), _num(r.get("block_size"))
            if blocks is not None and size is not None:
                m["_cache"].append(blocks * size)
            m["_mbt"].append(r.get("max_batch_tokens"))
        modes = {k: {"runs": m["runs"], "cache_tokens": _range(m["_cache"]),
                     "max_batch_tokens": _range(m["_mbt"])} for k, m in sorted(modes.items())}
        return cls(step_ranges=ranges,
                   knob_combinations=tuple(sorted(combos, key=lambda t: [
                       (-1.0 if v is None else v) for v in t])),
                   modes=modes, n_steps=int(len(steps)), n_runs=int(len(used)))

    def union(self, other: "TrainingDomain") -> "TrainingDomain":
        """The domain of both trainings (a calibrated model: its base model's and its own):
        step ranges widened, knob combinations and modes merged, counts added."""
        ranges = dict(self.step_ranges)
        for col, (lo, hi) in other.step_ranges.items():
            mine = ranges.get(col)
            ranges[col] = (lo, hi) if mine is None else (min(mine[0], lo), max(mine[1], hi))
        modes = {k: dict(v) for k, v in self.modes.items()}
        for key, mode in other.modes.items():
            mine = modes.get(key)
            modes[key] = dict(mode) if mine is None else {
                "runs": mine["runs"] + mode["runs"],
                **{k: _range([v for r in (mine.get(k), mode.get(k)) if r for v in r])
                   for k in ("cache_tokens", "max_batch_tokens")}}
        combos = set(self.knob_combinations) | set(other.knob_combinations)
        return TrainingDomain(step_ranges=ranges,
                              knob_combinations=tuple(sorted(combos, key=lambda t: [
                                  (-1.0 if v is None else v) for v in t])),
                              modes=dict(sorted(modes.items())),
                              n_steps=self.n_steps + other.n_steps,
                              n_runs=self.n_runs + other.n_runs)

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-ready form (what ``domain.json`` holds)."""
        return {"version": 1, "knob_names": list(self.knob_names),
                "step_ranges": {k: list(v) for k, v in self.step_ranges.items()},
                "knob_combinations": [list(t) for t in self.knob_combinations],
                "modes": {k: dict(v) for k, v in self.modes.items()},
                "n_steps": self.n_steps, "n_runs": self.n_runs}

    @classmethod
    def from_dict(cls, data: Mapping) -> "TrainingDomain":
        """Inverse of :meth:`to_dict`."""
        names = tuple(data.get("knob_names", COMBINATION_KNOBS))
        combos = []
        for t in data["knob_combinations"]:  # re-ordered onto today's COMBINATION_KNOBS
            by_name = dict(zip(names, t))
            combos.append(tuple(_num(by_name.get(k)) for k in COMBINATION_KNOBS))
        return cls(step_ranges={k: tuple(v) for k, v in data["step_ranges"].items()},
                   knob_combinations=tuple(combos),
                   modes={k: dict(v) for k, v in data["modes"].items()},
                   n_steps=int(data.get("n_steps", 0)), n_runs=int(data.get("n_runs", 0)))

    # -- checks ---------------------------------------------------------------------------------

    def check_config(self, knobs: Mapping[str, object], cache_tokens: int | None = None
                     ) -> list[str]:
        """Reasons the configuration (``COMBINATION_KNOBS`` values, KV cache size in tokens) is
        outside the training data; empty when it is inside."""
        reasons: list[str] = []
        combo = tuple(_num(knobs.get(k)) for k in COMBINATION_KNOBS)
        key = mode_key(knobs.get("async_batching"), knobs.get("cuda_graph"))
        mode = self.modes.get(key)
        if mode is None:
            reasons.append(f"mode {key} (async_batching, cuda_graph) was never trained; trained "
                           f"modes: {', '.join(self.modes) or 'none'}")
        elif combo not in set(self.knob_combinations):
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(COMBINATION_KNOBS, combo))
            reasons.append(f"knob combination ({shown}) is not among the "
                           f"{len(self.knob_combinations)} trained")
        if mode is not None:
            for name, value in (("max_batch_tokens", _num(knobs.get("max_batch_tokens"))),
                                ("cache_tokens", _num(cache_tokens))):
                seen = mode.get(name)
                if value is None or not seen:
                    continue
                ratio = _ratio_outside(value, seen[0], seen[1])
                if ratio > 1:
                    side = "above the largest" if value > seen[1] else "below the smallest"
                    reasons.append(f"{name} {_fmt(value)} is {ratio:.1f}x {side} trained in mode "
                                   f"{key} ({_fmt(seen[0])}-{_fmt(seen[1])})")
        return reasons

    def step_coverage(self, steps) -> dict:
        """Share of ``steps`` (DataFrame with ``DOMAIN_COLUMNS``, or an array whose columns are
        ``features.RAW_COLUMNS`` in order) outside the trained ranges, and the worst column:
        ``worst_ratio`` is the max over columns of value/max_seen (min_seen/value below the
        minimum; values are counts, so a divisor below 1 counts as 1); 1.0 when every step is
        inside."""
        matrix = _domain_matrix(steps)
        n = matrix.shape[0]
        if n == 0:
            return {"steps": 0, "share_outside": 0.0, "worst_ratio": 1.0, "worst_column": None,
                    "worst_direction": None, "share_by_column": {}}
        outside = np.zeros(n, dtype=bool)
        worst, worst_col, direction, by_col = 1.0, None, None, {}
        for j, col in enumerate(DOMAIN_COLUMNS):
            if col not in self.step_ranges:
                continue
            lo, hi = self.step_ranges[col]
            v = matrix[:, j]
            above, below = v > hi, v < lo
            out = above | below
            outside |= out
            if out.any():
                by_col[col] = float(out.mean())
            if above.any():
                ratio = float(v[above].max()) / max(hi, 1.0)
                if ratio > worst:
                    worst, worst_col, direction = ratio, col, "above"
            if below.any():
                ratio = lo / max(float(v[below].min()), 1.0)
                if ratio > worst:
                    worst, worst_col, direction = ratio, col, "below"
        return {"steps": int(n), "share_outside": float(outside.mean()), "worst_ratio": worst,
                "worst_column": worst_col, "worst_direction": direction,
                "share_by_column": by_col}


def _fmt(v) -> str:
    if v is None:
        return "?"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"


def _domain_matrix(steps) -> np.ndarray:
    if isinstance(steps, pd.DataFrame):
        return np.column_stack([pd.to_numeric(steps[c]).to_numpy(dtype=np.float64)
                                for c in DOMAIN_COLUMNS]) if len(steps) else \
            np.zeros((0, len(DOMAIN_COLUMNS)))
    arr = np.asarray(steps, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < len(DOMAIN_COLUMNS):
        raise ValueError(f"expected an (n, >= {len(DOMAIN_COLUMNS)}) array of RAW_COLUMNS, "
                         f"got shape {arr.shape}")
    return arr[:, :len(DOMAIN_COLUMNS)]


def domain_report(domain: TrainingDomain | None, knobs: Mapping[str, object],
                  cache_tokens: int | None = None, steps=None) -> dict:
    """The ``domain`` block of a simulation's output: ``known``, config-level ``reasons``,
    ``steps`` (:meth:`TrainingDomain.step_coverage`, None when steps were not recorded) and
    ``outside`` (anything outside). ``domain=None`` (a model registered before domains were
    recorded) gives ``known: False`` and the message "domain unknown"."""
    if domain is None:
        return {"known": False, "outside": None, "reasons": [], "steps": None,
                "message": "domain unknown (the model was registered without domain.json)"}
    reasons = domain.check_config(knobs, cache_tokens)
    coverage = None if steps is None else domain.step_coverage(steps)
    outside = bool(reasons) or bool(coverage and coverage["share_outside"] > 0)
    return {"known": True, "outside": outside, "reasons": reasons, "steps": coverage,
            "cache_tokens": None if cache_tokens is None else int(cache_tokens),
            "message": format_domain_warning({"known": True, "reasons": reasons,
                                              "steps": coverage})}


def format_domain_warning(report: Mapping) -> str | None:
    """One human line for a :func:`domain_report`, or None when nothing is outside."""
    if not report.get("known"):
        return "model training domain unknown (registered without domain.json)"
    parts = []
    cov = report.get("steps")
    if cov and cov["share_outside"] > 0:
        how = (f"at {cov['worst_ratio']:.1f}x the "
               f"{'largest' if cov.get('worst_direction') != 'below' else 'smallest'} trained")
        parts.append(f"{100 * cov['share_outside']:.0f} % of steps, worst "
                     f"{cov['worst_column']} {how}")
    parts.extend(report.get("reasons") or [])
    if not parts:
        return None
    return "outside the model's training data: " + "; ".join(parts)

