"""The raw inputs of a step's features: batch composition columns and per-run engine knobs.

Example:
    >>> from servetune.features import RAW_COLUMNS, knob_vector
    >>> RAW_COLUMNS[0]
    'num_seqs'
    >>> knob_vector({"block_size": 32, "async_batching": True}).tolist()[:2]
    [32.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from servetune import InputError

__all__ = ["RAW_COLUMNS", "PREV_COLUMNS", "STEP_INPUT_COLUMNS", "KNOB_COLUMNS", "RUN_KNOB_COLUMNS",
           "knob_vector",
           "knobs_from_runs", "join_knobs", "column_matrix", "add_previous_step",
           "previous_step_matrix", "graph_captured"]

# A step's batch composition: exactly the ``steps`` schema columns of these names, in this order.
RAW_COLUMNS: tuple[str, ...] = (
    "num_seqs", "num_prefill_seqs", "num_decode_seqs", "prefill_tokens", "decode_tokens",
    "kv_tokens_sum", "kv_tokens_max", "prefill_attn_work",
)

# The composition of the step before it in the same run (zero for a run's first step). With
# async batching a recorded step duration is the gap between two launches, so it contains the
# GPU work of the PREVIOUS batch. Feature kernels receive ``RAW_COLUMNS + PREV_COLUMNS`` (17).
# ``prev_graph_captured`` is 1 when the previous step captured a CUDA graph (the collector flags
# it in ``extra``; the simulator knows its own captures): the step after a capture is short, its
# GPU work having run inside the capture step's duration.
PREV_COLUMNS: tuple[str, ...] = (*(f"prev_{name}" for name in RAW_COLUMNS),
                                 "prev_graph_captured")
STEP_INPUT_COLUMNS: tuple[str, ...] = RAW_COLUMNS + PREV_COLUMNS

_CAPTURED = r'"graph_captured"\s*:\s*true'

# Per-run engine knobs that change the cost of a step of a given composition. Taken from the
# ``runs`` table (joined on run_id) for training, constant for one simulation. Booleans are 0/1;
# a knob an engine does not report is NaN (XGBoost's missing value). ``max_batch_tokens`` sets
# the CUDA-graph padded shapes (the decode floor moves with it). ``cache_tokens`` is the KV cache
# size (num_blocks x block_size): transformers' async batching copies a mask that grows with it
# host-to-device every step (BENCHMARKS.md, "Async mask copy vs KV cache size"). New knobs go at
# the END: feature sets index knobs by position.
KNOB_COLUMNS: tuple[str, ...] = ("block_size", "async_batching", "cuda_graph", "tp_size",
                                 "max_batch_tokens", "cache_tokens")

# The ``runs`` table columns the knobs are read or derived from (``cache_tokens`` is not a runs
# column: it is ``num_blocks`` x ``block_size``).
RUN_KNOB_COLUMNS: tuple[str, ...] = ("block_size", "async_batching", "cuda_graph", "tp_size",
                                     "max_batch_tokens", "num_blocks")


def column_matrix(df: pd.DataFrame, columns: tuple[str, ...], *, what: str) -> np.ndarray:
    """``df[columns]`` as a C-contiguous float64 matrix, missing values as NaN.

    Raises:
        InputError: a column is absent or not numeric/boolean.
    """
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        if name not in df.columns:
            raise InputError(f"missing {what} column; expected all of {', '.join(columns)}",
                             field=name)
        try:
            out[:, j] = pd.to_numeric(df[name], errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected numbers or booleans ({exc})", field=name) from None
    return out


def knob_vector(config: Mapping[str, object]) -> np.ndarray:
    """The float64 knob vector (``KNOB_COLUMNS`` order) of one engine configuration.

    Knobs absent from ``config`` (or ``None``) are NaN; ``cache_tokens``, when absent, is
    ``num_blocks`` x ``block_size`` if both are given. Unknown keys are ignored, so a whole
    engine configuration or a ``runs`` row can be passed.
    """
    out = np.full(len(KNOB_COLUMNS), np.nan, dtype=np.float64)
    for j, name in enumerate(KNOB_COLUMNS):
        value = config.get(name)
        if name == "cache_tokens" and _missing(value):
            blocks, size = config.get("num_blocks"), config.get("block_size")
            value = None if _missing(blocks) or _missing(size) else float(blocks) * float(size)
        if value is None:
            continue
        try:
            out[j] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"expected a number or a boolean, got {value!r}",
                             field=name) from None
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _numbers(runs: pd.DataFrame, name: str) -> np.ndarray:
    if name not in runs.columns:
        return np.full(len(runs), np.nan)
    return pd.to_numeric(runs[name]).to_numpy(dtype=np.float64, na_value=np.nan)


def knobs_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``run_id`` plus the ``KNOB_COLUMNS`` as float64 (NaN when unknown).

    ``cache_tokens`` is the runs' own column when they have one, else ``num_blocks`` x
    ``block_size`` (NaN where either is unknown).
    """
    if "run_id" not in runs.columns:
        raise InputError("runs table has no run_id column", field="run_id")
    out = pd.DataFrame({"run_id": runs["run_id"].astype(str).to_numpy()})
    for name in KNOB_COLUMNS:
        out[name] = _numbers(runs, name)
    if "cache_tokens" not in runs.columns:
        out["cache_tokens"] = _numbers(runs, "num_blocks") * _numbers(runs, "block_size")
    duplicated = out["run_id"].duplicated()
    if duplicated.any():
        run = out.loc[duplicated, "run_id"].iloc[0]
        raise InputError(f"run {run!r} appears more than once in the runs table", field="run_id")
    return out


