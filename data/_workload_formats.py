"""Request-arrival traces from public data sets, loaded as :class:`~servetune.data.Workload`.

These files say when requests arrived and how long they were -- what a simulator replays and a
load generator sends -- but carry no measurements, so they are workloads (``--workload FILE``),
never trace-store sources. The format is detected from the header (first line):

==========  ==================================================  ===============================
format      columns                                             arrival time
==========  ==================================================  ===============================
splitwise   ``arrived_at,num_prefill_tokens,num_decode_tokens``  seconds (Splitwise / Vidur)
azure       ``TIMESTAMP,ContextTokens,GeneratedTokens``          date-time text, e.g.
                                                                ``2023-11-16 18:15:46.6805900``
mooncake    JSON lines ``timestamp,input_length,output_length``  milliseconds (``hash_ids``, the
            (and ``hash_ids``)                                  prefix-cache blocks, are kept
                                                                only as a count in the
                                                                descriptor)
burstgpt    ``Timestamp,Model,Request tokens,Response tokens,   seconds; rows with 0 response
            Total tokens,Log Type``                             tokens (failed requests) or 0
                                                                request tokens are dropped,
                                                                with a logged count
==========  ==================================================  ===============================

Arrival times are rebased so the first request arrives at 0. A bad value is refused with the
file, the line and the column named.

Example:
    >>> workload = load_workload("splitwise_conv.csv")  # doctest: +SKIP
    >>> workload.descriptor["format"], len(workload), round(workload.rate_rps, 2)  # doctest: +SKIP
    ('splitwise', 19366, 5.53)
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from servetune import InputError
from servetune.data._workload import MAX_TOKENS, Workload
from servetune.data.adapters._common import json_lines, loads
from servetune.data.adapters._generic import MAX_COLUMNS

__all__ = ["WORKLOAD_FORMATS", "WorkloadFormat", "detect_workload_format", "load_workload"]

log = logging.getLogger(__name__)

_MAX_HEADER_CHARS = 1 << 20


@dataclass(frozen=True)
class WorkloadFormat:
    """One request-arrival trace format: the header that identifies it and its loader."""

    name: str
    description: str
    columns: tuple[str, ...]  # names the first line must contain
    loader: Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray, dict]]


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    with _open(path) as handle:
        try:
            first = handle.readline(_MAX_HEADER_CHARS + 1)
        except UnicodeDecodeError:
            raise InputError("expected UTF-8 text", path=str(path), row=1) from None
    width = first.count(",") + 1
    if width > MAX_COLUMNS or len(first) > _MAX_HEADER_CHARS:
        raise InputError(f"expected at most {MAX_COLUMNS:,d} columns in the header, found "
                         f"{width:,d}", path=str(path), row=1)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"invalid CSV ({str(exc).strip()})", path=str(path)) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; expected a header with "
                         f"{', '.join(columns)}", path=str(path), row=1, field=missing[0])
    if frame.empty:
        raise InputError("expected at least one request row, found none", path=str(path))
    return frame


def _numbers(frame: pd.DataFrame, column: str, path: Path, *, integer: bool) -> np.ndarray:
    """A column as numbers (>= 0, integral if asked); errors give the file line (header = 1)."""
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if integer:
        with np.errstate(invalid="ignore"):
            bad |= (values != np.round(values)) | (values > MAX_TOKENS)
    if bad.any():
        index = int(np.argmax(bad))
        what = f"a whole number in 0..{MAX_TOKENS:,d}" if integer else "a finite number >= 0"
        raise InputError(f"expected {what}, got {text.iloc[index]!r} (line {index + 2})",
                         path=str(path), row=index + 2, field=column)
    return values.astype(np.int64) if integer else values


def _require_positive(values: np.ndarray, column: str, path: Path, line_offset: int = 2) -> None:
    zero = values < 1
    if zero.any():
        index = int(np.argmax(zero))
        raise InputError(f"expected at least 1 token, got {values[index]} (line "
                         f"{index + line_offset})", path=str(path), row=index + line_offset,
                         field=column)


def _load_splitwise(path: Path):
    frame = _read_csv(path, SPLITWISE_COLUMNS)
    arrival = _numbers(frame, "arrived_at", path, integer=False)
    inputs = _numbers(frame, "num_prefill_tokens", path, integer=True)
    outputs = _numbers(frame, "num_decode_tokens", path, integer=True)
    _require_positive(inputs, "num_prefill_tokens", path)
    _require_positive(outputs, "num_decode_tokens", path)
    return arrival, inputs, outputs, {}


def _load_azure(path: Path):
    frame = _read_csv(path, AZURE_COLUMNS)
    text = frame["TIMESTAMP"].astype(str).str.strip()
    try:
        stamps = pd.to_datetime(text, format="ISO8601", errors="coerce")
    except (ValueError, TypeError) as exc:  # e.g. a mix of zone-aware and naive times
        raise InputError(f"cannot read the timestamps as one kind of date-time ({exc})",
                         path=str(path), field="TIMESTAMP") from None
    if stamps.isna().any():
        index = int(np.argmax(stamps.isna().to_numpy()))
        raise InputError(f"expected a date-time like 2023-11-16 18:15:46.6805900, got "
                         f"{text.iloc[index]!r} (line {index + 2})", path=str(path),
                         row=index + 2, field="TIMESTAMP")
    nanoseconds = stamps.to_numpy().astype("datetime64[ns]").astype(np.int64)
    arrival = (nanoseconds - nanoseconds.min()) / 1e9
    inputs = _numbers(frame, "ContextTokens", path, integer=True)
    outputs = _numbers(frame, "GeneratedTokens", path, integer=True)
    _require_positive(inputs, "ContextTokens", path)
    _require_positive(outputs, "GeneratedTokens", path)
    return arrival, inputs, outputs, {"first_timestamp": str(stamps.min())}


def _load_mooncake(path: Path):
    arrival, inputs, outputs, lines = [], [], [], []
    blocks = 0
    with _open(path) as handle:
        for number, record in json_lines(handle, str(path)):
            for key, target, integer in (("timestamp", arrival, False),
                                         ("input_length", inputs, True),
                                         ("output_length", outputs, True)):
                value = record.get(key)
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(float(value)) and value >= 0
                      and (not integer or (float(value).is_integer() and value <= MAX_TOKENS)))
                if not ok:
                    what = (f"a whole number in 0..{MAX_TOKENS:,d}" if integer
                            else "a finite number >= 0 (milliseconds)")
                    raise InputError(f"expected {what}, got {value!r} (line {number})",
                                     path=str(path), row=number, field=key)
                target.append(value)
            hash_ids = record.get("hash_ids", [])
            blocks += len(hash_ids) if isinstance(hash_ids, list) else 0
            lines.append(number)
    if not arrival:
        raise InputError("expected at least one request line, found none", path=str(path))
    inputs_array = np.asarray(inputs, dtype=np.int64)
    outputs_array = np.asarray(outputs, dtype=np.int64)
    for name, values in (("input_length", inputs_array), ("output_length", outputs_array)):
        zero = values < 1
        if zero.any():
            index = int(np.argmax(zero))
            raise InputError(f"expected at least 1 token, got 0 (line {lines[index]})",
                             path=str(path), row=lines[index], field=name)
    return (np.asarray(arrival, dtype=np.float64) / 1000.0, inputs_array, outputs_array,
            {"hash_blocks": blocks})


def _load_burstgpt(path: Path):
    frame = _read_csv(path, BURSTGPT_COLUMNS)
    arrival = _numbers(frame, "Timestamp", path, integer=False)
    inputs = _numbers(frame, "Request tokens", path, integer=True)
    outputs = _numbers(frame, "Response tokens", path, integer=True)
    failed = outputs < 1
    empty = (inputs < 1) & ~failed
    keep = ~(failed | empty)
    if failed.any() or empty.any():
        log.warning("%s: dropped %d failed request(s) with 0 response tokens and %d with 0 "
                    "request tokens, kept %d", path, int(failed.sum()), int(empty.sum()),
                    int(keep.sum()))
    if not keep.any():
        raise InputError("every request has 0 request or response tokens; nothing to replay",
                         path=str(path))
    models = sorted(set(frame.loc[keep, "Model"].astype(str)))
    return arrival[keep], inputs[keep], outputs[keep], {
        "dropped_failed": int(failed.sum()), "dropped_empty": int(empty.sum()),
        "models": models}


SPLITWISE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_COLUMNS = ("timestamp", "input_length", "output_length")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens",
                    "Log Type")

WORKLOAD_FORMATS: Mapping[str, WorkloadFormat] = MappingProxyType({
    f.name: f for f in (
        WorkloadFormat("splitwise", "Splitwise / Vidur CSV (arrived_at seconds)",
                       SPLITWISE_COLUMNS, _load_splitwise),
        WorkloadFormat("azure", "Azure LLM inference trace CSV (TIMESTAMP date-times)",
                       AZURE_COLUMNS, _load_azure),
        WorkloadFormat("mooncake", "Mooncake JSON lines (timestamp in ms, hash_ids)",
                       MOONCAKE_COLUMNS, _load_mooncake),
        WorkloadFormat("burstgpt", "BurstGPT CSV (failed rows dropped)", BURSTGPT_COLUMNS,
                       _load_burstgpt),
    )
})


def _open(path: Path):
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=str(path)) from None


def _header_names(path: Path) -> list[str]:
    with _open(path) as handle:
        try:
            first = handle.readline(1 << 16)
        except UnicodeDecodeError:
            return []
    stripped = first.strip()
    if stripped.startswith("{"):
        try:
            record = loads(stripped)
        except ValueError:
            return []
        return list(record) if isinstance(record, dict) else []
    return [name.strip() for name in next(csv.reader([first]), [])]


def detect_workload_format(path: str | Path) -> str | None:
    """The name of the workload format whose header ``path`` has, or None."""
    names = set(_header_names(Path(path)))
    for fmt in WORKLOAD_FORMATS.values():
        if set(fmt.columns) <= names:
            return fmt.name
    return None


def load_workload(path: str | Path, format: str | None = None) -> Workload:
    """Load a request-arrival trace as a :class:`Workload` (format detected from the header).

    Args:
        path: the trace file.
        format: one of :data:`WORKLOAD_FORMATS`; detected when None.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such workload file", path=str(path))
    if format is None:
        format = detect_workload_format(path)
        if format is None:
            expected = "; ".join(f"{f.name}: {','.join(f.columns)}"
                                 for f in WORKLOAD_FORMATS.values())
            raise InputError(f"unknown workload format: the first line matches none of "
                             f"{expected}", path=str(path), row=1)
    elif format not in WORKLOAD_FORMATS:
        raise InputError(f"unknown workload format {format!r}; expected one of "
                         f"{', '.join(WORKLOAD_FORMATS)}", field="format")
    arrival, inputs, outputs, details = WORKLOAD_FORMATS[format].loader(path)
    descriptor = {"kind": "trace", "format": format, "path": str(path.resolve()),
                  "name": path.stem, **details}
    return Workload.from_arrays(arrival, inputs, outputs, name=path.stem, descriptor=descriptor)