def join_knobs(steps: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``steps`` with the run knobs joined on ``run_id`` (step-level values fill run gaps).

    A knob the runs table lacks for a run but the steps carry themselves (``block_size``,
    ``tp_size`` are also ``steps`` columns) is taken from the steps.
    """
    knobs = knobs_from_runs(runs)
    base = steps.drop(columns=[c for c in KNOB_COLUMNS if c in steps.columns])
    merged = base.merge(knobs, on="run_id", how="left", validate="many_to_one")
    merged.index = steps.index
    for name in KNOB_COLUMNS:
        if name in steps.columns:
            own = pd.to_numeric(steps[name]).to_numpy(dtype=np.float64, na_value=np.nan)
            merged[name] = np.where(np.isnan(merged[name].to_numpy()), own, merged[name])
    return merged


def previous_step_matrix(raw: np.ndarray) -> np.ndarray:
    """``raw`` (n, 8) consecutive steps of ONE run -> (n, 17) with each row's previous step
    appended (zeros for the first; no graph captures known)."""
    width = raw.shape[1]
    out = np.zeros((raw.shape[0], width + len(PREV_COLUMNS)), dtype=np.float64)
    out[:, :width] = raw
    out[1:, width:2 * width] = raw[:-1]
    return out


def graph_captured(steps: pd.DataFrame) -> np.ndarray:
    """Per step, True when it captured a CUDA graph: the ``graph_captured`` column if present,
    else the collector's flag in ``extra`` (``"graph_captured": true``), else False."""
    if "graph_captured" in steps.columns:
        return steps["graph_captured"].fillna(False).to_numpy(dtype=bool)
    if "extra" in steps.columns:
        return steps["extra"].fillna("").astype(str).str.contains(
            _CAPTURED, regex=True).to_numpy(dtype=bool)
    return np.zeros(len(steps), dtype=bool)


def add_previous_step(steps: pd.DataFrame) -> pd.DataFrame:
    """``steps`` with ``PREV_COLUMNS``: the composition of the step before each one in its run
    and whether that step captured a CUDA graph (:func:`graph_captured`).

    Steps are ordered by ``step_index`` within each ``run_id`` (row order where those columns
    are absent); a run's first step gets zeros. Call it on a run's complete steps, before any
    filtering, so that "previous" means the step the engine really ran before.

    Raises:
        InputError: a composition column is missing or not numeric.
    """
    raw = np.column_stack([column_matrix(steps, RAW_COLUMNS, what="step composition"),
                           graph_captured(steps).astype(np.float64)])
    n = len(steps)
    run_code = (pd.factorize(steps["run_id"].astype(str))[0] if "run_id" in steps.columns
                else np.zeros(n, dtype=np.int64))
    if "step_index" in steps.columns:
        order = np.lexsort([steps["step_index"].to_numpy(), run_code])
    else:
        order = np.arange(n)
    run = run_code[order]
    prev_sorted = np.zeros((n, len(PREV_COLUMNS)), dtype=np.float64)
    if n > 1:
        same = run[1:] == run[:-1]
        prev_sorted[1:] = np.where(same[:, None], raw[order[:-1]], 0.0)
    prev = np.empty_like(prev_sorted)
    prev[order] = prev_sorted
    out = steps.copy()
    for j, name in enumerate(PREV_COLUMNS):
        out[name] = prev[:, j]
    return out
